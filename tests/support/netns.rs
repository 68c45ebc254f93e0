//! Hosts in network namespaces, for tests of what crosses a network.
//!
//! Each host is a namespace joined to a bridge by a veth pair, with
//! `/etc/netns/<ns>/hosts` naming every host (as a Kubernetes Service
//! would). The bridge itself has an address, so the test process can reach
//! any host. Everything is removed when the [`Net`] drops. Needs root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::harness::Missing;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `Ok` when this process may create network namespaces; else what is
/// missing.
pub fn available() -> Result<(), Missing> {
    if !crate::is_root() {
        return Err(Missing::new(
            "network namespaces need root (.ci/run runs as root in CI)",
        ));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err(Missing::new(
            "the `ip` command is not installed (.ci/run installs iproute2)",
        ));
    }
    Ok(())
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One host of a [`Net`].
#[derive(Debug)]
pub struct Host {
    /// Its name, resolvable from every host.
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The root-side end of its veth pair: down means its link is cut.
    veth: String,
}

/// A small network of hosts.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    hosts: Vec<Host>,
    logs: tempfile::TempDir,
}

impl Net {
    /// Creates one namespace per name, all on one bridge.
    pub fn new(names: &[&str]) -> Net {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{:06x}", ((pid & 0xfffff) << 4 | (n & 0xf)) & 0xff_ffff);
        let (b, c) = (100 + (pid % 100) as u8, (n % 250) as u8);
        let bridge = format!("sb{id}");
        ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.{b}.{c}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut net = Net {
            bridge,
            hosts: Vec::new(),
            logs: tempfile::tempdir().expect("a temporary directory"),
        };
        for (i, name) in names.iter().enumerate() {
            let ns = format!("st{id}-{name}");
            let veth = format!("s{id}h{i}");
            let peer = format!("s{id}n{i}");
            let addr = Ipv4Addr::new(10, b, c, i as u8 + 1);
            ip(&["netns", "add", &ns]);
            // Recorded before anything else can fail, so Drop cleans up.
            net.hosts.push(Host {
                name: (*name).to_owned(),
                ns: ns.clone(),
                ip: addr,
                veth: veth.clone(),
            });
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
        }
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for h in &net.hosts {
            hosts.push_str(&format!("{} {}\n", h.ip, h.name));
        }
        for h in &net.hosts {
            let dir = Path::new("/etc/netns").join(&h.ns);
            std::fs::create_dir_all(&dir).expect("/etc/netns is writable");
            std::fs::write(dir.join("hosts"), &hosts).expect("hosts file written");
        }
        net
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Runs `program` on host `name` with `env`; its output goes to log
    /// files kept for the assertion messages.
    pub fn spawn(&self, name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let host = self.host(name);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stdout = self.logs.path().join(format!("{name}-{n}.out"));
        let stderr = self.logs.path().join(format!("{name}-{n}.err"));
        // `ip netns exec` execs the program: the child's PID is its PID.
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(File::create(&stdout).expect("log file"))
            .stderr(File::create(&stderr).expect("log file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec runs");
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    /// Cuts host `name` off the network (its link goes down).
    pub fn cut(&self, name: &str) {
        ip(&["link", "set", &self.host(name).veth, "down"]);
    }

    /// Restores host `name`'s link.
    pub fn restore(&self, name: &str) {
        ip(&["link", "set", &self.host(name).veth, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["link", "del", &h.veth]).output();
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&h.ns));
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// A process on a host; killed by its PID when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The host it runs on.
    pub name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
    }

    /// Stops it (SIGSTOP): it does not run until [`Proc::resume`].
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Lets a stopped process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a child's PID");
        rustix::process::kill_process(pid, signal).expect("the process can be signalled");
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if waited >= limit {
                return None;
            }
            std::thread::sleep(step);
            waited += step;
        }
    }

    /// Its standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until its standard error contains `text`, up to `limit`.
    pub fn wait_for_stderr(&mut self, text: &str, limit: Duration) -> bool {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        while waited < limit {
            if self.stderr().contains(text) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.stderr().contains(text);
            }
            std::thread::sleep(step);
            waited += step;
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
