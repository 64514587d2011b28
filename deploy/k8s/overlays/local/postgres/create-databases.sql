-- The roles and the three service databases of deploy/local/postgres (roles.sql and
-- database.sql, placed beside this file in backbone/, a directory the image's init skips):
-- per service an owner, which owns the database and runs the migrations, and a runtime role,
-- the only other role that may connect to it. Run once by the postgres image (with psql -f,
-- hence \ir) on an empty data directory, as POSTGRES_USER; `admin` is left empty, so the
-- memberships roles.sql gives go to that superuser. The passwords are the published
-- `<role>_dev` ones: the services accept them with BACKBONE_ENV=dev only.
\set admin ''
\ir backbone/roles.sql

\set db orders
\set owner orders_owner
\set runtime order_service
\ir backbone/database.sql

\set db notifier
\set owner notifier_owner
\set runtime notifier_service
\ir backbone/database.sql

\set db audit
\set owner audit_owner
\set runtime audit_service
\ir backbone/database.sql
