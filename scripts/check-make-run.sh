#!/usr/bin/env bash
# Proves `make run` as a newcomer uses it: started as a terminal starts a command (its own session
# and process group, make in front), it gets ready and demo traffic comes out of the service;
# Ctrl-C (SIGINT to the whole process group) then stops every process it started, within a bound,
# and frees its ports. So do SIGTERM to the process group, SIGTERM to make alone (what a
# supervisor or a CI timeout sends) and SIGHUP to the process group (the terminal closed).
#
# Free ports and a throwaway database (er_test_run_*) for each run, so that it runs next to a
# `make run` of your own; run-local.sh's logs go to a scratch folder (RUN_DIR).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work="$(mktemp -d "${TMPDIR:-/tmp}/event-router-make-run.XXXXXX")"
# How long the service, broker and demo may take to be ready and show traffic once make run
# starts the broker, and how long everything may take to stop once signalled.
READY_WITHIN=${READY_WITHIN:-90}
STOP_WITHIN=${STOP_WITHIN:-30}

make_pid=
processes=
databases=()
log=/dev/null
run_dir=$work
cleanup() {
  # Whatever a failed case left running: its process group (make, run-local.sh) and the rest of
  # the tree (the broker, service and demo run in sessions of their own, and outlive their parent
  # when run-local.sh dies without stopping them).
  if [ -n "$make_pid" ]; then
    kill -KILL -- "-$make_pid" 2>/dev/null || true
    processes+=$'\n'"$(tree "$make_pid")"
  fi
  while read -r pid start _; do
    if [ -n "$pid" ] && alive "$pid" "$start"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done <<<"$processes"
  for database in "${databases[@]}"; do
    psql "$admin_url" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

exec 4>&2 # the real standard error, for failures reported where stderr is silenced
fail() {
  {
    echo "check-make-run: $*"
    echo "--- make run's output (last 40 lines) ---"
    tail -n 40 "$log" || true
    for file in "$run_dir"/*.log; do
      [ -e "$file" ] && { echo "--- $file (last 20 lines) ---"; tail -n 20 "$file"; }
    done
  } >&4
  exit 1
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# "pid starttime command" of process $1 and every descendant (start time in clock ticks since
# boot, so that a reused pid is not mistaken for the process).
tree() {
  local pids
  pids="$(ps -e -o pid=,ppid= | awk -v root="$1" '
    { children[$2] = children[$2] " " $1 }
    END {
      queue[0] = root; n = 1
      for (i = 0; i < n; i++) {
        print queue[i]
        count = split(children[queue[i]], kids, " ")
        for (k = 1; k <= count; k++) queue[n++] = kids[k]
      }
    }')"
  for pid in $pids; do
    local stat
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    printf '%s %s %s\n' "$pid" "$(cut -d' ' -f20 <<<"${stat##*) }")" \
      "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
  done
}

# Whether process "pid starttime" still runs (a zombie has exited: only its parent's wait is due).
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "$(cut -d' ' -f20 <<<"$stat")" = "$2" ] && [ "$(cut -d' ' -f1 <<<"$stat")" != Z ]
}

# Microseconds since the epoch; since() prints the seconds since such a time, to a tenth.
now() { echo "${EPOCHREALTIME/./}"; }
since() { local us=$(($(now) - $1)); printf '%d.%ds' $((us / 1000000)) $((us / 100000 % 10)); }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

count_rows() { psql "${admin_url%/*}/$database" -Atq -c "select count(*) from $1" 2>/dev/null || echo 0; }

# Starts make run, waits for traffic, sends $1 to $2 ("group" or "make"), checks that all is gone.
run_case() {
  local signal=$1 whom=$2
  local case="$signal-$whom"
  database=er_test_run_$$_${signal,,}_$whom
  databases+=("$database")
  log="$work/$case.log"
  run_dir="$work/run-$case"
  local broker_port metrics_port api_port
  broker_port=$(free_port)
  metrics_port=$(free_port)
  api_port=$(free_port)
  ports=("$broker_port" "$metrics_port" "$api_port")
  [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq 3 ] || fail "free_port gave the same port twice"

  RUN_DIR="$run_dir" KAFKA_BROKERS="127.0.0.1:$broker_port" METRICS_ADDR="127.0.0.1:$metrics_port" \
    API_ADDR="127.0.0.1:$api_port" DATABASE_URL="${admin_url%/*}/$database" DEMO_ARGS="--rate 10" \
    env --default-signal -u MAKEFLAGS -u MFLAGS -u MAKELEVEL setsid make --no-print-directory run >"$log" 2>&1 </dev/null &
  make_pid=$!
  # setsid runs make in place (this script's background job leads no group), so make leads the
  # new session and process group, as a shell with job control would have it. A background job
  # of a script starts with SIGINT ignored, and a shell cannot trap a signal ignored on entry:
  # env resets every signal to its default, as a terminal's foreground job has them, and drops
  # what an enclosing make (make test) would pass on.
  [ "$(ps -o pgid= -p "$make_pid" | tr -d ' ')" = "$make_pid" ] || fail "make does not lead its process group"
  local ignored
  ignored=$((16#$(awk '/^SigIgn:/ { print $2 }' "/proc/$make_pid/status")))
  ((!(ignored & (1 << 1)) && !(ignored & (1 << 14)))) || fail "make ignores SIGINT or SIGTERM"

  # The build (cargo may wait for another build's lock) is not what is checked: time from the broker.
  local deadline=$((SECONDS + 1800))
  until grep -q 'starting the embedded broker' "$log" 2>/dev/null; do
    kill -0 "$make_pid" 2>/dev/null || fail "make run ended before starting the broker"
    ((SECONDS < deadline)) || fail "make run did not get past its build within 30 minutes"
    sleep 0.5
  done
  local started
  started=$(now)
  deadline=$((SECONDS + READY_WITHIN))
  until curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; do
    kill -0 "$make_pid" 2>/dev/null || fail "make run ended before the service was ready"
    ((SECONDS < deadline)) || fail "the service was not ready within $READY_WITHIN s"
    sleep 0.2
  done
  local ready
  ready=$(since "$started")
  # Demo traffic end to end: the demo saw routed messages on the stream and rejections in the
  # dead-letter topic, and the service recorded both in the database.
  until grep -q '^← stream ' "$log" && grep -q '^← dlq ' "$log" &&
    (($(count_rows inbox_entries) > 0 && $(count_rows dead_letters) > 0)); do
    kill -0 "$make_pid" 2>/dev/null || fail "make run ended before demo traffic came through"
    ((SECONDS < deadline)) || fail "no demo traffic came through within $READY_WITHIN s"
    sleep 0.5
  done
  local through
  through=$(since "$started")
  local streamed rejected handled dead
  streamed=$(grep -c '^← stream ' "$log")
  rejected=$(grep -c '^← dlq ' "$log")
  handled=$(count_rows inbox_entries)
  dead=$(count_rows dead_letters)

  processes="$(tree "$make_pid")"
  for expected in 'make --no-print-directory run' 'scripts/run-local.sh' 'event-router dev-broker' 'event-router run' 'event-router demo'; do
    grep -qF -- "$expected" <<<"$processes" || fail "no process '$expected' under make: $processes"
  done

  local signalled left stopped status=0
  signalled=$(now)
  # stderr silenced: this shell would report make's death by SIGHUP as a job notice.
  {
    if [ "$whom" = group ]; then kill -s "$signal" -- "-$make_pid"; else kill -s "$signal" "$make_pid"; fi
    deadline=$((SECONDS + STOP_WITHIN))
    while :; do
      left="$(while read -r pid start command; do if alive "$pid" "$start"; then echo "$pid $command"; fi; done <<<"$processes")"
      [ -z "$left" ] && break
      ((SECONDS < deadline)) || fail "$STOP_WITHIN s after SIG$signal to $whom, still running:
$left"
      sleep 0.2
    done
    stopped=$(since "$signalled")
    wait "$make_pid" || status=$?
  } 2>/dev/null
  make_pid=
  for port in "${ports[@]}"; do
    listening "$port" && fail "port $port still taken after SIG$signal to $whom"
  done
  summary+=("SIG$signal to $whom: ready in $ready, traffic through in $through ($streamed streamed, \
$rejected dead-lettered; $handled+$dead rows), $(wc -l <<<"$processes") processes gone in $stopped, ${#ports[@]} ports free (make exit $status)")
}

say "building event-router (as make run does; cargo may wait for another build)"
cargo build --quiet --bin event-router

summary=()
# Signal and to whom, e.g. CHECK_MAKE_RUN_CASES="TERM:make" to check one.
for case in ${CHECK_MAKE_RUN_CASES:-INT:group TERM:group TERM:make HUP:group}; do
  say "make run, then SIG${case/:/ to }"
  run_case "${case%:*}" "${case#*:}"
  processes=
done
summary_line="$(printf '%s; ' "${summary[@]}")"
echo "check-make-run: ok: ${summary_line%; }"
