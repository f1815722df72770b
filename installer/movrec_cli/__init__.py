"""movrec CLI: installs the SQL, runs the embedded cluster, drives the jobs."""
