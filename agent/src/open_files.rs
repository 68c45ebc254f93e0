//! Open files: every user in flight holds a connection, and each
//! connection is a file descriptor, so a process whose `RLIMIT_NOFILE` is
//! smaller than its users would turn part of its load into `connect`
//! errors that the server never saw. The pre-flight check refuses such a
//! run before it starts, naming the numbers and the fix.

/// Files an agent keeps open besides its users' connections: its
/// runtimes, the stream to its controller, a span exporter, standard
/// streams and the odd `/proc` read, with room to spare.
pub const AGENT_RESERVE: u64 = 64;

/// Files a controller keeps open besides its agents: the results files,
/// its listeners, the metrics scrape and the agents' streams.
pub const CONTROLLER_RESERVE: u64 = 64;

/// This process's limit on open files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The limit in force (`u64::MAX`: unlimited).
    pub soft: u64,
    /// The most the soft limit may be raised to without privileges.
    pub hard: u64,
}

impl Limit {
    /// The limit in force now.
    pub fn current() -> Limit {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Limit {
            soft: limit.current.unwrap_or(u64::MAX),
            hard: limit.maximum.unwrap_or(u64::MAX),
        }
    }

    fn describe(self) -> String {
        if self.soft == self.hard {
            "its soft and hard RLIMIT_NOFILE".to_owned()
        } else {
            format!("its soft RLIMIT_NOFILE; the hard limit is {}", self.hard)
        }
    }
}

/// Where a load runs, for the pre-flight check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An agent process of its own.
    Agent,
    /// The controller's process, with `agents` in-process agents (named
    /// for the message) and, when `simulator`, the built-in simulator,
    /// which holds the server's end of every connection.
    Controller {
        /// The in-process agents' names.
        agents: Vec<String>,
        /// The built-in simulator serves the load from this process.
        simulator: bool,
    },
}

/// Checks that `users` (the most connections the load may hold at once)
/// fit under `limit` on `host`. The error says who needs how many files,
/// what the limit is, and how to fix it.
pub fn check(host: &Host, users: u64, limit: Limit) -> Result<(), String> {
    let (per_user, reserve) = match host {
        Host::Agent => (1, AGENT_RESERVE),
        Host::Controller { agents, simulator } => (
            1 + u64::from(*simulator),
            CONTROLLER_RESERVE + AGENT_RESERVE * agents.len() as u64,
        ),
    };
    let need = users.saturating_mul(per_user).saturating_add(reserve);
    if need <= limit.soft {
        return Ok(());
    }
    // Room for the load to grow, in a round number.
    let suggest = need.saturating_mul(2).checked_next_power_of_two().unwrap_or(u64::MAX);
    let raise = format!(
        "raise the limit (ulimit -n {suggest}, or LimitNOFILE= in a systemd unit, or the container's nofile ulimit)"
    );
    let users_word = if users == 1 { "user" } else { "users" };
    Err(match host {
        Host::Agent => format!(
            "this agent has {users} {users_word} but may open only {soft} files ({rlimit}); each user needs a \
             connection, and the agent about {reserve} files of its own: {raise} or spread the users over more agents",
            soft = limit.soft,
            rlimit = limit.describe(),
        ),
        Host::Controller { agents, simulator } => {
            let who = match agents.as_slice() {
                [one] => format!("agent {one} has"),
                many => format!("the {} in-process agents have", many.len()),
            };
            let between = if agents.len() > 1 { " between them" } else { "" };
            let sim = if *simulator {
                ", and the built-in simulator holds the other end of each connection"
            } else {
                ""
            };
            format!(
                "{who} {users} {users_word}{between} but this process may open only {soft} files ({rlimit}); each \
                 user needs a connection{sim}, and the controller and its agents about {reserve} files of their own: \
                 {raise} or run the agents on other hosts (controller run --listen, and agent)",
                soft = limit.soft,
                rlimit = limit.describe(),
            )
        }
    })
}

/// A note for a connection refused for want of files (`EMFILE`,
/// `ENFILE`), naming the limit; `None` for any other error.
pub fn exhausted(e: &std::io::Error) -> Option<String> {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    match e.raw_os_error() {
        Some(EMFILE) => Some(format!(
            "this process may open only {} files (RLIMIT_NOFILE): raise the limit or cap the load \
             (load.max_concurrency, fewer users per agent)",
            Limit::current().soft
        )),
        Some(ENFILE) => Some("the system's table of open files is full (fs.file-max)".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOW: Limit = Limit { soft: 256, hard: 256 };

    #[test]
    fn an_agent_needs_a_connection_per_user_and_a_reserve() {
        assert!(check(&Host::Agent, 256 - AGENT_RESERVE, LOW).is_ok());
        let e = check(&Host::Agent, 256 - AGENT_RESERVE + 1, LOW).unwrap_err();
        assert!(e.contains("193 users but may open only 256 files"), "{e}");
        let e = check(&Host::Agent, 750, LOW).unwrap_err();
        assert_eq!(
            e,
            "this agent has 750 users but may open only 256 files (its soft and hard RLIMIT_NOFILE); each user \
             needs a connection, and the agent about 64 files of its own: raise the limit (ulimit -n 2048, or \
             LimitNOFILE= in a systemd unit, or the container's nofile ulimit) or spread the users over more agents"
        );
        let e = check(&Host::Agent, 750, Limit { soft: 256, hard: 512 }).unwrap_err();
        assert!(e.contains("(its soft RLIMIT_NOFILE; the hard limit is 512)"), "{e}");
        let unlimited = Limit {
            soft: u64::MAX,
            hard: u64::MAX,
        };
        assert!(check(&Host::Agent, u64::MAX, unlimited).is_ok());
    }

    #[test]
    fn in_process_agents_share_the_controller_and_the_simulator_counts_twice() {
        let one = |simulator| Host::Controller {
            agents: vec!["local-0".to_owned()],
            simulator,
        };
        let reserve = CONTROLLER_RESERVE + AGENT_RESERVE;
        assert!(check(&one(false), 256 - reserve, LOW).is_ok());
        assert!(check(&one(false), 256 - reserve + 1, LOW).is_err());
        assert!(check(&one(true), (256 - reserve) / 2, LOW).is_ok());
        let e = check(&one(true), (256 - reserve) / 2 + 1, LOW).unwrap_err();
        assert!(
            e.starts_with("agent local-0 has 65 users but this process may open only 256 files"),
            "{e}"
        );
        assert!(e.contains("the built-in simulator holds the other end"), "{e}");
        let two = Host::Controller {
            agents: vec!["local-0".to_owned(), "local-1".to_owned()],
            simulator: false,
        };
        let e = check(&two, 750, LOW).unwrap_err();
        assert!(
            e.starts_with("the 2 in-process agents have 750 users between them"),
            "{e}"
        );
        assert!(e.contains("run the agents on other hosts"), "{e}");
    }

    #[test]
    fn running_out_of_files_is_named() {
        let e = std::io::Error::from_raw_os_error(24);
        assert!(exhausted(&e).unwrap().contains("RLIMIT_NOFILE"));
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(exhausted(&e), None);
    }
}
