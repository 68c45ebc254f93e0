#!/usr/bin/env bash
# One controller against 100 and 1,000 simulated agents reporting every
# second: the controller's CPU and memory, and the start barrier's skew.
#
#   bash bench/fleet.sh [ROUNDS] [SIZES]        (defaults: 3 "100 1000")
#
# The controller (`controller run bench/fleet.toml --listen ...
# --expect-agents N`, release build) runs pinned to core 0; the fleet tool
# (tests/bin/fleet.rs) plays the N agents from one process pinned to core 1:
# each joins over its own gRPC connection, probes the clock, answers the
# barrier, sends one report a second for 30 s (HDR histograms of ~640 ITL
# and 5 TTFT/E2E samples drawn from log-normal distributions, error
# classes, error samples, exemplars, a presence map) and its totals.
#
# Per round it prints:
#   cpu%        the controller's utime+stime (/proc/PID/stat, its own and
#               its reaped children's) over the steady reporting phase
#               (from 5 s to 25 s after the start), as % of one core;
#   rss         the controller's resident memory at the end of that window
#               (VmRSS) and its peak (VmHWM), MiB;
#   begin late  each agent's begin against the start instant the barrier
#               named, p50 / max, and the spread between the first and
#               the last agent (the start skew), ms; the controller's own
#               start_skew from summary.json alongside.
# and the median of each figure over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
sizes="${2:-100 1000}"

# 1,000 agents hold 1,000 connections on each side.
ulimit -n "$(ulimit -Hn)"

if [ -z "${FLEET_NO_BUILD:-}" ]; then
  cargo build --release --locked -p stampede-controller --bin controller -p stampede-tests --bin fleet
fi
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
hz="$(getconf CLK_TCK)"
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# One round with $1 agents; appends "cpu rss hwm begin_p50 begin_max spread ctl_spread" to $2.
round() {
  local n="$1" into="$2" port out profile
  port="$(free_port)"
  out="$work/out-$n"
  rm -rf "$out"
  profile="$work/fleet-$n.toml"
  sed "s/^users = .*/users = $((n * 10))/" bench/fleet.toml >"$profile"
  taskset -c 0 "$target/controller" run "$profile" --listen "127.0.0.1:$port" --expect-agents "$n" \
    --wait 300s --out "$out" >"$work/controller.out" 2>"$work/controller.err" &
  local ctl=$!
  pids+=("$ctl")
  sleep 0.5
  taskset -c 1 "$target/fleet" --controller "http://127.0.0.1:$port" --agents "$n" \
    >"$work/fleet.json" 2>"$work/fleet.err" &
  local fleet=$!
  pids+=("$fleet")
  for _ in $(seq 3000); do
    grep -q "agents started" "$work/fleet.err" 2>/dev/null && break
    kill -0 "$fleet" 2>/dev/null || break
    sleep 0.1
  done
  sleep 5
  local t0 c0 t1 c1
  t0="$(date +%s.%N)"
  c0="$(ticks "$ctl")"
  sleep 20
  t1="$(date +%s.%N)"
  c1="$(ticks "$ctl")"
  local rss hwm
  rss="$(status_kib "$ctl" VmRSS)"
  hwm="$(status_kib "$ctl" VmHWM)"
  wait "$fleet" || { echo "the fleet failed:" >&2; cat "$work/fleet.json" "$work/fleet.err" >&2; exit 1; }
  wait "$ctl" || true
  local summary
  summary="$(ls "$out"/*/summary.json)"
  # A controller that cannot keep up closes the run before it has taken
  # in every report: say so, the figures above are then a floor.
  local sent took
  sent="$(jq .ok "$work/fleet.json")"
  took="$(jq .requests.ok "$summary")"
  if [ "$sent" != "$took" ]; then
    echo "  note: the controller took in $took of the $sent requests the fleet reported (it fell behind)" >&2
  fi
  local line
  line="$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v rss="$rss" -v hwm="$hwm" \
    -v bp50="$(jq .barrier.begin_late_us.p50 "$work/fleet.json")" \
    -v bmax="$(jq .barrier.begin_late_us.max "$work/fleet.json")" \
    -v spread="$(jq .barrier.begin_spread_us "$work/fleet.json")" \
    -v cspread="$(jq .start_skew.spread_ms "$summary")" \
    'BEGIN {printf "%.2f %.1f %.1f %.2f %.2f %.2f %.2f\n", (c1-c0)/hz/(t1-t0)*100, rss/1024, hwm/1024, bp50/1000, bmax/1000, spread/1000, cspread}')"
  echo "$line" >>"$into"
  set -- $line
  printf '%6s agents  cpu %6s%% of a core  rss %7s MiB (peak %7s)  begin late p50 %6s ms max %6s ms  spread %6s ms (controller: %s ms)\n' \
    "$n" "$1" "$2" "$3" "$4" "$5" "$6" "$7"
}

for n in $sizes; do
  rows="$work/rows-$n"
  : >"$rows"
  for r in $(seq "$rounds"); do
    round "$n" "$rows"
  done
  med() { awk -v c="$1" '{print $c}' "$rows" | median; }
  printf '%6s agents  MEDIAN of %s: cpu %s%% of a core, rss %s MiB (peak %s), begin late p50 %s ms max %s ms, start skew %s ms (controller: %s ms)\n' \
    "$n" "$rounds" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)" "$(med 6)" "$(med 7)"
done
