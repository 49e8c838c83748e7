//! Gathers quarantine and release requests for one group into one PATCH.
//!
//! A burst of risk signals (an EDR campaign, a UEBA rule gone broad) puts many users into the
//! quarantine group at once. One PATCH per user would spend the token's ~300 requests a minute
//! on one group; one PATCH carries up to 5,000 members. So each group has a batcher task: the
//! first request opens a window (`batch_window`), and everything that arrives before it closes,
//! or until `batch_max_members`, travels together. While a batch is in flight the next one
//! gathers in the channel, so under load batches fill up without waiting at all.
//!
//! A batch that the server refuses as a whole (a permanent error) may have been spoiled by one
//! bad member, so its members are retried one by one: one bad id must not fail everyone else.
//!
//! A batcher task that panics answers its waiting members with a transient error (the event
//! retries, and a group PATCH is idempotent) and is replaced by a new one at the next request
//! ([`Batchers::get`]): one bad moment must not leave a group that no event can reach.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use netskope::{AuditWindow, ErrorClass, NetskopeClient, NetskopeError, Sent};

/// Which way a membership change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
}

/// What a member's request became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `None` for a removal from a group that does not exist: nothing was sent.
    pub group_id: Option<String>,
    /// Members in the PATCH that carried this one (1 when sent alone).
    pub batch_size: usize,
    /// The same for every member of that PATCH, and for no other request: its audit event
    /// verifies them all.
    pub request_seq: u64,
    /// When the server handled that PATCH, by its clock (`None`: unknown, or nothing sent).
    pub server_window: Option<AuditWindow>,
}

struct Request {
    change: Change,
    user_id: String,
    reply: oneshot::Sender<Result<Applied, NetskopeError>>,
}

/// The sending side of one group's batcher. Cheap to clone.
#[derive(Clone)]
pub struct GroupBatcher {
    tx: mpsc::Sender<Request>,
}

impl GroupBatcher {
    /// Starts the batcher task of the group named `group`. It ends when every handle is dropped.
    pub fn spawn(
        client: Arc<NetskopeClient>,
        group: String,
        window: Duration,
        max_members: usize,
    ) -> Self {
        let max_members = max_members.max(1);
        Self::start(group.clone(), max_members, move |rx| {
            run(client, group, rx, window, max_members)
        })
    }

    /// Spawns `task` on the receiving end of a new channel, and logs a panic of it. The panic
    /// drops the channel: waiting members get their transient error, and [`Self::is_stopped`]
    /// tells [`Batchers`] to start a new one.
    fn start<F, Fut>(group: String, capacity: usize, task: F) -> Self
    where
        F: FnOnce(mpsc::Receiver<Request>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Each lane waits for its reply, so at most one request per concurrent user is queued.
        let (tx, rx) = mpsc::channel(capacity);
        let work = task(rx);
        tokio::spawn(async move {
            if let Err(panic) = AssertUnwindSafe(work).catch_unwind().await {
                tracing::error!(
                    group,
                    panic = super::lanes::panic_text(panic.as_ref()),
                    "the group batcher panicked; its waiting events retry, and the next request starts a new one"
                );
            }
        });
        Self { tx }
    }

    /// True once the task has ended (it panicked): requests sent here would fail.
    fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Adds or removes one user and waits until the PATCH that carried the change is answered.
    pub async fn submit(&self, change: Change, user_id: String) -> Result<Applied, NetskopeError> {
        let (reply, answer) = oneshot::channel();
        let gone = || NetskopeError::Transient {
            op: netskope::Op::PatchMembers,
            status: None,
            reason: "the group batcher stopped".into(),
            attempts: 0,
        };
        self.tx
            .send(Request {
                change,
                user_id,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// One batcher per group (names match case-insensitively, as in Netskope), started on first
/// use and replaced if it stopped.
#[derive(Default)]
pub struct Batchers {
    by_group: Mutex<HashMap<String, GroupBatcher>>,
}

impl Batchers {
    /// The batcher of `group`, started with `start` if there is none or the last one stopped.
    pub fn get(&self, group: &str, start: impl FnOnce() -> GroupBatcher) -> GroupBatcher {
        let mut by_group = self.by_group.lock().unwrap_or_else(|p| p.into_inner());
        let key = group.to_lowercase();
        match by_group.get(&key) {
            Some(b) if !b.is_stopped() => b.clone(),
            _ => {
                let fresh = start();
                by_group.insert(key, fresh.clone());
                fresh
            }
        }
    }
}

async fn run(
    client: Arc<NetskopeClient>,
    group: String,
    mut rx: mpsc::Receiver<Request>,
    window: Duration,
    max_members: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let closes = Instant::now() + window;
        while batch.len() < max_members {
            match tokio::time::timeout_at(closes, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&client, &group, batch).await;
    }
}

async fn flush(client: &NetskopeClient, group: &str, batch: Vec<Request>) {
    let (adds, removes): (Vec<Request>, Vec<Request>) =
        batch.into_iter().partition(|r| r.change == Change::Add);
    for part in [adds, removes] {
        if part.is_empty() {
            continue;
        }
        let change = part[0].change;
        let ids: Vec<String> = part.iter().map(|r| r.user_id.clone()).collect();
        match send(client, group, change, &ids).await {
            Ok((group_id, server_window)) => {
                let batch_size = ids.len();
                let request_seq = crate::verify::next_request_seq();
                for r in part {
                    let _ = r.reply.send(Ok(Applied {
                        group_id: group_id.clone(),
                        batch_size,
                        request_seq,
                        server_window,
                    }));
                }
            }
            Err(e) if e.class() == ErrorClass::Permanent && part.len() > 1 => {
                tracing::warn!(
                    group,
                    members = part.len(),
                    error = %e,
                    "a group PATCH was refused as a whole; retrying its members one by one"
                );
                for r in part {
                    let single = std::slice::from_ref(&r.user_id);
                    let result = send(client, group, change, single).await.map(
                        |(group_id, server_window)| Applied {
                            group_id,
                            batch_size: 1,
                            request_seq: crate::verify::next_request_seq(),
                            server_window,
                        },
                    );
                    let _ = r.reply.send(result);
                }
            }
            Err(e) => {
                for r in part {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Finds the group and sends the PATCH: the group's id (`None` for a removal from a group
/// that does not exist) and when the server handled it. A group deleted behind our back (404
/// on PATCH) is looked up once more.
async fn send(
    client: &NetskopeClient,
    group: &str,
    change: Change,
    ids: &[String],
) -> Result<(Option<String>, Option<AuditWindow>), NetskopeError> {
    let Some(group_id) = target(client, group, change).await? else {
        return Ok((None, None));
    };
    match patch(client, &group_id, change, ids).await {
        Err(NetskopeError::NotFound { .. }) => {
            tracing::warn!(group, "the group is gone; looking it up again");
            client.forget_group(group);
            let Some(group_id) = target(client, group, change).await? else {
                return Ok((None, None));
            };
            patch(client, &group_id, change, ids)
                .await
                .map(|sent| (Some(group_id), sent.server_window))
        }
        result => result.map(|sent| (Some(group_id), sent.server_window)),
    }
}

/// The group to PATCH. An add creates a missing group; a removal from a missing group has
/// nothing to do, and must not create one.
async fn target(
    client: &NetskopeClient,
    group: &str,
    change: Change,
) -> Result<Option<String>, NetskopeError> {
    match change {
        Change::Add => client.ensure_group(group).await.map(Some),
        Change::Remove => client.find_group(group).await,
    }
}

async fn patch(
    client: &NetskopeClient,
    group_id: &str,
    change: Change,
    ids: &[String],
) -> Result<Sent, NetskopeError> {
    match change {
        Change::Add => client.add_members(group_id, ids).await,
        Change::Remove => client.remove_members(group_id, ids).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher whose task panics at its first request.
    fn panicking(group: &str) -> GroupBatcher {
        GroupBatcher::start(group.to_string(), 4, |mut rx| async move {
            let _first = rx.recv().await;
            panic!("injected panic");
        })
    }

    /// A batcher that answers every request at once, as a PATCH of one member.
    fn answering(group: &str) -> GroupBatcher {
        GroupBatcher::start(group.to_string(), 4, |mut rx| async move {
            while let Some(r) = rx.recv().await {
                let _ = r.reply.send(Ok(Applied {
                    group_id: Some("g1".into()),
                    batch_size: 1,
                    request_seq: 0,
                    server_window: None,
                }));
            }
        })
    }

    #[tokio::test]
    async fn a_panicking_batcher_fails_its_request_as_transient_and_is_replaced() {
        let batchers = Batchers::default();
        let first = batchers.get("Quarantine", || panicking("Quarantine"));
        let err = first
            .submit(Change::Add, "u1".into())
            .await
            .expect_err("the task panicked");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("group batcher stopped"), "{err}");
        // Let the task's end reach the channel.
        while !first.is_stopped() {
            tokio::task::yield_now().await;
        }
        // The next request for the group, in any case, gets a new batcher that works.
        let second = batchers.get("quarantine", || answering("quarantine"));
        let applied = second.submit(Change::Add, "u1".into()).await.unwrap();
        assert_eq!(applied.group_id.as_deref(), Some("g1"));
        // A running batcher is kept: `start` is not called again.
        let third = batchers.get("QUARANTINE", || panic!("a running batcher was replaced"));
        assert!(third.submit(Change::Remove, "u2".into()).await.is_ok());
    }
}
