-- Run inside one service database (psql, with `-v owner=... -v earlier=...`): what an
-- earlier setup's migrations created as `earlier` goes to the owner, so that the migrations,
-- now run as the owner, can alter it. Sequences of identity columns follow their tables.
SELECT format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, :'owner')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relowner = :'earlier'::regrole AND n.nspname = 'public'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
\gexec

SELECT format('ALTER SEQUENCE %I.%I OWNER TO %I', n.nspname, c.relname, :'owner')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relowner = :'earlier'::regrole AND n.nspname = 'public' AND c.relkind = 'S'
  AND NOT EXISTS (
    SELECT FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
  )
\gexec

SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, :'owner')
FROM pg_proc p
WHERE p.proowner = :'earlier'::regrole AND p.pronamespace = 'public'::regnamespace
\gexec

SELECT format('ALTER TYPE %I.%I OWNER TO %I', n.nspname, t.typname, :'owner')
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typowner = :'earlier'::regrole AND n.nspname = 'public' AND t.typtype IN ('e', 'd')
\gexec
