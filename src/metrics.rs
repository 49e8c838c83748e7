//! The worker's Prometheus recorder: help texts, buckets, and the counters that start at 0.
//!
//! The names live in `offboarder_base::metric_names`, a leaf every crate may use. Instrumented
//! code calls the `metrics` crate's macros with those names; until a recorder is installed (by
//! `offboarder run`, or a test) those calls cost almost nothing and record nothing. Labels carry
//! route templates, operation names and statuses, never an id, a user
//! name or a token, so their number stays small.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use offboarder_base::metric_names::*;

const WAIT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const VERIFY_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0,
];

/// Installs the global recorder and describes every metric. Call once per process.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LIMITER_WAIT.into()), WAIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SCIM_REQUEST_DURATION.into()), REQUEST_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(VERIFICATION_LATENCY.into()), VERIFY_BUCKETS)?
        .install_recorder()?;
    describe();
    zero_counters();
    Ok(handle)
}

/// Every series: a name and its type, for the drift test against the dashboard's list.
#[cfg(test)]
const ALL: &[(&str, &str)] = &[
    (EVENTS_CONSUMED, "counter"),
    (OUTCOMES, "counter"),
    (DEAD_LETTERS, "counter"),
    (SCIM_REQUESTS, "counter"),
    (SCIM_REQUEST_DURATION, "histogram"),
    (THROTTLED, "counter"),
    (LIMITER_WAIT, "histogram"),
    (IN_FLIGHT, "gauge"),
    (PENDING_VERIFICATIONS, "gauge"),
    (VERIFICATION_LATENCY, "histogram"),
    (CONSUMER_LAG, "gauge"),
    (READY, "gauge"),
    (GUARD_HALTED, "gauge"),
    (GUARD_HALTS, "counter"),
    (DEAD_LETTER_LIMIT, "gauge"),
    (RESUME_SKIPPED, "counter"),
];

/// Creates the alert-worthy counters at 0. A counter whose first sample is already 1 (the first
/// failure after a restart) is invisible to `increase()` and `rate()`, so the dashboard's red
/// panels would miss it.
fn zero_counters() {
    use crate::outcome::{Action, Status};
    for action in [
        Action::Deactivate,
        Action::Delete,
        Action::Quarantine,
        Action::Release,
        Action::Reactivate,
        Action::None,
    ] {
        for status in [
            Status::Applied,
            Status::Failed,
            Status::Skipped,
            Status::DryRun,
            Status::Verified,
            Status::Unverified,
            Status::Superseded,
            Status::Halted,
            Status::Scheduled,
            Status::Cancelled,
            Status::Reverted,
        ] {
            metrics::counter!(OUTCOMES, "action" => action.as_str(), "status" => status.as_str())
                .absolute(0);
        }
    }
    use crate::event::RejectReason;
    let rejected = [
        RejectReason::Empty,
        RejectReason::Oversized,
        RejectReason::NotUtf8Json,
        RejectReason::SchemaViolation,
        RejectReason::InvalidSet,
        RejectReason::IgnoredSet,
    ]
    .map(RejectReason::as_str);
    for reason in rejected
        .into_iter()
        .chain([crate::pipeline::publish::RETRIES_EXHAUSTED])
    {
        metrics::counter!(DEAD_LETTERS, "reason" => reason).absolute(0);
    }
    metrics::counter!(GUARD_HALTS).absolute(0);
    for token in [netskope::TokenRole::Scim, netskope::TokenRole::Events] {
        metrics::counter!(TOKEN_RELOADS, "token" => token.to_string()).absolute(0);
    }
    for result in ["committed", "aborted"] {
        metrics::counter!(TRANSACTIONS, "result" => result).absolute(0);
    }
    for result in ["complete", "not_worth_it", "failed"] {
        metrics::counter!(DIRECTORY_LISTINGS, "result" => result).absolute(0);
    }
    for result in [
        "accepted",
        "invalid_request",
        "invalid_key",
        "invalid_issuer",
        "invalid_audience",
        "authentication_failed",
        "unavailable",
    ] {
        metrics::counter!(SSF_SETS, "result" => result).absolute(0);
    }
}

fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        "Events read from an input topic, by topic and result (accepted or dead_letter)."
    );
    describe_counter!(OUTCOMES, "Outcomes published, by action and status.");
    describe_counter!(
        DEAD_LETTERS,
        "Records sent to the dead-letter topic, by reason."
    );
    describe_counter!(
        SCIM_REQUESTS,
        "HTTP attempts to Netskope, by operation and status."
    );
    describe_histogram!(
        SCIM_REQUEST_DURATION,
        Unit::Seconds,
        "Time from sending a request to Netskope's response headers, by operation."
    );
    describe_counter!(THROTTLED, "HTTP 429 answers from Netskope, by token.");
    describe_gauge!(
        REQUEST_BUDGET,
        "This worker's share of each token's requests_per_minute, by token."
    );
    describe_gauge!(
        DIRECTORY_USERS,
        "Users in the directory mirror (user name to SCIM id) after its last listing."
    );
    describe_counter!(
        DIRECTORY_LISTINGS,
        "Listings of the directory, by result (complete, not_worth_it, failed)."
    );
    describe_counter!(
        SSF_SETS,
        "SETs pushed to the SSF receiver, by result (accepted, an RFC 8935 error code, unavailable)."
    );
    describe_counter!(
        TOKEN_RELOADS,
        "Tokens read again from their file after a 401 and found replaced, by token."
    );
    describe_counter!(
        TRANSACTIONS,
        "With exactly_once: transactions of outcomes and offsets ended, by result (committed or aborted)."
    );
    describe_histogram!(
        LIMITER_WAIT,
        Unit::Seconds,
        "Time a request waited for its token's request budget."
    );
    describe_gauge!(
        IN_FLIGHT,
        "Events received and not yet finished (acting, or waiting for verification)."
    );
    describe_gauge!(
        PENDING_VERIFICATIONS,
        "Applied actions waiting for verification."
    );
    describe_histogram!(
        VERIFICATION_LATENCY,
        Unit::Seconds,
        "Time from an action's answer to its verification, by method and result (verified, unverified or superseded)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Messages between the consumer's position and the partition's end."
    );
    describe_gauge!(
        READY,
        "1 when the worker is ready (partitions assigned, Netskope reachable), else 0."
    );
    describe_gauge!(
        GUARD_HALTED,
        "1 while the blast-radius guard halts deactivations and deletes, else 0."
    );
    describe_counter!(
        GUARD_HALTS,
        "Times the blast-radius guard halted deactivations and deletes."
    );
    describe_gauge!(
        DEAD_LETTER_LIMIT,
        "1 once most recent events were invalid and reading stopped (a deployment fault), else 0."
    );
    describe_counter!(
        RESUME_SKIPPED,
        "Offsets skipped between a partition's committed offset and the first record read after its assignment."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard's validator only accepts the metrics listed in its allowed-metrics file;
    /// that list and this module must name the same series.
    #[test]
    fn the_dashboard_knows_every_metric_and_no_other() {
        let listed: Vec<(&str, &str)> =
            include_str!("../deploy/grafana/validate/allowed-metrics.txt")
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    Some((parts.next()?, parts.next()?))
                })
                .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        let mut ours = ALL.to_vec();
        ours.sort();
        assert_eq!(listed_sorted, ours);
    }
}
