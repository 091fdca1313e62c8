#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432: starts the installed cluster when it is down,
# installs and starts PostgreSQL when it is missing. The service and tests connect as `postgres`
# without a password (the `trust` set-up of a development machine), or to $DATABASE_URL.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-5432}

ready() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }

if command -v pg_isready >/dev/null && ready; then
  exit 0
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
say "starting PostgreSQL $version"
as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 30); do
  ready && break
  sleep 1
done
ready || { echo "PostgreSQL does not answer on $HOST:$PORT; see /var/log/postgresql/" >&2; exit 1; }

# A fresh Debian cluster asks for a password over TCP; a development machine trusts local users.
if ! psql -h "$HOST" -p "$PORT" -U postgres -c 'select 1' >/dev/null 2>&1; then
  hba=/etc/postgresql/$version/main/pg_hba.conf
  say "trusting local connections in $hba (development machine)"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  sleep 1
  psql -h "$HOST" -p "$PORT" -U postgres -c 'select 1' >/dev/null
fi
