-- User-to-user Pearson collaborative filtering (issue 6): per-user rating
-- statistics kept by statement-level triggers, a deduplicated job queue drained by
-- `movrec worker` and pg_cron, and movrec.user_to_user() over an in-backend sparse
-- matrix (plpython/movrec/cf/ says how; cf/compute.py defines every number it returns).

CREATE TABLE IF NOT EXISTS model.user_rating_stats (
    user_id     integer PRIMARY KEY,
    n_ratings   integer NOT NULL DEFAULT 0,
    sum_ratings double precision NOT NULL DEFAULT 0,
    sum_squares double precision NOT NULL DEFAULT 0,
    mean_rating double precision GENERATED ALWAYS AS
        (CASE WHEN n_ratings > 0 THEN sum_ratings / n_ratings END) STORED,
    n_changes   bigint NOT NULL DEFAULT 0,
    changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    changed_group integer NOT NULL DEFAULT 0
);
-- No CHECK on the counts: a statistics row that drifted (triggers bypassed) must not
-- make rating writes fail; movrec.cf_rebuild_stats() repairs it.
COMMENT ON TABLE model.user_rating_stats IS
    'Per-user rating statistics, kept current by the movrec_cf_* triggers on watch_events. '
    'A user whose ratings are all deleted keeps a row of zeros (rows are never deleted), so caches see the change';
COMMENT ON COLUMN model.user_rating_stats.n_ratings IS 'How many ratings the user has in watch_events';
COMMENT ON COLUMN model.user_rating_stats.sum_ratings IS 'Sum of the user''s ratings (exact: half stars)';
COMMENT ON COLUMN model.user_rating_stats.sum_squares IS 'Sum of the squares of the user''s ratings (exact: quarter stars)';
COMMENT ON COLUMN model.user_rating_stats.mean_rating IS 'sum_ratings / n_ratings; NULL without ratings';
COMMENT ON COLUMN model.user_rating_stats.n_changes IS
    'Statements that changed the user''s ratings; cf_drain compares it before and after a job';
COMMENT ON COLUMN model.user_rating_stats.changed_xid IS
    'Transaction that last changed the user''s ratings: backends reload users changed at or after their snapshot''s xmin';
COMMENT ON COLUMN model.user_rating_stats.changed_group IS
    'The Citus group of the node whose transaction id changed_xid is (each node has its own ids; 0 on one server)';
CREATE INDEX IF NOT EXISTS user_rating_stats_changed_xid_idx ON model.user_rating_stats (changed_xid);

-- Erasures counted, with no user id: movrec.forget_user() deletes the user's statistics
-- row, so no changed_xid tells other backends' CF caches (plpython/movrec/cf/cache.py) that
-- the user's ratings are gone; a cache that finds this count changed reloads everything.
CREATE TABLE IF NOT EXISTS model.cf_erasures (
    singleton   boolean PRIMARY KEY DEFAULT true CONSTRAINT one_row CHECK (singleton),
    n_erasures  bigint NOT NULL DEFAULT 0,
    erased_at   timestamptz
);
COMMENT ON TABLE model.cf_erasures IS
    'One row: how many users movrec.forget_user() erased (no ids kept). Backends reload their CF ratings cache '
    'when it changes, so an erased user''s ratings feed no other user''s neighbours or scores';

CREATE TABLE IF NOT EXISTS model.cf_queue (
    user_id         integer PRIMARY KEY,
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    not_before      timestamptz NOT NULL DEFAULT '-infinity',
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    last_attempt_at timestamptz
);
COMMENT ON TABLE model.cf_queue IS
    'Users whose CF recommendations are stale, one row per user (a rating enqueues its user once). '
    'movrec.cf_drain() claims rows with FOR UPDATE SKIP LOCKED and deletes a row in the transaction that '
    'writes its result; a failed job stays with attempts, last_error and a backoff in not_before';
COMMENT ON COLUMN model.cf_queue.not_before IS 'A failed job waits until then: 2^(attempts-1) seconds, at most an hour';
CREATE INDEX IF NOT EXISTS cf_queue_enqueued_at_idx ON model.cf_queue (enqueued_at, user_id);

-- The triggers.  An insert or a delete fires one statement-level trigger, whose transition
-- table holds all of the statement's rows at once: an ETL publish of millions of rows costs
-- one aggregate, not a PL call per row.  An update fires a row trigger, and only for a row
-- whose user, movie or rating changed (its WHEN clause, evaluated without a function call):
-- a statement-level UPDATE trigger would fire for every INSERT .. ON CONFLICT DO UPDATE (the
-- rating path), and again, empty, when it only inserted; ratings are not updated in bulk
-- (an ETL publish deletes and inserts).  Each writes the statistics first, then the users,
-- once each, into both queues (model.cf_queue here, model.refresh_queue of 60_serving.sql),
-- in user order (see cf/queue.py): one statement per trigger.
CREATE OR REPLACE FUNCTION movrec.cf_on_ratings_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
DECLARE
    n_changed bigint := 0;
BEGIN
    IF TG_RELID <> 'movrec.watch_events'::regclass OR current_setting('application_name') = 'pg_restore' THEN
        IF NOT movrec._trigger_applies('movrec.cf_on_ratings_changed()', TG_RELID, 'movrec.watch_events') THEN
            RETURN NULL;  -- a restore replays rows whose effects the dump holds
        END IF;
    END IF;
    -- Per-user deltas (+ for ratings added, - for ratings removed), applied to the statistics,
    -- whose rows the statement returns to the queue inserts.  A statement can name only the
    -- transition tables its trigger declares, so each event has its own.
    IF TG_OP = 'INSERT' THEN
        WITH stats AS (
            INSERT INTO model.user_rating_stats AS s
                (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, updated_at)
            SELECT n.user_id, count(*)::integer, sum(n.rating::float8), sum(n.rating::float8 ^ 2), 1,
                   pg_current_xact_id(), now()
            FROM movrec_cf_new n GROUP BY n.user_id ORDER BY n.user_id
            ON CONFLICT (user_id) DO UPDATE
            SET n_ratings = s.n_ratings + excluded.n_ratings, sum_ratings = s.sum_ratings + excluded.sum_ratings,
                sum_squares = s.sum_squares + excluded.sum_squares, n_changes = s.n_changes + 1,
                changed_xid = excluded.changed_xid, updated_at = excluded.updated_at
            RETURNING s.user_id
        ), queued AS (
            INSERT INTO model.cf_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        ), refresh AS (  -- the raters' stored recommendations are stale (serving_drain)
            INSERT INTO model.refresh_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        )
        SELECT count(*) INTO n_changed FROM stats;
    ELSIF TG_OP = 'DELETE' THEN
        WITH stats AS (
            INSERT INTO model.user_rating_stats AS s
                (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, updated_at)
            SELECT o.user_id, -count(*)::integer, -sum(o.rating::float8), -sum(o.rating::float8 ^ 2), 1,
                   pg_current_xact_id(), now()
            FROM movrec_cf_old o GROUP BY o.user_id ORDER BY o.user_id
            ON CONFLICT (user_id) DO UPDATE
            SET n_ratings = s.n_ratings + excluded.n_ratings, sum_ratings = s.sum_ratings + excluded.sum_ratings,
                sum_squares = s.sum_squares + excluded.sum_squares, n_changes = s.n_changes + 1,
                changed_xid = excluded.changed_xid, updated_at = excluded.updated_at
            RETURNING s.user_id
        ), queued AS (
            INSERT INTO model.cf_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        )
        SELECT count(*) INTO n_changed FROM stats;
    ELSIF TG_OP = 'UPDATE' THEN  -- (per row: the trigger's WHEN let only a changed rating through)
        WITH delta (user_id, dn, ds, dss) AS (
            SELECT OLD.user_id, -1, -OLD.rating::float8, -(OLD.rating::float8 ^ 2)
            UNION ALL
            SELECT NEW.user_id, 1, NEW.rating::float8, NEW.rating::float8 ^ 2
        ), stats AS (
            INSERT INTO model.user_rating_stats AS s
                (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, updated_at)
            SELECT d.user_id, sum(d.dn)::integer, sum(d.ds), sum(d.dss), 1, pg_current_xact_id(), now()
            FROM delta d GROUP BY d.user_id ORDER BY d.user_id
            ON CONFLICT (user_id) DO UPDATE
            SET n_ratings = s.n_ratings + excluded.n_ratings, sum_ratings = s.sum_ratings + excluded.sum_ratings,
                sum_squares = s.sum_squares + excluded.sum_squares, n_changes = s.n_changes + 1,
                changed_xid = excluded.changed_xid, updated_at = excluded.updated_at
            RETURNING s.user_id
        ), queued AS (
            INSERT INTO model.cf_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        ), refresh AS (
            INSERT INTO model.refresh_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        )
        SELECT count(*) INTO n_changed FROM stats;
    ELSIF TG_OP = 'TRUNCATE' THEN
        -- every user who had ratings goes back to zero
        WITH stats AS (
            INSERT INTO model.user_rating_stats AS s
                (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, updated_at)
            SELECT z.user_id, -z.n_ratings, -z.sum_ratings, -z.sum_squares, 1, pg_current_xact_id(), now()
            FROM model.user_rating_stats z WHERE z.n_ratings <> 0 ORDER BY z.user_id
            ON CONFLICT (user_id) DO UPDATE
            SET n_ratings = s.n_ratings + excluded.n_ratings, sum_ratings = s.sum_ratings + excluded.sum_ratings,
                sum_squares = s.sum_squares + excluded.sum_squares, n_changes = s.n_changes + 1,
                changed_xid = excluded.changed_xid, updated_at = excluded.updated_at
            RETURNING s.user_id
        ), queued AS (
            INSERT INTO model.cf_queue (user_id) SELECT user_id FROM stats ORDER BY user_id
            ON CONFLICT (user_id) DO NOTHING
        )
        SELECT count(*) INTO n_changed FROM stats;
    END IF;
    -- also when the user's job was already queued: a worker may have kept that job
    -- because this transaction was in flight, and should look again once it commits
    IF n_changed > 0 THEN
        PERFORM pg_notify('movrec_cf', '');  -- equal notifications of one transaction fold into one
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION movrec.cf_on_ratings_changed() IS
    'Trigger (per statement for inserts and deletes, per changed row for updates): updates model.user_rating_stats, '
    'enqueues the users in model.cf_queue and, for ratings added or changed, model.refresh_queue (once each), and '
    'NOTIFYs movrec_cf';

-- (On Citus, movrec.distribute() puts row triggers in their place: 87_citus.sql.)
DO $citus$
BEGIN
    IF NOT movrec._distributed() THEN
        CREATE OR REPLACE TRIGGER movrec_cf_enqueue
            AFTER INSERT ON movrec.watch_events REFERENCING NEW TABLE AS movrec_cf_new
            FOR EACH STATEMENT EXECUTE FUNCTION movrec.cf_on_ratings_changed();
        COMMENT ON TRIGGER movrec_cf_enqueue ON movrec.watch_events IS
            'Inserted ratings update model.user_rating_stats and enqueue their users for CF and the '
            'recommendation refresh (movrec.cf_on_ratings_changed)';
        CREATE OR REPLACE TRIGGER movrec_cf_enqueue_changed
            AFTER UPDATE ON movrec.watch_events
            FOR EACH ROW WHEN ((OLD.user_id, OLD.movie_id, OLD.rating) IS DISTINCT FROM (NEW.user_id, NEW.movie_id, NEW.rating))
            EXECUTE FUNCTION movrec.cf_on_ratings_changed();
        COMMENT ON TRIGGER movrec_cf_enqueue_changed ON movrec.watch_events IS
            'A changed rating (user, movie or value) updates model.user_rating_stats and enqueues its user(s) for CF '
            'and the recommendation refresh (movrec.cf_on_ratings_changed)';
        CREATE OR REPLACE TRIGGER movrec_cf_enqueue_delete
            AFTER DELETE ON movrec.watch_events REFERENCING OLD TABLE AS movrec_cf_old
            FOR EACH STATEMENT EXECUTE FUNCTION movrec.cf_on_ratings_changed();
        COMMENT ON TRIGGER movrec_cf_enqueue_delete ON movrec.watch_events IS
            'CF: deleted ratings update model.user_rating_stats and enqueue their users (movrec.cf_on_ratings_changed)';
        CREATE OR REPLACE TRIGGER movrec_cf_enqueue_truncate
            AFTER TRUNCATE ON movrec.watch_events
            FOR EACH STATEMENT EXECUTE FUNCTION movrec.cf_on_ratings_changed();
        COMMENT ON TRIGGER movrec_cf_enqueue_truncate ON movrec.watch_events IS
            'CF: TRUNCATE zeroes model.user_rating_stats and enqueues every user who had ratings';
    END IF;
END $citus$;

CREATE OR REPLACE FUNCTION movrec.cf_rebuild_stats() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, pg_temp AS $$
DECLARE
    n_fixed bigint;
    -- the stamp: this transaction's id on this node, and the node (on Citus the statement
    -- below may write every node's shards; the stamp says whose ids it holds)
    stamp xid8;
    stamp_group integer := movrec._local_group();
BEGIN
    PERFORM movrec._require_primary('cf_rebuild_stats()');
    stamp := pg_current_xact_id();
    -- no rating may change between the recount and the write
    LOCK TABLE movrec.watch_events IN SHARE MODE;
    WITH fresh AS (
        SELECT user_id, count(*)::integer AS n, sum(rating::float8) AS s, sum(rating::float8 ^ 2) AS ss
        FROM movrec.watch_events GROUP BY user_id
    ), merged AS (
        SELECT coalesce(f.user_id, s.user_id) AS user_id, coalesce(f.n, 0) AS n, coalesce(f.s, 0) AS s,
               coalesce(f.ss, 0) AS ss,
               (s.n_ratings, s.sum_ratings, s.sum_squares)
                   IS DISTINCT FROM (coalesce(f.n, 0), coalesce(f.s, 0), coalesce(f.ss, 0)) AS wrong
        FROM fresh f FULL JOIN model.user_rating_stats s USING (user_id)
    ), written AS (
        -- every row is stamped, so every backend's cache reloads: a load that bypassed
        -- the triggers may have changed ratings without changing the sums
        INSERT INTO model.user_rating_stats AS s
            (user_id, n_ratings, sum_ratings, sum_squares, n_changes, changed_xid, changed_group, updated_at)
        SELECT user_id, n, s, ss, 1, stamp, stamp_group, now() FROM merged ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE
        SET n_ratings = excluded.n_ratings, sum_ratings = excluded.sum_ratings, sum_squares = excluded.sum_squares,
            n_changes = s.n_changes + 1, changed_xid = excluded.changed_xid, changed_group = excluded.changed_group,
            updated_at = excluded.updated_at
    ), queued AS (
        INSERT INTO model.cf_queue (user_id) SELECT user_id FROM merged WHERE wrong ORDER BY user_id
        ON CONFLICT (user_id) DO NOTHING
    )
    SELECT count(*) INTO n_fixed FROM merged WHERE wrong;
    IF n_fixed > 0 THEN
        PERFORM pg_notify('movrec_cf', '');
    END IF;
    RETURN n_fixed;
END $$;
COMMENT ON FUNCTION movrec.cf_rebuild_stats() IS
    'Recounts model.user_rating_stats from watch_events (locks it against writes meanwhile), enqueues the users whose '
    'row was missing or wrong, and makes every backend reload its CF cache. Run it after a bulk load that bypassed '
    'the triggers. Returns the number of users whose row was missing or wrong';

-- An install that finds the triggers absent recounts the statistics: a first install into a
-- database that has ratings fills them, and a reinstall repairs what changed while the
-- triggers were gone (between uninstall and install).  An upgrade over live triggers has
-- nothing to repair (00_schema.sql looked).  On a first install nothing is stale yet:
-- `movrec cf refresh --all` computes everyone, so the queue is left empty.
DO $$
DECLARE
    first_install boolean := NOT EXISTS (SELECT 1 FROM model.user_rating_stats);  -- (SELECT 1: Citus plans no empty target list over shards)
BEGIN
    IF current_setting('movrec.install_stats_were_live', true) IS DISTINCT FROM 'true'
       AND EXISTS (SELECT 1 FROM movrec.watch_events) THEN
        PERFORM movrec.cf_rebuild_stats();
        IF first_install THEN
            DELETE FROM model.cf_queue;
        END IF;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION movrec.user_to_user(
    user_id integer, min_corr double precision DEFAULT 0.65, min_overlap integer DEFAULT 14,
    min_raters integer DEFAULT 1, shrinkage double precision DEFAULT 0, damping double precision DEFAULT 0,
    baseline boolean DEFAULT false, store boolean DEFAULT true)
RETURNS TABLE (rank integer, movie_id integer, title text, score real, neighbours integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'user_to_user(): user_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF min_corr IS NULL OR NOT (min_corr BETWEEN -1 AND 1) THEN
        RAISE EXCEPTION 'user_to_user(): min_corr must be between -1 and 1, got %', coalesce(min_corr::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF min_overlap IS NULL OR min_overlap < 2 THEN
        RAISE EXCEPTION 'user_to_user(): min_overlap must be at least 2 (a correlation needs two co-rated movies), got %',
            coalesce(min_overlap::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF min_raters IS NULL OR min_raters < 1 THEN
        RAISE EXCEPTION 'user_to_user(): min_raters must be at least 1, got %', coalesce(min_raters::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- NaN sorts above every number in SQL and Infinity passes >= 0: both are refused
    IF shrinkage IS NULL OR NOT (shrinkage >= 0 AND shrinkage < 'Infinity')
       OR damping IS NULL OR NOT (damping >= 0 AND damping < 'Infinity') THEN
        RAISE EXCEPTION 'user_to_user(): shrinkage and damping must be finite numbers >= 0, got % and %',
            coalesce(shrinkage::text, 'NULL'), coalesce(damping::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF baseline IS NULL OR store IS NULL THEN
        RAISE EXCEPTION 'user_to_user(): baseline and store must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN QUERY SELECT * FROM movrec._user_to_user(user_id, min_corr, min_overlap, min_raters, shrinkage, damping,
                                                    baseline, store);
END $$;
COMMENT ON FUNCTION movrec.user_to_user(integer, double precision, integer, integer, double precision, double precision, boolean, boolean) IS
    'User-to-user Pearson CF for one user: neighbours with correlation >= min_corr over >= min_overlap co-rated movies; '
    'unseen movies rated by >= min_raters neighbours, scored mean_u + sum corr (r - mean_n) / sum |corr|; the top 150, '
    'best first (ties by movie_id), with the number of neighbours who rated each. store => true replaces the user''s '
    'rows of model.user_recommendation in this transaction. Options (0/false: the design): shrinkage (weights '
    'corr * n / (n + shrinkage)), damping (divide by sum |w| + damping), baseline (centre on mu + b_u + b_m). '
    'Definitions: plpython/movrec/cf/compute.py';

CREATE OR REPLACE FUNCTION movrec.cf_drain(max_jobs integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    PERFORM movrec._require_primary('cf_drain()');
    RETURN movrec._cf_drain(max_jobs);
END $$;
COMMENT ON FUNCTION movrec.cf_drain(integer) IS
    'Runs up to max_jobs jobs of model.cf_queue (FOR UPDATE SKIP LOCKED: workers in parallel never share one), each in '
    'a subtransaction; a job is deleted with its result, or kept with its error and a backoff. Returns the jobs '
    'attempted. Its locks last until the caller commits: keep batches small where ratings arrive';

-- pg_cron: scheduled draining, where the extension can live (cron.database_name).
-- movrec.schedule() (sql/80_jobs.sql) registers this job with the others, the same way.
CREATE OR REPLACE FUNCTION movrec.cf_schedule(schedule text DEFAULT '* * * * *', max_jobs integer DEFAULT 100)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF max_jobs IS NULL OR max_jobs < 1 OR max_jobs > 4096 THEN  -- 4096: movrec.jobs.MAX_JOBS
        RAISE EXCEPTION 'cf_schedule(): max_jobs must be between 1 and 4096, got %', coalesce(max_jobs::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN movrec._cron_job('movrec-cf-drain', schedule, format('SELECT movrec.cf_drain(%s)', max_jobs));
END $$;
COMMENT ON FUNCTION movrec.cf_schedule(text, integer) IS
    'Registers the pg_cron job movrec-cf-drain (SELECT movrec.cf_drain(max_jobs), every minute by default), creating '
    'pg_cron where this is cron.database_name; returns the job id; an error (55000) with the fix where pg_cron is '
    'not available';

CREATE OR REPLACE FUNCTION movrec.cf_unschedule() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = movrec, model, public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT FROM cron.job WHERE jobname = 'movrec-cf-drain') THEN
        RETURN false;
    END IF;
    RETURN cron.unschedule('movrec-cf-drain');
END $$;
COMMENT ON FUNCTION movrec.cf_unschedule() IS 'Removes the pg_cron job movrec-cf-drain; false when there was none';
