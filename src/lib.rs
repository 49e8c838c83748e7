//! offboarder: turns HR terminations and security risk signals into Netskope SCIM actions,
//! verifies them against Netskope's audit trail and reports one outcome per event.
//!
//! # Module map
//! Data flows one way, top to bottom:
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the worker's TOML config (with `OFFBOARDER_` env overrides), validated at start |
//! | [`netskope`] | the Netskope client: SCIM users and groups, audit-event pages, one rate limiter per token, retries, typed errors |
//! | [`sim`] | a Netskope tenant simulator (SCIM + audit + scopes + rate limits + faults) for the demo, tests and benchmarks |
//! | [`demo`] | `offboarder demo`: drives the client against an in-process simulator and prints what happened |
//! | [`telemetry`] | log setup (human on a terminal, JSON otherwise) |
//! | [`clock`] | wall and monotonic clocks that follow tokio's (pausable) clock |

pub mod clock;
pub mod config;
pub mod demo;
pub mod netskope;
pub mod sim;
pub mod telemetry;
