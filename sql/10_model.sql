-- Model registry, deployments, latent vectors (pgvector), precomputed recommendations.

CREATE TABLE IF NOT EXISTS model.registry (
    model_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text NOT NULL,
    dim               integer NOT NULL CONSTRAINT dim_is_positive CHECK (dim > 0),
    params            jsonb NOT NULL DEFAULT '{}',
    data_snapshot     jsonb NOT NULL DEFAULT '{}',
    metrics           jsonb NOT NULL DEFAULT '{}',
    global_mean       real NOT NULL,
    checkpoint        bytea NOT NULL,
    serving_movie_ids bytea NOT NULL,
    serving_matrix    bytea NOT NULL,
    serving_ranking   bytea,
    default_embedding real[] NOT NULL,
    default_bias      real NOT NULL,
    duration_s        real,
    trained_at        timestamptz NOT NULL DEFAULT now(),
    trained_by        text NOT NULL DEFAULT session_user,
    validation_split  bytea,
    item_item         bytea
);
COMMENT ON TABLE model.registry IS 'Every trained model: kind, hyper-parameters, data snapshot, metrics and checkpoint';
COMMENT ON COLUMN model.registry.checkpoint IS 'torch.save() bytes of the state_dict; loaded with weights_only=True';
COMMENT ON COLUMN model.registry.serving_movie_ids IS 'int32 movie ids, ascending, the rows of serving_matrix';
COMMENT ON COLUMN model.registry.serving_matrix IS
    'float32 movie matrix [vector | bias] (n_movies x dim+1), what backends cache for numpy scoring';
COMMENT ON COLUMN model.registry.validation_split IS
    'The ratings the model held out of training (its validation split), which evaluate() scores: n little-endian '
    'int32 user ids, then n int32 movie ids, then n float32 ratings, sorted by (user, movie); NULL: not recorded';
COMMENT ON COLUMN model.registry.item_item IS
    'The hybrid''s item-item weights, added to its ranking (movrec.item_item): n little-endian int32 movie ids, '
    'then n int32 neighbour ids, then n float32 weights, sorted by (movie, neighbour); NULL: none';
COMMENT ON COLUMN model.registry.default_embedding IS 'Mean user vector: the default latent attributes of a new user';

CREATE TABLE IF NOT EXISTS model.deployments (
    deployment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id      bigint REFERENCES model.registry (model_id),
    deployed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    deployed_by   text NOT NULL DEFAULT session_user,
    reason        text NOT NULL DEFAULT 'deploy'
);
COMMENT ON TABLE model.deployments IS
    'Deployment history; the latest row names the champion that serving uses (NULL model_id: retired, none)';

CREATE OR REPLACE VIEW model.champion AS
    SELECT d.model_id, r.kind, r.dim, r.metrics - 'history' AS metrics, d.deployed_at, d.deployment_id
    FROM (SELECT * FROM model.deployments ORDER BY deployment_id DESC LIMIT 1) d
    JOIN model.registry r USING (model_id);
COMMENT ON COLUMN model.registry.trained_by IS 'The session user who trained it (session_user)';
COMMENT ON COLUMN model.deployments.deployed_by IS 'The session user who deployed it (session_user)';

COMMENT ON VIEW model.champion IS
    'The model that recommend(), predict() and the rating trigger use; metrics without the per-epoch history, '
    'which model.registry.metrics keeps';

CREATE TABLE IF NOT EXISTS model.movie_latent_attributes (
    movie_id  integer PRIMARY KEY,
    embedding vector(100) NOT NULL,
    bias      real NOT NULL,
    model_id  bigint NOT NULL REFERENCES model.registry (model_id)
);
COMMENT ON TABLE model.movie_latent_attributes IS 'The champion''s movie vectors and biases, published at deploy';

CREATE TABLE IF NOT EXISTS model.user_latent_attributes (
    user_id     integer PRIMARY KEY,
    embedding   vector(100) NOT NULL,
    bias        real NOT NULL,
    model_id    bigint NOT NULL REFERENCES model.registry (model_id),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    n_updates   bigint NOT NULL DEFAULT 0,
    backup_ring integer
);
COMMENT ON TABLE model.user_latent_attributes IS
    'Live user vectors: written at deploy, moved by every rating (online update), default for new users';

-- A ring buffer per user: the n-th update of a user (user_latent_attributes.n_updates) writes
-- slot n mod movrec.backup_retention, so retention costs one upsert (a HOT update once the
-- ring is full) instead of an insert plus a delete per rating.
CREATE TABLE IF NOT EXISTS model.user_latent_attributes_backups (
    user_id     integer NOT NULL,
    slot        bigint NOT NULL,
    update_seq  bigint NOT NULL,
    embedding   vector(100) NOT NULL,
    bias        real NOT NULL,
    model_id    bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, slot)
);
COMMENT ON COLUMN model.user_latent_attributes.n_updates IS
    'Online updates of this user so far; the next archive is update n_updates + 1';
COMMENT ON COLUMN model.user_latent_attributes.backup_ring IS
    'movrec.backup_retention the user''s archive is laid out for (NULL: not yet); a change renumbers it once';
-- Every rating rewrites a user's row and a ring slot; free room on each page keeps those
-- updates HOT (no new index entries).  Applies to pages written from now on.
ALTER TABLE model.user_latent_attributes SET (fillfactor = 80);
ALTER TABLE model.user_latent_attributes_backups SET (fillfactor = 80);
COMMENT ON TABLE model.user_latent_attributes_backups IS
    'A user''s previous vectors, the value before each online update; the last movrec.backup_retention '
    'per user (ORDER BY update_seq)';
COMMENT ON COLUMN model.user_latent_attributes_backups.slot IS
    'update_seq mod movrec.backup_retention (update_seq itself when retention is 0: keep all)';
COMMENT ON COLUMN model.user_latent_attributes_backups.update_seq IS
    'Which of the user''s online updates replaced this vector (1 = the first)';

CREATE TABLE IF NOT EXISTS model.model_recommendation (
    user_id          integer NOT NULL,
    rank             smallint NOT NULL CONSTRAINT rank_is_1_to_150 CHECK (rank BETWEEN 1 AND 150),
    movie_id         integer NOT NULL,
    score            real NOT NULL,
    predicted_rating real NOT NULL,
    model_id         bigint NOT NULL,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, rank)
);
COMMENT ON TABLE model.model_recommendation IS 'Precomputed model recommendations, at most 150 per user';

CREATE TABLE IF NOT EXISTS model.user_recommendation (
    user_id     integer NOT NULL,
    rank        smallint NOT NULL CONSTRAINT rank_is_1_to_150 CHECK (rank BETWEEN 1 AND 150),
    movie_id    integer NOT NULL,
    score       real NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, rank)
);
COMMENT ON TABLE model.user_recommendation IS 'User-to-user Pearson CF recommendations, at most 150 per user';

COMMENT ON COLUMN model.registry.serving_ranking IS
    'float32 [ranking vector | prior] per movie (n_movies x dim+1), rows as serving_matrix; NULL: rank by predicted rating';
