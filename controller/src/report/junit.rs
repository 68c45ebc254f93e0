//! `junit.xml`: the run's checks as JUnit test cases, for CI systems that
//! show them: one per threshold (with the measured value and the limit),
//! one for the requests check, one for the measurement's validity, one for
//! the agents, and one when a threshold stopped the load.

use std::fmt::Write as _;

use super::summary::{Status, Summary};

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

struct Case {
    class: &'static str,
    name: String,
    failure: Option<(&'static str, String)>,
}

fn cases(s: &Summary) -> Vec<Case> {
    let mut out: Vec<Case> = s
        .thresholds
        .iter()
        .map(|t| Case {
            class: "stampede.thresholds",
            name: format!("{} {}", t.key, t.condition),
            failure: (!t.passed).then(|| ("threshold", t.message.clone())),
        })
        .collect();
    if let Some(why) = &s.verdict.stopped_by {
        out.push(Case {
            class: "stampede.thresholds",
            name: "the load ran to its end".to_owned(),
            failure: Some(("aborted", why.clone())),
        });
    }
    let r = &s.requests;
    let attempted = r.ok + r.failed;
    let requests_failure = s
        .verdict
        .reasons
        .iter()
        .find(|why| why.contains("thresholds.max_error_rate") || why.starts_with("no request"))
        .cloned();
    out.push(Case {
        class: "stampede.requests",
        name: format!("requests succeeded ({} of {attempted})", r.ok),
        failure: requests_failure.map(|why| ("requests", why)),
    });
    let valid = s.verdict.status != Status::Invalid;
    out.push(Case {
        class: "stampede.validity",
        name: "the client kept up: the figures measure the server".to_owned(),
        failure: (!valid).then(|| {
            (
                "invalid",
                s.verdict
                    .reasons
                    .iter()
                    .find(|why| why.starts_with("invalid measurement"))
                    .cloned()
                    .unwrap_or_default(),
            )
        }),
    });
    let agents: Vec<String> = s
        .verdict
        .reasons
        .iter()
        .filter(|why| {
            why.starts_with("agent ")
                || why.contains("reports could not be read")
                || why.contains("final totals disagree")
        })
        .cloned()
        .collect();
    out.push(Case {
        class: "stampede.agents",
        name: format!(
            "every agent finished and every report arrived ({} agents)",
            s.agents.len()
        ),
        failure: (!agents.is_empty()).then(|| ("degraded", agents.join("; "))),
    });
    out
}

/// The run's checks as a JUnit report.
pub fn render(s: &Summary) -> String {
    let cases = cases(s);
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        r#"<testsuites name="stampede" tests="{}" failures="{failures}" errors="0" time="{:.3}">"#,
        cases.len(),
        s.duration_s
    );
    let _ = writeln!(
        out,
        r#"  <testsuite name="{}" tests="{}" failures="{failures}" errors="0" skipped="0" time="{:.3}"{}>"#,
        esc(&s.run_id),
        cases.len(),
        s.duration_s,
        s.started_at
            .as_deref()
            .map(|t| format!(r#" timestamp="{}""#, esc(t.trim_end_matches('Z'))))
            .unwrap_or_default()
    );
    out.push_str("    <properties>\n");
    for (name, value) in [
        ("profile", s.profile.name.as_str()),
        ("target", s.target.url.as_str()),
        ("model", s.target.model.as_str()),
        (
            "verdict",
            &format!("{:?} (exit {})", s.verdict.status, s.verdict.exit_code),
        ),
    ] {
        let _ = writeln!(out, r#"      <property name="{name}" value="{}"/>"#, esc(value));
    }
    out.push_str("    </properties>\n");
    for c in &cases {
        let _ = write!(
            out,
            r#"    <testcase classname="{}" name="{}" time="0""#,
            c.class,
            esc(&c.name)
        );
        match &c.failure {
            None => out.push_str("/>\n"),
            Some((kind, message)) => {
                let _ = writeln!(
                    out,
                    ">\n      <failure type=\"{kind}\" message=\"{}\">{}</failure>\n    </testcase>",
                    esc(message),
                    esc(message)
                );
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
