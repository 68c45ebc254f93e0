//! Rendered Kubernetes manifests, and their pods run as plain processes.
//!
//! The overlays under `deploy/kubernetes/overlays/` are rendered with the
//! kustomize built into kubectl, the same binary `.ci/deploy-checks` uses.
//! A [`Pod`] is what the kubelet would start from a pod template: the first
//! container's command and arguments, its environment resolved from
//! ConfigMaps and Secrets, `$(VAR)` references expanded as Kubernetes
//! expands them, and its volumes made into temporary files and directories
//! with every path under a mount point mapped onto them. Nothing of a
//! container's invocation is written in a test: it all comes from the YAML.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::harness::Missing;
use crate::{bin, repo};

/// Where the image keeps the binaries (`docker/Dockerfile`).
pub const IMAGE_BIN: &str = "/usr/local/bin/";

/// The kubectl that renders the overlays: `$STAMPEDE_KUBECTL` (set by
/// `.ci/run`), else the copy `.ci/deploy-checks` caches, else `kubectl` on
/// the PATH; else what is missing.
pub fn kubectl() -> Result<PathBuf, Missing> {
    if let Some(path) = std::env::var_os("STAMPEDE_KUBECTL") {
        return Ok(path.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("stampede/kubectl"));
    let cached = cache
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("kubectl"))
        .filter(|p| p.is_file())
        .max();
    if let Some(cached) = cached {
        return Ok(cached);
    }
    if Command::new("kubectl").args(["version", "--client"]).output().is_ok() {
        return Ok("kubectl".into());
    }
    Err(Missing::new(
        "no kubectl to render the overlays (.ci/run installs one with `.ci/deploy-checks --kubectl`)",
    ))
}

/// Every object an overlay renders to.
#[derive(Debug)]
pub struct Manifests {
    /// The objects, in kustomize's order.
    pub objects: Vec<Value>,
}

impl Manifests {
    /// Renders `deploy/kubernetes/overlays/<overlay>`.
    pub fn render(kubectl: &Path, overlay: &str) -> Manifests {
        let dir = repo().join("deploy/kubernetes/overlays").join(overlay);
        let out = Command::new(kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("YAML is UTF-8");
        // kustomize separates documents with a `---` line; inside a block
        // scalar such a line would be indented.
        let mut objects = Vec::new();
        let mut doc = String::new();
        for line in text.lines().chain(["---"]) {
            if line == "---" {
                let v: Value = serde_yaml::from_str(&doc).expect("kustomize writes valid YAML");
                if !v.is_null() {
                    objects.push(v);
                }
                doc.clear();
            } else {
                doc.push_str(line);
                doc.push('\n');
            }
        }
        Manifests { objects }
    }

    /// The object of `kind` named `name`, if any.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The Service whose selector picks the pods of workload `kind`/`name`:
    /// the name other pods reach them by.
    pub fn service_for(&self, kind: &str, name: &str) -> &Value {
        let labels = &self.get(kind, name)["spec"]["template"]["metadata"]["labels"];
        let picks = |svc: &&Value| {
            svc["spec"]["selector"]
                .as_object()
                .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v))
        };
        let found: Vec<&Value> = self.all("Service").into_iter().filter(picks).collect();
        assert_eq!(
            found.len(),
            1,
            "one Service should select {kind} {name}, found {found:?}"
        );
        found[0]
    }

    /// The value of `key` in ConfigMap `name`.
    pub fn config(&self, name: &str, key: &str) -> String {
        str_at(&self.get("ConfigMap", name)["data"], key).to_owned()
    }

    /// The decoded value of `key` in Secret `name`.
    pub fn secret(&self, name: &str, key: &str) -> Vec<u8> {
        let secret = self.get("Secret", name);
        if let Some(text) = secret["stringData"][key].as_str() {
            return text.as_bytes().to_vec();
        }
        base64::engine::general_purpose::STANDARD
            .decode(str_at(&secret["data"], key))
            .expect("Secret data is base64")
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// Expands `$(NAME)` from `env` as Kubernetes does in `command`, `args` and
/// env values: `$$` is a literal `$`, and a reference to an undefined name
/// is left as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[..name.len() + 3]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A volume mounted into a container, made real on this machine.
#[derive(Debug)]
pub struct Mount {
    /// Where the container sees it.
    pub path: String,
    /// Where it is here.
    pub local: PathBuf,
}

/// A pod template's first container, ready to start as a process.
#[derive(Debug)]
pub struct Pod {
    /// The binary to run: the built one for the image's `/usr/local/bin/NAME`.
    pub program: PathBuf,
    /// Its arguments, expanded, with mounted paths mapped.
    pub args: Vec<String>,
    /// Its environment from the manifest, resolved, with mounted paths
    /// mapped.
    pub env: Vec<(String, String)>,
    /// Its volumes.
    pub mounts: Vec<Mount>,
    /// The raw command and arguments, expanded but not mapped: what the
    /// container would run.
    pub argv: Vec<String>,
}

impl Pod {
    /// The first container of the pod template of `kind`/`name`. `extra_env`
    /// is what Kubernetes itself adds (such as `JOB_COMPLETION_INDEX` in an
    /// Indexed Job). Volumes are made under `root`: ConfigMaps and Secrets
    /// as files, a PersistentVolumeClaim as `root/pvc/<claim>` (shared by
    /// every pod that mounts it), an emptyDir as a fresh directory.
    pub fn new(m: &Manifests, kind: &str, name: &str, extra_env: &[(&str, &str)], root: &Path) -> Pod {
        let spec = &m.get(kind, name)["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let env = resolve_env(m, c, extra_env);
        let mut mounts = Vec::new();
        for vm in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol_name = str_at(vm, "name");
            let vol = spec["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == vol_name))
                .unwrap_or_else(|| panic!("{kind} {name} mounts an undeclared volume {vol_name}"));
            let local = make_volume(m, vol, &root.join(format!("{name}-{vol_name}")), root);
            mounts.push(Mount {
                path: str_at(vm, "mountPath").to_owned(),
                local,
            });
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| expand(s.as_str().expect("command and args are strings"), &env))
                .collect()
        };
        let argv: Vec<String> = [strings(&c["command"]), strings(&c["args"])].concat();
        let (image_program, args) = argv.split_first().expect("the container names its command");
        let binary = image_program
            .strip_prefix(IMAGE_BIN)
            .unwrap_or_else(|| panic!("{image_program} is not one of the image's binaries in {IMAGE_BIN}"));
        assert!(
            ["controller", "agent", "llm-sim"].contains(&binary),
            "the image holds no {binary}"
        );
        let mut pod = Pod {
            program: bin(binary),
            args: Vec::new(),
            env: Vec::new(),
            mounts,
            argv: argv.clone(),
        };
        pod.args = args.iter().map(|a| pod.local(a)).collect();
        pod.env = env.iter().map(|(k, v)| (k.clone(), pod.local(v))).collect();
        pod
    }

    /// `path` as seen in the container, mapped onto the volume that holds
    /// it here (unchanged when no volume does).
    pub fn local(&self, path: &str) -> String {
        for m in &self.mounts {
            let base = m.path.trim_end_matches('/');
            if let Some(rest) = path.strip_prefix(base)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", m.local.display());
            }
        }
        path.to_owned()
    }

    /// The value of argument `flag` (the argument after it).
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let i = self.argv.iter().position(|a| a == flag)?;
        self.argv.get(i + 1).map(String::as_str)
    }

    /// The value of environment variable `name`.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `env -i` arguments that run this pod's process with exactly its
    /// container environment (and the image's PATH), as a container would
    /// have: nothing of the test's own environment leaks in.
    pub fn clean_command(&self, hostname: &str) -> Vec<String> {
        let mut argv = vec![
            "-i".to_owned(),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            format!("HOSTNAME={hostname}"),
        ];
        argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(self.program.display().to_string());
        argv.extend(self.args.iter().cloned());
        argv
    }
}

fn resolve_env(m: &Manifests, c: &Value, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = str_at(&from["configMapRef"], "name");
        let data = m.get("ConfigMap", name)["data"].as_object().expect("ConfigMap data");
        for (k, v) in data {
            env.push((k.clone(), v.as_str().expect("string data").to_owned()));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = str_at(e, "name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            // An env value may refer to the variables defined before it.
            expand(v, &env)
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            m.config(r["name"].as_str().expect("name"), r["key"].as_str().expect("key"))
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let bytes = m.secret(r["name"].as_str().expect("name"), r["key"].as_str().expect("key"));
            String::from_utf8(bytes).expect("a Secret used as a variable is text")
        } else {
            panic!("this emulation does not resolve {e}");
        };
        env.push((name, value));
    }
    env
}

fn make_volume(m: &Manifests, vol: &Value, dir: &Path, root: &Path) -> PathBuf {
    let files = |items: Vec<(String, Vec<u8>)>| {
        std::fs::create_dir_all(dir).expect("volume directory");
        for (key, bytes) in items {
            std::fs::write(dir.join(key), bytes).expect("volume file written");
        }
        dir.to_owned()
    };
    if let Some(name) = vol["configMap"]["name"].as_str() {
        let data = m.get("ConfigMap", name)["data"].as_object().expect("ConfigMap data");
        return files(
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string data").as_bytes().to_vec()))
                .collect(),
        );
    }
    if let Some(name) = vol["secret"]["secretName"].as_str() {
        let secret = m.get("Secret", name);
        let keys: Vec<String> = secret["data"]
            .as_object()
            .into_iter()
            .chain(secret["stringData"].as_object())
            .flat_map(|o| o.keys().cloned())
            .collect();
        return files(keys.into_iter().map(|k| (k.clone(), m.secret(name, &k))).collect());
    }
    if let Some(claim) = vol["persistentVolumeClaim"]["claimName"].as_str() {
        m.get("PersistentVolumeClaim", claim);
        let shared = root.join("pvc").join(claim);
        std::fs::create_dir_all(&shared).expect("volume directory");
        return shared;
    }
    if vol.get("emptyDir").is_some() {
        std::fs::create_dir_all(dir).expect("volume directory");
        return dir.to_owned();
    }
    panic!("this emulation does not make volumes like {vol}");
}
