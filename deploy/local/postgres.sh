#!/usr/bin/env bash
# A real PostgreSQL from Debian's packages, with the databases of the three services.
#
#   deploy/local/postgres.sh start|stop|status
#
# Installs the `postgresql` package if missing, creates and starts a cluster, and creates
# the databases `orders`, `notifier` and `audit`, each owned by its owner role (which runs
# the migrations) and open only to it and the service's runtime role (see postgres/*.sql),
# plus the role `backbone` (CREATEDB, member of the owners) that creates the test databases.
# The cluster loads pg_stat_statements (its view is in the `postgres` database).
# Passwords are for local development only. Idempotent; a cluster set up by the earlier
# version of this script (everything owned by `backbone`) is converted.
# Settings (environment):
#   PG_PORT    cluster port (default 5432)
#   <SERVICE>_DATABASE_URL / <SERVICE>_MIGRATION_DATABASE_URL (ORDER_, NOTIFIER_, AUDIT_)
#              when any is set, that database is external and nothing is started
set -euo pipefail

port="${PG_PORT:-5432}"
# A cluster on another port (a test's own, which it may restart) gets a name of its own.
cluster_name="backbone"
[[ "$port" == 5432 ]] || cluster_name="backbone$port"
sql="$(dirname "${BASH_SOURCE[0]}")/postgres"
# database owner runtime-role
services=(
  "orders orders_owner order_service"
  "notifier notifier_owner notifier_service"
  "audit audit_owner audit_service"
)

log() { echo "postgres: $*" >&2; }

as_postgres() { runuser -u postgres -- "$@"; }

psql_admin() { as_postgres psql -p "$port" -v ON_ERROR_STOP=1 -qAtX "$@"; }

install() {
  if command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    return
  fi
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql postgresql-contrib
}

pg_version() { ls /usr/lib/postgresql | sort -n | tail -1; }

# The cluster serving $port: an existing one (Debian's default `main`) or our own.
cluster_on_port() {
  pg_lsclusters -h | awk -v p="$port" '$3 == p { print $1 " " $2; exit }'
}

start() {
  local configured=""
  for service in ORDER NOTIFIER AUDIT; do
    for setting in DATABASE_URL MIGRATION_DATABASE_URL; do
      local name="${service}_${setting}"
      configured+="${!name:-}"
    done
  done
  if [[ -n "$configured" ]]; then
    log "database URLs are set: using them, starting nothing"
    return
  fi
  install
  local cluster
  cluster="$(cluster_on_port)"
  if [[ -z "$cluster" ]]; then
    log "creating cluster $(pg_version)/$cluster_name on port $port"
    pg_createcluster -p "$port" "$(pg_version)" "$cluster_name" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    cluster="$(pg_version) $cluster_name"
  fi
  read -r version name <<<"$cluster"
  local reload=""
  set_if_other() {
    if [[ "$(pg_conftool -s "$version" "$name" show "$1" 2>/dev/null)" != "$2" ]]; then
      pg_conftool "$version" "$name" set "$1" "$2"
      reload=1
    fi
  }
  # Clients reach this cluster over loopback only: TLS there protects nothing and cost about a
  # tenth of the services' CPU (asyncpg asks for it whenever the server offers it).
  set_if_other ssl off
  # Until checkpoints have recycled enough WAL segments, a busy server creates a new one every
  # few seconds, and zero-filling its 16 MB held every commit of the cluster for 70-135 ms on
  # this machine. Off, PostgreSQL writes only the segment's last byte and ext4 allocates the
  # rest as WAL is written: under the same load no commit then took over 40 ms.
  set_if_other wal_init_zero off
  if [[ -n "$reload" ]]; then
    pg_ctlcluster "$version" "$name" reload 2>/dev/null || true
  fi
  # pg_stat_statements counts each statement's calls, time and WAL: `make bench` reads them
  # per load step, and a developer can too. A library is loaded at start only.
  local preload restart=""
  preload="$(pg_conftool -s "$version" "$name" show shared_preload_libraries 2>/dev/null || true)"
  preload="${preload//[\' ]/}"
  if [[ ",$preload," != *,pg_stat_statements,* ]]; then
    pg_conftool "$version" "$name" set shared_preload_libraries "${preload:+$preload,}pg_stat_statements"
    restart=1
  fi
  if ! pg_lsclusters -h | awk -v p="$port" '$3 == p && $4 == "online" { found=1 } END { exit !found }'; then
    log "starting cluster $version/$name"
    pg_ctlcluster "$version" "$name" start
  elif [[ -n "$restart" ]]; then
    log "restarting cluster $version/$name to load pg_stat_statements"
    pg_ctlcluster "$version" "$name" restart
  fi
  for _ in $(seq 1 120); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
  pg_isready -q -h 127.0.0.1 -p "$port" || { log "not accepting connections on port $port"; exit 1; }
  if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'backbone'")" != "1" ]]; then
    psql_admin -c "CREATE ROLE backbone LOGIN CREATEDB PASSWORD 'backbone'"
  fi
  psql_admin -v admin=backbone <"$sql/roles.sql"
  if [[ "$(psql_admin -d postgres -c "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")" != "1" ]]; then
    psql_admin -d postgres -c "CREATE EXTENSION pg_stat_statements"
  fi
  local databases=()
  for entry in "${services[@]}"; do
    read -r db owner runtime <<<"$entry"
    psql_admin -v db="$db" -v owner="$owner" -v runtime="$runtime" <"$sql/database.sql"
    psql_admin -d "$db" -v owner="$owner" -v earlier=backbone <"$sql/adopt.sql"
    databases+=("$db")
  done
  log "ready on 127.0.0.1:$port (databases: ${databases[*]})"
}

stop() {
  local cluster
  cluster="$(cluster_on_port)"
  [[ -n "$cluster" ]] || { log "no cluster on port $port"; return; }
  read -r version name <<<"$cluster"
  pg_ctlcluster "$version" "$name" stop || true
}

status() { pg_isready -h 127.0.0.1 -p "$port"; }

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
