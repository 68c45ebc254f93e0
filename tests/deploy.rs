//! What ships for clusters and compose stacks, run for real where it can be:
//!
//! - the Kubernetes overlays render (kubectl's kustomize) with the profile
//!   and agent count each names;
//! - the high overlay's controller, agents and llm-sim run as processes in
//!   network namespaces exactly as the rendered YAML says (command, args,
//!   environment, mounted ConfigMap, Secret and results volume), Service
//!   names resolvable, `JOB_COMPLETION_INDEX` set per agent;
//! - a real Prometheus scrapes the controller's live endpoint during a run
//!   and reports its request rate.
//!
//! The Grafana dashboard's queries are checked against the live endpoint
//! in `live.rs`.
//!
//! A test that needs kubectl, root or Prometheus is reported as ignored
//! when it is missing, saying which (a failure with
//! `STAMPEDE_REQUIRE_PEERS=1`, as in CI).

// These tests time real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use stampede_tests::harness::Outcome;
use stampede_tests::kube::{self, IMAGE_BIN, Manifests, Pod};
use stampede_tests::netns::{self, Net, Proc};
use stampede_tests::prom::{self, Prometheus};
use stampede_tests::{bin, exclusive, num, relative_error, repo};

stampede_tests::suite![
    overlays_render_with_their_profile_and_agent_count,
    high_overlay_runs_in_namespaces_as_rendered,
    compose_prometheus_scrapes_the_controllers_metrics_port,
    prometheus_reports_the_request_rate_of_a_live_run,
];

/// Each overlay: its profile and its number of agents.
const OVERLAYS: [(&str, &str, u64); 3] = [
    ("low", "low.toml", 2),
    ("medium", "medium.toml", 3),
    ("high", "high.toml", 4),
];

fn agents_job(m: &Manifests) -> &Value {
    m.get("Job", "stampede-agents")
}

/// The ConfigMap the controller mounts at `/profiles` (its name has a hash).
fn profiles_configmap(m: &Manifests) -> &Value {
    let spec = &m.get("Job", "stampede-controller")["spec"]["template"]["spec"];
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["mountPath"] == "/profiles")
        .expect("the controller mounts /profiles");
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    m.get("ConfigMap", volume["configMap"]["name"].as_str().unwrap())
}
fn overlays_render_with_their_profile_and_agent_count() -> Outcome {
    let kubectl = kube::kubectl()?;
    for (overlay, profile, agents) in OVERLAYS {
        let m = Manifests::render(&kubectl, overlay);
        let root = tempfile::tempdir().unwrap();
        let controller = Pod::new(&m, "Job", "stampede-controller", &[], root.path());
        assert_eq!(controller.argv[..2], ["/usr/local/bin/controller", "run"], "{overlay}");
        assert_eq!(controller.argv[2], format!("/profiles/{profile}"), "{overlay}");
        assert_eq!(
            controller.arg("--expect-agents"),
            Some(agents.to_string().as_str()),
            "{overlay}"
        );
        let job = &agents_job(&m)["spec"];
        assert_eq!(job["completionMode"], "Indexed", "{overlay}");
        assert_eq!(job["parallelism"], agents, "{overlay}: parallelism");
        assert_eq!(job["completions"], agents, "{overlay}: completions");
        assert_eq!(job["backoffLimitPerIndex"], 0, "{overlay}: no retries per index");
        assert!(job["activeDeadlineSeconds"].as_u64().is_some(), "{overlay}");
        // The profiles mounted are the shipped ones, byte for byte.
        let mounted = profiles_configmap(&m);
        for entry in std::fs::read_dir(repo().join("load-profiles")).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue; // examples/ is documentation, not mounted.
            }
            let key = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                mounted["data"][key].as_str(),
                Some(std::fs::read_to_string(&path).unwrap().as_str()),
                "{overlay}: the mounted {key} differs from load-profiles/{key}"
            );
        }
        // Every pod runs as a non-root user, with no privilege escalation.
        for kind in ["Job", "Deployment"] {
            for w in m.all(kind) {
                let spec = &w["spec"]["template"]["spec"];
                assert_eq!(
                    spec["securityContext"]["runAsNonRoot"], true,
                    "{}",
                    w["metadata"]["name"]
                );
                for c in spec["containers"].as_array().unwrap() {
                    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
                    assert!(c["resources"]["limits"].is_object() && c["resources"]["requests"].is_object());
                }
            }
        }
    }
    // The image installs the binaries where the manifests run them from.
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("COPY --from=build /out/bin/ {IMAGE_BIN}")));
    Ok(())
}

/// Host name and port of an `http://host:port` URL.
fn host_port(url: &str) -> (&str, u16) {
    let (host, port) = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split_once(':')
        .unwrap();
    (host, port.parse().unwrap())
}

/// The port a Service exposes for a container port, checked equal to it:
/// the emulation has no kube-proxy to translate one into the other.
fn service_port(m: &Manifests, svc: &Value, kind: &str, name: &str, port: u16) {
    let c = &m.get(kind, name)["spec"]["template"]["spec"]["containers"][0];
    let p = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port);
    let p = p.unwrap_or_else(|| panic!("Service {} has no port {port}", svc["metadata"]["name"]));
    let target = match &p["targetPort"] {
        Value::String(named) => c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|cp| cp["name"] == *named)
            .unwrap()["containerPort"]
            .clone(),
        other => other.clone(),
    };
    assert_eq!(target, port, "Service port {port} goes to container port {target}");
}

fn wait_exit(p: &mut Proc, limit: Duration) -> i32 {
    match p.wait_for(limit) {
        Some(status) => status.code().unwrap_or(-1),
        None => panic!("{} did not exit within {limit:?}\nstderr:\n{}", p.name, p.stderr()),
    }
}

/// The high overlay, run as rendered: the run completes and 50 users split
/// 13/13/12/12 over the 4 agents of the Indexed Job. The run is the
/// profile's own (20 s of load), not shortened: the manifests already make
/// it short.
fn high_overlay_runs_in_namespaces_as_rendered() -> Outcome {
    netns::available()?;
    let kubectl = kube::kubectl()?;
    let m = Manifests::render(&kubectl, "high");
    let root = tempfile::tempdir().unwrap();
    let sim = Pod::new(&m, "Deployment", "llm-sim", &[], root.path());
    let controller = Pod::new(&m, "Job", "stampede-controller", &[], root.path());
    let job = &agents_job(&m)["spec"];
    let n = job["parallelism"].as_u64().unwrap();
    assert_eq!(job["completionMode"], "Indexed");
    assert_eq!(job["completions"], n);
    // Kubernetes sets JOB_COMPLETION_INDEX in each pod of an Indexed Job.
    let indexes: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let agents: Vec<Pod> = indexes
        .iter()
        .map(|i| {
            Pod::new(
                &m,
                "Job",
                "stampede-agents",
                &[("JOB_COMPLETION_INDEX", i)],
                root.path(),
            )
        })
        .collect();

    // Hosts are named as the Services name them, so the URLs in the
    // manifests resolve as cluster DNS would resolve them.
    let controller_svc = m.service_for("Job", "stampede-controller");
    let sim_svc = m.service_for("Deployment", "llm-sim");
    let controller_host = controller_svc["metadata"]["name"].as_str().unwrap();
    let sim_host = sim_svc["metadata"]["name"].as_str().unwrap();
    let (host, port) = host_port(agents[0].var("STAMPEDE_CONTROLLER").unwrap());
    assert_eq!(host, controller_host, "agents dial the controller's Service");
    service_port(&m, controller_svc, "Job", "stampede-controller", port);
    let (host, port) = host_port(controller.arg("--target").unwrap());
    assert_eq!(host, sim_host, "the target is the llm-sim Service");
    service_port(&m, sim_svc, "Deployment", "llm-sim", port);
    let metrics_port = host_port(&format!("http://{}", controller.arg("--metrics-addr").unwrap())).1;
    service_port(&m, controller_svc, "Job", "stampede-controller", metrics_port);

    let pod_names: Vec<String> = (0..n).map(|i| format!("stampede-agents-{i}")).collect();
    let mut hosts = vec![controller_host, sim_host];
    hosts.extend(pod_names.iter().map(String::as_str));
    let _machine = exclusive();
    let net = Net::new(&hosts);
    let env = Path::new("/usr/bin/env");
    let spawn = |host: &str, pod: &Pod| {
        let argv = pod.clean_command(host);
        net.spawn(host, env, &argv.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let target = spawn(sim_host, &sim);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !target.stdout().contains("listening") {
        assert!(Instant::now() < deadline, "llm-sim did not start: {}", target.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ctl = spawn(controller_host, &controller);
    let mut procs: Vec<Proc> = agents.iter().zip(&pod_names).map(|(a, host)| spawn(host, a)).collect();

    // The live metrics answer on the Service's metrics port during the run.
    assert!(
        ctl.wait_for_stderr("live metrics at", Duration::from_secs(30)),
        "{}",
        ctl.stderr()
    );
    let live = format!("{}:{metrics_port}", net.host(controller_host).ip);
    let (status, text) = prom::get(live.parse().unwrap(), "/metrics").expect("live metrics answer");
    assert_eq!(status, 200);
    assert!(text.contains("profile=\"high\""), "{text}");

    let code = wait_exit(&mut ctl, Duration::from_secs(120));
    for p in &mut procs {
        assert_eq!(wait_exit(p, Duration::from_secs(15)), 0, "{}:\n{}", p.name, p.stderr());
    }
    assert_eq!(code, 0, "controller:\n{}\n{}", ctl.stdout(), ctl.stderr());

    // summary.json is on the results volume, and the last line of the log.
    let results = controller.local(controller.arg("--out").unwrap());
    let run_dir = std::fs::read_dir(&results).unwrap().next().unwrap().unwrap().path();
    let summary: Value = stampede_tests::read_summary(&std::fs::read(run_dir.join("summary.json")).unwrap());
    let logged: Value = serde_json::from_str(ctl.stdout().lines().last().unwrap()).unwrap();
    assert_eq!(logged, summary, "the log's last line is summary.json");

    assert_eq!(summary["profile"]["name"], "high");
    assert_eq!(summary["target"]["url"], "http://llm-sim:8000");
    assert_eq!(summary["verdict"]["status"], "passed");
    // Slices go to agents in the order they join, so the split is checked
    // as a whole and the names apart.
    let agents = summary["agents"].as_array().unwrap();
    let mut names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["agent-0", "agent-1", "agent-2", "agent-3"],
        "agents name themselves from JOB_COMPLETION_INDEX"
    );
    let mut users: Vec<u64> = agents.iter().map(|a| a["users"].as_u64().unwrap()).collect();
    users.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(users, [13, 13, 12, 12], "50 users over 4 agents");
    for a in agents {
        assert_eq!(a["end"], "finished", "{a:#}");
    }
    assert!(num(&summary, "/requests/ok") > 0.0);
    assert_eq!(num(&summary, "/requests/failed"), 0.0);
    Ok(())
}

/// The compose stack's Prometheus scrapes the port the compose controller
/// serves its live metrics on.
fn compose_prometheus_scrapes_the_controllers_metrics_port() -> Outcome {
    let compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("docker/compose.yaml")).unwrap()).unwrap();
    let command: Vec<&str> = compose["services"]["controller"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let i = command.iter().position(|a| *a == "--metrics-addr").unwrap();
    let port = command[i + 1].rsplit_once(':').unwrap().1;
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("docker/prometheus.yml")).unwrap()).unwrap();
    let targets: Vec<&str> = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["static_configs"][0]["targets"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(targets.contains(&format!("controller:{port}").as_str()), "{targets:?}");
    assert!(targets.contains(&"llm-sim:8000"), "{targets:?}");
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A real Prometheus scrapes the controller's live endpoint every second
/// during a run; `rate(stampede_requests_total[6s])` in the steady part of
/// the run is the rate the summary reports.
fn prometheus_reports_the_request_rate_of_a_live_run() -> Outcome {
    prom::binary()?;
    let _machine = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("steady.toml");
    // 8 users, 16 tokens each at 10 ms a token: about 40 requests/s, light
    // on the machine, steady after the first second.
    std::fs::write(
        &profile,
        "name = \"steady\"\n[load]\nusers = 8\nduration = \"12s\"\ndrain = \"10s\"\n\
         [request]\nmax_tokens = 16\n[agents]\ncount = 2\n\
         [sim]\nmax_batch = 16\ndecode_step = \"10ms\"\ndecode_step_per_seq = \"0s\"\n",
    )
    .unwrap();
    let out = tmp.path().join("results");
    let program = bin("controller");
    let started = unix_now();
    let mut child = Command::new(program)
        .args(["run", profile.to_str().unwrap(), "--metrics-addr", "127.0.0.1:0"])
        .args(["--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = tmp.path().join("controller.stderr");
    let live = prom::live_addr(child.stderr.take().unwrap(), &log);
    let prometheus = Prometheus::start("stampede-controller", &[live.to_string()]);
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{stdout}\n{}", std::fs::read_to_string(&log).unwrap());

    let dir = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let summary: Value = stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    let expected = num(&summary, "/throughput/requests_per_s");
    // Prometheus saw the endpoint up during the load, with the run's
    // identity (its scrape after the controller exited reads `up` 0, and
    // on a busy machine one scrape of the load may time out).
    let up = prometheus.query("max_over_time(up{job=\"stampede-controller\"}[10s])", started + 11.0);
    assert_eq!(
        up.first().map(|s| s["value"][1].clone()),
        Some(Value::from("1")),
        "{}",
        prometheus.log()
    );
    let info = prometheus.query("stampede_run_info", started + 6.0);
    assert_eq!(info[0]["metric"]["profile"], "steady", "{info:?}");
    // The rate over seconds 5 to 11 of the 12 s of load.
    let at = started + 11.0;
    let result = prometheus.query("sum(rate(stampede_requests_total[6s]))", at);
    let rate: f64 = result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rate at {at}: {result:?}\n{}", prometheus.log()));
    eprintln!("Prometheus rate {rate:.2} req/s, summary {expected:.2} req/s");
    assert!(rate > 0.0);
    assert!(
        relative_error(rate, expected) < 0.2,
        "Prometheus says {rate:.2} req/s, the summary {expected:.2} req/s"
    );
    Ok(())
}
