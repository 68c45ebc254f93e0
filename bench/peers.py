#!/usr/bin/env python3
"""The peer benchmark: stampede beside the load generators a user would pick
instead, against the same llm-sim, with each client's CPU cost measured.

Run it through bench/peers.sh (which installs the peers first); see
bench/README.md for what it measures and how to read the table.
Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / "peers"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stampede" / "bench"

# Every tool in the order the table lists them; stampede first, as the base
# the others are compared with.
TOOLS = ["stampede", "k6", "locust", "aiperf", "guidellm", "oha", "vllm", "floor"]
# Built from this checkout, not installed: the least a streaming client can
# do (agent/examples/floor.rs), the floor under every tool's figures.
BUILT = {"floor": "cargo build --release -p stampede-agent --example floor"}

# name: (users, answer tokens). The prompt is the same short text for every
# tool that lets us choose it.
WORKLOADS = {
    "short": (64, 16),
    "long": (256, 256),
    "smoke": (8, 16),
}
PROMPT_TOKENS = 32
MODEL = "llm-sim"
PROMPT = " ".join(["the model answers every prompt under load"] * 4)[: 32 * 8]

# Seconds a tool may take beyond the load's own duration (start-up, a
# tokenizer, writing its report) before it is stopped.
GRACE = {"aiperf": 120, "guidellm": 120, "vllm": 120}
DEFAULT_GRACE = 40
# Tools with no time limit of their own: stopped (SIGINT) once they have
# been serving for the run's duration.
UNTIMED = {"vllm"}
# vllm bench makes all its prompts before it starts: enough for a run at a
# few thousand requests/s, not so many that making them takes minutes.
VLLM_PROMPTS = 30000


def versions():
    pinned = {}
    for line in (PEERS / "versions").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("=")
            pinned[name.strip()] = version.strip()
    return pinned


def install_dir(name, version):
    return CACHE / (f"oha-{version}" if name == "oha" else f"venv-{name}-{version}")


def executable(name, version):
    """The peer's executable, or None with the reason it is not there."""
    home = install_dir(name, version)
    binary = home / "bin" / ("vllm" if name == "vllm" else name)
    if (home / ".installed").exists() and binary.exists():
        return binary, None
    failed = CACHE / f"install-failed-{name}-{version}.txt"
    if failed.exists():
        return None, "not installable here: " + failed.read_text().strip().splitlines()[-1][:300]
    return None, "not installed (bench/peers.sh install)"


# ---------------------------------------------------------------- tokenizer

# llm-sim answers with these words (sim/src/text.rs), one token each; a
# word-level tokenizer over them counts its answers exactly as it does.
SIM_WORDS = (
    "the model server queue token batch latency under load prefill decode step request stream answer fast "
    "slow cache memory kernel sequence window prompt reply time first every gap steady burst engine quiet"
).split()
EXTRA_WORDS = "a an and of to in is it that for on with as was he she they you we be at by this from or".split()


def tokenizer_dir():
    """A Hugging Face tokenizer directory for the tools that need one
    (AIPerf, GuideLLM, vllm bench): word-level over llm-sim's words."""
    path = CACHE / "tokenizer-llm-sim-words"
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for word in SIM_WORDS + EXTRA_WORDS:
        vocab.setdefault(word, len(vocab))
    special = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for t, i in [("[UNK]", 0), ("[PAD]", 1), ("[EOS]", 2)]
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "eos_token": "[EOS]",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    # vllm bench reads the model's config.json beside the tokenizer too.
    model = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": len(vocab),
        "max_position_embeddings": 131072,
    }
    (path / "config.json").write_text(json.dumps(model))
    (path / "special_tokens_map.json").write_text(
        json.dumps({"unk_token": "[UNK]", "pad_token": "[PAD]", "eos_token": "[EOS]"})
    )
    return path


# ------------------------------------------------------------------ llm-sim


class Sim:
    """A fresh llm-sim on core 1, with near-zero latency: every answer is
    `tokens` tokens, one token per event, and no batch limit to queue on."""

    def __init__(self, binary, tokens, workdir):
        self.log = open(workdir / "llm-sim.log", "w+")
        self.proc = subprocess.Popen(
            [
                "taskset", "-c", "1", str(binary), "--port", "0",
                "--prefill-base", "0s", "--prefill-per-token", "0s",
                "--decode-step", "1us", "--decode-step-per-seq", "0s",
                "--max-batch", "100000", "--output-tokens", str(tokens),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            self.log.seek(0)
            found = re.search(r"listening on (http://\S+)", self.log.read())
            if found:
                self.url = found.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.log.seek(0)
                raise RuntimeError("llm-sim did not start: " + self.log.read()[-500:])
            time.sleep(0.05)

    def counters(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return {
            "served": values.get("llmsim_requests_served_total", 0.0),
            # Events that carried tokens: each served answer's first, and
            # every later one (llm-sim counts the gaps between them).
            "events": values.get("llmsim_requests_served_total", 0.0)
            + values.get("llmsim_event_gap_seconds_count", 0.0),
            "tokens": values.get("llmsim_generation_tokens_total", 0.0),
            "cancelled": values.get("llmsim_requests_cancelled_total", 0.0),
            "failed": values.get("llmsim_requests_failed_total", 0.0),
        }

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Window:
    """Polls llm-sim's served counter to find when the load ran: from the
    last poll before requests were first served to the first poll after the
    last one was, so each tool's start-up and report time stay out of
    requests/s (they stay in its CPU time)."""

    def __init__(self, sim):
        self.sim, self.samples, self.done = sim, [], threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done.is_set():
            try:
                self.samples.append((time.monotonic(), self.sim.counters()["served"]))
            except OSError:
                pass
            self.done.wait(0.25)

    def first_served(self):
        """When llm-sim was first seen serving (the poll before), or None."""
        for (t0, n0), (_, n1) in zip(self.samples, self.samples[1:]):
            if n1 > n0:
                return t0
        return None

    def bounds(self):
        """(start, end) on the monotonic clock, or None if nothing was served."""
        self.done.set()
        self.thread.join()
        moving = [i for i in range(1, len(self.samples)) if self.samples[i][1] > self.samples[i - 1][1]]
        if not moving:
            return None
        return self.samples[moving[0] - 1][0], self.samples[moving[-1]][0]


def cpu_at(timeline, t):
    """The tree's cumulative CPU-seconds at monotonic time `t`, interpolated
    between measure.py's 100 ms samples."""
    if not timeline:
        return 0.0
    if t <= timeline[0][0]:
        return timeline[0][1]
    for (t0, c0), (t1, c1) in zip(timeline, timeline[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return timeline[-1][1]


# -------------------------------------------------------------------- tools


def command(tool, binary, url, users, tokens, duration, workdir):
    """The command line and extra environment that runs `tool` at `users`
    closed-loop users for `duration` seconds, streaming chat completions of
    `tokens` tokens."""
    env = {
        "PEERS_URL": url,
        "PEERS_USERS": str(users),
        "PEERS_DURATION": str(duration),
        "PEERS_MAX_TOKENS": str(tokens),
        "PEERS_MODEL": MODEL,
        "PEERS_PROMPT": PROMPT,
    }
    if tool == "stampede":
        return [
            str(binary), "run", "--users", str(users), "--duration", f"{duration}s",
            "--target", url, "--api", "openai-chat", "--model", MODEL,
            "--max-tokens", str(tokens), "--prompt-tokens", str(PROMPT_TOKENS), "--output-tokens", str(tokens),
            "--out", str(workdir / "stampede"), "--set", "thresholds.allow_client_bound=true",
        ], env
    if tool == "floor":
        return [str(binary), url, str(users), str(tokens), str(duration)], env
    if tool == "k6":
        return [str(binary), "run", "--no-usage-report", "--quiet", "--no-color", str(PEERS / "chat.js")], env
    if tool == "locust":
        return [
            str(binary), "-f", str(PEERS / "locustfile.py"), "--headless", "--host", url,
            "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{duration}s",
            "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING",
        ], env
    if tool == "oha":
        body = json.dumps({
            "model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens, "stream": True,
        })
        return [
            str(binary), "--no-tui", "-z", f"{duration}s", "-c", str(users), "-m", "POST",
            "-H", "content-type: application/json", "-d", body, url + "/v1/chat/completions",
        ], env
    if tool == "aiperf":
        env["HF_HUB_OFFLINE"] = ""
        return [
            str(binary), "profile", "--model", MODEL, "--url", url, "--endpoint-type", "chat", "--streaming",
            "--tokenizer", str(tokenizer_dir()), "--concurrency", str(users),
            "--benchmark-duration", str(duration),
            "--synthetic-input-tokens-mean", str(PROMPT_TOKENS), "--synthetic-input-tokens-stddev", "0",
            "--output-tokens-mean", str(tokens), "--output-tokens-stddev", "0",
            "--extra-inputs", "ignore_eos:true",
            "--artifact-dir", str(workdir / "aiperf"), "--ui-type", "none",
        ], env
    if tool == "guidellm":
        return [
            str(binary), "run", "--backend", f"kind=openai_http,target={url},model={MODEL}",
            "--profile", f"kind=concurrent,streams={users}",
            "--constraint", f"kind=max_duration,seconds={duration}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer_dir()}",
            "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={tokens}",
            "--disable-console-interactive",
        ], env
    if tool == "vllm":
        # vllm bench has no time limit of its own: it is stopped (SIGINT)
        # once it has been serving for the run's duration (UNTIMED), or ends
        # sooner when it has sent its VLLM_PROMPTS.
        return [
            str(binary), "bench", "serve", "--backend", "openai-chat", "--base-url", url,
            "--endpoint", "/v1/chat/completions", "--model", MODEL, "--tokenizer", str(tokenizer_dir()),
            "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS),
            "--random-output-len", str(tokens), "--ignore-eos", "--max-concurrency", str(users),
            "--num-prompts", str(VLLM_PROMPTS),
        ], env
    raise ValueError(tool)


def tool_version(tool, pinned, binaries):
    if tool in ("stampede", "floor"):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if tool == "floor":
            name = "agent/examples/floor.rs"
        else:
            name = subprocess.run([str(binaries["stampede"]), "--version"], capture_output=True, text=True).stdout.strip()
        return f"{name} (git {rev.stdout.strip() or '?'})"
    return pinned.get(tool, "?")


def run_once(tool, binary, sim_binary, workload, duration, scratch):
    users, tokens = WORKLOADS[workload]
    workdir = Path(tempfile.mkdtemp(prefix=f"{tool}-{workload}-", dir=scratch))
    sim = Sim(sim_binary, tokens, workdir)
    try:
        argv, extra = command(tool, binary, sim.url, users, tokens, duration, workdir)
        env = dict(os.environ, **extra)
        limit = duration + GRACE.get(tool, DEFAULT_GRACE)
        before = sim.counters()
        window = Window(sim)
        result_file = workdir / "measure.json"
        with open(workdir / "output.log", "w") as log:
            measure = subprocess.Popen(
                ["taskset", "-c", "0", sys.executable, str(PEERS / "measure.py"), str(result_file), str(limit), "--"]
                + argv,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir,
            )
            while measure.poll() is None:
                first = window.first_served()
                if tool in UNTIMED and first is not None and time.monotonic() > first + duration:
                    # measure.py stops the tool (SIGINT) on SIGUSR1.
                    measure.send_signal(signal.SIGUSR1)
                    measure.wait()
                    break
                time.sleep(0.1)
        bounds = window.bounds()
        after = sim.counters()
    finally:
        sim.stop()
    measured = json.loads(result_file.read_text()) if result_file.exists() else {}
    output = (workdir / "output.log").read_text(errors="replace")
    delta = {k: after[k] - before[k] for k in after}
    timeline = measured.pop("timeline", [])
    run = {"tool": tool, "workload": workload, **delta, **measured, "log": str(workdir / "output.log")}
    run["cpu_s"] = measured.get("user_s", 0) + measured.get("sys_s", 0)
    if bounds:
        run["window_s"] = bounds[1] - bounds[0]
        run["load_cpu_s"] = cpu_at(timeline, bounds[1]) - cpu_at(timeline, bounds[0])
    if delta["served"] <= 0 or not bounds or run["window_s"] <= 0:
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
        run["error"] = f"no request served (exit {measured.get('exit')}): {tail[:300]}"
    return run


# ------------------------------------------------------------------- report


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs):
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}
    per_k = [1000 * r["load_cpu_s"] / r["served"] for r in ok]
    return {
        "rounds": len(ok),
        "failed_rounds": len(runs) - len(ok),
        "rps": median([r["served"] / r["window_s"] for r in ok]),
        "eps": median([r["events"] / r["window_s"] for r in ok]),
        "cpu_per_k": median(per_k),
        "cpu_per_k_range": (min(per_k), max(per_k)),
        "cpu_per_m_events": median([1e6 * r["load_cpu_s"] / r["events"] for r in ok]),
        "run_cpu_per_k": median([1000 * r["cpu_s"] / r["served"] for r in ok]),
        "run_cpu_s": median([r["cpu_s"] for r in ok]),
        "rss_mib": median([r.get("peak_tree_rss_bytes", 0) / 2**20 for r in ok]),
        "events_per_request": median([r["events"] / r["served"] for r in ok]),
        "exits": sorted({r.get("exit") for r in ok}, key=str),
    }


def fmt(value, digits=1):
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if value >= 1 else f"{value:.3f}"


def machine():
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return f"{os.cpu_count()} cores, {model}, {int(mem) // 2**20} GiB RAM, Linux {platform.release()}"


def markdown(args, results, versions_seen, started, elapsed):
    lines = [
        "# stampede beside other load generators",
        "",
        f"Measured {started} with `{' '.join(['bench/peers.sh'] + args.argv)}` in {elapsed / 60:.1f} minutes.",
        "",
        f"- Machine: {machine()}; load average at the start {os.getloadavg()[0]:.2f} (a shared machine).",
        "- Server: llm-sim on core 1, near-zero latency (no prefill time, 1 µs decode steps, no batch limit), "
        "one token per event; client on core 0.",
        f"- Each run: a fresh llm-sim, {args.duration} s of closed-loop users, streaming chat completions; "
        f"median of {args.rounds} round(s), tools alternated within each round.",
        "- Requests and events are llm-sim's own counts (served requests; events that carried tokens), "
        "rates over the time llm-sim was serving. CPU is user+system CPU-seconds of the tool's whole "
        "process tree: *under load* while llm-sim was serving (the per-request and per-event cost), "
        "*whole run* with start-up and the tool's report included (what a run of this length costs). "
        "Peak RSS is the largest sum of the tree's resident memory.",
        "- `CPU vs stampede` is the peer's CPU-seconds per request under load over stampede's in the same "
        "workload (every answer has the same length, so per event it is the same): above 1, the peer costs more.",
        "",
        "| workload | tool | version | req/s | events/s | CPU-s / 1k req under load (min–max) "
        "| CPU-s / M events under load | CPU-s / 1k req, whole run | peak RSS MiB | CPU vs stampede |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    problems = []
    for workload in args.workloads:
        users, tokens = WORKLOADS[workload]
        base = results.get(("stampede", workload), {}).get("cpu_per_k")
        for tool in args.tools:
            s = results.get((tool, workload))
            label = f"{workload} ({users} users, {tokens} tok)"
            version = versions_seen.get(tool, "?")
            if s is None or "error" in s:
                reason = s["error"] if s else "not run"
                lines.append(f"| {label} | {tool} | {version} | – | – | – | – | – | – | {reason.replace('|', '/')} |")
                continue
            lo, hi = s["cpu_per_k_range"]
            ratio = f"{s['cpu_per_k'] / base:.1f}×" if base else "–"
            lines.append(
                f"| {label} | {tool} | {version} | {fmt(s['rps'])} | {fmt(s['eps'])} | "
                f"{fmt(s['cpu_per_k'], 2)} ({fmt(lo, 2)}–{fmt(hi, 2)}) | {fmt(s['cpu_per_m_events'])} | "
                f"{fmt(s['run_cpu_per_k'], 2)} | {fmt(s['rss_mib'])} | {ratio} |"
            )
            if s["failed_rounds"]:
                problems.append(f"{tool}, {workload}: {s['failed_rounds']} round(s) served nothing and were left out")
            if abs(s["events_per_request"] - tokens) > 0.5:
                problems.append(
                    f"{tool}, {workload}: {s['events_per_request']:.1f} events per request, not {tokens} "
                    "(the tool set its own answer length)"
                )
            if any(e not in (0, None) for e in s["exits"]) and tool not in UNTIMED:
                problems.append(f"{tool}, {workload}: exit status {s['exits']} (figures kept: llm-sim served its requests)")
    if problems:
        lines += ["", "Notes:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds per installed tool, one round, the debug binaries; checks stampede's figures")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every tool and workload (default 3; 1 with --smoke)")
    parser.add_argument("--duration", type=int, default=None, help="seconds of load per run (default 15; 3 with --smoke)")
    parser.add_argument("--tools", default=None, help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--workloads", default=None, help="comma-separated: short,long (default both; smoke with --smoke)")
    parser.add_argument("--out", default=None, help="markdown table to write (default bench/results/peers-<date>.md)")
    parser.add_argument("--bin-dir", default=None,
                        help="directory of the controller and llm-sim binaries (default target/release; target/debug with --smoke)")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.duration = args.duration or (3 if args.smoke else 15)
    args.workloads = (args.workloads or ("smoke" if args.smoke else "short,long")).split(",")
    args.tools = (args.tools or ",".join(TOOLS)).split(",")
    for name in args.tools:
        if name not in TOOLS:
            parser.error(f"--tools: unknown tool {name!r}; expected some of {','.join(TOOLS)}")
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"--workloads: unknown workload {name!r}; expected some of {','.join(WORKLOADS)}")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target").resolve()
    bin_dir = (Path(args.bin_dir) if args.bin_dir else target / ("debug" if args.smoke else "release")).resolve()
    binaries = {"stampede": bin_dir / "controller"}
    sim_binary = bin_dir / "llm-sim"
    for path in (binaries["stampede"], sim_binary):
        if not path.exists():
            build = "cargo build --bin controller --bin llm-sim" + ("" if args.smoke else " --release")
            sys.exit(f"{path} is missing: build it first ({build})")
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        sys.exit("the suite pins the server and the client to cores 1 and 0: it needs taskset and two cores")

    pinned = versions()
    unavailable = {}
    for tool in args.tools:
        if tool == "stampede":
            continue
        if tool in BUILT:
            binary = bin_dir / "examples" / tool
            if binary.exists():
                binaries[tool] = binary
            else:
                build = BUILT[tool].replace(" --release", "") if args.smoke else BUILT[tool]
                unavailable[tool] = f"not built ({build})"
            continue
        binary, reason = executable(tool, pinned[tool])
        if binary:
            binaries[tool] = binary
        else:
            unavailable[tool] = reason
    if args.smoke:
        # The smoke run measures what is installed and lists the rest.
        pass
    versions_seen = {tool: tool_version(tool, pinned, binaries) for tool in args.tools}

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    clock = time.monotonic()
    runs = {}
    scratch = Path(tempfile.mkdtemp(prefix="stampede-peers-"))
    present = [t for t in args.tools if t in binaries]
    for round_no in range(args.rounds):
        # Alternate: each round starts one tool later, so no tool always runs
        # first (or last) on a machine whose load drifts.
        order = present[round_no % len(present):] + present[: round_no % len(present)]
        for workload in args.workloads:
            for tool in order:
                print(f"round {round_no + 1}/{args.rounds} {workload}: {tool} ...", end=" ", flush=True)
                try:
                    run = run_once(tool, binaries[tool], sim_binary, workload, args.duration, scratch)
                except Exception as error:  # a tool that cannot run is a row, not a crash
                    run = {"tool": tool, "workload": workload, "error": f"{type(error).__name__}: {error}"}
                runs.setdefault((tool, workload), []).append(run)
                if "error" in run:
                    print(run["error"])
                else:
                    print(
                        f"{run['served']:.0f} requests, {run['events']:.0f} events in {run['window_s']:.1f} s; "
                        f"{run['load_cpu_s']:.2f} CPU-s under load ({run['cpu_s']:.2f} in all), "
                        f"{1000 * run['load_cpu_s'] / run['served']:.2f} per 1k requests"
                    )
    results = {key: summarise(value) for key, value in runs.items()}
    for tool, reason in unavailable.items():
        for workload in args.workloads:
            results[(tool, workload)] = {"error": reason}
    elapsed = time.monotonic() - clock
    table = markdown(args, results, versions_seen, started, elapsed)
    if args.out:
        out = Path(args.out)
    elif args.smoke:
        out = scratch / "peers-smoke.md"
    else:
        out = BENCH / "results" / f"peers-{time.strftime('%Y-%m-%d', time.gmtime())}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    (scratch / "runs.json").write_text(json.dumps([r for v in runs.values() for r in v], indent=1, default=str))
    print()
    print(table)
    print(f"table: {out}\nper-run figures and logs: {scratch}")
    if args.smoke:
        # The tools this checkout builds must work; a peer may be missing.
        ours = [t for t in ("stampede", *BUILT) if t in args.tools]
        for tool in ours:
            for workload in args.workloads:
                s = results.get((tool, workload), {})
                if "error" in s or not all(s.get(k) for k in ("rps", "eps", "cpu_per_k", "cpu_per_m_events", "rss_mib")):
                    sys.exit(f"smoke: {tool}'s figures are missing or zero for {workload}: {s.get('error', s)}")
        print(f"smoke: the table was written and the figures of {' and '.join(ours)} are non-zero")


if __name__ == "__main__":
    main()
