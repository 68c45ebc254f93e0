//! When requests are sent: load models that decide each request's
//! intended start. The executor ([`crate::exec`]) decides how.

pub mod users;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Holds users back until the load begins. One task opens it at the start
/// and notes the time; the users then start together instead of each
/// waking from its own timer, which on a busy machine spreads them out.
#[derive(Clone, Debug)]
pub struct Gate(watch::Receiver<bool>);

/// Opens a [`Gate`].
#[derive(Debug)]
pub struct Opener(watch::Sender<bool>);

impl Gate {
    /// A closed gate and its opener.
    pub fn new() -> (Opener, Gate) {
        let (tx, rx) = watch::channel(false);
        (Opener(tx), Gate(rx))
    }

    /// Waits until the gate opens; false if it never will.
    pub async fn passed(&mut self) -> bool {
        self.0.wait_for(|open| *open).await.is_ok()
    }
}

impl Opener {
    /// Lets every user through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

/// How a load is ended early.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// Cancelled: issue no new requests; in-flight ones may finish within
    /// the drain time.
    pub stop: CancellationToken,
    /// Cancelled: abandon in-flight requests now (counted as cancelled).
    pub abort: CancellationToken,
}
