//! The harness of the suites that need something from outside the
//! workspace: root for network namespaces, or a third-party peer
//! (llama-server, rotel, Prometheus, kubectl).
//!
//! A test returns [`Outcome`]: `Err(Missing)` when what it needs is not on
//! this machine. Its line then reads `ignored (what is missing; how .ci/run
//! provides it)` and it counts as ignored, never as passed. With
//! `STAMPEDE_REQUIRE_PEERS=1` (set by `.ci/run`) a missing peer fails the
//! test instead, so a green CI run means every test ran.

use std::fmt;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The variable that turns every skip into a failure.
pub const REQUIRE_PEERS: &str = "STAMPEDE_REQUIRE_PEERS";

/// What a test needs and this machine lacks, and how `.ci/run` provides it.
#[derive(Debug, Clone)]
pub struct Missing(String);

impl Missing {
    /// `what`: one line naming what is missing and how to provide it.
    pub fn new(what: impl Into<String>) -> Missing {
        Missing(what.into())
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a test returns: `Ok` when it ran (a failed assertion panics).
pub type Outcome = Result<(), Missing>;

/// A test: its name and its function.
pub type Test = (&'static str, fn() -> Outcome);

/// Whether skips are failures here.
pub fn strict() -> bool {
    std::env::var_os(REQUIRE_PEERS).is_some_and(|v| v == "1")
}

/// Runs the named tests as libtest does (filters, `--list`, threads), with
/// a missing peer reported as ignored, or as a failure when [`strict`].
pub fn run(tests: &[Test]) -> ExitCode {
    let args = Arguments::from_args();
    let strict = strict();
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            // `stringify!` spells a path `refusals :: name`.
            Trial::ignorable_test(name.replace(' ', ""), move || match test() {
                Ok(()) => Ok(Completion::Completed),
                Err(missing) if strict => Err(Failed::from(format!(
                    "{missing}; {REQUIRE_PEERS}=1 makes a skipped test fail"
                ))),
                Err(missing) => Ok(Completion::ignored_with(format!("skipped: {missing}"))),
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// `fn main` of a suite: runs the listed test functions, each a
/// `fn() -> Outcome`, under [`run`].
#[macro_export]
macro_rules! suite {
    ($($test:path),* $(,)?) => {
        fn main() -> std::process::ExitCode {
            $crate::harness::run(&[$((stringify!($test), $test as fn() -> $crate::harness::Outcome)),*])
        }
    };
}
