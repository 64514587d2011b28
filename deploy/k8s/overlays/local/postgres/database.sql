-- One service database (idempotent; psql, with `-v db=... -v owner=... -v runtime=...`):
-- owned by the owner role; besides the owner only the runtime role may connect, and no one
-- may create temporary tables in it.
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec

-- A database an earlier setup created for another role (`backbone`) is handed over.
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'owner')
FROM pg_database
WHERE datname = :'db' AND datdba <> :'owner'::regrole
\gexec

REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"runtime";
