-- movrec bench serving: the PL/Python floor of recommend() (pgbench -D n_users=N): a PL/Python
-- function that only fetches the user's rated movies through a prepared plan and returns 10
-- constant rows (movrec_bench.floor, made and dropped by the benchmark)
\set uid random(1, :n_users)
SELECT * FROM movrec_bench.floor(:uid);
