-- 0.1.0 -> 0.2.0: what the upgrade needs before the 0.2.0 install runs again over it.
-- Databases called 0.1.0 were installed from several commits, so this also carries the
-- layouts of the earliest ones forward.

-- Columns that 0.2.0 creates with its tables.
ALTER TABLE model.registry ADD COLUMN IF NOT EXISTS serving_ranking bytea;
ALTER TABLE model.user_latent_attributes ADD COLUMN IF NOT EXISTS n_updates bigint NOT NULL DEFAULT 0;
ALTER TABLE model.user_latent_attributes ADD COLUMN IF NOT EXISTS backup_ring integer;

-- Upgrade from the first layout (a global backup_id, one row per update): number each user's
-- rows in order, keep them all (slot = update_seq), carry the count over.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'model.user_latent_attributes_backups'::regclass
               AND attname = 'backup_id' AND NOT attisdropped) THEN
        ALTER TABLE model.user_latent_attributes_backups
            ADD COLUMN slot bigint, ADD COLUMN update_seq bigint;
        UPDATE model.user_latent_attributes_backups b SET slot = n.seq, update_seq = n.seq
        FROM (SELECT backup_id, row_number() OVER (PARTITION BY user_id ORDER BY backup_id) AS seq
              FROM model.user_latent_attributes_backups) n
        WHERE n.backup_id = b.backup_id;
        ALTER TABLE model.user_latent_attributes_backups
            DROP COLUMN backup_id,
            ALTER COLUMN slot SET NOT NULL, ALTER COLUMN update_seq SET NOT NULL,
            ADD PRIMARY KEY (user_id, slot);
        UPDATE model.user_latent_attributes u SET n_updates = b.n
        FROM (SELECT user_id, max(update_seq) AS n FROM model.user_latent_attributes_backups GROUP BY user_id) b
        WHERE b.user_id = u.user_id;
    END IF;
END $$;

-- recommend() once had two arguments: that signature would make calls to the five-argument
-- one ambiguous.
DROP FUNCTION IF EXISTS movrec.recommend(integer, integer);
DROP FUNCTION IF EXISTS movrec._recommend(integer, integer);

-- Audit columns name the session user, not the owner that SECURITY DEFINER code runs as.
ALTER TABLE movrec.installs ALTER COLUMN installed_by SET DEFAULT session_user;
ALTER TABLE model.registry ALTER COLUMN trained_by SET DEFAULT session_user;
ALTER TABLE model.deployments ALTER COLUMN deployed_by SET DEFAULT session_user;
