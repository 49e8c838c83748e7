//! SCIM 2.0 operations on users and groups.
//!
//! Only requests that are safe to repeat are sent: PATCH `active=false`, a membership add or
//! remove, DELETE (a 404 counts as done). Users are never PUT, since a full replace can clear
//! attributes we do not know about. Success statuses vary between servers (Netskope documents
//! 204 for PATCH, a guide shows 200 with the resource), so any 2xx counts.

use std::sync::atomic::Ordering;

use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Value, json};

use super::audit::Sent;
use super::directory::{Demand, Lookup, Plan};
use super::error::{NetskopeError, Op};
use super::filter;
use super::transport::Reply;
use super::user::{ScimUser, UserRef};
use super::{NetskopeClient, RemoveStyle};

pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const SCIM_JSON: &str = "application/scim+json";
/// Longest user or group name accepted. SCIM sets no limit; this one keeps absurd input
/// (a whole document in a name field) out of URLs and logs.
const MAX_NAME_CHARS: usize = 512;

#[derive(Deserialize)]
pub(crate) struct ListResponse<T> {
    /// Absent on some servers; its absence does not make a page the last.
    #[serde(rename = "totalResults", default)]
    pub(crate) total_results: Option<usize>,
    #[serde(rename = "Resources", default = "Vec::new")]
    pub(crate) resources: Vec<T>,
}

#[derive(Deserialize)]
struct GroupSummary {
    id: String,
    #[serde(rename = "displayName")]
    display_name: String,
}

#[derive(Deserialize)]
struct GroupMembers {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    value: String,
}

fn same_name(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

fn check_name(op: Op, name: &str) -> Result<(), NetskopeError> {
    let reason = if name.trim().is_empty() {
        "the name is empty"
    } else if name.chars().count() > MAX_NAME_CHARS {
        "the name is longer than 512 characters"
    } else {
        return Ok(());
    };
    Err(NetskopeError::InvalidInput {
        op,
        reason: reason.into(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(op: Op, reply: &Reply) -> Result<T, NetskopeError> {
    serde_json::from_slice(&reply.body).map_err(|e| NetskopeError::InvalidResponse {
        op,
        status: reply.status,
        reason: format!("not the expected JSON: {e}"),
    })
}

fn patch_op(operations: Vec<Value>) -> Value {
    json!({ "schemas": [PATCH_OP_SCHEMA], "Operations": operations })
}

/// The body of a deactivation: `PATCH /Users/{id}` with `active=false`.
pub fn deactivate_patch() -> Value {
    active_patch(false)
}

/// The body of `PATCH /Users/{id}` that sets `active`: `false` deactivates, `true` reactivates.
pub fn active_patch(active: bool) -> Value {
    patch_op(vec![
        json!({"op": "replace", "path": "active", "value": active}),
    ])
}

/// A PATCH body that removes these users from a group, written in `style`.
fn remove_members_patch(style: RemoveStyle, user_ids: &[String]) -> Value {
    let operations = match style {
        RemoveStyle::PathFilter => user_ids
            .iter()
            .map(|id| json!({"op": "remove", "path": format!("members[value eq {}]", filter::quote(id))}))
            .collect(),
        RemoveStyle::ValueList => {
            let members: Vec<Value> = user_ids.iter().map(|id| json!({"value": id})).collect();
            vec![json!({"op": "remove", "path": "members", "value": members})]
        }
    };
    patch_op(operations)
}

/// The body of a `PATCH /Groups/{id}` that adds these users.
pub fn add_members_patch(user_ids: &[String]) -> Value {
    let members: Vec<Value> = user_ids.iter().map(|id| json!({"value": id})).collect();
    patch_op(vec![
        json!({"op": "add", "path": "members", "value": members}),
    ])
}

impl NetskopeClient {
    /// Lists one user: proves the SCIM endpoint answers and accepts the token. Its
    /// `totalResults` tells the directory mirror the tenant's size.
    pub async fn probe_scim(&self) -> Result<(), NetskopeError> {
        self.list_users_page(1, 1).await.map(|_| ())
    }

    /// One page of `GET /Users`, with only the attributes a resolve needs.
    pub(crate) async fn list_users_page(
        &self,
        start_index: usize,
        count: usize,
    ) -> Result<ListResponse<ScimUser>, NetskopeError> {
        let op = Op::ListUsers;
        let url = self.scim_url(&["Users"]);
        let (start_index, count) = (start_index.to_string(), count.to_string());
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.get(url.clone()).query(&[
                    ("startIndex", start_index.as_str()),
                    ("count", count.as_str()),
                    ("attributes", "id,userName,active"),
                ])
            })
            .await?;
        if !reply.is_success() {
            return Err(reply.rejected(op, &self.scim_token));
        }
        let page: ListResponse<ScimUser> = parse(op, &reply)?;
        if let Some(total) = page.total_results {
            self.directory.saw_total(total);
        }
        Ok(page)
    }

    /// Counts one resolve the caller is about to need, for as long as the returned
    /// [`Demand`] lives: the directory is listed when more resolves wait than a listing has
    /// pages. Callers announce as early as they know (an event read), not when they resolve.
    pub fn expect_resolve(&self) -> Demand {
        self.directory.expect_resolve()
    }

    /// Directory listings completed since the client was built.
    pub fn directory_listings(&self) -> u64 {
        self.directory.listings()
    }

    /// Users in the directory mirror, when one was listed.
    pub fn mirrored_users(&self) -> Option<usize> {
        self.directory.mirrored()
    }

    /// Resolves a user name (usually an email) to its SCIM id, case-insensitively.
    ///
    /// Zero matches is [`NetskopeError::NotFound`]; more than one is
    /// [`NetskopeError::Ambiguous`]. Answered from the id cache (bounded, with a TTL), then
    /// from the directory mirror when it is fresh or worth listing now, else with a filter.
    pub async fn resolve_user(&self, user_name: &str) -> Result<UserRef, NetskopeError> {
        let op = Op::ResolveUser;
        check_name(op, user_name)?;
        let key = user_name.to_lowercase();
        if let Some(hit) = self.users.get(&key) {
            return Ok(UserRef {
                active: None,
                ..hit
            });
        }
        loop {
            match self.directory.plan(user_name) {
                Plan::Answer(Lookup::Found(user)) => return Ok(user),
                Plan::Answer(Lookup::Ambiguous(count)) => {
                    return Err(NetskopeError::Ambiguous {
                        op,
                        name: user_name.to_string(),
                        count,
                    });
                }
                Plan::Answer(Lookup::Missing) | Plan::Filter => break,
                Plan::Wait(mut changed) => {
                    // An error means the directory is gone with its client: plan again.
                    let _ = changed.changed().await;
                }
                Plan::List(listing) => self.list_directory(listing).await,
            }
        }
        self.resolve_with_filter(user_name).await
    }

    /// Resolves a user name with a filter, past the cache and the mirror: for an id that a
    /// request found gone. The answer replaces the cached one.
    pub async fn resolve_user_afresh(&self, user_name: &str) -> Result<UserRef, NetskopeError> {
        check_name(Op::ResolveUser, user_name)?;
        self.forget_user(user_name);
        self.resolve_with_filter(user_name).await
    }

    async fn resolve_with_filter(&self, user_name: &str) -> Result<UserRef, NetskopeError> {
        let op = Op::ResolveUser;
        let key = user_name.to_lowercase();
        let found = self
            .find_one::<ScimUser>(op, "Users", "userName", user_name, &[], |u| &u.user_name)
            .await?
            .ok_or_else(|| NetskopeError::NotFound {
                op,
                what: format!("user {user_name:?}"),
            })?;
        let found = UserRef {
            id: found.id,
            user_name: found.user_name,
            active: found.active,
        };
        self.users.insert(key, found.clone());
        Ok(found)
    }

    /// `GET /<collection>?filter=<attribute> eq "<name>"`, keeping only case-insensitive exact
    /// matches: `None` for none, the resource for one, [`NetskopeError::Ambiguous`] for more.
    ///
    /// Servers filter names case-insensitively (RFC 7643 makes userName and displayName
    /// caseExact=false), but some do not, and a server that ignored the filter would list
    /// everyone: hence the check on our side.
    async fn find_one<T: serde::de::DeserializeOwned>(
        &self,
        op: Op,
        collection: &str,
        attribute: &str,
        name: &str,
        extra_query: &[(&str, &str)],
        name_of: impl Fn(&T) -> &str,
    ) -> Result<Option<T>, NetskopeError> {
        let url = self.scim_url(&[collection]);
        let filter = filter::eq(attribute, name);
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.get(url.clone())
                    .query(&[("filter", filter.as_str())])
                    .query(extra_query)
            })
            .await?;
        if !reply.is_success() {
            return Err(reply.rejected(op, &self.scim_token));
        }
        let list: ListResponse<T> = parse(op, &reply)?;
        let mut matches: Vec<T> = list
            .resources
            .into_iter()
            .filter(|r| same_name(name_of(r), name))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop()),
            count => Err(NetskopeError::Ambiguous {
                op,
                name: name.to_string(),
                count,
            }),
        }
    }

    /// Drops a cached user id, e.g. after a PATCH found the id gone.
    pub fn forget_user(&self, user_name: &str) {
        self.users.remove(&user_name.to_lowercase());
    }

    /// `PATCH /Users/{id}` with `active=false`. Repeating it is harmless.
    pub async fn deactivate(&self, id: &str) -> Result<Sent, NetskopeError> {
        self.set_active(Op::Deactivate, id, false).await
    }

    /// `PATCH /Users/{id}` with `active=true`: undoes a deactivation (a rescinded termination).
    /// Repeating it is harmless.
    pub async fn reactivate(&self, id: &str) -> Result<Sent, NetskopeError> {
        self.set_active(Op::Reactivate, id, true).await
    }

    async fn set_active(&self, op: Op, id: &str, active: bool) -> Result<Sent, NetskopeError> {
        let url = self.scim_url(&["Users", id]);
        let body = active_patch(active).to_string().into_bytes();
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.patch(url.clone())
                    .header(CONTENT_TYPE, SCIM_JSON)
                    .body(body.clone())
            })
            .await?;
        match reply.status {
            200..=299 => {
                // A 200 may carry the user: if it shows the other state, the server accepted
                // the request without doing it, and that must not pass as done.
                if !reply.body.is_empty()
                    && let Ok(user) = serde_json::from_slice::<ScimUser>(&reply.body)
                    && user.active == Some(!active)
                {
                    let state = if active { "inactive" } else { "active" };
                    return Err(NetskopeError::InvalidResponse {
                        op,
                        status: reply.status,
                        reason: format!(
                            "the server answered success but the user is still {state}"
                        ),
                    });
                }
                Ok(Sent::one(reply.server_window))
            }
            404 => Err(NetskopeError::NotFound {
                op,
                what: format!("user id {id}"),
            }),
            _ => Err(reply.rejected(op, &self.scim_token)),
        }
    }

    /// `DELETE /Users/{id}`. Irreversible; a 404 (already gone) counts as success.
    pub async fn delete_user(&self, id: &str) -> Result<Sent, NetskopeError> {
        let op = Op::DeleteUser;
        let url = self.scim_url(&["Users", id]);
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| http.delete(url.clone()))
            .await?;
        match reply.status {
            200..=299 | 404 => Ok(Sent::one(reply.server_window)),
            _ => Err(reply.rejected(op, &self.scim_token)),
        }
    }

    /// Reads a user back. `None` when the server has no such user.
    pub async fn get_user(&self, id: &str) -> Result<Option<ScimUser>, NetskopeError> {
        let op = Op::GetUser;
        let url = self.scim_url(&["Users", id]);
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| http.get(url.clone()))
            .await?;
        match reply.status {
            200..=299 => parse(op, &reply).map(Some),
            404 => Ok(None),
            _ => Err(reply.rejected(op, &self.scim_token)),
        }
    }

    /// The id of the group named `display_name`, created when missing. A 409 on creation
    /// means someone else created it meanwhile: look it up again.
    pub async fn ensure_group(&self, display_name: &str) -> Result<String, NetskopeError> {
        check_name(Op::FindGroup, display_name)?;
        let key = display_name.to_lowercase();
        if let Some(id) = self.groups.get(&key) {
            return Ok(id);
        }
        if let Some(id) = self.lookup_group(display_name).await? {
            self.groups.insert(key, id.clone());
            return Ok(id);
        }
        let op = Op::CreateGroup;
        let url = self.scim_url(&["Groups"]);
        let body = json!({"schemas": [GROUP_SCHEMA], "displayName": display_name})
            .to_string()
            .into_bytes();
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.post(url.clone())
                    .header(CONTENT_TYPE, SCIM_JSON)
                    .body(body.clone())
            })
            .await?;
        let id = match reply.status {
            200..=299 => parse::<GroupSummary>(op, &reply)?.id,
            409 => match self.lookup_group(display_name).await? {
                Some(id) => id,
                None => {
                    return Err(NetskopeError::Conflict {
                        op,
                        detail: format!(
                            "creating group {display_name:?} conflicts, yet no group of that name can be found"
                        ),
                    });
                }
            },
            _ => return Err(reply.rejected(op, &self.scim_token)),
        };
        tracing::info!(group = display_name, "group ready");
        self.groups.insert(key, id.clone());
        Ok(id)
    }

    /// Drops a cached group id, e.g. after a PATCH found the group gone.
    pub fn forget_group(&self, display_name: &str) {
        self.groups.remove(&display_name.to_lowercase());
    }

    /// The id of the group named `display_name`, or `None`; never creates it (dry-run uses this).
    pub async fn find_group(&self, display_name: &str) -> Result<Option<String>, NetskopeError> {
        check_name(Op::FindGroup, display_name)?;
        let key = display_name.to_lowercase();
        if let Some(id) = self.groups.get(&key) {
            return Ok(Some(id));
        }
        let found = self.lookup_group(display_name).await?;
        if let Some(id) = &found {
            self.groups.insert(key, id.clone());
        }
        Ok(found)
    }

    async fn lookup_group(&self, display_name: &str) -> Result<Option<String>, NetskopeError> {
        // A quarantine group can hold thousands of members: do not fetch them.
        let group = self
            .find_one::<GroupSummary>(
                Op::FindGroup,
                "Groups",
                "displayName",
                display_name,
                &[("excludedAttributes", "members")],
                |g| &g.display_name,
            )
            .await?;
        Ok(group.map(|g| g.id))
    }

    /// Adds users to a group, up to `members_batch_size` per PATCH. Adding a member twice is
    /// harmless.
    pub async fn add_members(
        &self,
        group_id: &str,
        user_ids: &[String],
    ) -> Result<Sent, NetskopeError> {
        let mut sent = Sent::default();
        for chunk in user_ids.chunks(self.members_batch_size) {
            sent = sent.and(self.patch_group(group_id, add_members_patch(chunk)).await?);
        }
        Ok(sent)
    }

    /// Removes users from a group, up to `members_batch_size` per PATCH, in the configured
    /// style. Removing a non-member is harmless.
    ///
    /// A server that refuses a value-list removal with a 400 (strict RFC 7644 servers do: a
    /// `remove` on `members` without a filter means "every member") gets the same removal again
    /// with filter paths, and so does every later removal of this client: detected once, adapted
    /// for good, with one warning.
    pub async fn remove_members(
        &self,
        group_id: &str,
        user_ids: &[String],
    ) -> Result<Sent, NetskopeError> {
        let mut sent = Sent::default();
        for chunk in user_ids.chunks(self.members_batch_size) {
            let style = self.effective_remove_style();
            let result = self
                .patch_group(group_id, remove_members_patch(style, chunk))
                .await;
            match result {
                Err(NetskopeError::Rejected {
                    status: 400,
                    scim_type,
                    detail,
                    ..
                }) if style == RemoveStyle::ValueList => {
                    if !self.value_list_refused.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            scim_type = scim_type.as_deref().unwrap_or(""),
                            detail = %detail,
                            "the SCIM server refused a member removal written as a value list; \
                             writing removals as members[value eq \"<id>\"] from now on \
                             (set member_remove_style = \"path_filter\" to start that way)"
                        );
                    }
                    let retry = remove_members_patch(RemoveStyle::PathFilter, chunk);
                    let again = self.patch_group(group_id, retry).await?;
                    // The refused request counts, but only a 2xx is audited: the window is
                    // the one that succeeded.
                    sent = sent.and(Sent {
                        requests: again.requests + 1,
                        ..again
                    });
                }
                other => sent = sent.and(other?),
            }
        }
        Ok(sent)
    }

    /// The body of a `PATCH /Groups/{id}` that removes these users, in the style the next
    /// removal will use.
    pub fn remove_members_patch(&self, user_ids: &[String]) -> Value {
        remove_members_patch(self.effective_remove_style(), user_ids)
    }

    fn effective_remove_style(&self) -> RemoveStyle {
        if self.value_list_refused.load(Ordering::Relaxed) {
            RemoveStyle::PathFilter
        } else {
            self.remove_style
        }
    }

    async fn patch_group(&self, group_id: &str, patch: Value) -> Result<Sent, NetskopeError> {
        let op = Op::PatchMembers;
        let url = self.scim_url(&["Groups", group_id]);
        let body = patch.to_string().into_bytes();
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.patch(url.clone())
                    .header(CONTENT_TYPE, SCIM_JSON)
                    .body(body.clone())
            })
            .await?;
        match reply.status {
            200..=299 => Ok(Sent::one(reply.server_window)),
            404 => Err(NetskopeError::NotFound {
                op,
                what: format!("group id {group_id}"),
            }),
            _ => Err(reply.rejected(op, &self.scim_token)),
        }
    }

    /// The user ids in a group, read with `attributes=members` (Netskope omits members
    /// otherwise).
    pub async fn group_members(&self, group_id: &str) -> Result<Vec<String>, NetskopeError> {
        let op = Op::GetGroupMembers;
        let url = self.scim_url(&["Groups", group_id]);
        let reply = self
            .transport
            .send(&self.scim_token, op, |http| {
                http.get(url.clone()).query(&[("attributes", "members")])
            })
            .await?;
        match reply.status {
            200..=299 => {
                let group: GroupMembers = parse(op, &reply)?;
                Ok(group.members.into_iter().map(|m| m.value).collect())
            }
            404 => Err(NetskopeError::NotFound {
                op,
                what: format!("group id {group_id}"),
            }),
            _ => Err(reply.rejected(op, &self.scim_token)),
        }
    }
}
