#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: uv, Java 17 and Maven (for the
# Kafka broker), the PostgreSQL client; then the Python workspace from the lock file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ ! -f /tmp/.backbone-apt-updated ]]; then apt-get update -q && touch /tmp/.backbone-apt-updated; fi
  apt-get install -y -q "$@"
}

command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
command -v psql >/dev/null || apt_install postgresql-client
if ! command -v uv >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
UV_PYTHON_DOWNLOADS=never uv sync --frozen --quiet
