#!/usr/bin/env bash
# Drops the per-test databases (`er_test_*`) that interrupted test runs leave behind.
set -euo pipefail
URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
psql "$URL" -Atq -c "select datname from pg_database where datname like 'er\_test\_%'" |
  while read -r name; do psql "$URL" -q -c "drop database if exists \"$name\" with (force)"; done
