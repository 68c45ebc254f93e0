#!/usr/bin/env bash
# Throughput at 50 users with every request traced against tracing off.
#
#   bash bench/tracing-overhead.sh [ROUNDS] [DURATION]
#   BENCH_ONLY=cpu-bound bash bench/tracing-overhead.sh   (one server only)
#
# Runs load-profiles/high.toml (50 users over 3 agents) against a separate
# llm-sim twice per round, alternating tracing off and on (sample ratio 1,
# OTLP/gRPC to a real collector: rotel, exporting nowhere), so that drift
# on a busy machine falls on both alike. Three servers:
#   server-bound  high.toml's simulator (16 batch slots, 20 ms decode
#                 steps): the server limits throughput, as on a GPU box;
#   fast          64 slots, 1 ms steps: a request every ~130 ms per user,
#                 hundreds of spans a second;
#   cpu-bound     64 slots, no prefill, 1 us decode steps: the machine's CPU
#                 (agents and server) limits throughput, so any cost of
#                 tracing shows in full.
# Prints requests/s of each run and the traced/untraced ratio per server.
# Needs rotel (`.ci/run` installs it; or set STAMPEDE_ROTEL).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-2}"
duration="${2:-20s}"

rotel="${STAMPEDE_ROTEL:-$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/stampede/rotel-*/venv/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -n 1)}"
if [ -z "$rotel" ] || [ ! -x "$rotel" ]; then
  echo "rotel not found: run .ci/run once, or set STAMPEDE_ROTEL" >&2
  exit 1
fi

cargo build --release --locked --bin controller --bin llm-sim
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

grpc_port="$(free_port)"
"$rotel" start --otlp-grpc-endpoint "127.0.0.1:$grpc_port" \
  --otlp-http-endpoint "127.0.0.1:$(free_port)" --exporter blackhole \
  --pid-file "$work/rotel.pid" >"$work/rotel.log" 2>&1 &
pids+=($!)

start_sim() {
  ./target/release/llm-sim --port 0 "$@" >"$work/sim.out" 2>"$work/sim.err" &
  pids+=($!)
  for _ in $(seq 100); do
    url="$(grep -o 'http://[0-9.:]*' "$work/sim.out" 2>/dev/null | head -n 1 || true)"
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "llm-sim did not start" >&2
  exit 1
}

# One run; prints its requests/s.
run() {
  local label="$1" url="$2"
  local out="$work/results-$label"
  if [ "$label" = traced ]; then
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$grpc_port" \
      ./target/release/controller run load-profiles/high.toml --target "$url" \
      --duration "$duration" --out "$out" >"$work/run.out" 2>"$work/run.err"
  else
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
      ./target/release/controller run load-profiles/high.toml --target "$url" \
      --duration "$duration" --out "$out" >"$work/run.out" 2>"$work/run.err"
  fi
  local summary
  summary="$(ls -t "$out"/*/summary.json | head -n 1)"
  python3 - "$summary" "$label" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
t = s["tracing"]
c = s["client"]
print(f'{sys.argv[2]:7} {s["throughput"]["requests_per_s"]:9.1f} req/s  '
      f'ok {s["requests"]["ok"]:6}  failed {s["requests"]["failed"]:3}  '
      f'spans exported {t["spans_exported"]:6} dropped {t["spans_dropped"]:4}  '
      f'client-bound {str(c["bound"]).lower():5} (agent cpu max {c["cpu_max"]:.2f})')
EOF
}

run_bench() {
  local name="$1"; shift
  start_sim "$@"
  local url="$url"
  echo "== $name: llm-sim $* at $url, high.toml (50 users), $duration per run"
  : >"$work/$name.txt"
  for _ in $(seq "$rounds"); do
    for label in off traced; do
      run "$label" "$url" | tee -a "$work/$name.txt"
    done
  done
  python3 - "$work/$name.txt" "$name" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
mean = lambda k: sum(float(r[1]) for r in rows if r[0] == k) / sum(1 for r in rows if r[0] == k)
off, on = mean("off"), mean("traced")
print(f"{sys.argv[2]}: tracing off {off:.1f} req/s, traced (ratio 1) {on:.1f} req/s, traced/off {on / off:.3f}")
EOF
  kill "${pids[-1]}" 2>/dev/null || true
}

only="${BENCH_ONLY:-}"
bench() {
  if [ -n "$only" ] && [ "$only" != "$1" ]; then return 0; fi
  run_bench "$@"
}
bench server-bound --max-batch 16 --prefill-base 5ms --prefill-per-token 200us \
  --decode-step 20ms --decode-step-per-seq 500us
bench fast --max-batch 64 --prefill-base 1ms --prefill-per-token 0s \
  --decode-step 1ms --decode-step-per-seq 0s
bench cpu-bound --max-batch 64 --prefill-base 0s --prefill-per-token 0s \
  --decode-step 1us --decode-step-per-seq 0s
