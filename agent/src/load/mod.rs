//! When requests are sent: load models that decide each request's
//! intended start. The executor ([`crate::exec`]) decides how.

pub mod users;

use tokio_util::sync::CancellationToken;

/// How a load is ended early.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// Cancelled: issue no new requests; in-flight ones may finish within
    /// the drain time.
    pub stop: CancellationToken,
    /// Cancelled: abandon in-flight requests now (counted as cancelled).
    pub abort: CancellationToken,
}
