#!/usr/bin/env bash
# Tools the tests call besides cargo: promtool (Debian package `prometheus`) checks the metrics
# output and the alert rules; rsyslog receives the syslog writer's messages; tansu is the
# second Kafka implementation.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if ! command -v promtool >/dev/null && command -v dpkg-query >/dev/null; then
  say "installing promtool (Debian package prometheus, without its recommends)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null || { echo "promtool is required by the tests: install Prometheus' promtool" >&2; exit 1; }

# rsyslog (Debian) is the syslog receiver the syslog writer's tests send to; its daemon is not
# started here, the tests run their own on loopback ports.
if ! command -v rsyslogd >/dev/null && ! [ -x /usr/sbin/rsyslogd ] && command -v dpkg-query >/dev/null; then
  say "installing rsyslog (Debian package, for the syslog writer's tests)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsyslog >/dev/null
fi
{ command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ]; } || { echo "rsyslogd is required by the tests: install rsyslog" >&2; exit 1; }

# tansu 0.6.0, the second broker implementation the happy path and group scaling also run
# against. Most of a fresh machine's `make test` was compiling it; the tests send a few hundred
# messages through it, so it is built without optimisation: 6.1 min here against ~9 at
# opt-level 1, and its two tests took 12.0 s against 10.0 s.
if ! tansu --version 2>/dev/null | grep -q '^tansu 0\.6\.0$'; then
  say "installing tansu 0.6.0 (cargo install, unoptimised; several minutes the first time)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install tansu --version 0.6.0 --locked --features dynostore --quiet
fi
