-- Each service owns one database on the shared cluster (see DESIGN.md); the role is
-- POSTGRES_USER, which owns them. Run once, by the postgres image, on an empty data directory.
CREATE DATABASE orders;
CREATE DATABASE notifier;
CREATE DATABASE audit;
