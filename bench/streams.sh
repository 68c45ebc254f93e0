#!/usr/bin/env bash
# Resident memory per open stream on one agent.
#
#   bash bench/streams.sh [ROUNDS] [SIZES]      (defaults: 3 "1 1000 10000")
#
# One agent process (release build, pinned to core 0) runs N closed-loop
# users against llm-sim (pinned to core 1) configured so that every answer
# is long-lived: no prefill time, one token a second, 60 tokens, a batch
# that admits every request. Once the simulator has all N requests
# running, and so the agent N streams open, the agent's VmRSS is read.
# Per stream = (RSS with N open - RSS with 1 open) / (N - 1), median over
# the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
sizes="${2:-1 1000 10000}"

# Each stream is a socket at both ends.
ulimit -n "$(ulimit -Hn)"

if [ -z "${STREAMS_NO_BUILD:-}" ]; then
  cargo build --release --locked -p stampede-controller --bin controller -p stampede-agent --bin agent \
    -p stampede-sim --bin llm-sim
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
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

# One run of $1 users; prints the agent's VmRSS in KiB with every stream open.
round() {
  local n="$1" sim_port port
  sim_port="$(free_port)"
  taskset -c 1 "$target/llm-sim" --port "$sim_port" --max-batch 20000 --prefill-base 0s --prefill-per-token 0s \
    --decode-step 1s --decode-step-per-seq 0s >"$work/sim.out" 2>"$work/sim.err" &
  local sim=$!
  pids+=("$sim")
  cat >"$work/streams.toml" <<TOML
name = "streams"
[target]
url = "http://127.0.0.1:$sim_port"
model = "llm-sim"
timeout = "300s"
[load]
users = $n
duration = "40s"
drain = "1s"
[request]
max_tokens = 60
stream = true
[prompts]
builtin = "short"
[thresholds]
max_error_rate = 1.0
TOML
  port="$(free_port)"
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$sim_port/metrics" >/dev/null && break
    sleep 0.1
  done
  taskset -c 1 "$target/controller" run "$work/streams.toml" --listen "127.0.0.1:$port" --expect-agents 1 \
    --out "$work/out" >"$work/controller.out" 2>"$work/controller.err" &
  local ctl=$!
  pids+=("$ctl")
  taskset -c 0 "$target/agent" --controller "http://127.0.0.1:$port" --name streams \
    >"$work/agent.out" 2>"$work/agent.err" &
  local agent=$!
  pids+=("$agent")
  local running=0
  for _ in $(seq 600); do
    running="$(curl -sf "http://127.0.0.1:$sim_port/metrics" | awk '$1=="llmsim_running_sequences" {print int($2)}')"
    [ "${running:-0}" -ge "$n" ] && break
    sleep 0.1
  done
  if [ "${running:-0}" -lt "$n" ]; then
    echo "only ${running:-0} of $n streams opened" >&2
    tail -5 "$work/agent.err" "$work/controller.err" >&2
    exit 1
  fi
  # Every stream has had its first token and some more.
  sleep 3
  awk '$1=="VmRSS:" {print $2}' "/proc/$agent/status"
  kill "$ctl" "$agent" "$sim" 2>/dev/null || true
  wait "$ctl" "$agent" "$sim" 2>/dev/null || true
}

declare -A rss
for n in $sizes; do
  : >"$work/rss-$n"
  for _ in $(seq "$rounds"); do
    round "$n" >>"$work/rss-$n"
  done
  rss[$n]="$(median <"$work/rss-$n")"
  printf '%6s streams open: agent RSS %s KiB (median of %s: %s)\n' "$n" "${rss[$n]}" "$rounds" "$(tr '\n' ' ' <"$work/rss-$n")"
done
base="$(echo "$sizes" | awk '{print $1}')"
for n in $sizes; do
  [ "$n" = "$base" ] && continue
  awk -v a="${rss[$n]}" -v b="${rss[$base]}" -v n="$n" -v m="$base" \
    'BEGIN {printf "%6s streams: %.1f KiB per open stream ((RSS at %s - RSS at %s) / %s)\n", n, (a-b)/(n-m), n, m, n-m}'
done
