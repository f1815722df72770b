-- movrec bench serving: top-10 for a random user (pgbench -D n_users=N)
\set uid random(1, :n_users)
SELECT * FROM movrec.recommend(:uid, 10);
