//! Memory, against ground truth: llm-sim's KV cache fills and preempts,
//! and the run's findings must count what it did; its DCGM page's memory
//! and bandwidth figures must equal, interval by interval, what the
//! simulator says it had; and the memory names of vLLM, llama.cpp and DCGM
//! pages, served over HTTP, must all be understood.

// The helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use serde_json::Value;
use stampede_tests::files::Files;
use stampede_tests::{Run, Sim, exclusive, num, repo, run_profile, two_agent_profile};

fn profile(url: &str, users: u32, duration: &str, max_tokens: u32, extra: &str) -> String {
    two_agent_profile("memory", url, users, duration, max_tokens, extra)
}

fn finding<'a>(s: &'a Value, kind: &str) -> Option<&'a Value> {
    s["findings"].as_array()?.iter().find(|f| f["kind"] == kind)
}

/// Runs eight users asking for long answers against a simulator whose KV
/// cache has `slots` token slots.
fn run_with_cache(slots: &str) -> (Run, HashMap<String, f64>) {
    let sim = Sim::start(&["--max-batch", "16", "--kv-cache-tokens", slots, "--dcgm"]);
    let run = run_profile(&profile(&sim.url, 8, "5s", 160, ""), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let truth = sim.metrics();
    (run, truth)
}

#[test]
fn a_small_kv_cache_preempts_and_the_finding_counts_what_the_simulator_did() {
    let _machine = exclusive();
    // Eight sequences of 50 prompt and 160 answer tokens want 1,680 slots;
    // the cache has 600.
    let (run, truth) = run_with_cache("600");
    let s = run.summary();
    let preempted = truth["vllm:num_preemptions_total"];
    assert!(preempted > 0.0, "the simulator preempted nothing: {truth:?}");
    let f = finding(s, "memory_pressure").unwrap_or_else(|| panic!("no memory pressure: {:#}", s["findings"]));
    eprintln!(
        "preemptions: finding {}, simulator {preempted}",
        f["evidence"]["preemptions"]
    );
    assert_eq!(num(f, "/evidence/preemptions"), preempted, "{f:#}");
    assert!(
        f["evidence"]["which"]
            .as_array()
            .unwrap()
            .contains(&"preemptions".into()),
        "{f:#}"
    );
    assert!(num(f, "/evidence/preempted_intervals") >= 1.0, "{f:#}");
    let title = f["title"].as_str().unwrap();
    assert!(
        title.starts_with(&format!(
            "memory pressure: the server preempted {preempted:.0} sequences from "
        )),
        "{title}"
    );
    assert!(title.contains("max_num_seqs"), "says what to change: {title}");
    // The per-interval counts add up to no more than the run's.
    let per_interval: f64 = s["server"]["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["preemptions"].as_f64())
        .sum();
    assert!(
        per_interval > 0.0 && per_interval <= preempted,
        "{per_interval} of {preempted}"
    );
    // Memory follows the cache: at its fullest, most of the card.
    assert!(
        num(s, "/server/mapped/gpu_memory_share/max") > 0.85,
        "{:#}",
        s["server"]["mapped"]
    );
    assert!(run.stdout().contains("  - memory pressure: "), "{}", run.stdout());
    assert!(run.stdout().contains("  preemptions "), "{}", run.stdout());
}

#[test]
fn a_large_kv_cache_is_no_pressure() {
    let _machine = exclusive();
    let (run, truth) = run_with_cache("100000");
    let s = run.summary();
    assert_eq!(truth["vllm:num_preemptions_total"], 0.0);
    assert!(finding(s, "memory_pressure").is_none(), "{:#}", s["findings"]);
    assert!(finding(s, "vram_high").is_none(), "{:#}", s["findings"]);
    // The figures are there, and calm.
    let mapped = &s["server"]["mapped"];
    assert_eq!(mapped["kv_cache_usage"]["source"]["metric"], "vllm:kv_cache_usage_perc");
    assert!(num(mapped, "/kv_cache_usage/max") < 0.05, "{mapped:#}");
    assert_eq!(num(mapped, "/preemptions/count"), 0.0);
}

/// The scrapes of a run's `server-metrics.jsonl`: seconds after the run's
/// start and the page's samples by series (none for a scrape that failed).
fn scrapes(run: &Run) -> Vec<(f64, Option<HashMap<String, f64>>)> {
    let dir = run.dir.as_ref().unwrap();
    let log = std::fs::read_to_string(dir.join("intervals.jsonl")).unwrap();
    let started = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "started")
        .expect("a started event")["unix_ns"]
        .as_u64()
        .unwrap();
    std::fs::read_to_string(dir.join("server-metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|l| {
            let t = (l["unix_ns"].as_u64().unwrap() as i128 - started as i128) as f64 / 1e9;
            let samples = l["error"].is_null().then(|| {
                l["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_f64()?)))
                    .collect()
            });
            (t, samples)
        })
        .collect()
}

#[test]
fn dcgm_memory_and_bandwidth_equal_the_simulators_ground_truth_per_interval() {
    let _machine = exclusive();
    // Eight sequences decode at once: the memory interface is busy nearly
    // all the time, compute only in prefills and a share of each step.
    let sim = Sim::start(&["--max-batch", "16", "--kv-cache-tokens", "3000", "--dcgm"]);
    let extra = "[server_metrics]\ninterval = \"250ms\"";
    let run = run_profile(&profile(&sim.url, 8, "5s", 60, extra), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let interval_s = num(s, "/load/interval_s");

    // Ground truth per scrape: the simulator's memory in use over its
    // total, and its decode-busy time over the time since the page was
    // last read (the previous scrape; the first covers the time since the
    // simulator started). A scrape that failed (a timeout on a busy
    // machine) may still have read the page, at a moment nobody recorded:
    // the bandwidth of the next one has no known truth. A share is a
    // ratio of cycles, at most 1, as DCGM's is: the simulator's step
    // tasks run late on a busy host, and a step entered after a reading
    // from before it credits the next window, whose counted share can then
    // pass 1 (1.008 seen) where the simulator's gauge says 1.
    let mut truth = Vec::new();
    let (mut decode, mut uptime, mut unknown) = (0.0, 0.0, false);
    for (t, page) in scrapes(&run) {
        let Some(page) = page else {
            eprintln!("the scrape at {t:.3} s failed");
            unknown = true;
            continue;
        };
        let d = page["llmsim_decode_busy_seconds_total"];
        let u = page["llmsim_uptime_seconds_total"];
        let vram = page["llmsim_gpu_memory_used_mib"] / page["llmsim_gpu_memory_total_mib"];
        let dram = if unknown {
            f64::NAN
        } else {
            ((d - decode) / (u - uptime)).clamp(0.0, 1.0)
        };
        truth.push((t, vram, dram));
        (decode, uptime, unknown) = (d, u, false);
    }
    let rows = s["server"]["intervals"].as_array().unwrap();
    let (mut compared, mut bandwidths) = (0, 0);
    for (i, row) in s["intervals"].as_array().unwrap().iter().zip(rows) {
        // The last interval ends with the load, short of a whole one.
        let (end, length) = (num(i, "/end_s"), num(i, "/length_s"));
        assert!(length > 0.0 && length <= interval_s, "{i:#}");
        let inside: Vec<_> = truth.iter().filter(|(t, ..)| *t > end - length && *t <= end).collect();
        if inside.is_empty() {
            assert!(row["vram_used_share"].is_null(), "{row:#}");
            continue;
        }
        let mean = |f: &dyn Fn(&(f64, f64, f64)) -> f64| inside.iter().map(|x| f(x)).sum::<f64>() / inside.len() as f64;
        let (vram, dram) = (mean(&|x| x.1), mean(&|x| x.2));
        eprintln!(
            "interval {}: VRAM {:.6} (simulator {vram:.6}), bandwidth {:.6} (simulator {dram:.6}) over {} scrapes",
            row["interval"],
            num(row, "/vram_used_share"),
            num(row, "/memory_bandwidth"),
            inside.len()
        );
        assert!((num(row, "/vram_used_share") - vram).abs() < 1e-9, "{row:#}");
        if dram.is_finite() {
            assert!(
                (num(row, "/memory_bandwidth") - dram).abs() < 1e-9,
                "{row:#}\nthe scrapes inside (seconds from the start, VRAM, bandwidth): {inside:?}\nall: {truth:?}"
            );
            bandwidths += 1;
        }
        assert_eq!(
            num(row, "/vram_used_mib") + num(row, "/vram_free_mib"),
            81_920.0,
            "{row:#}"
        );
        compared += 1;
    }
    assert!(compared >= 5, "{compared} intervals compared");
    assert!(bandwidths >= 3, "the bandwidth of only {bandwidths} intervals compared");
    // The cache held something, so memory moved; decode kept the memory
    // interface busy while compute was not: memory-bound decode.
    let mapped = &s["server"]["mapped"];
    assert!(num(mapped, "/gpu_memory_share/max") > num(mapped, "/gpu_memory_share/mean") - 1e-12);
    assert!(num(mapped, "/gpu_memory_share/max") > 0.2, "{mapped:#}");
    let f = finding(s, "memory_bound_decode").unwrap_or_else(|| panic!("no memory-bound decode: {:#}", s["findings"]));
    assert!(num(f, "/evidence/memory_bandwidth_mean") >= 0.7, "{f:#}");
    assert!(num(f, "/evidence/compute_active_mean") < 0.5, "{f:#}");
    assert!(finding(s, "vram_high").is_none(), "{:#}", s["findings"]);
}

fn scrape_page(files: &Files, sim: &Sim, page: &str) -> Value {
    let extra = format!("[server_metrics]\nurl = \"{}/{page}\"\ninterval = \"500ms\"", files.url);
    let run = run_profile(&profile(&sim.url, 2, "2s", 8, &extra), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    run.summary().clone()
}

#[test]
fn memory_names_of_llama_cpp_and_dcgm_pages_are_understood() {
    let _machine = exclusive();
    let files = Files::serve(&repo().join("tests/fixtures"));
    let sim = Sim::start(&[]);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;

    // llama.cpp's server before its KV-cache gauges were removed.
    let s = scrape_page(&files, &sim, "llamacpp-metrics-older.txt");
    let mapped = &s["server"]["mapped"];
    assert_eq!(
        s["server"]["families"],
        serde_json::json!(["llama.cpp"]),
        "{:#}",
        s["server"]
    );
    for (canon, metric) in [
        ("kv_cache_usage", "llamacpp:kv_cache_usage_ratio"),
        ("running", "llamacpp:requests_processing"),
        ("waiting", "llamacpp:requests_deferred"),
        ("prompt_tokens", "llamacpp:prompt_tokens_total"),
        ("generation_tokens", "llamacpp:tokens_predicted_total"),
    ] {
        assert_eq!(mapped[canon]["source"]["metric"], metric, "{canon} in {mapped:#}");
    }
    assert!(close(num(mapped, "/kv_cache_usage/mean"), 0.8125), "{mapped:#}");

    // DCGM's default fields: the memory copy utilisation is the bandwidth.
    let s = scrape_page(&files, &sim, "dcgm-metrics.txt");
    let mapped = &s["server"]["mapped"];
    for (canon, metric) in [
        ("gpu_util", "DCGM_FI_DEV_GPU_UTIL"),
        ("gpu_memory_mib", "DCGM_FI_DEV_FB_USED"),
        ("gpu_memory_free_mib", "DCGM_FI_DEV_FB_FREE"),
        (
            "gpu_memory_share",
            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
        ),
        ("memory_bandwidth", "DCGM_FI_DEV_MEM_COPY_UTIL"),
    ] {
        assert_eq!(mapped[canon]["source"]["metric"], metric, "{canon} in {mapped:#}");
    }
    // Two GPUs: memory adds up, shares average.
    assert!(close(num(mapped, "/gpu_memory_mib/mean"), 149_946.0), "{mapped:#}");
    assert!(close(num(mapped, "/gpu_memory_free_mib/mean"), 12_214.0), "{mapped:#}");
    assert!(
        close(num(mapped, "/gpu_memory_share/mean"), 149_946.0 / 162_160.0),
        "{mapped:#}"
    );
    assert!(close(num(mapped, "/memory_bandwidth/mean"), 0.8), "{mapped:#}");
    let v = finding(&s, "vram_high").unwrap_or_else(|| panic!("no VRAM finding: {:#}", s["findings"]));
    assert!(close(num(v, "/evidence/vram_used_share_max"), 0.9247), "{v:#}");
    assert!(
        finding(&s, "memory_bound_decode").is_none(),
        "no compute figure, no verdict: {:#}",
        s["findings"]
    );

    // DCGM's profiling fields: memory bandwidth against compute.
    let s = scrape_page(&files, &sim, "dcgm-profiling-metrics.txt");
    let mapped = &s["server"]["mapped"];
    assert_eq!(
        mapped["memory_bandwidth"]["source"]["metric"],
        "DCGM_FI_PROF_DRAM_ACTIVE"
    );
    assert_eq!(mapped["compute_active"]["source"]["metric"], "DCGM_FI_PROF_SM_ACTIVE");
    assert!(close(num(mapped, "/memory_bandwidth/mean"), 0.85256), "{mapped:#}");
    assert!(close(num(mapped, "/compute_active/mean"), 0.342011), "{mapped:#}");
    let f = finding(&s, "memory_bound_decode").unwrap_or_else(|| panic!("no memory-bound decode: {:#}", s["findings"]));
    assert!(
        f["title"]
            .as_str()
            .unwrap()
            .starts_with("memory-bound decode: memory bandwidth was 85% busy while compute was 34%"),
        "{f:#}"
    );
    assert!(
        s["server"]["unmapped"]
            .as_array()
            .unwrap()
            .contains(&"DCGM_FI_DEV_SM_CLOCK".into())
    );
}
