use super::*;
use crate::results::log::ReportEntry;
use crate::server::{map, prom};
use stampede_proto::{ErrorClass, Histograms};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn report() -> (Histograms, Counters) {
    let mut h = Histograms::new();
    h.record(Metric::Ttft, 40_000); // 40 ms
    h.record(Metric::Ttft, 2_000_000); // 2 s
    h.record(Metric::Itl, 20_000);
    h.record(Metric::ClientQueue, 700);
    let mut c = Counters {
        ok: 2,
        output_tokens: 64,
        active_users: 5,
        ..Counters::default()
    };
    c.count_error(ErrorClass::Status(503));
    (h, c)
}

fn exemplar(metric: Metric, value_us: u64, trace_id: &str) -> pb::Exemplar {
    pb::Exemplar {
        metric: metric.to_wire() as i32,
        value_us,
        trace_id: trace_id.to_owned(),
        interval: 0,
    }
}

fn entry(agent: &str, report: pb::Report) -> ReportEntry {
    ReportEntry {
        agent: agent.to_owned(),
        agent_index: 0,
        report,
    }
}

/// A run with tracing on, one report with an exemplar of 84.3 ms TTFT
/// (bucket `le="0.1"`) and one of 2.5 s E2E drawn from the exported
/// requests.
fn traced() -> Live {
    let live = Live::new("r1", "high", "http://x:8000").with_exemplars(true);
    let (h, c) = report();
    live.report(0, &Sparse::from(&h), &c);
    let wire = pb::Report {
        exemplars: vec![exemplar(Metric::Ttft, 84_300, TRACE)],
        sampled_exemplars: vec![exemplar(Metric::E2e, 2_500_000, "00000000000000000000000000000abc")],
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("agent-0", wire)));
    live
}

#[test]
fn reports_add_up_into_counters_and_buckets_every_series_with_the_run_id() {
    let live = Live::new("r1", "high", "http://x:8000");
    let (h, c) = report();
    live.report(0, &Sparse::from(&h), &c);
    live.report(1, &Sparse::from(&h), &c);
    live.agents(2, 0, 0);
    let text = live.render(Format::Text);
    assert!(text.contains("stampede_run_info{profile=\"high\",target=\"http://x:8000\",run_id=\"r1\"} 1\n"));
    assert!(text.contains("\nstampede_requests_total{run_id=\"r1\"} 4\n"), "{text}");
    assert!(text.contains("stampede_request_errors_total{class=\"http_503\",run_id=\"r1\"} 2\n"));
    assert!(text.contains("\nstampede_output_tokens_total{run_id=\"r1\"} 128\n"));
    assert!(text.contains("\nstampede_active_users{run_id=\"r1\"} 10\n"));
    assert!(text.contains("stampede_agents{state=\"running\",run_id=\"r1\"} 2\n"));
    assert!(
        text.contains("stampede_ttft_seconds_bucket{le=\"0.05\",run_id=\"r1\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("stampede_ttft_seconds_bucket{le=\"1.5\",run_id=\"r1\"} 2\n"));
    assert!(text.contains("stampede_ttft_seconds_bucket{le=\"2\",run_id=\"r1\"} 4\n"));
    assert!(text.contains("stampede_ttft_seconds_bucket{le=\"+Inf\",run_id=\"r1\"} 4\n"));
    assert!(text.contains("stampede_ttft_seconds_count{run_id=\"r1\"} 4\n"));
    assert!(text.contains("stampede_itl_seconds_bucket{le=\"0.02\",run_id=\"r1\"} 2\n"));
    assert!(text.contains("stampede_client_queue_seconds_bucket{le=\"0.001\",run_id=\"r1\"} 2\n"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains("run_id=\"r1\"}"), "{line}");
    }
    assert!(text.contains("# TYPE stampede_requests_total counter\n"));
    assert!(text.contains("# TYPE stampede_run_info gauge\n"));
    assert!(!text.contains("# EOF"));
}

#[test]
fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
    let text = traced().render(Format::OpenMetrics);
    assert!(text.ends_with("\n# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.contains("# HELP stampede_requests Successful requests.\n# TYPE stampede_requests counter\n"));
    assert!(text.contains("\nstampede_requests_total{run_id=\"r1\"} 2\n"));
    assert!(text.contains("# TYPE stampede_request_errors counter\n"));
    assert!(text.contains("# TYPE stampede_run info\nstampede_run_info{"));
    assert!(text.contains("# TYPE stampede_ttft_seconds histogram\n"));
    assert!(!text.contains("_total counter"), "{text}");
    // Every line is a descriptor or a sample of a declared family.
    let mut declared = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if !line.starts_with("# HELP ") && line != "# EOF" {
            let name = &line[..line.find('{').unwrap_or(line.len())];
            let family = declared.last().expect("a sample follows its TYPE");
            assert!(name.starts_with(family.as_str()), "{line} is not of {family}");
            assert!(line.contains("run_id=\"r1\"}"), "{line}");
        }
    }
}

#[test]
fn exemplars_sit_on_their_buckets_only_in_openmetrics() {
    let live = traced();
    let text = live.render(Format::OpenMetrics);
    let with: Vec<&str> = text.lines().filter(|l| l.contains(" # {")).collect();
    assert_eq!(with.len(), 2, "{with:?}");
    // 84.3 ms: the first bound at least it is 0.1.
    let ttft = with[0];
    assert!(
        ttft.starts_with(&format!(
            "stampede_ttft_seconds_bucket{{le=\"0.1\",run_id=\"r1\"}} 1 # {{trace_id=\"{TRACE}\"}} 0.0843 "
        )),
        "{ttft}"
    );
    let at: f64 = ttft
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("a timestamp");
    assert!((at - unix_now()).abs() < 60.0, "{at}");
    let decimals = ttft.rsplit('.').next().unwrap_or_default();
    assert_eq!(decimals.len(), 3, "{ttft}");
    assert!(with[1].starts_with(
        "stampede_e2e_seconds_bucket{le=\"3\",run_id=\"r1\"} 0 # {trace_id=\"00000000000000000000000000000abc\"} 2.5 "
    ));
    // The latest exemplar of a bucket replaces the one before.
    let wire = pb::Report {
        exemplars: vec![exemplar(Metric::Ttft, 99_000, "0000000000000000000000000000000f")],
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("agent-0", wire)));
    let text = live.render(Format::OpenMetrics);
    assert!(text.contains("le=\"0.1\",run_id=\"r1\"} 1 # {trace_id=\"0000000000000000000000000000000f\"} 0.099 "));
    assert!(!text.contains(TRACE));
    // Past the last bound: on +Inf.
    let wire = pb::Report {
        sampled_exemplars: vec![exemplar(Metric::Itl, 5_000_000, TRACE)],
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("agent-0", wire)));
    let text = live.render(Format::OpenMetrics);
    assert!(text.contains(&format!(
        "stampede_itl_seconds_bucket{{le=\"+Inf\",run_id=\"r1\"}} 1 # {{trace_id=\"{TRACE}\"}} 5 "
    )));
    // Never in the 0.0.4 format.
    assert!(!live.render(Format::Text).contains(" # {"));
}

#[test]
fn no_exemplars_without_tracing() {
    let live = Live::new("r1", "p", "t");
    let wire = pb::Report {
        exemplars: vec![exemplar(Metric::Ttft, 84_300, TRACE)],
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("agent-0", wire)));
    assert!(!live.render(Format::OpenMetrics).contains(" # {"));
}

#[test]
fn label_values_are_escaped_in_both_formats() {
    let live = Live::new("r\"1", "a\\b\nc", "http://x/\"q\"");
    for format in [Format::Text, Format::OpenMetrics] {
        let text = live.render(format);
        assert!(
            text.contains(
                "stampede_run_info{profile=\"a\\\\b\\nc\",target=\"http://x/\\\"q\\\"\",run_id=\"r\\\"1\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("stampede_requests_total{run_id=\"r\\\"1\"} 0\n"));
        // No raw newline inside a line.
        for line in text.lines() {
            assert!(line.starts_with('#') || line.starts_with("stampede_"), "{line}");
        }
    }
}

#[test]
fn openmetrics_is_chosen_from_the_accept_header() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(negotiate(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
    assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
    assert_eq!(
        negotiate(Some("application/openmetrics-text;q=0,text/plain")),
        Format::Text
    );
    assert_eq!(negotiate(Some("*/*")), Format::Text);
    assert_eq!(negotiate(None), Format::Text);
    assert_eq!(
        Format::OpenMetrics.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

#[test]
fn server_figures_and_gpus_are_served_latest_per_device() {
    let live = Live::new("r1", "p", "t");
    let page = prom::parse(
        "llmsim_queue_depth 7\nllmsim_running_sequences 3\nllmsim_requests_served_total 40\n\
         llmsim_queue_time_seconds_sum 1.5\nllmsim_queue_time_seconds_count 30\n\
         vllm:kv_cache_usage_perc 0.25\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 40\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\"} 90\n\
         DCGM_FI_DEV_FB_USED{gpu=\"0\"} 1024\nDCGM_FI_DEV_FB_FREE{gpu=\"0\"} 3072\n\
         DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} 250.5\nDCGM_FI_PROF_DRAM_ACTIVE{gpu=\"0\"} 0.6\n",
    );
    live.scrape(&map::map(&page.samples), &page.samples);
    let wire = pb::Report {
        cpu: 0.25,
        gpu: vec![pb::GpuSample {
            device: 0,
            utilization_pct: 55,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 8 << 30,
            power_mw: 0,
            memory_utilization_pct: 12,
            elapsed_us: 1,
        }],
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("edge-1", wire)));
    let text = live.render(Format::Text);
    for line in [
        "stampede_server_queue_depth{run_id=\"r1\"} 7",
        "stampede_server_running{run_id=\"r1\"} 3",
        "stampede_server_requests_total{run_id=\"r1\"} 40",
        "stampede_server_queue_time_seconds_sum{run_id=\"r1\"} 1.5",
        "stampede_server_queue_time_seconds_count{run_id=\"r1\"} 30",
        "stampede_server_kv_cache_usage_ratio{run_id=\"r1\"} 0.25",
        "stampede_gpu_utilization_ratio{source=\"dcgm\",device=\"0\",run_id=\"r1\"} 0.4",
        "stampede_gpu_utilization_ratio{source=\"dcgm\",device=\"1\",run_id=\"r1\"} 0.9",
        "stampede_gpu_memory_used_bytes{source=\"dcgm\",device=\"0\",run_id=\"r1\"} 1073741824",
        "stampede_gpu_memory_total_bytes{source=\"dcgm\",device=\"0\",run_id=\"r1\"} 4294967296",
        "stampede_gpu_power_watts{source=\"dcgm\",device=\"0\",run_id=\"r1\"} 250.5",
        "stampede_gpu_memory_bandwidth_utilization_ratio{source=\"dcgm\",device=\"0\",run_id=\"r1\"} 0.6",
        "stampede_gpu_utilization_ratio{source=\"nvml\",agent=\"edge-1\",device=\"0\",run_id=\"r1\"} 0.55",
        "stampede_gpu_memory_total_bytes{source=\"nvml\",agent=\"edge-1\",device=\"0\",run_id=\"r1\"} 8589934592",
        "stampede_agent_cpu_ratio{agent=\"edge-1\",run_id=\"r1\"} 0.25",
    ] {
        assert!(text.contains(&format!("{line}\n")), "no {line} in\n{text}");
    }
    assert!(text.contains("# HELP stampede_server_queue_depth Requests waiting in the server's queue for a batch slot, at the latest scrape of the server (its llmsim_queue_depth).\n"));
    assert!(text.contains("# TYPE stampede_server_queue_time_seconds summary\n"));
    // The board said no power: no series rather than 0 W.
    assert!(!text.contains("stampede_gpu_power_watts{source=\"nvml\""));
    // The next scrape replaces the last; a device gone is gone.
    let page = prom::parse("llmsim_queue_depth 2\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 10\n");
    live.scrape(&map::map(&page.samples), &page.samples);
    let text = live.render(Format::OpenMetrics);
    assert!(text.contains("stampede_server_queue_depth{run_id=\"r1\"} 2\n"));
    assert!(!text.contains("stampede_server_running"));
    assert!(!text.contains("device=\"1\""));
    assert!(text.contains("# TYPE stampede_server_requests counter\n") || !text.contains("stampede_server_requests"));
}

#[test]
fn figures_for_otlp_name_what_the_page_serves() {
    let live = Live::new("r1", "p", "t");
    let page = prom::parse(
        "llmsim_queue_depth 7\nllmsim_requests_served_total 40\n\
         llmsim_queue_time_seconds_sum 1.5\nllmsim_queue_time_seconds_count 30\n\
         vllm:kv_cache_usage_perc 0.25\n\
         DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 40\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\"} 90\n\
         DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} 250.5\n",
    );
    live.scrape(&map::map(&page.samples), &page.samples);
    let wire = pb::Report {
        cpu: 0.25,
        ..pb::Report::default()
    };
    live.extras(Extras::of(&entry("edge-1", wire)));
    let figures = live.figures();
    let find = |name: &str, device: Option<&str>| {
        figures
            .iter()
            .find(|f| {
                f.name == name && device.is_none_or(|d| f.attributes.contains(&("stampede.gpu.device", d.to_owned())))
            })
            .unwrap_or_else(|| panic!("no {name} {device:?} in {figures:#?}"))
    };
    assert_eq!(find("stampede.server.queue_depth", None).value, FigureValue::Gauge(7.0));
    assert_eq!(find("stampede.server.queue_depth", None).unit, "{request}");
    assert_eq!(find("stampede.server.requests", None).value, FigureValue::Counter(40.0));
    let queue = find("stampede.server.queue_time", None);
    assert_eq!(
        (queue.unit, queue.value),
        ("s", FigureValue::Summary { sum: 1.5, count: 30.0 })
    );
    let kv = find("stampede.server.kv_cache_usage", None);
    assert_eq!((kv.unit, kv.value), ("1", FigureValue::Gauge(0.25)));
    let gpu = find("stampede.gpu.utilization", Some("1"));
    assert_eq!(gpu.value, FigureValue::Gauge(0.9));
    assert!(gpu.attributes.contains(&("stampede.gpu.source", "dcgm".to_owned())));
    assert_eq!(
        find("stampede.gpu.utilization", Some("0")).value,
        FigureValue::Gauge(0.4)
    );
    let power = find("stampede.gpu.power", Some("0"));
    assert_eq!((power.unit, power.value), ("W", FigureValue::Gauge(250.5)));
    let cpu = find("stampede.agent.cpu", None);
    assert_eq!(cpu.attributes, vec![("stampede.agent", "edge-1".to_owned())]);
    assert_eq!(cpu.value, FigureValue::Gauge(0.25));
}
