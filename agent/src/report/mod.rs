//! Layer 2, the reporting side: the agent's state and what it shows of it
//! (/readyz, /status, /metrics over HTTP, systemd's notify protocol, the
//! journal). Imports only the model and the pure core; never the edges or
//! the loops.

pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod status;
