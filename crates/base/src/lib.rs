//! What every crate of the workspace needs and that knows nothing of Kafka or Netskope.
//!
//! | module | what it does |
//! |---|---|
//! | [`clock`] | wall and monotonic clocks that follow tokio's (pausable) clock |
//! | [`secret`] | tokens and passwords read from env or file, never from the config file |
//! | [`tls`] | the rustls crypto provider (ring) every https client needs, installed once per process |
//! | [`metric_names`] | the Prometheus metric names, a leaf that uses nothing |
//!
//! It is its own crate so that the Netskope client, the tenant simulator and the worker can share
//! it while none of them depends on another's internals.

pub mod clock;
pub mod metric_names;
pub mod secret;
pub mod tls;
