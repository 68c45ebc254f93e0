//! A Jaeger to ask, as a user asks one: `.ci/jaeger`, an in-memory OTLP/gRPC
//! trace store around the `otlp-embedded` crate that serves Jaeger's query
//! API and UI. It is built outside the workspace (its build needs
//! `protoc`) by `.ci/jaeger-query`, which `.ci/run` calls and which sets
//! `STAMPEDE_JAEGER` to the binary.

// A test helper: it panics when the store misbehaves, and watches a real
// process from outside (no tokio clock to share).
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::Missing;

/// The version of `otlp-embedded` that `.ci/jaeger-query` builds, which
/// names its cache folder.
const OTLP_EMBEDDED: &str = "0.0.2";

/// A running `jaeger-query`, ended when dropped.
pub struct Jaeger {
    child: Child,
    /// Where it receives OTLP/gRPC.
    pub otlp: SocketAddr,
    /// Where its query API and UI listen.
    pub ui: SocketAddr,
}

impl Jaeger {
    /// The binary: `STAMPEDE_JAEGER`, else `.ci/jaeger-query`'s cache.
    pub fn binary() -> Result<PathBuf, Missing> {
        let path = std::env::var_os("STAMPEDE_JAEGER").map(PathBuf::from).or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache")))?;
            Some(cache.join(format!("stampede/jaeger-query-{OTLP_EMBEDDED}/bin/jaeger-query")))
        });
        match path {
            Some(path) if path.is_file() => Ok(path),
            _ => Err(Missing::new(
                "the tests' Jaeger is not built (.ci/run builds it with .ci/jaeger-query, which needs protoc, and sets STAMPEDE_JAEGER)",
            )),
        }
    }

    /// Starts it on free loopback ports.
    pub fn start() -> Result<Jaeger, Missing> {
        let binary = Jaeger::binary()?;
        let mut child = Command::new(&binary)
            .args(["--otlp", "127.0.0.1:0", "--ui", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        // It prints `otlp ADDR` and `ui ADDR` once both listen.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut addr = |name: &str| -> SocketAddr {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let value = line
                .trim()
                .strip_prefix(name)
                .unwrap_or_else(|| panic!("jaeger-query printed {line:?}, expected `{name} ADDR`"));
            value.trim().parse().unwrap()
        };
        let (otlp, ui) = (addr("otlp"), addr("ui"));
        Ok(Jaeger { child, otlp, ui })
    }

    /// The OTLP/gRPC endpoint, as a profile's `[trace] endpoint`.
    pub fn otlp_url(&self) -> String {
        format!("http://{}", self.otlp)
    }

    /// The UI's base URL, as a profile's `[trace] ui`.
    pub fn ui_url(&self) -> String {
        format!("http://{}", self.ui)
    }

    /// A query API answer; `None` unless it is 200.
    pub fn api(&self, path: &str) -> Option<Value> {
        match crate::prom::get(self.ui, path) {
            Some((200, body)) => Some(serde_json::from_str(&body).expect("the query API answers JSON")),
            _ => None,
        }
    }

    /// The complete traces whose root span is of `service`, newest first,
    /// as the search page lists them.
    pub fn traces(&self, service: &str) -> Vec<Value> {
        let v = self
            .api(&format!("/api/traces?service={service}&limit=1000000"))
            .expect("the traces query answers");
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// The traces of `service` with a span tagged `key` = `value`, as
    /// Jaeger's search by tags finds them. otlp-embedded's query API reads
    /// no `tags` parameter, so they are filtered here as Jaeger's stores
    /// filter them: a trace matches when any of its spans has the tag.
    pub fn search(&self, service: &str, key: &str, value: &str) -> Vec<Value> {
        self.traces(service)
            .into_iter()
            .filter(|t| {
                t["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| tag(s, key) == Some(&Value::from(value))))
            })
            .collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span's tag, in Jaeger's JSON.
pub fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}
