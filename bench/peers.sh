#!/usr/bin/env bash
# The peer benchmark: stampede beside k6, Locust, AIPerf, GuideLLM, oha and
# vllm bench against the same llm-sim. See bench/README.md.
#
#   bench/peers.sh install [TOOL...]   install the peers (all, or those named)
#                                      into ~/.cache/stampede/bench/
#   bench/peers.sh [OPTIONS]           measure (bench/peers.py --help); the
#                                      peers are installed first if missing
#   bench/peers.sh --smoke             a few seconds per installed tool on
#                                      the debug binaries; installs nothing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/stampede/bench"
# Time allowed for each pip install; vllm, which needs a GPU build of torch,
# is the one expected to hit it or fail on a machine without one.
install_limit="${PEERS_INSTALL_LIMIT:-1200}"

version_of() {
  sed -n "s/^$1=//p" "$here/peers/versions"
}

# Installs one peer, idempotently: a directory with a .installed marker is
# kept as it is. A failure is written to install-failed-<tool>-<version>.txt,
# which the table quotes as the reason the peer is missing.
install_one() {
  local tool="$1" version dir failed log
  version="$(version_of "$tool")"
  [ -n "$version" ] || { echo "unknown peer: $tool" >&2; return 1; }
  if [ "$tool" = oha ]; then dir="$cache/oha-$version"; else dir="$cache/venv-$tool-$version"; fi
  failed="$cache/install-failed-$tool-$version.txt"
  if [ -e "$dir/.installed" ]; then
    echo "$tool $version: installed in $dir"
    return 0
  fi
  mkdir -p "$cache"
  log="$cache/install-$tool-$version.log"
  echo "$tool $version: installing into $dir (log: $log)"
  rm -f "$failed"
  local status=0
  if [ "$tool" = oha ]; then
    timeout "$install_limit" nice -n 10 cargo install oha --locked --version "$version" --root "$dir" >"$log" 2>&1 || status=$?
  else
    { [ -x "$dir/bin/pip" ] || python3 -m venv "$dir"; } >"$log" 2>&1 || status=$?
    if [ "$status" = 0 ]; then
      timeout "$install_limit" nice -n 10 "$dir/bin/pip" install -q --disable-pip-version-check "$tool==$version" >>"$log" 2>&1 || status=$?
    fi
  fi
  if [ "$status" = 0 ]; then
    touch "$dir/.installed"
    echo "$tool $version: installed"
  else
    if [ "$status" = 124 ]; then
      echo "install did not finish within ${install_limit} s" >>"$log"
    fi
    # The reason is the log's last line that says something.
    grep -v '^\s*$' "$log" | tail -n 1 >"$failed"
    echo "$tool $version: install failed: $(cat "$failed")" >&2
    return 1
  fi
}

all_tools() {
  sed -n 's/^\([a-z0-9]*\)=.*/\1/p' "$here/peers/versions"
}

if [ "${1:-}" = install ]; then
  shift
  [ "$#" -gt 0 ] || set -- $(all_tools)
  status=0
  for tool in "$@"; do install_one "$tool" || status=1; done
  exit "$status"
fi

smoke=0
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=1; done
if [ "$smoke" = 0 ]; then
  # First run: install whatever is missing (a failure is recorded, and the
  # table lists that peer as not installed).
  for tool in $(all_tools); do
    version="$(version_of "$tool")"
    if [ "$tool" = oha ]; then dir="$cache/oha-$version"; else dir="$cache/venv-$tool-$version"; fi
    if [ ! -e "$dir/.installed" ] && [ ! -e "$cache/install-failed-$tool-$version.txt" ]; then
      install_one "$tool" || true
    fi
  done
fi
exec python3 "$here/peers.py" "$@"
