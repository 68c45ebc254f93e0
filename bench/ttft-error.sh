#!/usr/bin/env bash
# Client-added TTFT error: how much later than the simulator's write of a
# request's first token stampede stamps it, at 1,000 and 10,000 open streams.
#
#   bash bench/ttft-error.sh [ROUNDS] [SIZES]   (defaults: 3 "1000 10000")
#
# The ttft-error tool (tests/bin/ttft_error.rs) runs llm-sim with
# --record-first-writes (each traced request's trace id and the wall-clock
# time it handed the first token to the connection) and an in-process OTLP
# collector on core 1, and `controller run` with one local agent of N users
# (every span exported) on core 0. Each answer is 10 tokens, one every
# 200 ms for every stream at once, with no prefill: N streams stay open and
# their tokens arrive in bursts of N. Per request: the `first_token` event
# of its span minus the simulator's first write, same host, same clock.
# Prints p50 / p99 per round and the median over rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
sizes="${2:-1000 10000}"

ulimit -n "$(ulimit -Hn)"

if [ -z "${TTFT_NO_BUILD:-}" ]; then
  cargo build --release --locked -p stampede-controller --bin controller -p stampede-sim --bin llm-sim \
    -p stampede-tests --bin ttft-error
fi
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

for n in $sizes; do
  : >"$work/p50"
  : >"$work/p99"
  for _ in $(seq "$rounds"); do
    taskset -c 1 "$target/ttft-error" --streams "$n" --client-cpu 0 >"$work/round.json"
    jq -c . "$work/round.json"
    jq .client_added_us.p50 "$work/round.json" >>"$work/p50"
    jq .client_added_us.p99 "$work/round.json" >>"$work/p99"
  done
  printf '%6s streams: client-added TTFT error p50 %s us, p99 %s us (median of %s rounds)\n' \
    "$n" "$(median <"$work/p50")" "$(median <"$work/p99")" "$rounds"
done
