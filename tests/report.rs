//! `report.html` in a real browser. A sweep against llm-sim with its
//! server metrics scraped and every request traced to an in-memory OTLP
//! collector; then headless Chromium (the Debian package, which `.ci/run`
//! installs) opens the page from disk:
//!
//! - the page logs nothing to the console and its script runs;
//! - it fetches nothing: Chromium's own net log shows no request made on
//!   the page's behalf (the browser's own background traffic, such as its
//!   component updater, is told apart by its initiator and left out);
//! - every time-series chart draws one point per interval of
//!   `summary.json`, the knee is marked and the findings are there;
//! - a screenshot at 1400×2400 is kept as the test's artefact,
//!   `target/tmp/report.png`, with the page beside it.
//!
//! A control page that fetches a stylesheet and logs an error checks that
//! the console and network checks catch what they look for.

// These tests drive real processes from outside; there is no tokio clock
// to share. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::collector::Collector;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::prom::free_port;
use stampede_tests::{Sim, exclusive, prompt_of, run_profile};

stampede_tests::suite![a_sweeps_report_opens_offline_in_chromium_and_draws_every_interval];

/// Chromium: `STAMPEDE_CHROMIUM`, else `chromium` on the `PATH`.
fn chromium() -> Result<PathBuf, Missing> {
    let found = match std::env::var_os("STAMPEDE_CHROMIUM") {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file()),
    };
    found.ok_or_else(|| Missing::new("chromium is not installed (.ci/run installs the Debian package)"))
}

/// One headless Chromium run on `page`; its own profile directory under
/// `dir`, so no state or first-run work is shared between runs.
fn browse(chromium: &Path, dir: &Path, page: &Path, args: &[String]) -> Output {
    let profile = dir.join(format!("profile-{}", free_port()));
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        // Fewer of the browser's own requests, which are not the page's.
        .args([
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // Read both pipes while it runs, so a full pipe never stalls it.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).map(|_| v)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("chromium can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

/// What the page itself did, as Chromium saw it.
struct Visit {
    /// The DOM after its script ran.
    dom: String,
    /// Console lines (Chromium logs them as `CONSOLE` with
    /// `--enable-logging=stderr`), uncaught errors included.
    console: Vec<String>,
    /// URLs requested on the page's behalf.
    requests: Vec<String>,
    /// URLs the browser requested for itself.
    background: usize,
}

fn visit(chromium: &Path, dir: &Path, page: &Path) -> Visit {
    let net = dir.join(format!("net-{}.json", free_port()));
    let out = browse(
        chromium,
        dir,
        page,
        &[
            "--enable-logging=stderr".into(),
            "--v=0".into(),
            format!("--log-net-log={}", net.display()),
            "--dump-dom".into(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {}\n{stderr}", out.status);
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_owned)
        .collect();
    let log: Value =
        serde_json::from_slice(&std::fs::read(&net).expect("chromium wrote its net log")).expect("the net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    assert!(start_job.is_number(), "the net log names its event types");
    let (mut requests, mut background) = (Vec::new(), 0);
    for e in log["events"].as_array().expect("the net log has events") {
        let params = &e["params"];
        let Some(url) = params["url"].as_str() else {
            continue;
        };
        if e["type"] != start_job {
            continue;
        }
        // The browser's own requests have no origin behind them; the
        // page's come from its (opaque, file://) origin, keyed by it.
        let isolation = params["network_isolation_key"].as_str().unwrap_or("");
        if params["initiator"] == "not an origin" && !isolation.contains("file://") {
            background += 1;
        } else {
            requests.push(url.to_owned());
        }
    }
    Visit {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
        requests,
        background,
    }
}

/// Every `<svg ...>` opening tag with its body.
fn svgs(html: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("<svg ") {
        let tail = &rest[at..];
        let open = tail.find('>').expect("a closed tag");
        let end = tail.find("</svg>").expect("a closed svg");
        out.push((&tail[..open], &tail[open..end]));
        rest = &tail[end..];
    }
    out
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    tag[at..].split('"').next()
}

/// Tags of the elements in `body` that draw a series.
fn series(body: &str) -> Vec<&str> {
    body.split('<').filter(|t| t.contains(" data-series=\"")).collect()
}

fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The PNG's width and height, from its header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

fn profile(sim: &Sim, collector: &Collector) -> String {
    format!(
        r#"
        name = "report"
        [target]
        url = "{}"
        model = "llm-sim"
        timeout = "30s"
        [load.sweep]
        users = [2, 8, 24]
        step = "3s"
        [load]
        warmup = "1s"
        drain = "15s"
        [request]
        max_tokens = 16
        [prompts]
        inline = ["{}", "{}"]
        [agents]
        count = 2
        [server_metrics]
        interval = "500ms"
        [trace]
        endpoint = "{}"
        protocol = "grpc"
        "#,
        sim.url,
        prompt_of(12),
        prompt_of(40),
        collector.grpc_url()
    )
}

fn a_sweeps_report_opens_offline_in_chromium_and_draws_every_interval() -> Outcome {
    let chromium = chromium()?;
    let _machine = exclusive();
    let tmp = tempfile::tempdir().expect("a temporary directory");

    // First the checks themselves: a page that fetches and logs is caught.
    let control = tmp.path().join("control.html");
    let closed = free_port();
    std::fs::write(
        &control,
        format!(
            r#"<!DOCTYPE html><html><head><link rel="stylesheet" href="http://127.0.0.1:{closed}/x.css"></head><body><script>console.error("control")</script></body></html>"#
        ),
    )
    .unwrap();
    let v = visit(&chromium, tmp.path(), &control);
    assert_eq!(
        v.requests,
        [format!("http://127.0.0.1:{closed}/x.css")],
        "the control page's request"
    );
    assert!(v.console.iter().any(|l| l.contains("control")), "{:?}", v.console);

    // A sweep past the simulator's 8 batch slots: throughput stops at 8
    // users and TTFT climbs at 24, so the knee is at 24.
    let collector = Collector::start();
    let sim = Sim::start(&[
        "--max-batch",
        "8",
        "--prefill-base",
        "20ms",
        "--prefill-per-token",
        "0s",
        "--decode-step",
        "20ms",
        "--decode-step-per-seq",
        "0s",
        "--kv-cache-tokens",
        "100000",
        "--dcgm",
    ]);
    let run = run_profile(&profile(&sim, &collector), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let dir = run.dir.as_ref().expect("a results directory");
    let page = dir.join("report.html");
    assert!(
        run.stdout().contains(&format!("report    {}", page.display())),
        "{}",
        run.stdout()
    );
    let html = std::fs::read_to_string(&page).expect("report.html is written");
    let artefacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&artefacts).unwrap();
    std::fs::copy(&page, artefacts.join("report.html")).unwrap();

    let v = visit(&chromium, tmp.path(), &page);
    assert!(v.console.is_empty(), "console output: {:#?}", v.console);
    assert!(v.requests.is_empty(), "the page requested {:?}", v.requests);
    eprintln!("the browser's own requests, left out: {}", v.background);
    let dom = &v.dom;
    assert!(
        dom.contains("<svg"),
        "no page in the dump: {}",
        &dom[..dom.len().min(500)]
    );

    // Every time-series chart: one point per interval of summary.json.
    let intervals = s["intervals"].as_array().unwrap();
    let n = intervals.len();
    assert!(n >= 9, "{n} intervals");
    let time: Vec<_> = svgs(dom)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("time"))
        .collect();
    let ids: Vec<&str> = time.iter().filter_map(|(open, _)| attr(open, "data-chart")).collect();
    for id in [
        "load",
        "requests",
        "tokens",
        "ttft",
        "itl",
        "e2e",
        "errors",
        "server-requests",
        "server-queue",
        "memory",
        "utilisation",
        "ttft-parts",
    ] {
        assert!(ids.contains(&id), "no {id} chart among {ids:?}");
    }
    let mut drawn = 0;
    for (open, body) in &time {
        let tags = series(body);
        assert!(!tags.is_empty(), "a chart with no series: {open}");
        for tag in tags {
            assert_eq!(attr(tag, "data-points"), Some(n.to_string().as_str()), "{open}\n{tag}");
            drawn += 1;
        }
    }
    // The page's script read every one of them.
    assert!(
        dom.contains(&format!("data-series-read=\"{drawn}\"")),
        "the script did not run over {drawn} series"
    );
    let ttft = time.iter().find(|t| attr(t.0, "data-chart") == Some("ttft")).unwrap();
    let gaps = intervals.iter().filter(|i| i["ttft_p50_ms"].is_null()).count();
    assert_eq!(attr(series(ttft.1)[0], "data-missing"), Some(gaps.to_string().as_str()));

    // The knee, ringed in the latency-against-throughput charts.
    let knee = &s["knee"];
    assert_eq!(knee["found"], true, "no knee: {:#}", s["load_table"]);
    let label = knee["label"].as_str().unwrap();
    assert!(
        dom.contains(&format!("data-knee=\"{}\"", escaped(label))),
        "no knee marker at {label}"
    );
    // One point per step.
    let steps = svgs(dom)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("steps"))
        .collect::<Vec<_>>();
    assert_eq!(steps.len(), 4);
    for (_, body) in steps {
        assert_eq!(attr(series(body)[0], "data-points"), Some("3"));
    }

    // The findings, near the top, each with its evidence.
    let at = dom.find("id=\"findings\"").expect("a findings section");
    assert!(at < dom.find("id=\"timeline\"").unwrap());
    let findings = s["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["kind"] == "saturation"), "{findings:#?}");
    for f in findings {
        let kind = f["kind"].as_str().unwrap();
        assert!(dom.contains(&format!("data-finding=\"{kind}\"")), "{kind}");
        assert!(dom.contains(&escaped(f["title"].as_str().unwrap())), "{f:#}");
    }

    // TTFT and TPOT graded, as the summary grades them.
    for metric in ["TTFT", "TPOT"] {
        let grade = s["grades"][metric.to_lowercase()]["grade"].as_str().unwrap();
        assert!(
            dom.contains(&format!(r#"class="grade {grade}" data-grade="{metric}""#)),
            "no {grade} grade for {metric}"
        );
    }

    // Percentile distributions from the histograms.
    let dists: Vec<_> = svgs(dom)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("percentiles"))
        .collect();
    assert_eq!(dists.len(), 4);
    for (open, body) in dists {
        let points: usize = attr(series(body)[0], "data-points").unwrap().parse().unwrap();
        assert!(points > 5, "{open}: {points} points");
    }

    // Where TTFT goes names the server's queue metric it used, and the
    // slowest requests link to their traces.
    assert!(html.contains("llmsim_queue_time_seconds"));
    let slowest = s["tracing"]["slowest_e2e"][0]["link"].as_str().expect("a trace link");
    assert!(
        html.contains(&format!("<a href=\"{}\">", escaped(slowest))),
        "{slowest}"
    );

    // The screenshot, kept.
    let png = artefacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = browse(
        &chromium,
        tmp.path(),
        &page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,2400".into(),
        ],
    );
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert_eq!(png_size(&bytes), (1400, 2400));
    // A blank page of that size compresses to a few kilobytes.
    assert!(bytes.len() > 60_000, "a near-empty screenshot: {} bytes", bytes.len());
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());
    drop(sim);
    Ok(())
}
