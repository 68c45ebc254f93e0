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
    assert_eq!(p.users(), 5);
    assert_eq!(p.target.url, None);
    assert_eq!(p.target.api, Dialect::OpenAiChat);
    assert_eq!(p.target.timeout, Duration::from_secs(120));
    assert_eq!(p.load.duration, Duration::from_secs(30));
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
    assert_eq!(p.load.duration, Duration::from_secs(120));
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
            "4:1 load.userz: unknown key (did you mean \"users\"?); expected one of: users, duration, drain",
            "6:14 request.max_tokens: expected a positive integer up to 10000000, got \"many\"",
            "7:2 targte: unknown key (did you mean \"target\"?); expected one of: name, seed, target, load, request, prompts, agents, report, sim, thresholds",
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
        ["0:0 load.users: missing: how many closed-loop users to run (for example users = 10)"]
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
    assert_eq!((p.load.duration, p.agents.get()), (Duration::from_secs(60), 2));
    let o = Overrides {
        target: Some("http://b:2".into()),
        agents: NonZeroU32::new(3),
        duration: Some(Duration::from_secs(5)),
        out: Some(PathBuf::from("cli")),
    };
    let p = Profile::parse(text, Path::new("p.toml"), &o).unwrap();
    assert_eq!(p.target.url.as_deref(), Some("http://b:2"));
    assert_eq!(p.agents.get(), 3);
    assert_eq!(p.load.duration, Duration::from_secs(5));
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
