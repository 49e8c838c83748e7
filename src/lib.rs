//! offboarder: turns HR terminations and security risk signals into Netskope SCIM actions,
//! verifies them against Netskope's audit trail and reports one outcome per event.
//!
//! # Module map
//! Data flows one way, top to bottom:
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the worker's TOML config (with `OFFBOARDER_` env overrides), validated at start |
//! | [`secret`] | tokens and passwords read from env or file, never from the config file |
//! | [`pipeline`] | Kafka in, per-user lanes, outcomes and dead letters out, offsets stored only behind final outcomes |
//! | [`event`] | inbound events: size bound, JSON, schema validation against `schemas/` |
//! | [`policy`] | event → decision: deactivate, delete, quarantine, release, or skip (protected, below threshold) |
//! | [`guard`] | the blast-radius guard: past `max_deactivations` per window, destructive actions halt until an operator releases them |
//! | [`verify`] | one shared audit poller per tenant, and read-back, confirm each applied action |
//! | [`netskope`] | the Netskope client: SCIM users and groups, audit-event pages, one rate limiter per token, retries, typed errors |
//! | [`outcome`] | the outcome record published per event |
//! | [`sim`] | a Netskope tenant simulator (SCIM + audit + scopes + rate limits + faults) for the demo, tests and benchmarks |
//! | [`sandbox`] | an in-process mock Kafka cluster (or topics on a real broker, for the interoperability tests) plus the simulator, wired to a config, for the demo, tests and benchmarks |
//! | [`demo`] | `offboarder demo`: an in-process Kafka cluster and the simulator, sample events through the real pipeline |
//! | [`tls`] | the rustls crypto provider (ring) every https client needs, installed once per process |
//! | [`telemetry`] | logs (human on a terminal, JSON otherwise), OTLP traces, each event's span and its trace context |
//! | [`metrics`] | Prometheus metric names, help texts, buckets and the recorder |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz`, and the guard's status and release |
//! | [`clock`] | wall and monotonic clocks that follow tokio's (pausable) clock |

pub mod admin;
pub mod clock;
pub mod config;
pub mod demo;
pub mod event;
pub mod guard;
pub mod metrics;
pub mod netskope;
pub mod outcome;
pub mod pipeline;
pub mod policy;
pub mod sandbox;
pub mod secret;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod verify;
