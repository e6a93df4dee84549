-- Keel's run-time Postgres roles: each process gets the rights its own SQL needs, no more.
--
-- The schema's owner runs the migrations (`command-api migrate`, or
-- `KEEL_MIGRATE_DATABASE_URL`); the three processes connect (`DATABASE_URL`) as:
--   :api         command-api: appends to the log, keeps idempotency records, the outbox
--                checkpoint and the publisher's lease, reads the log and the read models;
--   :projectors  projectors: read the log, own the read models (`rm_*`, rebuilt as fresh
--                copies swapped in);
--   :relay       relay: reads the log, takes partition leases.
-- No role may UPDATE, DELETE or TRUNCATE `events`, and only :api may INSERT into it.
--
-- The roles must exist (create them with their passwords as you keep secrets). Run this
-- as a superuser, connected to Keel's database, after every migration (it is idempotent):
--
--   psql "$SUPERUSER_URL_TO_KEEL_DATABASE" -v ON_ERROR_STOP=1 \
--     -v api=keel_api -v projectors=keel_projectors -v relay=keel_relay \
--     -f scripts/postgres-roles.sql

-- Everyone: connect, resolve names in `public`, and see that the schema is up to date (a
-- process whose schema is current starts without trying to migrate).
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I',
              current_database(), :'api', :'projectors', :'relay') \gexec
-- Postgres before 15 lets every role create tables in `public`: none of these may.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"api", :"projectors", :"relay";
GRANT SELECT ON _sqlx_migrations TO :"api", :"projectors", :"relay";

-- The log: everyone reads it (the projectors and the rebuild replay it, the relay reads
-- actors' names, the API its streams, policy events and admin reads); only the API appends
-- (its INSERT's trigger takes the append lock and notifies the publisher).
GRANT SELECT ON events TO :"api", :"projectors", :"relay";
GRANT INSERT ON events TO :"api";

-- command-api: idempotency records (written with the events, replayed, purged after 24
-- hours) and the outbox publisher's checkpoint (advanced, rewound, republish requests
-- taken with SELECT ... FOR UPDATE).
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO :"api";
GRANT SELECT, UPDATE ON outbox_checkpoint TO :"api";

-- projectors and the relay: partition ownership (`events::lease`), taken, renewed and
-- released by the instances themselves.
GRANT SELECT, INSERT, UPDATE, DELETE ON consumer_members, partition_leases
  TO :"projectors", :"relay";

-- projectors: own the read models. A rebuild creates `rm_<name>_next` (CREATE on the
-- database), then drops the live schema and renames the copy into its place (owner).
SELECT format('GRANT CREATE ON DATABASE %I TO %I', current_database(), :'projectors') \gexec
SELECT format('ALTER SCHEMA %I OWNER TO %I', nspname, :'projectors')
FROM pg_namespace WHERE nspname ~ '^rm_' \gexec
SELECT format('ALTER TABLE %I.%I OWNER TO %I', schemaname, tablename, :'projectors')
FROM pg_tables WHERE schemaname ~ '^rm_' \gexec
-- The owner stays able to change the read models in later migrations.
SELECT format('GRANT %I TO %I', :'projectors', tableowner)
FROM pg_tables
WHERE schemaname = 'public' AND tablename = 'events' AND tableowner <> :'projectors' \gexec

-- command-api reads the read models (queries, `X-Min-Position` waits on their checkpoints
-- and versions, snapshots that LOCK them IN ACCESS SHARE MODE): those there are now, and
-- the copies every rebuild creates.
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', nspname, :'api')
FROM pg_namespace WHERE nspname ~ '^rm_' \gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', nspname, :'api')
FROM pg_namespace WHERE nspname ~ '^rm_' \gexec
ALTER DEFAULT PRIVILEGES FOR ROLE :"projectors" GRANT USAGE ON SCHEMAS TO :"api";
ALTER DEFAULT PRIVILEGES FOR ROLE :"projectors" GRANT SELECT ON TABLES TO :"api";
