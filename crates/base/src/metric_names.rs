//! Prometheus metric names, and nothing else.
//!
//! A leaf: every crate of the workspace may name a metric from here, and this module uses
//! nothing. The worker's `metrics` module installs the recorder, describes each series and sets
//! the buckets; code that records a value only needs the name.

/// Events read from an input topic; `result` = `accepted` or `dead_letter`.
pub const EVENTS_CONSUMED: &str = "offboarder_events_consumed_total";
/// Outcomes published, by `action` and `status`.
pub const OUTCOMES: &str = "offboarder_outcomes_total";
/// Records sent to the dead-letter topic, by `reason`.
pub const DEAD_LETTERS: &str = "offboarder_dead_letters_total";
/// HTTP attempts to Netskope, by `op` and `status` (the HTTP status, or `error`).
pub const SCIM_REQUESTS: &str = "offboarder_scim_requests_total";
/// Time from sending a request to Netskope's response headers, by `op`.
pub const SCIM_REQUEST_DURATION: &str = "offboarder_scim_request_seconds";
/// 429 answers, by `token` (`SCIM` or `events`).
pub const THROTTLED: &str = "offboarder_scim_throttled_total";
/// Time a request waited for its token's budget, by `token`.
pub const LIMITER_WAIT: &str = "offboarder_rate_limiter_wait_seconds";
/// Events received and not yet finished (acting, or waiting for verification).
pub const IN_FLIGHT: &str = "offboarder_in_flight_events";
/// Applied actions waiting for verification.
pub const PENDING_VERIFICATIONS: &str = "offboarder_pending_verifications";
/// From an action's answer to its verification, by `method` and `result`.
pub const VERIFICATION_LATENCY: &str = "offboarder_verification_latency_seconds";
/// Messages behind the partition's end, by `topic` and `partition`, from librdkafka's
/// statistics.
pub const CONSUMER_LAG: &str = "offboarder_consumer_lag";
/// 1 when `/readyz` answers ready, else 0.
pub const READY: &str = "offboarder_ready";
/// 1 while the blast-radius guard halts destructive actions, else 0.
pub const GUARD_HALTED: &str = "offboarder_guard_halted";
/// Times the blast-radius guard halted destructive actions.
pub const GUARD_HALTS: &str = "offboarder_guard_halts_total";
/// 1 once the dead-letter limit stopped reading (a deployment fault), else 0.
pub const DEAD_LETTER_LIMIT: &str = "offboarder_dead_letter_limit_tripped";
/// Offsets between a partition's committed offset and the first record read after it was
/// assigned, by `topic`: records the worker never saw (see the worker's
/// `pipeline::consumer::resume_gap`).
pub const RESUME_SKIPPED: &str = "offboarder_resume_skipped_offsets_total";
/// Times a token was read again from its file after a 401 and found replaced, by `token`.
pub const TOKEN_RELOADS: &str = "offboarder_token_reloads_total";
/// With `exactly_once`: outcome transactions ended, by `result` (`committed` or `aborted`).
pub const TRANSACTIONS: &str = "offboarder_transactions_total";
/// This worker's share of each token's request budget, requests per minute, by `token`.
pub const REQUEST_BUDGET: &str = "offboarder_request_budget_per_minute";
/// Users in the directory mirror (user name → id) after its last listing.
pub const DIRECTORY_USERS: &str = "offboarder_directory_mirror_users";
/// Directory listings, by `result` (`complete`, `not_worth_it`, `failed`).
pub const DIRECTORY_LISTINGS: &str = "offboarder_directory_listings_total";
/// SETs pushed to the SSF receiver, by `result` (`accepted`, an RFC 8935 error code, or
/// `unavailable`).
pub const SSF_SETS: &str = "offboarder_ssf_sets_total";
