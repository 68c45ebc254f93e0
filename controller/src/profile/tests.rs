use super::*;

fn parse(text: &str) -> Result<Profile, ProfileError> {
    Profile::parse(text, Path::new("p.toml"), &Overrides::default())
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(ProfileError::Invalid { problems, .. }) => problems
            .iter()
            .map(|p| format!("{}:{} {}: {}", p.line, p.column, p.key, p.message))
            .collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn a_minimal_profile_gets_every_default() {
    let p = parse("[load]\nusers = 5\n").unwrap();
    assert_eq!(p.name, "p");
    assert_eq!(p.load.peak() as u32, 5);
    assert_eq!(p.target.url, None);
    assert_eq!(p.target.api.dialect, Dialect::OpenAiChat);
    assert_eq!(p.target.timeout, Duration::from_secs(120));
    assert_eq!(p.target.retry_after_max, Some(DEFAULT_RETRY_AFTER_MAX));
    assert_eq!(p.load.duration(), Duration::from_secs(30));
    assert_eq!(p.load.drain, Duration::from_secs(30));
    assert_eq!(p.agents.get(), 1);
    assert_eq!(p.on_agent_loss, OnAgentLoss::Abort);
    assert!(p.request.stream);
    assert_eq!(p.request.max_tokens, None);
    assert_eq!(p.prompt_source, "builtin:mixed");
    assert_eq!(p.report.interval, Duration::from_secs(1));
    assert_eq!(p.report.out, PathBuf::from("results"));
    assert_eq!(p.sim, stampede_sim::Config::default());
    assert_eq!(p.thresholds.max_error_rate, 0.0);
}

#[test]
fn retry_after_is_honoured_up_to_its_cap_or_turned_off() {
    let cap = |extra: &str| {
        parse(&format!("[target]\n{extra}\n[load]\nusers = 1\n"))
            .unwrap()
            .target
            .retry_after_max
    };
    assert_eq!(cap("retry_after_max = \"5s\""), Some(Duration::from_secs(5)));
    assert_eq!(cap("retry_after = true"), Some(DEFAULT_RETRY_AFTER_MAX));
    assert_eq!(cap("retry_after = false\nretry_after_max = \"5s\""), None);
    assert_eq!(
        problems("[target]\nretry_after = \"yes\"\nretry_after_max = \"0s\"\n[load]\nusers = 1\n"),
        [
            "2:15 target.retry_after: expected true or false, got \"yes\"",
            "3:19 target.retry_after_max: expected a positive duration such as \"30s\", \"2m\" or \"250ms\", got \"0s\"",
        ]
    );
}

#[test]
fn every_key_is_read() {
    let p = parse(
        r#"
        name = "full"
        seed = 7
        [target]
        url = "http://gpu:8000"
        api = "openai-chat"
        model = "m"
        timeout = "10s"
        [load]
        users = 50
        duration = "2m"
        drain = "5s"
        [request]
        max_tokens = 64
        temperature = 0.7
        stream = false
        [prompts]
        inline = ["one two", "three", "four five six"]
        [agents]
        count = 3
        on_agent_loss = "continue"
        [report]
        interval = "500ms"
        out = "elsewhere"
        [sim]
        max_batch = 4
        prefill_base = "1ms"
        prefill_per_token = "100us"
        decode_step = "10ms"
        decode_step_per_seq = "0s"
        output_tokens = "8..16"
        seed = 3
        [thresholds]
        max_error_rate = 0.01
        "#,
    )
    .unwrap();
    assert_eq!((p.name.as_str(), p.seed), ("full", 7));
    assert_eq!(p.target.url.as_deref(), Some("http://gpu:8000"));
    assert_eq!(p.target.model.as_deref(), Some("m"));
    assert_eq!(p.load.duration(), Duration::from_secs(120));
    assert_eq!(p.request.max_tokens, Some(64));
    assert_eq!(p.request.temperature, Some(0.7));
    assert!(!p.request.stream);
    assert_eq!(p.prompts.len(), 3);
    assert_eq!(p.agents.get(), 3);
    assert_eq!(p.on_agent_loss, OnAgentLoss::Continue);
    assert_eq!(p.report.interval, Duration::from_millis(500));
    assert_eq!(p.sim.max_batch, 4);
    assert_eq!(p.sim.output_tokens, OutputLength::Uniform { min: 8, max: 16 });
    assert_eq!(p.thresholds.max_error_rate, 0.01);
}

#[test]
fn every_problem_is_reported_at_once_with_line_key_and_value() {
    let found =
        problems("[load]\nusers = -3\nduration = \"thirty\"\nuserz = 4\n[request]\nmax_tokens = \"many\"\n[targte]\n");
    assert_eq!(
        found,
        [
            "2:9 load.users: expected a positive integer up to 1000000, got -3",
            "3:12 load.duration: expected a positive duration such as \"30s\", \"2m\" or \"250ms\", got \"thirty\"",
            "4:1 load.userz: unknown key (did you mean \"users\"?); expected one of: users, rate, stages, sweep, duration, warmup, drain, think_time, pace, spawn_rate, arrival, burstiness, max_concurrency, requests, trace, trace_format, speed, start, length, block_size",
            "6:14 request.max_tokens: expected a positive integer up to 10000000, got \"many\"",
            "7:2 targte: unknown key (did you mean \"target\"?); expected one of: name, seed, target, report, load, request, prompts, agents, sim, server_metrics, trace, metrics, slo, thresholds, grades",
        ]
    );
}

#[test]
fn invalid_toml_names_the_place() {
    let found = problems("[load]\nusers = = 5\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("2:"), "{found:?}");
    assert!(found[0].contains("invalid TOML"), "{found:?}");
    let e = parse("[load\nusers = 2\n").unwrap_err().to_string();
    assert!(e.starts_with("p.toml:1:"), "{e}");
    assert!(e.contains(": invalid TOML: "), "{e}");
}

#[test]
fn missing_users_is_a_problem() {
    let found = problems("[load]\nduration = \"5s\"\n");
    assert_eq!(
        found,
        [
            "0:0 load.users: missing: choose one load model: users = N (closed loop), rate = R (open loop), stages = [...], [load.sweep] or trace = \"file\""
        ]
    );
}

#[test]
fn wrong_types_and_ranges() {
    let found = problems(
        "target = 3\n[load]\nusers = 1\n[request]\ntemperature = 9.5\nstream = \"yes\"\n[prompts]\nbuiltin = \"huge\"\n",
    );
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found[0].contains("target: expected a table, got 3"));
    assert!(found[1].contains("request.temperature: expected a number from 0 to 2, got 9.5"));
    assert!(found[2].contains("request.stream: expected true or false, got \"yes\""));
    assert!(found[3].contains("prompts.builtin: expected one of \"short\", \"medium\", \"long\", \"mixed\""));
}

#[test]
fn durations_past_thirty_days_are_refused_before_they_overflow_a_clock() {
    let found = problems("[load]\nusers = 1\nduration = \"18446744073709551615s\"\ndrain = \"721h\"\n");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains(
            "load.duration: expected a duration of at most 30 days (\"720h\"), got \"18446744073709551615s\""
        ),
        "{found:?}"
    );
    assert!(
        found[1].contains("load.drain: expected a duration of at most 30 days"),
        "{found:?}"
    );
    let longest = parse("[load]\nusers = 1\nduration = \"720h\"\n").unwrap();
    assert_eq!(longest.load.duration(), Duration::from_secs(30 * 24 * 3600));
}

#[test]
fn liveness_limits_have_defaults_that_ride_out_a_5s_stall_and_are_checked_together() {
    let p = parse("[load]\nusers = 1\n").unwrap();
    assert_eq!(p.liveness, Liveness::default());
    let stall = Duration::from_secs(5);
    assert!(p.liveness.dead_man > stall && p.liveness.lost_after > stall);
    assert!(p.liveness.resume_limit >= p.liveness.dead_man);

    let p = parse("[load]\nusers = 1\n[agents]\nheartbeat = \"500ms\"\ndead_man = \"3s\"\nresume_limit = \"1m\"\nlost_after = \"4s\"\n")
        .unwrap();
    assert_eq!(
        p.liveness,
        Liveness {
            heartbeat: Duration::from_millis(500),
            dead_man: Duration::from_secs(3),
            resume_limit: Duration::from_secs(60),
            lost_after: Duration::from_secs(4),
        }
    );

    let found = problems(
        "[load]\nusers = 1\n[agents]\nheartbeat = \"50ms\"\ndead_man = \"1s\"\nresume_limit = \"500ms\"\nlost_after = \"100ms\"\n",
    );
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("agents.heartbeat: at least \"100ms\""), "{found:?}");
    assert!(
        found[1].contains("agents.resume_limit: at least agents.dead_man (1s)"),
        "{found:?}"
    );
    assert!(
        found[2].contains("agents.lost_after: at least three heartbeats (150ms)"),
        "{found:?}"
    );
    // A heartbeat too slow for the default limits is named with them.
    let found = problems("[load]\nusers = 1\n[agents]\nheartbeat = \"5s\"\n");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("agents.dead_man: at least three heartbeats (15s)"),
        "{found:?}"
    );
}

#[test]
fn bad_target_urls_are_caught_before_any_load() {
    let found = problems("[target]\nurl = \"gpu-box:8000\"\n[load]\nusers = 1\n");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains("target.url: target URL \"gpu-box:8000\": no scheme"),
        "{found:?}"
    );
    let cli = Overrides {
        target: Some("ftp://x".into()),
        ..Overrides::default()
    };
    let e = Profile::parse("[load]\nusers = 1\n", Path::new("p.toml"), &cli)
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.toml: --target: target URL \"ftp://x\""), "{e}");
}

#[test]
fn prompts_must_cover_every_agent_with_users() {
    let found = problems("[load]\nusers = 3\n[agents]\ncount = 3\n[prompts]\ninline = [\"a\", \"b\"]\n");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains("2 prompt(s) cannot give each of 3 agents"),
        "{found:?}"
    );
    // Two users over three agents leave one agent idle: two prompts do.
    parse("[load]\nusers = 2\n[agents]\ncount = 3\n[prompts]\ninline = [\"a\", \"b\"]\n").unwrap();
}

#[test]
fn command_line_wins_over_profile_which_wins_over_default() {
    let text = "[target]\nurl = \"http://a:1\"\n[load]\nusers = 4\nduration = \"1m\"\n[agents]\ncount = 2\n[report]\nout = \"r\"\n";
    let p = parse(text).unwrap();
    assert_eq!((p.load.duration(), p.agents.get()), (Duration::from_secs(60), 2));
    let o = Overrides {
        target: Some("http://b:2".into()),
        settings: vec![Setting::flag("--agents 3".into(), "agents.count", "3".into(), &[])],
        duration: Some(Duration::from_secs(5)),
        out: Some(PathBuf::from("cli")),
        ..Overrides::default()
    };
    let p = Profile::parse(text, Path::new("p.toml"), &o).unwrap();
    assert_eq!(p.target.url.as_deref(), Some("http://b:2"));
    assert_eq!(p.agents.get(), 3);
    assert_eq!(p.load.duration(), Duration::from_secs(5));
    assert_eq!(p.report.out, PathBuf::from("cli"));
}

#[test]
fn the_error_text_names_file_line_and_key() {
    let e = parse("[load]\nusers = 0\n").unwrap_err().to_string();
    assert_eq!(
        e,
        "p.toml:2:9: load.users: expected a positive integer up to 1000000, got 0\n1 problem in p.toml"
    );
}

#[test]
fn a_missing_file_is_a_read_error() {
    let e = Profile::load(Path::new("/nonexistent/x.toml"), &Overrides::default()).unwrap_err();
    assert!(matches!(e, ProfileError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/x.toml: cannot read the profile:")
    );
}

#[test]
fn an_open_loop_rate() {
    let p =
        parse("[load]\nrate = 20\narrival = \"gamma\"\nburstiness = 0.5\nmax_concurrency = 64\nduration = \"30s\"\n")
            .unwrap();
    assert!(!p.load.is_users());
    assert_eq!(p.load.steps.len(), 1);
    assert_eq!(p.load.peak(), 20.0);
    assert_eq!(
        p.load.model,
        Model::Rate {
            process: stampede_agent::load::schedule::Process::Gamma(0.5),
            max_concurrency: NonZeroU32::new(64),
        }
    );
    let poisson = parse("[load]\nrate = 2.5\n").unwrap();
    assert!(matches!(
        poisson.load.model,
        Model::Rate {
            process: stampede_agent::load::schedule::Process::Poisson,
            ..
        }
    ));
}

#[test]
fn users_with_think_time_pace_and_spawn_rate() {
    let p = parse("[load]\nusers = 10\nthink_time = \"500ms\"\nspawn_rate = 5\nduration = \"10s\"\n").unwrap();
    assert_eq!(
        p.load.model,
        Model::Users {
            think: Duration::from_millis(500),
            pace: None
        }
    );
    // Ten users at five a second take two seconds to arrive.
    assert_eq!(p.load.steps[0].ramp, Duration::from_secs(2));
    let p = parse("[load]\nusers = 10\npace = \"250ms\"\n").unwrap();
    assert!(matches!(p.load.model, Model::Users { pace: Some(_), .. }));
}

#[test]
fn stages_and_sweeps() {
    let p = parse(
        "[load]\nwarmup = \"2s\"\nstages = [\n  { users = 10, duration = \"20s\" },\n  { users = 25, duration = \"20s\", ramp = \"5s\" },\n]\n",
    )
    .unwrap();
    assert_eq!(p.load.shape, Shape::Stages);
    assert_eq!(p.load.steps.len(), 2);
    assert_eq!(p.load.steps[1].ramp, Duration::from_secs(5));
    assert_eq!(p.load.duration(), Duration::from_secs(40));
    assert_eq!(p.load.warmup, Duration::from_secs(2));
    let p = parse("[load.sweep]\nusers = [1, 4, 8]\nstep = \"10s\"\n").unwrap();
    assert_eq!(p.load.shape, Shape::Sweep);
    assert_eq!(
        p.load.steps.iter().map(|s| s.level).collect::<Vec<_>>(),
        [1.0, 4.0, 8.0]
    );
    assert_eq!(p.load.duration(), Duration::from_secs(30));
    let p = parse("[load]\nsweep = { rates = [5, 10.5], step = \"5s\" }\n").unwrap();
    assert!(!p.load.is_users());
    // --duration sets a sweep's step.
    let o = Overrides {
        duration: Some(Duration::from_secs(2)),
        ..Overrides::default()
    };
    let p = Profile::parse(
        "[load.sweep]\nusers = [1, 2]\nstep = \"10s\"\n",
        Path::new("p.toml"),
        &o,
    )
    .unwrap();
    assert_eq!(p.load.duration(), Duration::from_secs(4));
}

#[test]
fn load_models_are_checked_for_consistency() {
    let found = problems("[load]\nusers = 5\nrate = 10\n");
    assert_eq!(
        found,
        ["3:8 load.rate: users and rate are both set; choose one load model"]
    );
    let found = problems("[load]\nduration = \"5s\"\n");
    assert!(found[0].contains("missing: choose one load model"), "{found:?}");
    let found = problems("[load]\nusers = 5\narrival = \"poisson\"\n");
    assert_eq!(found, ["3:11 load.arrival: applies only to open-loop loads (rate)"]);
    let found = problems("[load]\nrate = 5\npace = \"1s\"\n");
    assert_eq!(found, ["3:8 load.pace: applies only to closed-loop loads (users)"]);
    let found = problems("[load]\nrate = 5\nburstiness = 2\n");
    assert!(found[0].contains("applies only to arrival = \"gamma\""), "{found:?}");
    let found = problems("[load]\nstages = [{ users = 1, duration = \"5s\" }, { rate = 3, duration = \"5s\" }]\n");
    assert!(found.iter().any(|f| f.contains("all users or all rates")), "{found:?}");
    let found = problems("[load]\nstages = [{ users = 1 }, { users = 2, rate = 3, duration = \"1s\" }]\n");
    assert!(
        found.iter().any(|f| f.contains("load.stages[0].duration: missing")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("load.stages[1].rate: a stage has users or a rate, not both")),
        "{found:?}"
    );
    let found = problems("[load]\nstages = [{ users = 1, duration = \"1500ms\" }]\n");
    assert!(found[0].contains("whole report intervals"), "{found:?}");
    let found = problems("[load.sweep]\nusers = [4, 2]\nstep = \"5s\"\n");
    assert!(found[0].contains("levels must increase"), "{found:?}");
    let found = problems("[load]\nusers = 5\nduration = \"10s\"\nwarmup = \"10s\"\n");
    assert!(found[0].contains("leaves nothing of step 0"), "{found:?}");
    let found = problems("[load]\nusers = 5\nspawn_rate = 0.1\nduration = \"10s\"\n");
    assert!(found[0].contains("longer than the duration"), "{found:?}");
    let stages_cli = Overrides {
        duration: Some(Duration::from_secs(2)),
        ..Overrides::default()
    };
    let e = Profile::parse(
        "[load]\nstages = [{ users = 1, duration = \"5s\" }]\n",
        Path::new("p.toml"),
        &stages_cli,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--duration: stages have their own durations"), "{e}");
}

#[test]
fn the_trace_table_wins_over_the_environment_and_defaults_fill_in() {
    use stampede_otel::{FromEnv, Protocol};
    let none = FromEnv::default();
    // Neither a table nor an endpoint in the environment: off.
    assert_eq!(parse("[load]\nusers = 1\n").unwrap().trace.resolve(&none), None);
    let env = FromEnv {
        endpoint: Some("http://env:4317".into()),
        sample_ratio: Some(0.5),
        service_name: Some("from-env".into()),
        ..FromEnv::default()
    };
    let c = parse("[load]\nusers = 1\n").unwrap().trace.resolve(&env).unwrap();
    assert_eq!(
        (c.endpoint.as_str(), c.sample_ratio, c.service_name.as_str()),
        ("http://env:4317", 0.5, "from-env")
    );
    let p = parse(
        r#"
        [load]
        users = 1
        [trace]
        endpoint = "http://jaeger:4318"
        protocol = "http/protobuf"
        sample_ratio = 0.1
        service_name = "bench"
        ui_url = "https://ui/t/{trace_id}"
        "#,
    )
    .unwrap();
    let c = p.trace.resolve(&env).unwrap();
    assert_eq!(c.endpoint, "http://jaeger:4318/v1/traces");
    assert_eq!(c.protocol, Protocol::HttpProtobuf);
    assert_eq!((c.sample_ratio, c.service_name.as_str()), (0.1, "bench"));
    assert_eq!(c.link("abc"), "https://ui/t/abc");
    // An empty table turns tracing on with the defaults.
    let c = parse("[load]\nusers = 1\n[trace]\n")
        .unwrap()
        .trace
        .resolve(&none)
        .unwrap();
    assert_eq!(c.endpoint, "http://localhost:4317");
    assert_eq!(c.link("abc"), "http://localhost:16686/trace/abc");
    assert_eq!(c.service_name, "stampede");
    // `ui`: Jaeger's base URL gives the trace page and the search link.
    let c = parse("[load]\nusers = 1\n[trace]\nui = \"https://jaeger.example/ui/\"\n")
        .unwrap()
        .trace
        .resolve(&none)
        .unwrap();
    assert_eq!(c.link("abc"), "https://jaeger.example/ui/trace/abc");
    assert_eq!(c.ui.as_deref(), Some("https://jaeger.example/ui"));
    // … unless `ui_url` names another trace page.
    let c = parse("[load]\nusers = 1\n[trace]\nui = \"http://j:16686\"\nui_url = \"http://t/{trace_id}\"\n")
        .unwrap()
        .trace
        .resolve(&none)
        .unwrap();
    assert_eq!(
        (c.link("abc").as_str(), c.ui.as_deref()),
        ("http://t/abc", Some("http://j:16686"))
    );
    // enabled = false wins over the environment.
    let off = parse("[load]\nusers = 1\n[trace]\nenabled = false\n").unwrap();
    assert_eq!(off.trace.resolve(&env), None);
}

#[test]
fn the_metrics_table_wins_over_the_environment_and_defaults_fill_in() {
    use stampede_otel::{MetricsFromEnv, Protocol};
    let second = Duration::from_secs(1);
    let none = MetricsFromEnv::default();
    let plain = parse("[load]\nusers = 1\n").unwrap();
    // Not asked for: off, even with an endpoint in the environment.
    let endpoint_only = MetricsFromEnv {
        endpoint: Some("http://env:4317".into()),
        ..MetricsFromEnv::default()
    };
    assert_eq!(plain.metrics.resolve(&endpoint_only, second, "s"), None);
    let env = MetricsFromEnv {
        enabled: Some(true),
        interval: Some(Duration::from_secs(5)),
        headers: vec![("x-org".into(), "7".into())],
        ..endpoint_only
    };
    let push = plain.metrics.resolve(&env, second, "s").unwrap();
    assert_eq!(push.endpoint, "http://env:4317");
    assert_eq!(
        (push.interval, push.service_name.as_str()),
        (Duration::from_secs(5), "s")
    );
    assert_eq!(push.headers, [("x-org".to_owned(), "7".to_owned())]);
    let p = parse(
        r#"
        [load]
        users = 1
        [metrics]
        otlp = true
        endpoint = "http://alloy:4318"
        protocol = "http/protobuf"
        interval = "250ms"
        "#,
    )
    .unwrap();
    let push = p.metrics.resolve(&none, second, "s").unwrap();
    assert_eq!(push.endpoint, "http://alloy:4318/v1/metrics");
    assert_eq!(push.protocol, Protocol::HttpProtobuf);
    assert_eq!(push.interval, Duration::from_millis(250));
    // The defaults: the report interval, the local collector.
    let push = parse("[load]\nusers = 1\n[metrics]\notlp = true\n")
        .unwrap()
        .metrics
        .resolve(&none, second, "s")
        .unwrap();
    assert_eq!(
        (push.endpoint.as_str(), push.interval),
        ("http://localhost:4317", second)
    );
    // otlp = false wins over OTEL_METRICS_EXPORTER=otlp, otlp = true over none.
    let off = parse("[load]\nusers = 1\n[metrics]\notlp = false\n").unwrap();
    assert_eq!(off.metrics.resolve(&env, second, "s"), None);
    let env_off = MetricsFromEnv {
        enabled: Some(false),
        ..MetricsFromEnv::default()
    };
    assert!(p.metrics.resolve(&env_off, second, "s").is_some());
    let mut found = problems(
        "[metrics]\notlp = \"yes\"\nendpoint = \"c:4317\"\ninterval = \"10ms\"\nprotocol = \"json\"\nurl = 1\n",
    );
    found.retain(|p| !p.contains("load.users: missing"));
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(found[0].starts_with("2:8 metrics.otlp: expected"), "{found:#?}");
    assert!(
        found[1].contains("metrics.endpoint: expected an http:// or https:// URL"),
        "{found:#?}"
    );
    assert!(
        found[2].contains("metrics.interval: expected at least 100ms"),
        "{found:#?}"
    );
    assert!(found[3].contains("metrics.protocol"), "{found:#?}");
    assert!(found[4].contains("metrics.url: unknown key"), "{found:#?}");
}

#[test]
fn a_bad_trace_table_says_what_to_write() {
    let found = problems(
        r#"
        [load]
        users = 1
        [trace]
        endpoint = "jaeger:4317"
        protocol = "http/json"
        sample_ratio = 1.5
        service_name = ""
        ui_url = "http://ui/trace"
        ui = "localhost:16686"
        smaple = 1
        "#,
    );
    let all = found.join("\n");
    for expected in [
        "trace.endpoint: expected an http:// or https:// URL",
        "trace.protocol",
        "grpc",
        "trace.sample_ratio",
        "trace.service_name: must not be empty",
        "trace.ui_url: \"http://ui/trace\" has no {trace_id} placeholder",
        "trace.ui: expected an http:// or https:// URL, got \"localhost:16686\"",
        "trace.smaple: unknown key",
    ] {
        assert!(all.contains(expected), "{expected:?} not in:\n{all}");
    }
    assert_eq!(found.len(), 7, "{all}");
}

#[test]
fn target_headers_body_and_http_json_are_read() {
    let p = parse(
        r#"
        [target]
        api = "http-json"
        path = "/generate"
        headers = { Authorization = { env = "LLM_KEY" }, "X-Team" = "infra" }
        body = { ignore_eos = true, min_tokens = 8 }
        [target.http_json]
        body = { prompt = "{{prompt}}", options = { n = "{{max_tokens}}" } }
        text = "/generated_text"
        tokens = "/usage/out"
        duration = "/t"
        duration_unit = "ms"
        stream = "ndjson"
        done = "/done"
        [load]
        users = 1
        "#,
    )
    .unwrap();
    let api = &p.target.api;
    assert_eq!(api.dialect, Dialect::HttpJson);
    assert_eq!(api.path.as_deref(), Some("/generate"));
    assert_eq!(
        api.headers,
        [
            (
                "Authorization".to_owned(),
                stampede_agent::api::HeaderSource::Env("LLM_KEY".to_owned())
            ),
            (
                "X-Team".to_owned(),
                stampede_agent::api::HeaderSource::Literal("infra".to_owned())
            ),
        ]
    );
    assert_eq!(api.body["min_tokens"], 8);
    let h = api.http_json.as_ref().unwrap();
    assert_eq!(h.template["options"]["n"], "{{max_tokens}}");
    assert_eq!(
        (h.tokens.as_deref(), h.done.as_deref()),
        (Some("/usage/out"), Some("/done"))
    );
}

#[test]
fn target_mistakes_are_named() {
    let got = problems(
        r#"
        [target]
        api = "vllm"
        headers = { Authorization = "Bearer sk-123", "bad header" = "x", X-Key = { env = "1BAD" } }
        [load]
        users = 1
        "#,
    )
    .join("\n");
    assert!(got.contains("target.api: expected one of \"openai-chat\""), "{got}");
    assert!(
        got.contains("target.headers.Authorization: Authorization holds a credential"),
        "{got}"
    );
    assert!(!got.contains("sk-123"), "a secret is never echoed: {got}");
    assert!(got.contains("\"bad header\" is not a valid HTTP header name"), "{got}");
    assert!(
        got.contains("target.headers.X-Key: expected a string or { env"),
        "{got}"
    );
    let got = problems(
        r#"
        [target]
        api = "http-json"
        [target.http_json]
        body = { input = "{{promt}}" }
        text = "generated_text"
        [load]
        users = 1
        "#,
    )
    .join("\n");
    assert!(got.contains("target.http_json.text: expected a JSON pointer"), "{got}");
    let got = problems(
        r#"
        [target]
        api = "http-json"
        [target.http_json]
        body = { input = "{{promt}}" }
        text = "/generated_text"
        [load]
        users = 1
        "#,
    )
    .join("\n");
    assert!(got.contains("{{promt}}"), "{got}");
    let got = problems("[target]\napi = \"http-json\"\n[load]\nusers = 1\n").join("\n");
    assert!(got.contains("needs [target.http_json]"), "{got}");
}

#[test]
fn server_metrics_and_the_simulated_accelerator_are_read() {
    let p = parse(
        "[load]\nusers = 1\n[server_metrics]\nurl = \"http://gpu:9400/metrics\"\ninterval = \"250ms\"\n\
         [sim]\nstep_overhead = \"5ms\"\nload_time = \"2s\"\ndcgm = true\nkv_cache_tokens = 4096\ntokens_per_event = 4\nempty_events = 3\n",
    )
    .unwrap();
    assert!(p.server_metrics.enabled);
    assert_eq!(p.server_metrics.url.as_deref(), Some("http://gpu:9400/metrics"));
    assert_eq!(p.server_metrics.interval, Duration::from_millis(250));
    assert_eq!(p.sim.step_overhead, Duration::from_millis(5));
    assert_eq!(p.sim.load_time, Duration::from_secs(2));
    assert!(p.sim.dcgm);
    assert_eq!(p.sim.kv_cache_tokens, Some(4096));
    assert_eq!((p.sim.tokens_per_event, p.sim.empty_events), (4, Some(3)));

    let d = parse("[load]\nusers = 1\n").unwrap();
    assert!(d.server_metrics.enabled && d.server_metrics.url.is_none());
    assert_eq!(d.server_metrics.interval, Duration::from_secs(1));
}

#[test]
fn bad_server_metrics_and_sim_keys_say_what_to_write() {
    let found = problems(
        "[load]\nusers = 1\n[server_metrics]\nurl = \"metrics\"\ninterval = \"10ms\"\n\
         [sim]\ndecode_step = \"10ms\"\nstep_overhead = \"10ms\"\n",
    );
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].starts_with("4:7 server_metrics.url:") && found[0].contains("absolute URL"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("5:12 server_metrics.interval:") && found[1].contains("100ms or more"),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("8:17 sim.step_overhead:") && f.contains("must be shorter than the decode step")),
        "{found:?}"
    );
}

#[test]
fn the_simulators_faults_are_read_and_checked() {
    let p = parse("[load]\nusers = 1\n[sim]\nfaults = [\"500=0.02\", \"stall=0.01,for=5s,after=3\"]\n").unwrap();
    let faults: Vec<String> = p.sim.faults.iter().map(ToString::to_string).collect();
    assert_eq!(faults, ["500=0.02", "stall=0.01,for=5s,after=3"]);
    let found = problems("[load]\nusers = 1\n[sim]\nfaults = [\"500=0.02\", \"stall=0.1\"]\n");
    assert!(
        found.len() == 1 && found[0].starts_with("4:10 sim.faults[1]:") && found[0].contains("for=DURATION"),
        "{found:?}"
    );
    let found = problems("[load]\nusers = 1\n[sim]\nfaults = [\"500=0.6\", \"reset=0.6\"]\n");
    assert!(
        found.len() == 1 && found[0].starts_with("4:10 sim.faults:") && found[0].contains("add up to"),
        "{found:?}"
    );
}

#[test]
fn thresholds_take_any_figure_in_any_scope() {
    let p = parse(
        r#"
[load]
stages = [{ users = 2, duration = "5s" }, { users = 8, duration = "5s" }]
[slo]
ttft = "500ms"
tpot = "50ms"
[thresholds]
"ttft.p95" = "< 500ms"
"tpot.p99" = "<= 40ms"
"error_rate" = "< 1%"
"output_tokens_per_s" = "> 1000"
"goodput_ratio" = ">= 0.95"
"classes.long.ttft.p95" = "< 2s"
"steps.1.e2e.p99" = "< 3s"
"steps.*.requests_per_s" = "> 1"
"itl.p99" = { limit = "< 100ms", abort = true, after = "2s" }
"#,
    )
    .unwrap();
    let t = &p.thresholds;
    assert_eq!(t.list.len(), 9);
    assert_eq!(t.list[0].key, "ttft.p95");
    assert_eq!(t.list[0].condition, "< 500ms");
    let last = &t.list[8];
    assert!(last.abort);
    assert_eq!(last.after, Duration::from_secs(2));
    // An error_rate threshold decides about failures: no implicit zero.
    assert_eq!(t.max_error_rate, 1.0);
    let slo = p.slo.as_ref().unwrap();
    assert_eq!(slo.ttft, Some(Duration::from_millis(500)));
    assert_eq!(slo.ratio, DEFAULT_RATIO);
    assert_eq!(slo.words(), "TTFT ≤ 500 ms, TPOT ≤ 50 ms");
}

#[test]
fn threshold_mistakes_name_the_key_and_what_is_allowed() {
    let found = problems(
        r#"
[load]
users = 2
[thresholds]
max_error_rate = 0.1
"ttft.p96" = "< 1s"
"goodput_ratio" = ">= 0.9"
"steps.3.ttft.p95" = "< 1s"
"classes.long.ttft.p95" = { limit = "< 1s", abort = true }
"classes.long.error_rate" = "< 1%"
"error_rate" = "< 5%"
"e2e.p99" = "fast"
"tpot.p50" = { abort = true }
"#,
    );
    let all = found.join("\n");
    for expected in [
        "thresholds.\"ttft.p96\": unknown figure \"ttft.p96\": a figure is METRIC.STAT",
        "thresholds.\"goodput_ratio\": goodput_ratio counts requests that meet the run's objectives: set them in [slo]",
        "thresholds.\"steps.3.ttft.p95\": the load has 1 step (steps.0): there is no step 3",
        "thresholds.\"classes.long.ttft.p95\": a class's figures are known only at the end of the run",
        "thresholds.\"classes.long.error_rate\": error_rate is not kept per prompt class",
        "thresholds.\"error_rate\": set either max_error_rate or an \"error_rate\" threshold, not both",
        "thresholds.\"e2e.p99\": expected a condition such as \"< 500ms\", got \"fast\"",
        "thresholds.\"tpot.p50\": a threshold table needs limit",
    ] {
        assert!(all.contains(expected), "no {expected:?} in:\n{all}");
    }
    assert!(problems("[load]\nusers = 2\n[slo]\nratio = 0.9\n")[0].contains("[slo] sets no objective"));
}

#[test]
fn grades_default_to_the_seeds_bands_and_a_profile_can_change_them() {
    let d = parse("[load]\nusers = 1\n").unwrap();
    assert_eq!(d.grades, Grades::default());
    let p = parse(
        "[load]\nusers = 1\n[grades]\nstatistic = \"p99\"\nttft = { good = \"200ms\", acceptable = \"400ms\" }\ntpot = { acceptable = \"80ms\" }\n",
    )
    .unwrap();
    assert_eq!(p.grades.statistic, crate::figure::Stat::P99);
    assert_eq!(
        p.grades.ttft,
        Band {
            good: Duration::from_millis(200),
            acceptable: Duration::from_millis(400)
        }
    );
    assert_eq!(p.grades.tpot.good, Duration::from_millis(50), "the default good bound");
    assert_eq!(p.grades.tpot.acceptable, Duration::from_millis(80));
    assert_eq!(
        problems(
            "[load]\nusers = 1\n[grades]\nstatistic = \"max\"\nttft = { good = \"2s\" }\ntpot = { good = \"fast\", great = \"1ms\" }\n"
        ),
        [
            "4:13 grades.statistic: expected one of mean, p50, p90, p95, p99 and p99.9, got \"max\"",
            "5:8 grades.ttft: good must be under acceptable: good under 2s, acceptable under 1s",
            "6:17 grades.tpot.good: expected a positive duration such as \"30s\", \"2m\" or \"250ms\", got \"fast\"",
            "6:25 grades.tpot.great: unknown key; expected one of: good, acceptable",
        ]
    );
}

#[test]
fn the_report_interval_and_agent_counts_have_the_documented_limits() {
    let found = problems("[load]\nusers = 1\n[report]\ninterval = \"50ms\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("report.interval: expected at least 100ms"),
        "{found:?}"
    );
    parse("[load]\nusers = 1\n[report]\ninterval = \"100ms\"\n").unwrap();
    // --agents is checked as agents.count is, and named in the message.
    let o = Overrides {
        settings: vec![Setting::flag(
            "--agents 10001".into(),
            "agents.count",
            "10001".into(),
            &[],
        )],
        ..Overrides::default()
    };
    let e = Profile::parse("[load]\nusers = 1\n", Path::new("p.toml"), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--agents 10001: agents.count: expected a positive integer up to 10000, got 10001"),
        "{e}"
    );
    assert_eq!(agent_count("10000").unwrap().get(), 10_000);
    assert_eq!(
        agent_count("10001").unwrap_err(),
        "expected a positive integer up to 10000, got 10001"
    );
    assert!(agent_count("0").is_err());
    assert!(agent_count("x").is_err());
}

#[test]
fn sessions_need_conversations_and_closed_loop_users() {
    let p = parse(
        "[load]\nusers = 2\n[prompts]\nsessions = true\nturn_think = \"250ms\"\n[prompts.synthetic]\ncount = 3\ninput_tokens = 5\nturns = 2\n",
    )
    .unwrap();
    assert_eq!(p.sessions.map(|s| s.think), Some(Duration::from_millis(250)));
    assert!(p.prompts.iter().all(|s| s.turns.len() == 1 && s.system.is_none()));
    assert!(
        p.prompt_source.starts_with("synthetic (3 sessions"),
        "{}",
        p.prompt_source
    );
    assert_eq!(parse("[load]\nusers = 2\n").unwrap().sessions, None);

    let e = problems("[load]\nusers = 2\n[prompts]\nsessions = true\nbuiltin = \"short\"\n");
    assert!(
        e.iter()
            .any(|e| e.contains("prompts.sessions: sessions need conversations")),
        "{e:?}"
    );
    let e = problems(
        "[load]\nrate = 2\n[prompts]\nsessions = true\n[prompts.synthetic]\ncount = 3\ninput_tokens = 5\nturns = 2\n",
    );
    assert!(
        e.iter().any(|e| e.contains("sessions are played by closed-loop users")),
        "{e:?}"
    );
    let e = problems(
        "[load]\nusers = 2\n[prompts]\nturn_think = \"1s\"\n[prompts.synthetic]\ncount = 3\ninput_tokens = 5\nturns = 2\n",
    );
    assert!(
        e.iter().any(|e| e.contains("prompts.turn_think: applies to sessions")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("prompts.synthetic.turns: applies to sessions")),
        "{e:?}"
    );
    let e =
        problems("[load]\nusers = 2\n[prompts]\nsessions = true\n[prompts.synthetic]\ncount = 3\ninput_tokens = 5\n");
    assert!(
        e.iter().any(|e| e.contains("prompts.synthetic.turns: missing")),
        "{e:?}"
    );
    let e = problems(
        "[load]\nusers = 2\n[prompts]\nsessions = true\n[prompts.synthetic]\ncount = 3\ninput_tokens = 5\nturns = 2\nshared_prefix = { groups = 2, tokens = 8 }\n",
    );
    assert!(
        e.iter()
            .any(|e| e.contains("prompts.synthetic.shared_prefix: does not apply to sessions")),
        "{e:?}"
    );
}

#[test]
fn shared_prefixes_and_the_simulated_prefix_cache_are_read() {
    let p = parse(
        "[load]\nusers = 1\n[prompts.synthetic]\ncount = 8\ninput_tokens = 32\n\
         shared_prefix = { groups = 2, tokens = 64, assign = \"random\" }\n\
         [sim]\nprefix_cache_blocks = 100\nprefix_block_tokens = 8\n",
    )
    .unwrap();
    let w = p.shared_prefix.expect("the shared prefixes are kept");
    assert_eq!((w.prefix.groups, w.prefix.tokens), (2, 64));
    assert_eq!(w.prefix.assign, crate::dataset::synthetic::Assign::Random);
    assert!(
        p.prompt_source.contains("2 shared prefixes of 64 tokens"),
        "{}",
        p.prompt_source
    );
    assert_eq!((p.sim.prefix_cache_blocks, p.sim.prefix_block_tokens), (100, 8));
    assert_eq!(
        parse("[load]\nusers = 1\n").unwrap().sim.prefix_cache_blocks,
        0,
        "off by default"
    );

    let found = problems(
        "[load]\nusers = 1\n[prompts.synthetic]\ncount = 8\ninput_tokens = 32\n\
         shared_prefix = { groups = 2, assign = \"sticky\" }\n",
    )
    .join("\n");
    assert!(
        found.contains("prompts.synthetic.shared_prefix.tokens: missing"),
        "{found}"
    );
    assert!(found.contains("shared_prefix.assign"), "{found}");
}

#[test]
fn trace_settings_are_checked_against_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 2}\n{\"timestamp\": 1500, \"input_length\": 3, \"output_length\": 4}\n",
    )
    .unwrap();
    let at = |extra: &str| format!("[load]\ntrace = {:?}\n{extra}", trace.to_str().unwrap());
    let p = parse(&at("speed = 3.0\n")).unwrap();
    assert_eq!(
        p.load.duration(),
        Duration::from_millis(501),
        "1 ms past the last arrival"
    );
    assert_eq!(
        p.load.describe(),
        format!("a replay of 2 requests from {} at 3× speed over 501ms", trace.display())
    );
    assert_eq!(p.prompts.len(), 2);
    assert_eq!(p.prompts[1].text.split_whitespace().count(), 3);
    assert_eq!(p.prompts[1].max_tokens, Some(4));
    assert!(p.load.requests.is_none(), "the count cut the rows already");
    assert_eq!(
        problems("[load]\nrate = 5\nspeed = 2.0\nblock_size = 4\n"),
        [
            "3:9 load.speed: applies only to a trace replay (load.trace)",
            "4:14 load.block_size: applies only to a trace replay (load.trace)",
        ]
    );
    let found = problems(&at(
        "duration = \"5s\"\nthink_time = \"1s\"\n[prompts]\nbuiltin = \"short\"\n[agents]\ncount = 3\n",
    ));
    assert!(
        found
            .iter()
            .any(|f| f.contains("load.duration: a trace replay lasts as long as its rows")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("load.think_time: does not apply to a trace replay")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("prompts: a trace replay (load.trace) gives every request its prompt")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("2 replayed row(s) cannot give each of 3 agents an arrival")),
        "{found:?}"
    );
    let found = problems("[load]\ntrace = \"no-such-trace.jsonl\"\n");
    assert!(
        found[0].starts_with("2:9 load.trace: cannot read the trace no-such-trace.jsonl"),
        "{found:?}"
    );
}
