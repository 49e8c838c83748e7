//! Pages of Netskope audit events (`GET /api/v2/events/data/audit`).
//!
//! The sources disagree on two points, and tenants differ: the paging parameter is `offset`
//! (v2 spec) or `skip` (older guides), and the events come under `result` (v2) or `data`
//! (guides). The parameter is configured; both wrappers are accepted. One malformed event does
//! not spoil a page: it is skipped with a warning.
//!
//! Reading is by insertion time (`insertionstarttime`), through an [`AuditCursor`]: Netskope
//! indexes events minutes after they happen and not necessarily in `timestamp` order, so a
//! cursor on `timestamp` would either miss late events or have to re-read minutes of the trail
//! at every poll. By insertion time, each event is read once, whatever the lag. The order of
//! results within a range is not documented: the cursor handles oldest-first and newest-first.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::NetskopeClient;
use super::error::{NetskopeError, Op};

/// Netskope's largest page.
pub const MAX_PAGE_LIMIT: u32 = 5000;

/// A time window on the events' `timestamp`, in epoch seconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditWindow {
    pub start: u64,
    pub end: u64,
}

impl AuditWindow {
    pub fn contains(&self, timestamp: u64) -> bool {
        self.start <= timestamp && timestamp <= self.end
    }

    /// The smallest window that holds both.
    pub fn union(self, other: AuditWindow) -> AuditWindow {
        AuditWindow {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// What a change sent to the server leaves for verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Requests sent (a member change in chunks sends several; a removal the server refused
    /// as a value list is sent again with filter paths).
    pub requests: usize,
    /// When the server handled them, by the server's own clock: from each answer's `Date`
    /// header back to when its request left, with a few seconds of slack for the header's
    /// resolution. Its audit event is timestamped inside. `None` when an answer had no `Date`.
    pub server_window: Option<AuditWindow>,
}

impl Sent {
    pub(crate) fn one(server_window: Option<AuditWindow>) -> Self {
        Self {
            requests: 1,
            server_window,
        }
    }

    /// Both changes together: the requests of each, and a window that holds both (none when
    /// either is unknown).
    pub(crate) fn and(self, other: Sent) -> Sent {
        let server_window = match (self.server_window, other.server_window) {
            (Some(a), Some(b)) => Some(a.union(b)),
            (None, w) | (w, None) if self.requests == 0 || other.requests == 0 => w,
            _ => None,
        };
        Sent {
            requests: self.requests + other.requests,
            server_window,
        }
    }
}

/// One audit event. Only the fields verification needs are typed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditEvent {
    #[serde(rename = "_id", deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(deserialize_with = "epoch_seconds")]
    pub timestamp: u64,
    /// When Netskope indexed the event (`_insertion_epoch_timestamp`), epoch seconds.
    #[serde(
        rename = "_insertion_epoch_timestamp",
        default,
        deserialize_with = "some_epoch_seconds"
    )]
    pub inserted: Option<u64>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The admin or API token name that acted.
    #[serde(default)]
    pub user: Option<String>,
    /// What happened, e.g. `Rest API V2 Call`.
    #[serde(default)]
    pub audit_log_event: Option<String>,
    #[serde(default)]
    pub supporting_data: Option<SupportingData>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SupportingData {
    #[serde(default)]
    pub data_type: Option<String>,
    /// For a REST API v2 call: `[status, "METHOD", "/path", "trid=..."]`.
    #[serde(default)]
    pub data_values: Vec<Value>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "expected a non-empty string or a number",
        )),
    }
}

fn some_epoch_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    epoch_seconds(d).map(Some)
}

fn epoch_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| serde::de::Error::custom("expected epoch seconds"))
}

/// Reads the events of a page, under `result` or `data`.
fn parse_page(op: Op, status: u16, body: &[u8]) -> Result<Vec<AuditEvent>, NetskopeError> {
    let invalid = |reason: String| NetskopeError::InvalidResponse { op, status, reason };
    let mut page: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
    if let Some(ok) = page.get("ok")
        && ok.as_i64() == Some(0)
    {
        let message = page
            .get("error")
            .or_else(|| page.get("message"))
            .map(|m| m.to_string())
            .unwrap_or_else(|| "no reason given".into());
        return Err(invalid(format!("the tenant answered ok=0: {message}")));
    }
    let events = match page.remove("result").or_else(|| page.remove("data")) {
        Some(Value::Array(events)) => events,
        Some(_) => return Err(invalid("`result`/`data` is not a list".into())),
        None => {
            return Err(invalid(
                "neither `result` nor `data` in the response".into(),
            ));
        }
    };
    let mut parsed = Vec::with_capacity(events.len());
    let mut skipped = 0usize;
    for event in events {
        match serde_json::from_value::<AuditEvent>(event) {
            Ok(e) => parsed.push(e),
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "audit events without a usable _id or timestamp were skipped"
        );
    }
    Ok(parsed)
}

impl NetskopeClient {
    /// Reads one event inserted in the last minute: proves the audit endpoint answers and
    /// the token has its scope.
    pub async fn probe_audit(&self) -> Result<(), NetskopeError> {
        let now = offboarder_base::clock::WallClock::new().now_secs();
        let range = Inserted {
            from: now.saturating_sub(60),
            to: Some(now),
        };
        self.audit_page(range, 1, 0).await.map(|_| ())
    }

    /// One page of audit events inserted in `range`, starting at `offset`. `limit` is clamped
    /// to 1..=5000. A page shorter than `limit` is the last one; callers also bound the number
    /// of pages, because a tenant that ignores the paging parameter returns the same page
    /// forever.
    pub async fn audit_page(
        &self,
        range: Inserted,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<AuditEvent>, NetskopeError> {
        self.dated_audit_page(range, limit, offset)
            .await
            .map(|(events, _)| events)
    }

    /// [`Self::audit_page`] with the answer's `Date` (epoch seconds).
    async fn dated_audit_page(
        &self,
        range: Inserted,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), NetskopeError> {
        let op = Op::AuditPage;
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let Some(url) = self.endpoints.audit.clone() else {
            return Err(NetskopeError::InvalidInput {
                op,
                reason: "no audit endpoint: set netskope.tenant_url or netskope.audit_url".into(),
            });
        };
        let paging = self.paging_param.as_str();
        let mut query = vec![
            ("insertionstarttime", range.from.to_string()),
            ("limit", limit.to_string()),
            (paging, offset.to_string()),
        ];
        if let Some(to) = range.to {
            query.push(("insertionendtime", to.to_string()));
        }
        let reply = self
            .transport
            .send(&self.events_token, op, |http| {
                http.get(url.clone()).query(&query)
            })
            .await?;
        if !reply.is_success() {
            return Err(reply.rejected(op, &self.events_token));
        }
        parse_page(op, reply.status, &reply.body).map(|events| (events, reply.server_date))
    }

    /// Reads the events inserted since `cursor`, page by page (at most `max_pages` of
    /// `limit`), and moves the cursor past them. Each event is returned once, across calls.
    /// A call that is cut short (`max_pages`, a failed page after the first, a tenant that
    /// ignores the paging parameter) returns what it read and goes on from there next time.
    /// `Err` only when the first page fails: nothing was read, and the cursor stays.
    pub async fn read_audit(
        &self,
        cursor: &mut AuditCursor,
        limit: u32,
        max_pages: u32,
    ) -> Result<AuditRead, NetskopeError> {
        let settled = cursor.settled();
        let range = match settled {
            Some(to) => Inserted {
                from: cursor.from(),
                to: Some(to),
            },
            None => cursor.range(),
        };
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut previous_first: Option<String> = None;
        let mut offset = cursor.offset();
        let mut pages = 0;
        let mut complete = false;
        while pages < max_pages.max(1) {
            let page = match self.dated_audit_page(range, limit, offset).await {
                Ok((page, date)) => {
                    if let Some(date) = date {
                        cursor.saw_server_date(date);
                    }
                    page
                }
                Err(e) if pages == 0 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "audit read cut short; it goes on from here at the next poll");
                    break;
                }
            };
            pages += 1;
            let first = page.first().map(|e| e.id.clone());
            if pages > 1 && first.is_some() && first == previous_first {
                tracing::warn!(
                    "the audit endpoint returned the same page twice: it ignores the paging parameter (check netskope.audit_paging_param)"
                );
                break;
            }
            previous_first = first;
            let short = (page.len() as u32) < limit;
            offset += page.len() as u64;
            events.extend(page);
            if short {
                complete = true;
                break;
            }
        }
        if !complete && pages == max_pages.max(1) {
            tracing::debug!(
                pages,
                "more audit events than one poll reads (verify.max_pages); the rest at the next poll"
            );
        }
        let events = match settled {
            Some(to) if complete => cursor.advance_through(events, to),
            _ => cursor.advance(events, complete),
        };
        Ok(AuditRead {
            events,
            pages,
            complete,
        })
    }
}

/// A range of insertion times, epoch seconds, both ends included; `to: None` is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub from: u64,
    pub to: Option<u64>,
}

/// What one [`NetskopeClient::read_audit`] found.
#[derive(Debug)]
pub struct AuditRead {
    /// Events not returned before, in the server's order.
    pub events: Vec<AuditEvent>,
    pub pages: u32,
    /// The range was read to its end (the last page was short).
    pub complete: bool,
}

/// Where reading the audit trail goes on from: everything inserted before `from` has been
/// read, except, after a read cut short on a newest-first endpoint, what lies between `from`
/// and `to`, which is read next. Events read at or after `from` are remembered by `_id`, so
/// that the seam (the second the last read ended in, read again) and any overlap yield each
/// event once. After a read cut short inside one second (a burst of more events in one second
/// than a poll reads), the next read starts at `offset`, past those already read.
///
/// Once an answer has told the server's time (`Date`), reads stop at seconds that ended
/// [`SETTLE_SECS`] ago by that clock, and a complete read moves the cursor past them: there is
/// no seam to read again. On a busy trail the seam was a second of events per poll (300 events
/// at 300 a second, a third of a page of 1,000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    from: u64,
    to: Option<u64>,
    offset: u64,
    /// `_id` → insertion second of the events read at or after `from`.
    seen: HashMap<String, u64>,
    /// The server's clock: the last answer's `Date` and when it came, by this host's clock.
    server_clock: Option<(u64, tokio::time::Instant)>,
}

/// How long after a second ends, by the server's `Date`, no more events are taken to be
/// inserted with that second's stamp. `Date` is whole seconds and may be cached for one; the
/// rest is room for an indexer whose clock lags the web tier's. Verification waits this much
/// longer; in exchange a second is never read twice. (Reading up to the present instead, an
/// event stamped before the newest second read but indexed after the read would be missed
/// all the same, with no room at all.)
pub const SETTLE_SECS: u64 = 5;

impl AuditCursor {
    /// A cursor that reads from events inserted at `from` on.
    pub fn starting_at(from: u64) -> Self {
        Self {
            from,
            to: None,
            offset: 0,
            seen: HashMap::new(),
            server_clock: None,
        }
    }

    /// Records the server's time from an answer's `Date`.
    pub fn saw_server_date(&mut self, date: u64) {
        self.server_clock = Some((date, tokio::time::Instant::now()));
    }

    /// The newest insertion second the next read may take as final: `SETTLE_SECS` behind
    /// the server's clock. `None` when reading a newest-first catch-up range (bounded
    /// already), before any answer gave the time, or when no second since `from` has settled.
    pub fn settled(&self) -> Option<u64> {
        if self.to.is_some() {
            return None;
        }
        let (date, at) = self.server_clock?;
        let now = date + at.elapsed().as_secs();
        now.checked_sub(SETTLE_SECS).filter(|s| *s >= self.from)
    }

    /// Takes the events of a complete read of the settled range ending at `through` and moves
    /// past it: nothing inserted up to `through` is read again.
    pub fn advance_through(&mut self, events: Vec<AuditEvent>, through: u64) -> Vec<AuditEvent> {
        let fresh: Vec<AuditEvent> = events
            .into_iter()
            .filter(|e| self.seen.insert(e.id.clone(), e.inserted_at()).is_none())
            .collect();
        self.to = None;
        // Forgets the ids of what lies before: it is not asked for again.
        self.move_to((through + 1).max(self.from));
        fresh
    }

    /// Where in the range the next read starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Insertion seconds before this have all been read.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// The range the next read asks for.
    pub fn range(&self) -> Inserted {
        Inserted {
            from: self.from,
            to: self.to,
        }
    }

    /// Moves the start to `at`: later, when nothing older is wanted any more (no need to read
    /// it), or earlier, when something new may lie there. Moved earlier, events between `at`
    /// and the old start that were returned before may be returned again (only the seam's ids
    /// are kept): a caller that rewinds must tolerate repeats.
    pub fn move_to(&mut self, at: u64) {
        self.offset = 0;
        if at > self.from {
            self.from = at;
            if self.to.is_some_and(|to| to < at) {
                self.to = None;
            }
            self.seen.retain(|_, inserted| *inserted >= at);
        } else {
            self.from = at;
        }
    }

    /// Takes the events of one read (in the server's order), returns those not returned
    /// before, and moves on: past the last second read when the range was read to its end or
    /// the server answers oldest first; for a read cut short on a newest-first server, the next
    /// read is bounded by the oldest second read, so that the older part is not skipped.
    pub fn advance(&mut self, events: Vec<AuditEvent>, complete: bool) -> Vec<AuditEvent> {
        let stamps: Vec<u64> = events.iter().map(AuditEvent::inserted_at).collect();
        let fresh: Vec<AuditEvent> = events
            .into_iter()
            .filter(|e| self.seen.insert(e.id.clone(), e.inserted_at()).is_none())
            .collect();
        let (Some(first), Some(last)) = (stamps.first(), stamps.last()) else {
            if complete && let Some(to) = self.to.take() {
                self.move_to(to);
            }
            return fresh;
        };
        let newest = stamps.iter().copied().max().unwrap_or(*last);
        let oldest = stamps.iter().copied().min().unwrap_or(*first);
        let read = stamps.len() as u64;
        let at = |second: u64| stamps.iter().filter(|s| **s == second).count() as u64;
        if complete {
            self.to = None;
            self.move_to(newest.max(self.from));
        } else if first < last || (first == last && self.to.is_none()) {
            // Oldest first (or one second only, outside a newest-first catch-up): the range
            // now starts with the events of its newest second read.
            if newest > self.from {
                self.move_to(newest);
                self.offset = at(newest);
            } else {
                self.offset += read;
            }
        } else {
            // Newest first: the older part is read next, and starts with the events of the
            // oldest second read.
            let to = oldest.max(self.from);
            if self.to == Some(to) {
                self.offset += read;
            } else {
                self.to = Some(to);
                self.offset = at(to);
            }
        }
        fresh
    }
}

impl AuditEvent {
    /// When Netskope indexed the event; its `timestamp` when the server did not say.
    pub fn inserted_at(&self) -> u64 {
        self.inserted.unwrap_or(self.timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, inserted: u64) -> AuditEvent {
        AuditEvent {
            id: id.into(),
            timestamp: inserted.saturating_sub(2),
            inserted: Some(inserted),
            kind: None,
            user: None,
            audit_log_event: None,
            supporting_data: None,
        }
    }

    fn ids(events: &[AuditEvent]) -> Vec<&str> {
        events.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn a_cursor_returns_each_event_once_across_the_seam() {
        let mut c = AuditCursor::starting_at(100);
        let read = c.advance(vec![event("a", 100), event("b", 101)], true);
        assert_eq!(ids(&read), ["a", "b"]);
        assert_eq!(
            c.range(),
            Inserted {
                from: 101,
                to: None
            }
        );
        // The seam second is read again, with one event indexed meanwhile.
        let read = c.advance(
            vec![event("b", 101), event("c", 101), event("d", 105)],
            true,
        );
        assert_eq!(ids(&read), ["c", "d"]);
        assert_eq!(c.from(), 105);
        assert!(c.advance(vec![event("d", 105)], true).is_empty());
    }

    #[test]
    fn a_read_cut_short_goes_on_where_it_stopped_in_either_order() {
        // Oldest first: go on from the newest second read.
        let mut c = AuditCursor::starting_at(0);
        let read = c.advance(vec![event("a", 10), event("b", 20)], false);
        assert_eq!(ids(&read), ["a", "b"]);
        assert_eq!(c.range(), Inserted { from: 20, to: None });
        // Newest first: the older part is read next, bounded by the oldest second read.
        let mut c = AuditCursor::starting_at(0);
        let read = c.advance(vec![event("z", 90), event("y", 80)], false);
        assert_eq!(ids(&read), ["z", "y"]);
        assert_eq!(
            c.range(),
            Inserted {
                from: 0,
                to: Some(80)
            }
        );
        let read = c.advance(vec![event("y", 80), event("x", 50), event("w", 10)], true);
        assert_eq!(ids(&read), ["x", "w"], "y was returned already");
        assert_eq!(c.range(), Inserted { from: 80, to: None });
        // The newest part comes again from the server; it was returned already.
        let read = c.advance(vec![event("v", 95), event("z", 90), event("y", 80)], true);
        assert_eq!(ids(&read), ["v"]);
        assert_eq!(c.from(), 95);
    }

    #[test]
    fn a_burst_in_one_second_larger_than_a_read_is_read_on_by_offset() {
        let mut c = AuditCursor::starting_at(50);
        c.advance(vec![event("a", 50), event("b", 50)], false);
        assert_eq!((c.from(), c.offset()), (50, 2));
        c.advance(vec![event("c", 50), event("d", 51)], false);
        assert_eq!(
            (c.from(), c.offset()),
            (51, 1),
            "d is the first of second 51"
        );
        c.advance(vec![event("e", 60)], true);
        assert_eq!(
            (c.from(), c.offset()),
            (60, 0),
            "a complete read re-reads its seam"
        );
        // Newest first, cut short twice inside the same oldest second.
        let mut c = AuditCursor::starting_at(0);
        c.advance(vec![event("z", 90), event("y", 80)], false);
        assert_eq!((c.range().to, c.offset()), (Some(80), 1));
        c.advance(vec![event("x", 80), event("w", 80)], false);
        assert_eq!((c.range().to, c.offset()), (Some(80), 3));
    }

    #[test]
    fn with_the_servers_time_a_read_ends_at_settled_seconds_and_leaves_no_seam() {
        let mut c = AuditCursor::starting_at(100);
        assert_eq!(c.settled(), None, "no answer has told the time yet");
        c.saw_server_date(110);
        assert_eq!(c.settled(), Some(110 - SETTLE_SECS));
        let read = c.advance_through(vec![event("a", 100), event("b", 105), event("a", 100)], 105);
        assert_eq!(ids(&read), ["a", "b"], "each once, even within one read");
        assert_eq!(
            c.range(),
            Inserted {
                from: 106,
                to: None
            },
            "the next read starts after the settled range, not inside its last second"
        );
        assert!(
            c.seen.is_empty(),
            "nothing of the settled range is remembered"
        );
        assert_eq!(c.settled(), None, "no second since has settled yet");
        c.saw_server_date(120);
        assert_eq!(c.settled(), Some(115));
        // A newest-first catch-up range is bounded already: it is read as it is.
        let mut c = AuditCursor::starting_at(0);
        c.saw_server_date(200);
        c.advance(vec![event("z", 90), event("y", 80)], false);
        assert_eq!(c.settled(), None);
    }

    #[test]
    fn moving_the_cursor_skips_or_rereads_without_repeating() {
        let mut c = AuditCursor::starting_at(0);
        c.advance(vec![event("a", 10), event("b", 12)], true);
        c.move_to(5);
        let read = c.advance(vec![event("q", 6), event("a", 10), event("b", 12)], true);
        assert_eq!(
            ids(&read),
            ["q", "a"],
            "what lay before is read again, the seam's not"
        );
        c.move_to(1_000);
        assert_eq!(
            c.range(),
            Inserted {
                from: 1_000,
                to: None
            }
        );
        assert!(c.seen.is_empty(), "memory follows the cursor");
        // An empty read of a bounded range finishes that range.
        let mut c = AuditCursor::starting_at(0);
        c.advance(vec![event("z", 90), event("y", 80)], false);
        assert!(c.advance(Vec::new(), true).is_empty());
        assert_eq!(c.range(), Inserted { from: 80, to: None });
    }

    #[test]
    fn result_and_data_wrappers() {
        let result = br#"{"ok":1,"result":[{"_id":"a1","timestamp":1700000000,"type":"admin_audit_logs","user":"svc","audit_log_event":"Rest API V2 Call","supporting_data":{"data_type":"api","data_values":[204,"PATCH","/api/v2/scim/Users/u1","trid=9"]}}]}"#;
        let data = br#"{"ok":1,"data":[{"_id":"a1","timestamp":1700000000.0,"type":"admin_audit_logs","user":"svc","audit_log_event":"Rest API V2 Call","supporting_data":{"data_type":"api","data_values":[204,"PATCH","/api/v2/scim/Users/u1","trid=9"]}}]}"#;
        let a = parse_page(Op::AuditPage, 200, result).unwrap();
        let b = parse_page(Op::AuditPage, 200, data).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].id, "a1");
        assert_eq!(a[0].timestamp, 1_700_000_000);
        assert_eq!(
            a[0].supporting_data.as_ref().unwrap().data_values[1],
            Value::from("PATCH")
        );
    }

    #[test]
    fn a_bad_event_is_skipped_not_fatal() {
        let body = br#"{"ok":1,"result":[{"timestamp":1},{"_id":"b","timestamp":2}]}"#;
        let events = parse_page(Op::AuditPage, 200, body).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "b");
    }

    #[test]
    fn missing_list_and_ok_zero_are_errors() {
        assert!(matches!(
            parse_page(Op::AuditPage, 200, br#"{"ok":1}"#),
            Err(NetskopeError::InvalidResponse { .. })
        ));
        let e = parse_page(Op::AuditPage, 200, br#"{"ok":0,"error":"bad window"}"#).unwrap_err();
        assert!(e.to_string().contains("bad window"), "{e}");
    }
}
