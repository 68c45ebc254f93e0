#!/usr/bin/env bash
# Client CPU per streamed event and per request, against a near-zero-latency
# llm-sim on another core.
#
#   bash bench/stream-cost.sh [ROUNDS] [DURATION] [CONTROLLER...]
#
# Two workloads, each one in-process agent streaming OpenAI chat answers:
#   events    256 users x 256-token answers: the cost of each streamed event;
#   requests  64 users x 16-token answers: the cost of each request.
# The server (llm-sim, no prefill, 1 µs decode steps, 512 batch slots) runs on
# core 1 and the client (controller with its agent) on core 0. The client's
# CPU is the utime+stime of its process and children (/usr/bin/time), which
# survives a noisy machine better than requests/s does. Each round runs
# every CONTROLLER binary (default: target/release/controller) on both
# workloads, alternating, so that drift falls on all alike; the medians of
# the rounds are printed last.
#
# Builds nothing: run `cargo build --release --bin controller --bin llm-sim`
# first. To compare two builds, copy the older binary aside, e.g. to
# target/release/controller.before, and name both.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
duration="${2:-20s}"
shift $(( $# > 2 ? 2 : $# ))
controllers=("$@")
[ ${#controllers[@]} -eq 0 ] && controllers=(target/release/controller)
sim=target/release/llm-sim
for bin in "$sim" "${controllers[@]}"; do
  [ -x "$bin" ] || { echo "$bin not found: build it with cargo build --release" >&2; exit 1; }
done

work="$(mktemp -d)"
sim_pid=""
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

profile() { # name users max_tokens
  cat >"$work/$1.toml" <<EOF
name = "stream-cost-$1"
seed = 1

[target]
api = "openai-chat"
timeout = "60s"

[load]
users = $2
duration = "$duration"
drain = "30s"

[request]
max_tokens = $3
stream = true

[prompts]
builtin = "short"

[agents]
count = 1

[report]
interval = "1s"
out = "$work/results"

[thresholds]
# The client is the limit here on purpose: it is what is measured.
allow_client_bound = true
EOF
}
profile events 256 256
profile requests 64 16

taskset -c 1 "$sim" --port 0 --max-batch 512 --prefill-base 0s --prefill-per-token 0s \
  --decode-step 1us --decode-step-per-seq 0s >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
url=""
for _ in $(seq 100); do
  url="$(grep -o 'http://[0-9.:]*' "$work/sim.out" 2>/dev/null | head -n 1 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "llm-sim did not start" >&2; exit 1; }

# One run; appends "binary workload cpu_s events requests" to rows.
run() {
  local bin="$1" workload="$2" out="$work/results"
  rm -rf "$out"
  /usr/bin/time -f '%U %S' -o "$work/time" taskset -c 0 "$bin" run "$work/$workload.toml" \
    --target "$url" >"$work/run.out" 2>"$work/run.err" || {
    cat "$work/run.out" >&2
    echo "$bin failed on $workload:" >&2; tail -5 "$work/run.err" >&2; exit 1; }
  local summary
  summary="$(ls -t "$out"/*/summary.json | head -n 1)"
  python3 - "$summary" "$bin" "$workload" "$(cat "$work/time")" <<'EOF' | tee -a "$work/rows"
import json, sys
s = json.load(open(sys.argv[1]))
user, system = map(float, sys.argv[4].split())
ok = s["requests"]["ok"]
events = s["tokens"]["output"]  # llm-sim streams one token per event
print(sys.argv[2], sys.argv[3], f"{user + system:.3f}", events, ok, s["requests"]["failed"])
EOF
}

echo "llm-sim at $url; $rounds rounds of $duration; client on core 0, server on core 1"
: >"$work/rows"
for _ in $(seq "$rounds"); do
  for workload in events requests; do
    for bin in "${controllers[@]}"; do
      run "$bin" "$workload" >/dev/null
      tail -n 1 "$work/rows" | awk '{printf "%-36s %-8s cpu %7.2f s  events %9d  requests %7d  failed %d\n", $1, $2, $3, $4, $5, $6}'
    done
  done
done
python3 - "$work/rows" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for b in dict.fromkeys(r[0] for r in rows):
    ev = [float(r[2]) / int(r[3]) * 1e6 for r in rows if r[0] == b and r[1] == "events"]
    rq = [float(r[2]) / int(r[4]) * 1e6 for r in rows if r[0] == b and r[1] == "requests"]
    print(f"{b}: median {statistics.median(ev):.2f} us CPU per event (256 users x 256 tokens), "
          f"{statistics.median(rq):.1f} us CPU per request (64 users x 16 tokens); "
          f"rounds: {' '.join(f'{x:.2f}' for x in ev)} / {' '.join(f'{x:.1f}' for x in rq)}")
EOF
