//! offboarder: turns HR terminations and security risk signals into Netskope SCIM actions,
//! verifies them against Netskope's audit trail and reports one outcome per event.
//!
//! # Crates
//! The workspace's crates are the architecture's layers; cargo refuses an import against
//! their direction.
//!
//! | crate | what it is | depends on |
//! |---|---|---|
//! | `offboarder-base` (`crates/base`) | clocks that follow tokio's pausable time, secrets from env or file, the TLS provider, the metric names | nothing of ours |
//! | `netskope` (`crates/netskope`) | the Netskope client: SCIM users and groups, audit-event pages, one rate limiter per token, retries, typed errors | base |
//! | `netskope-sim` (`crates/netskope-sim`) | a Netskope tenant simulator, library and `netskope-sim` binary | base |
//! | `offboarder` (this crate) | the worker: Kafka in, policy, guard, actions, verification, outcomes out; its CLI | all three; the simulator only with the `demo` feature |
//!
//! The client is a crate because it is the part that talks to Netskope and nothing else: no
//! Kafka, no outcome records, so its errors and limits can be read and tested on their own. The
//! simulator is a crate because it is a product of its own (users run it in their tests) and
//! must stay independent of the client it is used to test. The `demo` feature (on by default)
//! is the only way the simulator reaches the worker's binary: it brings `offboarder demo`,
//! `offboarder simulate` and [`sandbox`]; `cargo build --release --no-default-features` builds
//! a worker without them.
//!
//! # Module map
//! Data flows one way, top to bottom:
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the worker's TOML config (with `OFFBOARDER_` env overrides), validated at start |
//! | [`pipeline`] | Kafka in, per-user lanes, outcomes and dead letters out, offsets stored only behind final outcomes |
//! | [`event`] | inbound events: size bound, JSON, schema validation against `schemas/` |
//! | [`ssf`] | Shared Signals: Security Event Tokens (RISC, CAEP) verified and mapped to risk signals; `offboarder ssf-receiver`, the RFC 8935 push endpoint |
//! | [`policy`] | event → decision: deactivate, delete, quarantine, release, or skip (protected, below threshold) |
//! | [`guard`] | the blast-radius guard: past `max_deactivations` per window, destructive actions halt until an operator releases them; its log is the state topic, shared by every worker and kept across restarts |
//! | [`verify`] | one shared audit poller per tenant, and read-back, confirm each applied action |
//! | [`outcome`] | the outcome record published per event |
//! | [`sandbox`] | an in-process mock Kafka cluster (or topics on a real broker, for the interoperability tests) plus the simulator, wired to a config, for the demo, tests and benchmarks |
//! | [`demo`] | `offboarder demo`: an in-process Kafka cluster and the simulator, sample events through the real pipeline |
//! | [`telemetry`] | logs (human on a terminal, JSON otherwise), OTLP traces, each event's span and its trace context |
//! | [`metrics`] | the Prometheus recorder: help texts, buckets, counters that start at 0 |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz`, and the guard's status and release |
//! | [`tools`] | operator commands beside the worker: `act` (an operator's action as an input event), `history` (a user's outcomes), `dead-letters list/replay` |

pub mod admin;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
pub mod guard;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
pub mod policy;
#[cfg(feature = "demo")]
pub mod sandbox;
pub mod ssf;
pub mod telemetry;
pub mod tools;
pub mod verify;
