#!/usr/bin/env bash
# Enables pg_stat_statements on the local PostgreSQL cluster, so that `make bench` can report
# PostgreSQL's statement time per message (without it the report says "not available").
#
# This CHANGES THE LOCAL CLUSTER: it adds pg_stat_statements to shared_preload_libraries with
# ALTER SYSTEM (written to postgresql.auto.conf, kept across restarts) and restarts the cluster
# with pg_ctlcluster, which ends every open connection (tests running against it fail). Meant
# for a development machine. The extension itself is created by the benchmark in its own
# database, which it drops afterwards. `--off` takes the library out of the list again (and
# restarts). Nothing else in the cluster's configuration is touched.
#
#   scripts/bench-enable-pg-stat-statements.sh        # enable (no restart if already loaded)
#   scripts/bench-enable-pg-stat-statements.sh --off  # disable
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

mode=on
case ${1:-} in
  "") ;;
  --off) mode=off ;;
  *) echo "usage: $0 [--off]" >&2; exit 2 ;;
esac

scripts/ensure-postgres.sh
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-5432}
sql() { psql -h "$HOST" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 -c "$1"; }

# The list in force now, without spaces, and the list wanted.
current=$(sql 'SHOW shared_preload_libraries' | tr -d ' ')
others=$(tr ',' '\n' <<<"$current" | grep -vx 'pg_stat_statements' | grep -v '^$' | paste -sd, || true)
if [ "$mode" = on ]; then
  wanted=${others:+$others,}pg_stat_statements
else
  wanted=$others
fi
if [ "$current" = "$wanted" ]; then
  say "shared_preload_libraries is already '$current'; nothing to do"
  exit 0
fi

say "shared_preload_libraries: '$current' -> '$wanted' (ALTER SYSTEM, then a restart of the cluster)"
if [ -n "$wanted" ]; then
  sql "ALTER SYSTEM SET shared_preload_libraries = '$wanted'"
else
  sql 'ALTER SYSTEM RESET shared_preload_libraries'
fi

# cluster_name is "<version>/<name>" on Debian; pg_ctlcluster takes them as two arguments.
cluster=$(sql 'SHOW cluster_name')
if [[ $cluster != */* ]]; then
  cluster="$(ls /etc/postgresql | sort -V | tail -n 1)/main"
fi
as_root pg_ctlcluster --skip-systemctl-redirect "${cluster%%/*}" "${cluster#*/}" restart
for _ in $(seq 1 30); do
  pg_isready -q -h "$HOST" -p "$PORT" && break
  sleep 1
done
now=$(sql 'SHOW shared_preload_libraries' | tr -d ' ')
say "shared_preload_libraries is now '$now'"
if [ "$now" != "$wanted" ]; then
  echo "expected '$wanted': postgresql.conf or a later setting overrides ALTER SYSTEM" >&2
  exit 1
fi
