use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, NumberDataPoint, metric, number_data_point};
use stampede_proto::ErrorClass;

use super::*;

fn about(stream: bool) -> About {
    About {
        run_id: "r1".to_owned(),
        profile: "p".to_owned(),
        service_name: "stampede".to_owned(),
        model: "m".to_owned(),
        provider: "openai".to_owned(),
        operation: "chat".to_owned(),
        address: "gpu-box".to_owned(),
        port: 8000,
        stream,
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

fn metrics(r: &ExportMetricsServiceRequest) -> &[OtlpMetric] {
    &r.resource_metrics[0].scope_metrics[0].metrics
}

fn find<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a OtlpMetric> {
    metrics(r).iter().find(|m| m.name == name)
}

fn histogram<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> &'a [HistogramDataPoint] {
    match find(r, name).and_then(|m| m.data.as_ref()) {
        Some(metric::Data::Histogram(h)) => {
            assert_eq!(h.aggregation_temporality, CUMULATIVE, "{name}");
            &h.data_points
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn sum<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> &'a [NumberDataPoint] {
    match find(r, name).and_then(|m| m.data.as_ref()) {
        Some(metric::Data::Sum(s)) => {
            assert!(s.is_monotonic && s.aggregation_temporality == CUMULATIVE, "{name}");
            &s.data_points
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn has(attributes: &[KeyValue], key: &str, value: &str) -> bool {
    matches!(attr(attributes, key), Some(any_value::Value::StringValue(v)) if v == value)
}

fn int_value(p: &NumberDataPoint) -> i64 {
    match p.value {
        Some(number_data_point::Value::AsInt(n)) => n,
        other => panic!("{other:?}"),
    }
}

/// Two requests, one at exactly a bucket bound, and a failure.
fn first() -> (Histograms, Counters) {
    let mut h = Histograms::new();
    h.record(Metric::Ttft, 40_000); // 40 ms: exactly a bound
    h.record(Metric::Ttft, 2_000_000); // 2 s
    h.record(Metric::E2e, 1_000_000);
    h.record(Metric::E2e, 3_000_000);
    for _ in 0..10 {
        h.record(Metric::ChunkGap, 20_000);
    }
    h.record(Metric::InputTokens, 100);
    h.record(Metric::InputTokens, 300);
    h.record(Metric::OutputTokens, 64);
    h.record(Metric::OutputTokens, 64);
    let mut c = Counters {
        ok: 2,
        input_tokens: 400,
        output_tokens: 128,
        ..Counters::default()
    };
    c.count_error(ErrorClass::Status(503));
    (h, c)
}

#[test]
fn buckets_add_up_to_the_count_and_a_bound_holds_its_own_value() {
    let (h, c) = first();
    let r = build(&about(true), &Snapshot::of(&h, &c, 3, [2, 0, 0], Vec::new()));
    for m in metrics(&r) {
        if let Some(metric::Data::Histogram(hist)) = &m.data {
            for p in &hist.data_points {
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1, "{}", m.name);
                assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{}", m.name);
                assert!(p.explicit_bounds.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                assert!(has(&p.attributes, "stampede.run_id", "r1"), "{}", m.name);
            }
        }
    }
    let ttft = &histogram(&r, "stampede.ttft")[0];
    assert_eq!(ttft.count, 2);
    let at = |bound: f64| ttft.explicit_bounds.iter().position(|b| *b == bound).expect("a bound");
    assert_eq!(ttft.bucket_counts[at(0.04)], 1, "40 ms counts at le=0.04");
    assert_eq!(ttft.bucket_counts[at(2.5)], 1, "2 s counts at le=2.5");
    let (min, max) = (ttft.min.expect("min"), ttft.max.expect("max"));
    assert!(
        (min - 0.04).abs() < 0.04 * 1e-3 && (max - 2.0).abs() < 2.0 * 1e-3,
        "{min} {max}"
    );
    let sum_s = ttft.sum.expect("sum");
    assert!((sum_s - 2.04).abs() < 2.04 * 1e-3, "{sum_s}");

    // The GenAI names, with their attributes.
    let duration = &histogram(&r, "gen_ai.client.operation.duration")[0];
    assert_eq!(duration.count, 2);
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "m"),
        ("server.address", "gpu-box"),
    ] {
        assert!(has(&duration.attributes, key, value), "{key}");
    }
    assert_eq!(
        attr(&duration.attributes, "server.port"),
        Some(&any_value::Value::IntValue(8000))
    );
    let usage = histogram(&r, "gen_ai.client.token.usage");
    let input = usage
        .iter()
        .find(|p| has(&p.attributes, "gen_ai.token.type", "input"))
        .expect("input tokens");
    assert_eq!((input.count, input.sum), (2, Some(400.0)));
    assert_eq!(
        input.bucket_counts[input.explicit_bounds.iter().position(|b| *b == 256.0).expect("256")],
        1
    );
    assert_eq!(
        histogram(&r, "gen_ai.client.operation.time_per_output_chunk")[0].count,
        10
    );
    assert_eq!(histogram(&r, "gen_ai.client.operation.time_to_first_chunk")[0].count, 2);

    // Counters and gauges.
    let requests = sum(&r, "stampede.requests");
    let ok = requests
        .iter()
        .find(|p| has(&p.attributes, "stampede.outcome", "ok"))
        .expect("ok");
    assert_eq!(int_value(ok), 2);
    let failed = requests
        .iter()
        .find(|p| has(&p.attributes, "error.type", "http_503"))
        .expect("a failure class");
    assert!(has(&failed.attributes, "stampede.outcome", "failed"));
    assert_eq!(int_value(failed), 1);
    let tokens = sum(&r, "stampede.tokens");
    let output = tokens
        .iter()
        .find(|p| has(&p.attributes, "gen_ai.token.type", "output"))
        .expect("output");
    assert_eq!(int_value(output), 128);
    let resource = r.resource_metrics[0].resource.as_ref().expect("a resource");
    assert!(has(&resource.attributes, "service.name", "stampede"));
    assert!(has(&resource.attributes, "stampede.run_id", "r1"));
    let units: Vec<(&str, &str)> = metrics(&r).iter().map(|m| (m.name.as_str(), m.unit.as_str())).collect();
    assert!(units.contains(&("stampede.e2e", "s")) && units.contains(&("stampede.tokens", "{token}")));
    assert!(units.contains(&("stampede.requests", "{request}")));
}

#[test]
fn later_pushes_are_cumulative_from_the_same_start() {
    let a = about(false);
    let (mut h, mut c) = first();
    let early = build(&a, &Snapshot::of(&h, &c, 3, [2, 0, 0], Vec::new()));
    h.record(Metric::Ttft, 30_000);
    h.record(Metric::Ttft, 90_000_000); // beyond every bound
    c.ok += 2;
    let late = build(&a, &Snapshot::of(&h, &c, 0, [0, 2, 0], Vec::new()));
    let (e, l) = (
        &histogram(&early, "stampede.ttft")[0],
        &histogram(&late, "stampede.ttft")[0],
    );
    assert_eq!(l.count, 4);
    assert_eq!(
        *l.bucket_counts.last().expect("an overflow bucket"),
        1,
        "90 s is above 80 s"
    );
    assert!(e.bucket_counts.iter().zip(&l.bucket_counts).all(|(e, l)| e <= l));
    assert_eq!(e.start_time_unix_nano, l.start_time_unix_nano);
    assert!(l.time_unix_nano >= e.time_unix_nano && e.time_unix_nano >= e.start_time_unix_nano);
    let ok = |r: &ExportMetricsServiceRequest| {
        sum(r, "stampede.requests")
            .iter()
            .find(|p| has(&p.attributes, "stampede.outcome", "ok"))
            .map(int_value)
    };
    assert_eq!((ok(&early), ok(&late)), (Some(2), Some(4)));
    // Not streamed: the chunk metrics of the conventions do not apply.
    assert!(find(&late, "gen_ai.client.operation.time_to_first_chunk").is_none());
    assert!(find(&late, "gen_ai.client.operation.time_per_output_chunk").is_none());
    // An empty histogram has neither min nor max.
    let itl = &histogram(&late, "stampede.itl")[0];
    assert_eq!((itl.count, itl.min, itl.max), (0, None, None));
}

#[test]
fn figures_from_outside_the_histograms_keep_their_kinds_one_metric_per_name() {
    let (h, c) = first();
    let device = |d: &str| {
        vec![
            ("stampede.gpu.source", "dcgm".to_owned()),
            ("stampede.gpu.device", d.to_owned()),
        ]
    };
    let figures = vec![
        Figure {
            name: "stampede.gpu.utilization".to_owned(),
            description: "u",
            unit: "1",
            attributes: device("0"),
            value: FigureValue::Gauge(0.4),
        },
        Figure {
            name: "stampede.gpu.utilization".to_owned(),
            description: "u",
            unit: "1",
            attributes: device("1"),
            value: FigureValue::Gauge(0.9),
        },
        Figure {
            name: "stampede.server.requests".to_owned(),
            description: "r",
            unit: "{request}",
            attributes: Vec::new(),
            value: FigureValue::Counter(40.0),
        },
        Figure {
            name: "stampede.server.queue_time".to_owned(),
            description: "q",
            unit: "s",
            attributes: Vec::new(),
            value: FigureValue::Summary { sum: 1.5, count: 30.0 },
        },
    ];
    let r = build(&about(true), &Snapshot::of(&h, &c, 3, [2, 0, 0], figures));
    let named = |name: &str| metrics(&r).iter().filter(|m| m.name == name).count();
    assert_eq!(named("stampede.gpu.utilization"), 1);
    match find(&r, "stampede.gpu.utilization").and_then(|m| m.data.as_ref()) {
        Some(metric::Data::Gauge(g)) => {
            assert_eq!(g.data_points.len(), 2);
            assert!(has(&g.data_points[1].attributes, "stampede.gpu.device", "1"));
            assert!(has(&g.data_points[1].attributes, "stampede.run_id", "r1"));
            assert_eq!(g.data_points[1].value, Some(number_data_point::Value::AsDouble(0.9)));
        }
        other => panic!("{other:?}"),
    }
    match find(&r, "stampede.server.requests").and_then(|m| m.data.as_ref()) {
        Some(metric::Data::Sum(s)) => {
            assert!(s.is_monotonic);
            assert_eq!(s.aggregation_temporality, CUMULATIVE);
            assert_eq!(s.data_points[0].value, Some(number_data_point::Value::AsDouble(40.0)));
        }
        other => panic!("{other:?}"),
    }
    match find(&r, "stampede.server.queue_time").and_then(|m| m.data.as_ref()) {
        Some(metric::Data::Summary(s)) => assert_eq!((s.data_points[0].count, s.data_points[0].sum), (30, 1.5)),
        other => panic!("{other:?}"),
    }
}
