//! The tenant's users and groups, in memory.
//!
//! Resources keep the attributes a client sent as a JSON map (with known attribute names in
//! their canonical spelling), so that whatever a client writes it can read back, and so that the
//! simulator does not have to model every SCIM attribute. What the server owns is kept apart:
//! `id`, `meta`, the computed `groups` of a user and the member set of a group.
//!
//! Indexes by lower-cased `userName` / `displayName` make the lookups a client does most
//! (`filter=userName eq "..."`) O(1) even with the tens of thousands of users a benchmark seeds,
//! and make uniqueness checks case-insensitive like Netskope's.
//!
//! All methods are synchronous and meant to run under one mutex: a mutation validates on a copy
//! and commits only when everything (including uniqueness) holds, so each request is atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::error::ScimError;
use super::filter::{Filter, eq_ci, value_eq};
use super::patch::{PatchOp, apply_group_ops, apply_user_ops, canonical_key, get_ci, member_ids};
use super::view::View;

pub(crate) const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub(crate) const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub(crate) const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// List paging as asked by `startIndex` / `count`, already clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    /// 1-based.
    pub(crate) start_index: usize,
    pub(crate) count: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            start_index: 1,
            count: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) id: String,
    seq: u64,
    schemas: Vec<String>,
    pub(crate) attrs: Map<String, Value>,
    created: Duration,
    modified: Duration,
}

impl User {
    pub(crate) fn user_name(&self) -> &str {
        self.attrs
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub(crate) fn active(&self) -> bool {
        self.attrs
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) id: String,
    seq: u64,
    schemas: Vec<String>,
    attrs: Map<String, Value>,
    pub(crate) members: BTreeSet<String>,
    created: Duration,
    modified: Duration,
}

impl Group {
    pub(crate) fn display_name(&self) -> &str {
        self.attrs
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Users and groups of one simulated tenant.
#[derive(Debug)]
pub(crate) struct Directory {
    base_url: String,
    next_seq: u64,
    users: BTreeMap<u64, User>,
    user_seq: HashMap<String, u64>,
    user_by_name: HashMap<String, String>,
    groups: BTreeMap<u64, Group>,
    group_seq: HashMap<String, u64>,
    group_by_name: HashMap<String, String>,
}

impl Directory {
    /// `base_url` (e.g. `http://127.0.0.1:8089`) is used for `meta.location`.
    pub(crate) fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            next_seq: 0,
            users: BTreeMap::new(),
            user_seq: HashMap::new(),
            user_by_name: HashMap::new(),
            groups: BTreeMap::new(),
            group_seq: HashMap::new(),
            group_by_name: HashMap::new(),
        }
    }

    /// Creates `user1@example.com` … `user<n>@example.com`, active.
    pub(crate) fn seed_users(&mut self, n: usize, now: Duration) {
        for i in 1..=n {
            let body = json!({
                "userName": format!("user{i}@example.com"),
                "active": true,
                "externalId": format!("emp-{i}"),
                "displayName": format!("User {i}"),
                "name": {"givenName": "User", "familyName": i.to_string()},
                "emails": [{"value": format!("user{i}@example.com"), "type": "work", "primary": true}],
            });
            if let Err(err) = self.create_user(&body, now) {
                tracing::warn!(detail = %err.detail, "simulator: could not seed user {i}");
            }
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    // ---- users ----------------------------------------------------------------------------

    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.user_seq.get(id).and_then(|seq| self.users.get(seq))
    }

    pub(crate) fn user_by_name(&self, user_name: &str) -> Option<&User> {
        self.user_by_name
            .get(&user_name.to_lowercase())
            .and_then(|id| self.user(id))
    }

    /// Sets `active` without going through the API (no audit event); false if no such user.
    pub(crate) fn set_user_active(&mut self, user_name: &str, active: bool, now: Duration) -> bool {
        let Some(seq) = self
            .user_by_name
            .get(&user_name.to_lowercase())
            .and_then(|id| self.user_seq.get(id))
        else {
            return false;
        };
        match self.users.get_mut(seq) {
            Some(user) => {
                user.attrs.insert("active".into(), Value::Bool(active));
                user.modified = now;
                true
            }
            None => false,
        }
    }

    fn user_or_404(&self, id: &str) -> Result<&User, ScimError> {
        self.user(id)
            .ok_or_else(|| ScimError::not_found(format!("User {id} not found")))
    }

    /// `POST /Users`.
    pub(crate) fn create_user(&mut self, body: &Value, now: Duration) -> Result<Value, ScimError> {
        let (schemas, attrs) = split_body(body, USER_SCHEMA, &["id", "meta", "groups"])?;
        let attrs = validate_user(attrs, true)?;
        let user_name = attrs
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.check_user_name_free(user_name, None)?;
        let user = User {
            id: new_id(),
            seq: self.seq(),
            schemas,
            attrs,
            created: now,
            modified: now,
        };
        let rendered = self.render_user(&user, &View::default());
        self.insert_user(user);
        Ok(rendered)
    }

    /// `GET /Users/{id}`.
    pub(crate) fn get_user(&self, id: &str, view: &View) -> Result<Value, ScimError> {
        Ok(self.render_user(self.user_or_404(id)?, view))
    }

    /// `GET /Users` with an optional filter.
    pub(crate) fn list_users(
        &self,
        filter: Option<&Filter>,
        page: Page,
        view: &View,
    ) -> Result<Value, ScimError> {
        let predicate = filter.map(UserPredicate::compile).transpose()?;
        let matched = self.matching_users(predicate.as_ref());
        Ok(list_response(&matched, page, |u| self.render_user(u, view)))
    }

    fn matching_users(&self, predicate: Option<&UserPredicate>) -> Vec<&User> {
        match predicate {
            // Fast path for the lookup clients do on every event.
            Some(UserPredicate::UserName(name)) => self.user_by_name(name).into_iter().collect(),
            Some(p) => self.users.values().filter(|u| p.matches(u)).collect(),
            None => self.users.values().collect(),
        }
    }

    /// `POST /.search`: users, then groups, in one list. A filter on an attribute that only
    /// one of the two types has (`userName`, `displayName` of a group...) selects from that type
    /// alone; one that neither understands is the user type's 400.
    pub(crate) fn list_all(
        &self,
        filter: Option<&Filter>,
        page: Page,
        view: &View,
    ) -> Result<Value, ScimError> {
        let (users, groups) = match filter {
            None => (self.matching_users(None), self.matching_groups(None)),
            Some(filter) => {
                let user_predicate = UserPredicate::compile(filter);
                let group_predicate = GroupPredicate::compile(filter);
                if let (Err(err), Err(_)) = (&user_predicate, &group_predicate) {
                    return Err(err.clone());
                }
                let users = match &user_predicate {
                    Ok(p) => self.matching_users(Some(p)),
                    Err(_) => Vec::new(),
                };
                let groups = match &group_predicate {
                    Ok(p) => self.matching_groups(Some(p)),
                    Err(_) => Vec::new(),
                };
                (users, groups)
            }
        };
        // Only the page is rendered, so a search over a large seeded tenant stays cheap.
        let resources: Vec<Value> = users
            .iter()
            .map(|u| Either::User(u))
            .chain(groups.iter().map(|g| Either::Group(g)))
            .skip(page.start_index.saturating_sub(1))
            .take(page.count)
            .map(|item| match item {
                Either::User(u) => self.render_user(u, view),
                Either::Group(g) => self.render_group(g, view),
            })
            .collect();
        Ok(list_json(users.len() + groups.len(), page, resources))
    }

    /// `PUT /Users/{id}`: replaces every client attribute; omitted ones are gone (and `active`
    /// falls back to true), which is exactly why a careful client never PUTs to deactivate.
    pub(crate) fn replace_user(
        &mut self,
        id: &str,
        body: &Value,
        now: Duration,
    ) -> Result<Value, ScimError> {
        let mut user = self.user_or_404(id)?.clone();
        let (schemas, attrs) = split_body(body, USER_SCHEMA, &["id", "meta", "groups"])?;
        user.attrs = validate_user(attrs, true)?;
        user.schemas = schemas;
        user.modified = now;
        self.check_user_name_free(user.user_name(), Some(id))?;
        let rendered = self.render_user(&user, &View::default());
        self.insert_user(user);
        Ok(rendered)
    }

    /// `PATCH /Users/{id}`: applies all operations to a copy, then commits.
    pub(crate) fn patch_user(
        &mut self,
        id: &str,
        ops: &[PatchOp],
        now: Duration,
    ) -> Result<Value, ScimError> {
        let mut user = self.user_or_404(id)?.clone();
        let mut attrs = user.attrs.clone();
        apply_user_ops(&mut attrs, ops)?;
        // A PATCH that removes `active` leaves it unassigned (RFC 7644 §3.5.2.2); an unassigned
        // `active` still reads as active, so nothing about the user's access changes.
        let attrs = validate_user(attrs, false)?;
        if attrs != user.attrs {
            user.attrs = attrs;
            user.modified = now;
        }
        self.check_user_name_free(user.user_name(), Some(id))?;
        let rendered = self.render_user(&user, &View::default());
        self.insert_user(user);
        Ok(rendered)
    }

    /// `DELETE /Users/{id}`: also drops the user from every group, as a real directory does.
    pub(crate) fn delete_user(&mut self, id: &str, now: Duration) -> Result<(), ScimError> {
        let seq = self
            .user_seq
            .remove(id)
            .ok_or_else(|| ScimError::not_found(format!("User {id} not found")))?;
        if let Some(user) = self.users.remove(&seq) {
            self.user_by_name.remove(&user.user_name().to_lowercase());
        }
        for group in self.groups.values_mut() {
            if group.members.remove(id) {
                group.modified = now;
            }
        }
        Ok(())
    }

    fn check_user_name_free(
        &self,
        user_name: &str,
        except_id: Option<&str>,
    ) -> Result<(), ScimError> {
        match self.user_by_name.get(&user_name.to_lowercase()) {
            Some(owner) if Some(owner.as_str()) != except_id => Err(ScimError::uniqueness(
                format!("a user with userName `{user_name}` already exists"),
            )),
            _ => Ok(()),
        }
    }

    /// Inserts or replaces a user, keeping the name index in step.
    fn insert_user(&mut self, user: User) {
        if let Some(old) = self.users.get(&user.seq) {
            self.user_by_name.remove(&old.user_name().to_lowercase());
        }
        self.user_by_name
            .insert(user.user_name().to_lowercase(), user.id.clone());
        self.user_seq.insert(user.id.clone(), user.seq);
        self.users.insert(user.seq, user);
    }

    fn render_user(&self, user: &User, view: &View) -> Value {
        let mut out = Map::new();
        out.insert("schemas".into(), json!(user.schemas));
        out.insert("id".into(), json!(user.id));
        for (k, v) in &user.attrs {
            out.insert(k.clone(), v.clone());
        }
        let groups: Vec<Value> = self
            .groups
            .values()
            .filter(|g| g.members.contains(&user.id))
            .map(|g| {
                json!({
                    "value": g.id,
                    "display": g.display_name(),
                    "$ref": format!("{}/api/v2/scim/Groups/{}", self.base_url, g.id),
                })
            })
            .collect();
        out.insert("groups".into(), Value::Array(groups));
        out.insert(
            "meta".into(),
            meta(
                "User",
                user.created,
                user.modified,
                &self.user_location(&user.id),
            ),
        );
        view.apply(&mut out);
        Value::Object(out)
    }

    pub(crate) fn user_location(&self, id: &str) -> String {
        format!("{}/api/v2/scim/Users/{id}", self.base_url)
    }

    // ---- groups ---------------------------------------------------------------------------

    pub(crate) fn group(&self, id: &str) -> Option<&Group> {
        self.group_seq.get(id).and_then(|seq| self.groups.get(seq))
    }

    pub(crate) fn group_by_name(&self, display_name: &str) -> Option<&Group> {
        self.group_by_name
            .get(&display_name.to_lowercase())
            .and_then(|id| self.group(id))
    }

    fn group_or_404(&self, id: &str) -> Result<&Group, ScimError> {
        self.group(id)
            .ok_or_else(|| ScimError::not_found(format!("Group {id} not found")))
    }

    /// `POST /Groups`.
    pub(crate) fn create_group(&mut self, body: &Value, now: Duration) -> Result<Value, ScimError> {
        let (schemas, mut attrs) = split_body(body, GROUP_SCHEMA, &["id", "meta"])?;
        let members = self.take_members(&mut attrs)?;
        let attrs = validate_group(attrs)?;
        let display_name = attrs
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.check_group_name_free(display_name, None)?;
        let group = Group {
            id: new_id(),
            seq: self.seq(),
            schemas,
            attrs,
            members,
            created: now,
            modified: now,
        };
        let rendered = self.render_group(&group, &View::full());
        self.insert_group(group);
        Ok(rendered)
    }

    /// `GET /Groups/{id}`.
    pub(crate) fn get_group(&self, id: &str, view: &View) -> Result<Value, ScimError> {
        Ok(self.render_group(self.group_or_404(id)?, view))
    }

    /// `GET /Groups` with an optional filter.
    pub(crate) fn list_groups(
        &self,
        filter: Option<&Filter>,
        page: Page,
        view: &View,
    ) -> Result<Value, ScimError> {
        let predicate = filter.map(GroupPredicate::compile).transpose()?;
        let matched = self.matching_groups(predicate.as_ref());
        Ok(list_response(&matched, page, |g| {
            self.render_group(g, view)
        }))
    }

    fn matching_groups(&self, predicate: Option<&GroupPredicate>) -> Vec<&Group> {
        match predicate {
            Some(GroupPredicate::DisplayName(name)) => {
                self.group_by_name(name).into_iter().collect()
            }
            Some(p) => self.groups.values().filter(|g| p.matches(g)).collect(),
            None => self.groups.values().collect(),
        }
    }

    /// `PUT /Groups/{id}`: replaces attributes *and* membership (omitted `members` empties it).
    pub(crate) fn replace_group(
        &mut self,
        id: &str,
        body: &Value,
        now: Duration,
    ) -> Result<Value, ScimError> {
        let mut group = self.group_or_404(id)?.clone();
        let (schemas, mut attrs) = split_body(body, GROUP_SCHEMA, &["id", "meta"])?;
        group.members = self.take_members(&mut attrs)?;
        group.attrs = validate_group(attrs)?;
        group.schemas = schemas;
        group.modified = now;
        self.check_group_name_free(group.display_name(), Some(id))?;
        let rendered = self.render_group(&group, &View::full());
        self.insert_group(group);
        Ok(rendered)
    }

    /// `PATCH /Groups/{id}`: applies all operations to a copy, then commits.
    pub(crate) fn patch_group(
        &mut self,
        id: &str,
        ops: &[PatchOp],
        now: Duration,
    ) -> Result<Value, ScimError> {
        let mut group = self.group_or_404(id)?.clone();
        let mut attrs = group.attrs.clone();
        let mut members = group.members.clone();
        let user_exists = |uid: &str| self.user_seq.contains_key(uid);
        apply_group_ops(&mut attrs, &mut members, ops, &user_exists)?;
        let attrs = validate_group(attrs)?;
        if attrs != group.attrs || members != group.members {
            group.attrs = attrs;
            group.members = members;
            group.modified = now;
        }
        self.check_group_name_free(group.display_name(), Some(id))?;
        let rendered = self.render_group(&group, &View::full());
        self.insert_group(group);
        Ok(rendered)
    }

    /// `DELETE /Groups/{id}`.
    pub(crate) fn delete_group(&mut self, id: &str) -> Result<(), ScimError> {
        let seq = self
            .group_seq
            .remove(id)
            .ok_or_else(|| ScimError::not_found(format!("Group {id} not found")))?;
        if let Some(group) = self.groups.remove(&seq) {
            self.group_by_name
                .remove(&group.display_name().to_lowercase());
        }
        Ok(())
    }

    /// Moves `members` out of a POST/PUT body into a validated id set.
    fn take_members(&self, attrs: &mut Map<String, Value>) -> Result<BTreeSet<String>, ScimError> {
        let key = canonical_key(attrs, "members");
        let Some(value) = attrs.remove(&key) else {
            return Ok(BTreeSet::new());
        };
        let ids = member_ids(&value)?;
        if let Some(unknown) = ids.iter().find(|id| !self.user_seq.contains_key(*id)) {
            return Err(ScimError::invalid_value(format!(
                "member `{unknown}` is not a user id"
            )));
        }
        Ok(ids.into_iter().collect())
    }

    fn check_group_name_free(
        &self,
        display_name: &str,
        except_id: Option<&str>,
    ) -> Result<(), ScimError> {
        match self.group_by_name.get(&display_name.to_lowercase()) {
            Some(owner) if Some(owner.as_str()) != except_id => Err(ScimError::uniqueness(
                format!("a group with displayName `{display_name}` already exists"),
            )),
            _ => Ok(()),
        }
    }

    fn insert_group(&mut self, group: Group) {
        if let Some(old) = self.groups.get(&group.seq) {
            self.group_by_name
                .remove(&old.display_name().to_lowercase());
        }
        self.group_by_name
            .insert(group.display_name().to_lowercase(), group.id.clone());
        self.group_seq.insert(group.id.clone(), group.seq);
        self.groups.insert(group.seq, group);
    }

    fn render_group(&self, group: &Group, view: &View) -> Value {
        let mut out = Map::new();
        out.insert("schemas".into(), json!(group.schemas));
        out.insert("id".into(), json!(group.id));
        for (k, v) in &group.attrs {
            out.insert(k.clone(), v.clone());
        }
        if view.members {
            let members: Vec<Value> = group
                .members
                .iter()
                .map(|id| {
                    json!({
                        "value": id,
                        "display": self.user(id).map(User::user_name).unwrap_or_default(),
                        "$ref": self.user_location(id),
                    })
                })
                .collect();
            out.insert("members".into(), Value::Array(members));
        }
        out.insert(
            "meta".into(),
            meta(
                "Group",
                group.created,
                group.modified,
                &self.group_location(&group.id),
            ),
        );
        view.apply(&mut out);
        Value::Object(out)
    }

    pub(crate) fn group_location(&self, id: &str) -> String {
        format!("{}/api/v2/scim/Groups/{id}", self.base_url)
    }
}

/// A compiled user filter: the attribute and value type are checked once, up front, so that an
/// invalid filter is a 400 even when the directory is empty.
enum UserPredicate {
    UserName(String),
    ExternalId(String),
    Id(String),
    DisplayName(String),
    Email(String),
    Active(bool),
}

impl UserPredicate {
    fn compile(filter: &Filter) -> Result<Self, ScimError> {
        let text = || {
            filter.value.as_str().map(str::to_string).ok_or_else(|| {
                ScimError::invalid_filter(format!("`{}` is compared with a string", filter.attr))
            })
        };
        let attr = filter.attr.to_ascii_lowercase();
        Ok(match attr.as_str() {
            "username" => Self::UserName(text()?),
            "externalid" => Self::ExternalId(text()?),
            "id" => Self::Id(text()?),
            "displayname" => Self::DisplayName(text()?),
            "emails" | "emails.value" => Self::Email(text()?),
            "active" => Self::Active(filter.value.as_bool().ok_or_else(|| {
                ScimError::invalid_filter("`active` is compared with true or false")
            })?),
            _ => {
                return Err(ScimError::invalid_filter(format!(
                    "filtering users on `{}` is not supported",
                    filter.attr
                )));
            }
        })
    }

    fn matches(&self, user: &User) -> bool {
        let attr = |name: &str| user.attrs.get(name).and_then(Value::as_str);
        match self {
            Self::UserName(v) => eq_ci(user.user_name(), v),
            Self::ExternalId(v) => attr("externalId") == Some(v.as_str()),
            Self::Id(v) => &user.id == v,
            Self::DisplayName(v) => attr("displayName").is_some_and(|d| eq_ci(d, v)),
            Self::Email(v) => user
                .attrs
                .get("emails")
                .and_then(Value::as_array)
                .is_some_and(|emails| {
                    emails.iter().any(|e| {
                        e.as_object()
                            .and_then(|o| get_ci(o, "value"))
                            .is_some_and(|value| value_eq(value, &json!(v), false))
                    })
                }),
            Self::Active(v) => user.active() == *v,
        }
    }
}

/// A compiled group filter.
enum GroupPredicate {
    DisplayName(String),
    ExternalId(String),
    Id(String),
}

impl GroupPredicate {
    fn compile(filter: &Filter) -> Result<Self, ScimError> {
        let text = filter.value.as_str().map(str::to_string).ok_or_else(|| {
            ScimError::invalid_filter(format!("`{}` is compared with a string", filter.attr))
        });
        match filter.attr.to_ascii_lowercase().as_str() {
            "displayname" => Ok(Self::DisplayName(text?)),
            "externalid" => Ok(Self::ExternalId(text?)),
            "id" => Ok(Self::Id(text?)),
            _ => Err(ScimError::invalid_filter(format!(
                "filtering groups on `{}` is not supported",
                filter.attr
            ))),
        }
    }

    fn matches(&self, group: &Group) -> bool {
        match self {
            Self::DisplayName(v) => eq_ci(group.display_name(), v),
            Self::ExternalId(v) => {
                group.attrs.get("externalId").and_then(Value::as_str) == Some(v.as_str())
            }
            Self::Id(v) => &group.id == v,
        }
    }
}

/// Splits a POST/PUT body into its `schemas` (with `core` guaranteed) and client attributes;
/// read-only attributes are dropped, as RFC 7644 §3.3 lets a server ignore them.
fn split_body(
    body: &Value,
    core_schema: &str,
    read_only: &[&str],
) -> Result<(Vec<String>, Map<String, Value>), ScimError> {
    let object = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("the body must be a JSON object"))?;
    let mut schemas = vec![core_schema.to_string()];
    let mut attrs = Map::new();
    for (key, value) in object {
        if key.eq_ignore_ascii_case("schemas") {
            let list = value
                .as_array()
                .ok_or_else(|| ScimError::invalid_syntax("`schemas` must be a list of strings"))?;
            for schema in list {
                let schema = schema.as_str().ok_or_else(|| {
                    ScimError::invalid_syntax("`schemas` must be a list of strings")
                })?;
                if !schemas.iter().any(|s| s.eq_ignore_ascii_case(schema)) {
                    schemas.push(schema.to_string());
                }
            }
        } else if !read_only.iter().any(|ro| key.eq_ignore_ascii_case(ro)) {
            let canonical = canonical_key(&attrs, key);
            attrs.insert(canonical, value.clone());
        }
    }
    Ok((schemas, attrs))
}

/// A user needs a non-empty string `userName`, and `active` must be a boolean. A created or
/// replaced user without `active` gets `active: true` written out (so that every client sees
/// the state it will be treated as); `default_active` is false for a PATCH, whose `remove`
/// must be able to leave the attribute unassigned.
fn validate_user(
    mut attrs: Map<String, Value>,
    default_active: bool,
) -> Result<Map<String, Value>, ScimError> {
    match attrs.get("userName") {
        Some(Value::String(name)) if !name.trim().is_empty() => {}
        Some(_) => {
            return Err(ScimError::invalid_value(
                "`userName` must be a non-empty string",
            ));
        }
        None => return Err(ScimError::invalid_value("`userName` is required")),
    }
    match attrs.get("active") {
        Some(Value::Bool(_)) => {}
        None if default_active => {
            attrs.insert("active".into(), Value::Bool(true));
        }
        None => {}
        Some(_) => {
            return Err(ScimError::invalid_value(
                "`active` must be a JSON boolean (true or false)",
            ));
        }
    }
    Ok(attrs)
}

/// A group needs a non-empty string `displayName`.
fn validate_group(attrs: Map<String, Value>) -> Result<Map<String, Value>, ScimError> {
    match attrs.get("displayName") {
        Some(Value::String(name)) if !name.trim().is_empty() => Ok(attrs),
        Some(_) => Err(ScimError::invalid_value(
            "`displayName` must be a non-empty string",
        )),
        None => Err(ScimError::invalid_value("`displayName` is required")),
    }
}

/// A user or a group, for the root search's mixed list.
enum Either<'a> {
    User(&'a User),
    Group(&'a Group),
}

fn list_response<T>(matched: &[&T], page: Page, render: impl Fn(&T) -> Value) -> Value {
    let resources: Vec<Value> = matched
        .iter()
        .skip(page.start_index.saturating_sub(1))
        .take(page.count)
        .map(|item| render(item))
        .collect();
    list_json(matched.len(), page, resources)
}

fn list_json(total: usize, page: Page, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": page.start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

fn meta(resource_type: &str, created: Duration, modified: Duration, location: &str) -> Value {
    json!({
        "resourceType": resource_type,
        "created": rfc3339(created),
        "lastModified": rfc3339(modified),
        "location": location,
        // A weak ETag from the modification time: enough for clients that log it.
        "version": format!("W/\"{}\"", modified.as_millis()),
    })
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Formats time since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2024-05-01T12:34:56.789Z`), using Howard Hinnant's days-to-civil algorithm so that no date
/// crate is needed for one format.
pub(crate) fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);

    // days_from_civil inverse; all arithmetic stays non-negative for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);

    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse_filter;
    use crate::patch::parse_patch;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn dir() -> Directory {
        let mut d = Directory::new("http://sim");
        d.seed_users(3, NOW);
        d
    }

    fn id_of(d: &Directory, name: &str) -> String {
        d.user_by_name(name)
            .map(|u| u.id.clone())
            .unwrap_or_default()
    }

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn seeded_users_render_as_scim() {
        let d = dir();
        let id = id_of(&d, "USER2@example.com");
        let user = d.get_user(&id, &View::default()).expect("user");
        assert_eq!(user["schemas"], json!([USER_SCHEMA]));
        assert_eq!(user["userName"], json!("user2@example.com"));
        assert_eq!(user["active"], json!(true));
        assert_eq!(user["emails"][0]["value"], json!("user2@example.com"));
        assert_eq!(user["meta"]["resourceType"], json!("User"));
        assert_eq!(
            user["meta"]["location"],
            json!(format!("http://sim/api/v2/scim/Users/{id}"))
        );
        assert_eq!(user["meta"]["created"], json!("2023-11-14T22:13:20.000Z"));
    }

    #[test]
    fn filters_and_paging() {
        let d = dir();
        let f = parse_filter(r#"userName eq "User1@EXAMPLE.com""#).expect("filter");
        let list = d
            .list_users(Some(&f), Page::default(), &View::default())
            .expect("list");
        assert_eq!(list["totalResults"], json!(1));
        let f = parse_filter(r#"emails.value eq "user3@example.COM""#).expect("filter");
        let list = d
            .list_users(Some(&f), Page::default(), &View::default())
            .expect("list");
        assert_eq!(list["Resources"][0]["userName"], json!("user3@example.com"));
        let f = parse_filter("active eq true").expect("filter");
        let page = Page {
            start_index: 2,
            count: 1,
        };
        let list = d
            .list_users(Some(&f), page, &View::default())
            .expect("list");
        assert_eq!(list["totalResults"], json!(3));
        assert_eq!(list["itemsPerPage"], json!(1));
        assert_eq!(list["Resources"][0]["userName"], json!("user2@example.com"));

        let f = parse_filter(r#"nickName eq "x""#).expect("filter");
        let err = d.list_users(Some(&f), Page::default(), &View::default());
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("invalidFilter")));
        let f = parse_filter(r#"active eq "false""#).expect("filter");
        assert!(
            d.list_users(Some(&f), Page::default(), &View::default())
                .is_err()
        );
    }

    #[test]
    fn patch_is_atomic_and_enforces_uniqueness() {
        let mut d = dir();
        let id = id_of(&d, "user1@example.com");
        let ops = parse_patch(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "replace", "path": "active", "value": false},
                {"op": "replace", "path": "userName", "value": "USER2@example.com"},
            ]
        }))
        .expect("ops");
        let err = d.patch_user(&id, &ops, NOW).expect_err("duplicate");
        assert_eq!(err.status.as_u16(), 409);
        assert_eq!(
            d.user_by_name("user1@example.com").map(User::active),
            Some(true)
        );

        let ops = parse_patch(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "replace", "path": "active", "value": false},
                {"op": "replace", "path": "active", "value": "False"},
            ]
        }))
        .expect("ops");
        assert!(d.patch_user(&id, &ops, NOW).is_err());
        assert_eq!(
            d.user_by_name("user1@example.com").map(User::active),
            Some(true)
        );

        let ops = parse_patch(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "userName", "value": "renamed@example.com"}]
        }))
        .expect("ops");
        d.patch_user(&id, &ops, NOW).expect("rename");
        assert!(d.user_by_name("user1@example.com").is_none());
        assert_eq!(
            d.user_by_name("Renamed@example.com").map(|u| u.id.clone()),
            Some(id)
        );
    }

    #[test]
    fn groups_members_and_deletion() {
        let mut d = dir();
        let u1 = id_of(&d, "user1@example.com");
        let g = d
            .create_group(
                &json!({"displayName": "Q", "members": [{"value": u1}, {"value": ""}]}),
                NOW,
            )
            .expect("group");
        let gid = g["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(g["members"][0]["display"], json!("user1@example.com"));
        assert!(
            d.get_group(&gid, &View::default())
                .expect("get")
                .get("members")
                .is_none()
        );
        let user = d.get_user(&u1, &View::default()).expect("user");
        assert_eq!(user["groups"][0]["value"], json!(gid));

        let dup = d
            .create_group(&json!({"displayName": "q"}), NOW)
            .expect_err("dup");
        assert_eq!(
            (dup.status.as_u16(), dup.scim_type),
            (409, Some("uniqueness"))
        );
        let unknown = d
            .create_group(
                &json!({"displayName": "R", "members": [{"value": "nope"}]}),
                NOW,
            )
            .expect_err("unknown member");
        assert_eq!(unknown.status.as_u16(), 400);

        d.delete_user(&u1, NOW).expect("delete");
        assert!(d.group_by_name("Q").is_some_and(|g| g.members.is_empty()));
        assert_eq!(
            d.delete_user(&u1, NOW).map_err(|e| e.status.as_u16()),
            Err(404)
        );
    }

    #[test]
    fn put_replaces_everything() {
        let mut d = dir();
        let id = id_of(&d, "user1@example.com");
        let user = d
            .replace_user(&id, &json!({"userName": "user1@example.com"}), NOW)
            .expect("put");
        assert_eq!(user["id"], json!(id));
        assert_eq!(user["active"], json!(true));
        assert!(user.get("emails").is_none());
        let err = d.replace_user(&id, &json!({"userName": "user3@example.com"}), NOW);
        assert_eq!(err.map_err(|e| e.status.as_u16()), Err(409));
    }
}
