-- The roles of the three service databases (idempotent; psql, with `-v admin=<role>`, or
-- `-v admin=` for the role running it).
--
-- Per service: an owner (owns the database, runs the migrations) and a runtime role (what
-- the service connects as; its table privileges come from that service's migrations).
-- Neither may create databases or roles. The passwords are `<role>_dev` and are for local
-- development and tests only: outside BACKBONE_ENV=dev the services refuse them.
-- `admin` creates and drops the test databases, so it becomes a member of the owners (to
-- create a database owned by one), of pg_signal_backend (DROP DATABASE ... WITH (FORCE)
-- ends the sessions of the runtime roles too) and of pg_read_all_stats (the benchmark reads
-- the runtime roles' statements in pg_stat_statements).
SELECT format('CREATE ROLE %I LOGIN NOCREATEDB NOCREATEROLE PASSWORD %L', name, name || '_dev')
FROM unnest(ARRAY[
    'orders_owner', 'order_service',
    'notifier_owner', 'notifier_service',
    'audit_owner', 'audit_service'
]) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name)
\gexec

SELECT format('GRANT %I TO %I', granted, admin)
FROM unnest(ARRAY[
    'orders_owner', 'notifier_owner', 'audit_owner', 'pg_signal_backend', 'pg_read_all_stats'
]) AS granted,
     coalesce(nullif(:'admin', ''), current_user) AS admin
WHERE NOT pg_has_role(admin, granted, 'MEMBER')
\gexec
