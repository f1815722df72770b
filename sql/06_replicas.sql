-- Hot standbys: a streaming replica serves the read calls (recommend, predict,
-- similar_movies, explain) from replayed rows; every write goes to the primary.
--
-- This file comes before the front doors because rate() is an SQL function, whose body is
-- checked against the functions that exist when it is created.

-- Where the primary is, as a standby knows it: the WAL receiver's sender while streaming,
-- else the host and port of primary_conninfo (never the rest of it: it may hold a password).
-- Both are readable only by superusers, hence SECURITY DEFINER; NULL on a primary.
CREATE OR REPLACE FUNCTION movrec._primary_address() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    host text;
    port text;
    conninfo text;
BEGIN
    IF NOT pg_is_in_recovery() THEN
        RETURN NULL;
    END IF;
    SELECT r.sender_host, r.sender_port::text INTO host, port FROM pg_stat_wal_receiver r LIMIT 1;
    IF host IS NULL THEN
        conninfo := coalesce(current_setting('primary_conninfo', true), '');
        host := substring(conninfo FROM '(?:^|\s)host\s*=\s*''?([^''\s]+)');
        port := substring(conninfo FROM '(?:^|\s)port\s*=\s*''?([0-9]+)');
    END IF;
    IF host IS NULL AND port IS NULL THEN
        RETURN 'the primary (primary_conninfo names no host or port)';
    END IF;
    RETURN format('host=%s port=%s', coalesce(host, 'localhost'), coalesce(port, '5432'));
END $$;
COMMENT ON FUNCTION movrec._primary_address() IS
    'On a hot standby: "host=H port=P" of its primary (the WAL receiver''s sender, else primary_conninfo); '
    'NULL on a primary';

-- The guard of every front door that writes: one pg_is_in_recovery() call on a primary.
-- The read calls never call it (they answer on a standby).
CREATE OR REPLACE FUNCTION movrec._require_primary(caller text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    primary_at text;
BEGIN
    IF pg_is_in_recovery() THEN
        primary_at := movrec._primary_address();
        RAISE EXCEPTION '%: this server is a read-only hot standby; run it on the primary (%)', caller, primary_at
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = format('connect to the primary (%s) for train, deploy, rollback, rate and the drains; '
                                'recommend(), predict(), similar_movies() and explain() answer here, and '
                                'movrec.wait_for_lsn() waits here for a write made there', primary_at);
    END IF;
END $$;
COMMENT ON FUNCTION movrec._require_primary(text) IS
    'Raises 25006 (read_only_sql_transaction) naming the primary when called on a hot standby: the first '
    'statement of every front door that writes';

-- Read-your-writes: the application reads pg_current_wal_lsn() on the primary after its
-- commit and waits here until the standby has replayed that far.  The wait sleeps in short
-- steps; the statement holds a snapshot meanwhile, so keep timeouts short (a replay that
-- conflicts with a snapshot waits for it, up to max_standby_streaming_delay).
CREATE OR REPLACE FUNCTION movrec.wait_for_lsn(lsn pg_lsn, timeout_ms integer DEFAULT 10000) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    started constant timestamptz := clock_timestamp();
    deadline timestamptz;
    replayed pg_lsn;
    step float8 := 0.001;
BEGIN
    IF lsn IS NULL OR timeout_ms IS NULL THEN
        RAISE EXCEPTION 'wait_for_lsn(): lsn and timeout_ms must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF timeout_ms < 0 OR timeout_ms > 3600000 THEN
        RAISE EXCEPTION 'wait_for_lsn(): timeout_ms must be between 0 and 3600000 (an hour), got %', timeout_ms
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    deadline := started + make_interval(secs => timeout_ms / 1000.0);
    LOOP
        -- a primary (or a standby promoted meanwhile) has every write it committed
        IF NOT pg_is_in_recovery() THEN
            RETURN true;
        END IF;
        replayed := pg_last_wal_replay_lsn();
        IF replayed >= lsn THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RAISE EXCEPTION 'wait_for_lsn(): this standby replayed up to %, not yet to %, within % ms',
                coalesce(replayed::text, 'nothing'), lsn, timeout_ms
                USING ERRCODE = 'query_canceled',
                      DETAIL = format('%s bytes of WAL behind', coalesce((lsn - replayed)::bigint::text, 'all')),
                      HINT = 'retry, wait longer, or read from the primary; '
                             'pg_stat_wal_receiver on the standby shows whether it is streaming';
        END IF;
        PERFORM pg_sleep(least(step, greatest(extract(epoch FROM deadline - clock_timestamp())::float8, 0)));
        step := least(step * 2, 0.01);  -- 1 ms, doubling to 10 ms: replay is usually a few ms behind
    END LOOP;
END $$;
COMMENT ON FUNCTION movrec.wait_for_lsn(pg_lsn, integer) IS
    'Read-your-writes on a hot standby: waits until this server has replayed the WAL up to lsn (pg_current_wal_lsn() '
    'read on the primary after the write committed) and returns true; on a primary returns true at once. After '
    'timeout_ms (0..3600000) raises 57014 (query_canceled) naming the LSN replayed so far. NULL: 22004; out of '
    'range: 22023';
