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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use netskope::{ErrorClass, NetskopeClient, NetskopeError};

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
        // Each lane waits for its reply, so at most one request per concurrent user is queued.
        let (tx, rx) = mpsc::channel(max_members.max(1));
        tokio::spawn(run(client, group, rx, window, max_members.max(1)));
        Self { tx }
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
            Ok(group_id) => {
                let batch_size = ids.len();
                let request_seq = crate::verify::next_request_seq();
                for r in part {
                    let _ = r.reply.send(Ok(Applied {
                        group_id: group_id.clone(),
                        batch_size,
                        request_seq,
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
                    let result =
                        send(client, group, change, single)
                            .await
                            .map(|group_id| Applied {
                                group_id,
                                batch_size: 1,
                                request_seq: crate::verify::next_request_seq(),
                            });
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

/// Finds the group and sends the PATCH. A group deleted behind our back (404 on PATCH) is
/// looked up once more.
async fn send(
    client: &NetskopeClient,
    group: &str,
    change: Change,
    ids: &[String],
) -> Result<Option<String>, NetskopeError> {
    let Some(group_id) = target(client, group, change).await? else {
        return Ok(None);
    };
    match patch(client, &group_id, change, ids).await {
        Err(NetskopeError::NotFound { .. }) => {
            tracing::warn!(group, "the group is gone; looking it up again");
            client.forget_group(group);
            let Some(group_id) = target(client, group, change).await? else {
                return Ok(None);
            };
            patch(client, &group_id, change, ids)
                .await
                .map(|_| Some(group_id))
        }
        result => result.map(|_| Some(group_id)),
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
) -> Result<usize, NetskopeError> {
    match change {
        Change::Add => client.add_members(group_id, ids).await,
        Change::Remove => client.remove_members(group_id, ids).await,
    }
}
