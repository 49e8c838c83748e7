//! SCIM PATCH (RFC 7644 §3.5.2) as Netskope and the common identity providers send it.
//!
//! The simulator accepts the three shapes seen in the wild: a `path` with a value (`replace
//! active false`), a value object without a path (Azure/Okta style `{"active": false}`), and
//! member lists for groups, including both remove styles (a `value` list, as Netskope's own
//! integration sends, and the RFC's `members[value eq "<id>"]` filter path).
//!
//! Operations are applied to a *copy* of the resource by the caller ([`super::state`]), so a
//! request whose third operation is invalid leaves the resource untouched: RFC 7644 requires
//! PATCH to be atomic, and a client that retries a rejected PATCH must not find it half applied.
//!
//! Strictness is deliberate where a lenient server would hide a client bug: `active` must be a
//! JSON boolean (not `"False"`), unknown user ids in a member `add`/`replace` are a 400 (the
//! whole PATCH is rejected), and read-only attributes named in a `path` are a 400 `mutability`.
//! Removing a member that is not in the group, or an unknown id in a member `remove`, is a no-op:
//! removal is idempotent so that a client may safely retry it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{
    Filter, eq_ci, find_closing_bracket, is_attr_name, parse_filter, strip_core_prefix, value_eq,
};

/// `urn:ietf:params:scim:api:messages:2.0:PatchOp`
pub(crate) const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Canonical spellings of the core User/Group attributes. Attribute names are case-insensitive
/// in SCIM; storing them in one spelling lets a `path: "USERNAME"` update the same attribute
/// that `userName` created instead of adding a second key.
const CANONICAL_NAMES: &[&str] = &[
    "userName",
    "name",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "active",
    "password",
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509Certificates",
    "externalId",
    "members",
    "id",
    "meta",
    "schemas",
    // sub-attributes
    "givenName",
    "familyName",
    "middleName",
    "formatted",
    "honorificPrefix",
    "honorificSuffix",
    "value",
    "display",
    "type",
    "primary",
];

/// The three PATCH operations (the `op` member is case-insensitive: Azure sends `Replace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Add,
    Replace,
    Remove,
}

/// A parsed PATCH `path`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PatchPath {
    /// `attr` or `attr.sub` (an extension attribute is `name = <schema urn>`, `sub = attr`).
    Attr { name: String, sub: Option<String> },
    /// `attr[filter]` or `attr[filter].sub`, e.g. `members[value eq "<id>"]`.
    Filtered {
        name: String,
        filter: Filter,
        sub: Option<String>,
    },
}

impl PatchPath {
    fn name(&self) -> &str {
        match self {
            PatchPath::Attr { name, .. } | PatchPath::Filtered { name, .. } => name,
        }
    }

    fn is(&self, attr: &str) -> bool {
        self.name().eq_ignore_ascii_case(attr)
    }
}

/// One operation of a PATCH request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PatchOp {
    pub(crate) kind: OpKind,
    pub(crate) path: Option<PatchPath>,
    pub(crate) value: Option<Value>,
}

/// Parses and validates a PatchOp request body; no resource is needed yet, so a malformed
/// request is rejected before any lock is taken.
pub(crate) fn parse_patch(body: &Value) -> Result<Vec<PatchOp>, ScimError> {
    let body = body
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("a PATCH body must be a JSON object"))?;
    let has_schema = get_ci(body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|schemas| {
            schemas
                .iter()
                .filter_map(Value::as_str)
                .any(|s| s.eq_ignore_ascii_case(PATCH_OP_SCHEMA))
        });
    if !has_schema {
        return Err(ScimError::invalid_syntax(format!(
            "`schemas` must contain {PATCH_OP_SCHEMA}"
        )));
    }
    let operations = get_ci(body, "Operations")
        .and_then(Value::as_array)
        .filter(|ops| !ops.is_empty())
        .ok_or_else(|| ScimError::invalid_value("`Operations` must be a non-empty array"))?;
    operations.iter().map(parse_op).collect()
}

fn parse_op(op: &Value) -> Result<PatchOp, ScimError> {
    let op = op
        .as_object()
        .ok_or_else(|| ScimError::invalid_syntax("each operation must be a JSON object"))?;
    let kind = match get_ci(op, "op").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("add") => OpKind::Add,
        Some(s) if s.eq_ignore_ascii_case("replace") => OpKind::Replace,
        Some(s) if s.eq_ignore_ascii_case("remove") => OpKind::Remove,
        Some(other) => {
            return Err(ScimError::invalid_value(format!(
                "unknown op `{other}`: expected add, replace or remove"
            )));
        }
        None => return Err(ScimError::invalid_value("each operation needs an `op`")),
    };
    let path = match get_ci(op, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(parse_path(p)?),
        Some(_) => return Err(ScimError::invalid_path("`path` must be a string")),
    };
    let value = get_ci(op, "value").cloned();
    match (kind, &path, &value) {
        (OpKind::Remove, None, _) => Err(ScimError::no_target("remove needs a `path`")),
        (OpKind::Add | OpKind::Replace, _, None) => {
            Err(ScimError::invalid_value("add and replace need a `value`"))
        }
        (OpKind::Add | OpKind::Replace, None, Some(v)) if !v.is_object() => Err(
            ScimError::invalid_value("without a `path`, `value` must be an object of attributes"),
        ),
        _ => Ok(PatchOp { kind, path, value }),
    }
}

/// Parses a PATCH `path`: `attr`, `attr.sub`, `attr[filter]`, `attr[filter].sub`, optionally
/// prefixed with a schema URN.
pub(crate) fn parse_path(path: &str) -> Result<PatchPath, ScimError> {
    let path = strip_core_prefix(path.trim());
    if path.len() > 4 && path[..4].eq_ignore_ascii_case("urn:") {
        return parse_extension_path(path);
    }
    if let Some(open) = path.find('[') {
        let name = &path[..open];
        let close = find_closing_bracket(path, open)
            .ok_or_else(|| ScimError::invalid_path(format!("unclosed `[` in `{path}`")))?;
        let filter = parse_filter(&path[open + 1..close]).map_err(|e| {
            ScimError::invalid_path(format!("bad filter in `{path}`: {}", e.detail))
        })?;
        if filter.attr.contains('.') {
            return Err(ScimError::invalid_path(format!(
                "a value filter compares a sub-attribute of `{name}`; got `{}`",
                filter.attr
            )));
        }
        let sub = match &path[close + 1..] {
            "" => None,
            rest => Some(
                rest.strip_prefix('.')
                    .filter(|s| is_attr_name(s))
                    .ok_or_else(|| ScimError::invalid_path(format!("bad path `{path}`")))?
                    .to_string(),
            ),
        };
        check_name(name, path)?;
        return Ok(PatchPath::Filtered {
            name: name.to_string(),
            filter,
            sub,
        });
    }
    let mut parts = path.split('.');
    let name = parts.next().unwrap_or_default();
    let sub = parts.next();
    if parts.next().is_some() {
        return Err(ScimError::invalid_path(format!(
            "`{path}`: at most one level of sub-attribute is supported"
        )));
    }
    check_name(name, path)?;
    if let Some(sub) = sub {
        check_name(sub, path)?;
    }
    Ok(PatchPath::Attr {
        name: name.to_string(),
        sub: sub.map(str::to_string),
    })
}

/// `urn:...:enterprise:2.0:User` (the whole extension object) or
/// `urn:...:enterprise:2.0:User:manager` (an attribute of it). Schema names start with an upper
/// case letter (`User`, `Group`) and attribute names with a lower case one, which is the only
/// way to tell the two apart without a schema registry.
fn parse_extension_path(path: &str) -> Result<PatchPath, ScimError> {
    let bad = || ScimError::invalid_path(format!("bad extension path `{path}`"));
    let (schema, last) = path.rsplit_once(':').ok_or_else(bad)?;
    if last.starts_with(|c: char| c.is_ascii_uppercase()) {
        return Ok(PatchPath::Attr {
            name: path.to_string(),
            sub: None,
        });
    }
    if !is_attr_name(last) || schema.len() <= 4 {
        return Err(bad());
    }
    Ok(PatchPath::Attr {
        name: schema.to_string(),
        sub: Some(last.to_string()),
    })
}

fn check_name(name: &str, path: &str) -> Result<(), ScimError> {
    if is_attr_name(name) {
        Ok(())
    } else {
        Err(ScimError::invalid_path(format!(
            "bad attribute path `{path}`"
        )))
    }
}

/// Applies PATCH operations to a user's attributes (everything but `id`, `meta`, `schemas` and
/// the computed `groups`). The caller validates the result (required `userName`, boolean
/// `active`, uniqueness).
pub(crate) fn apply_user_ops(
    attrs: &mut Map<String, Value>,
    ops: &[PatchOp],
) -> Result<(), ScimError> {
    const READ_ONLY: [&str; 4] = ["id", "meta", "schemas", "groups"];
    for (kind, path, value) in targets(ops, &READ_ONLY)? {
        if READ_ONLY.iter().any(|ro| path.is(ro)) {
            return Err(ScimError::mutability(format!(
                "`{}` is read-only",
                path.name()
            )));
        }
        apply_attr(attrs, kind, &path, value.as_ref())?;
    }
    Ok(())
}

/// Applies PATCH operations to a group: `members` is handled as a set of user ids, everything
/// else as plain attributes.
pub(crate) fn apply_group_ops(
    attrs: &mut Map<String, Value>,
    members: &mut BTreeSet<String>,
    ops: &[PatchOp],
    user_exists: &dyn Fn(&str) -> bool,
) -> Result<(), ScimError> {
    const READ_ONLY: [&str; 3] = ["id", "meta", "schemas"];
    for (kind, path, value) in targets(ops, &READ_ONLY)? {
        if READ_ONLY.iter().any(|ro| path.is(ro)) {
            return Err(ScimError::mutability(format!(
                "`{}` is read-only",
                path.name()
            )));
        }
        if !path.is("members") {
            apply_attr(attrs, kind, &path, value.as_ref())?;
            continue;
        }
        match (&path, kind) {
            (PatchPath::Attr { sub: None, .. }, _) => {
                apply_members(members, kind, value.as_ref(), user_exists)?;
            }
            (
                PatchPath::Filtered {
                    filter, sub: None, ..
                },
                OpKind::Remove,
            ) => {
                if !filter.is_attr("value") {
                    return Err(ScimError::invalid_path(
                        "a members filter must compare `value` (the user id)",
                    ));
                }
                let id = filter.value.as_str().ok_or_else(|| {
                    ScimError::invalid_path("a members filter compares a string user id")
                })?;
                members.remove(id);
            }
            (PatchPath::Filtered { sub: None, .. }, _) => {
                return Err(ScimError::invalid_path(
                    "a filter on members is only supported with op remove",
                ));
            }
            _ => {
                return Err(ScimError::invalid_path(
                    "sub-attributes of members cannot be patched",
                ));
            }
        }
    }
    Ok(())
}

/// Expands operations into (op, path, value) targets: a value object without a path becomes one
/// target per key (read-only keys are skipped, as RFC 7644 §3.5.2 allows for a server that
/// ignores read-only values, which is how Okta-style bodies that echo `id` are treated).
fn targets(
    ops: &[PatchOp],
    read_only: &[&str],
) -> Result<Vec<(OpKind, PatchPath, Option<Value>)>, ScimError> {
    let mut out = Vec::new();
    for op in ops {
        match (&op.path, &op.value) {
            (Some(path), value) => out.push((op.kind, path.clone(), value.clone())),
            (None, Some(Value::Object(object))) => {
                for (key, value) in object {
                    let path = parse_path(key)?;
                    if read_only.iter().any(|ro| path.is(ro)) {
                        continue;
                    }
                    if matches!(path, PatchPath::Filtered { .. }) {
                        return Err(ScimError::invalid_path(format!(
                            "`{key}`: a filter is not allowed in a value object key"
                        )));
                    }
                    out.push((op.kind, path, Some(value.clone())));
                }
            }
            // parse_op guarantees add/replace without path carry an object and remove has a path.
            (None, _) => return Err(ScimError::no_target("operation has no target")),
        }
    }
    Ok(out)
}

fn apply_members(
    members: &mut BTreeSet<String>,
    kind: OpKind,
    value: Option<&Value>,
    user_exists: &dyn Fn(&str) -> bool,
) -> Result<(), ScimError> {
    match (kind, value) {
        (OpKind::Remove, None) => members.clear(),
        (OpKind::Remove, Some(value)) => {
            for id in member_ids(value)? {
                members.remove(&id);
            }
        }
        (_, None) => return Err(ScimError::invalid_value("members need a `value` list")),
        (OpKind::Add | OpKind::Replace, Some(value)) => {
            let ids = member_ids(value)?;
            if let Some(unknown) = ids.iter().find(|id| !user_exists(id)) {
                return Err(ScimError::invalid_value(format!(
                    "member `{unknown}` is not a user id"
                )));
            }
            if kind == OpKind::Replace {
                members.clear();
            }
            members.extend(ids);
        }
    }
    Ok(())
}

/// Reads `[{"value": "<user id>"}, ...]` (a single object is accepted too). Entries with an empty
/// `value` are skipped: Netskope's own setup guide creates groups with `{"value": ""}`.
pub(crate) fn member_ids(value: &Value) -> Result<Vec<String>, ScimError> {
    let entries: &[Value] = match value {
        Value::Array(entries) => entries,
        Value::Object(_) => std::slice::from_ref(value),
        _ => {
            return Err(ScimError::invalid_value(
                "members must be a list of {\"value\": \"<user id>\"} objects",
            ));
        }
    };
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = entry
            .as_object()
            .and_then(|e| get_ci(e, "value"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ScimError::invalid_value("each member must be an object with a string `value`")
            })?;
        if !id.is_empty() {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

/// One operation on an ordinary attribute.
fn apply_attr(
    attrs: &mut Map<String, Value>,
    kind: OpKind,
    path: &PatchPath,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    match path {
        PatchPath::Attr { name, sub: None } => {
            let key = canonical_key(attrs, name);
            match (kind, value) {
                (OpKind::Remove, None) => {
                    attrs.remove(&key);
                }
                (OpKind::Remove, Some(Value::Array(unwanted))) => {
                    if let Some(Value::Array(existing)) = attrs.get_mut(&key) {
                        existing.retain(|item| !unwanted.iter().any(|u| same_item(item, u)));
                        if existing.is_empty() {
                            attrs.remove(&key);
                        }
                    } else {
                        attrs.remove(&key);
                    }
                }
                (OpKind::Remove, Some(_)) => {
                    attrs.remove(&key);
                }
                (_, None) => return Err(ScimError::invalid_value("missing `value`")),
                (_, Some(new)) => match (attrs.get_mut(&key), new) {
                    // RFC 7644 §3.5.2.1: add to a multi-valued attribute appends.
                    (Some(Value::Array(existing)), Value::Array(items)) if kind == OpKind::Add => {
                        for item in items {
                            if !existing.contains(item) {
                                existing.push(item.clone());
                            }
                        }
                    }
                    // §3.5.2.1/§3.5.2.3: add/replace on a complex attribute merges sub-attributes.
                    (Some(Value::Object(existing)), Value::Object(fields)) => {
                        for (field, v) in fields {
                            let field_key = canonical_key(existing, field);
                            existing.insert(field_key, v.clone());
                        }
                    }
                    _ => {
                        attrs.insert(key, new.clone());
                    }
                },
            }
        }
        PatchPath::Attr {
            name,
            sub: Some(sub),
        } => {
            let key = canonical_key(attrs, name);
            if kind == OpKind::Remove {
                if let Some(Value::Object(parent)) = attrs.get_mut(&key) {
                    let sub_key = canonical_key(parent, sub);
                    parent.remove(&sub_key);
                }
                return Ok(());
            }
            let new = value.ok_or_else(|| ScimError::invalid_value("missing `value`"))?;
            let parent = attrs
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(parent) = parent else {
                return Err(ScimError::invalid_path(format!(
                    "`{name}` is not a complex attribute; use a filter such as `{name}[type eq \"work\"].{sub}`"
                )));
            };
            let sub_key = canonical_key(parent, sub);
            parent.insert(sub_key, new.clone());
        }
        PatchPath::Filtered { name, filter, sub } => {
            let key = canonical_key(attrs, name);
            let Some(Value::Array(items)) = attrs.get_mut(&key) else {
                return match kind {
                    OpKind::Remove => Ok(()),
                    _ => Err(ScimError::no_target(format!(
                        "`{name}` has no values to match"
                    ))),
                };
            };
            let matches = |item: &Value| {
                item.as_object()
                    .and_then(|o| get_ci(o, &filter.attr))
                    .is_some_and(|v| value_eq(v, &filter.value, false))
            };
            match (kind, sub) {
                (OpKind::Remove, None) => items.retain(|item| !matches(item)),
                (OpKind::Remove, Some(sub)) => {
                    for object in items.iter_mut().filter(|i| matches(i)) {
                        if let Value::Object(object) = object {
                            let sub_key = canonical_key(object, sub);
                            object.remove(&sub_key);
                        }
                    }
                }
                (_, sub) => {
                    let new = value.ok_or_else(|| ScimError::invalid_value("missing `value`"))?;
                    if !items.iter().any(matches) {
                        return Err(ScimError::no_target(format!(
                            "no value of `{name}` matches the filter"
                        )));
                    }
                    for item in items.iter_mut().filter(|i| matches(i)) {
                        let Value::Object(object) = item else {
                            continue;
                        };
                        match (sub, new) {
                            (Some(sub), _) => {
                                let sub_key = canonical_key(object, sub);
                                object.insert(sub_key, new.clone());
                            }
                            (None, Value::Object(fields)) => {
                                for (field, v) in fields {
                                    let field_key = canonical_key(object, field);
                                    object.insert(field_key, v.clone());
                                }
                            }
                            (None, _) => {
                                return Err(ScimError::invalid_value(format!(
                                    "a value for `{name}[...]` must be an object"
                                )));
                            }
                        }
                    }
                }
            }
            if items.is_empty() {
                attrs.remove(&key);
            }
        }
    }
    Ok(())
}

/// Two multi-valued items are "the same" for a remove-by-value if they are equal, or are both
/// complex values whose `value` sub-attributes are equal (case-insensitively).
fn same_item(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let value_of = |v: &Value| v.as_object().and_then(|o| get_ci(o, "value")).cloned();
    match (value_of(a), value_of(b)) {
        (Some(Value::String(x)), Some(Value::String(y))) => eq_ci(&x, &y),
        _ => false,
    }
}

/// The key under which `name` is (or should be) stored: an existing key that matches
/// case-insensitively, else the canonical spelling of a known attribute, else `name` as given.
pub(crate) fn canonical_key(map: &Map<String, Value>, name: &str) -> String {
    if map.contains_key(name) {
        return name.to_string();
    }
    if let Some(existing) = map.keys().find(|k| k.eq_ignore_ascii_case(name)) {
        return existing.clone();
    }
    CANONICAL_NAMES
        .iter()
        .find(|c| c.eq_ignore_ascii_case(name))
        .map_or_else(|| name.to_string(), |c| (*c).to_string())
}

/// Case-insensitive member lookup in a JSON object.
pub(crate) fn get_ci<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(operations: Value) -> Vec<PatchOp> {
        let body = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": operations});
        match parse_patch(&body) {
            Ok(ops) => ops,
            Err(err) => panic!("{err:?}"),
        }
    }

    fn user() -> Map<String, Value> {
        match json!({
            "userName": "alice@corp.com",
            "active": true,
            "name": {"givenName": "Alice", "familyName": "Smith"},
            "emails": [{"value": "alice@corp.com", "type": "work", "primary": true}],
        }) {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn patched(operations: Value) -> Result<Map<String, Value>, ScimError> {
        let mut attrs = user();
        apply_user_ops(&mut attrs, &ops(operations))?;
        Ok(attrs)
    }

    #[test]
    fn body_must_name_the_patch_schema_and_carry_operations() {
        let no_schema =
            json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
        assert_eq!(
            parse_patch(&no_schema).map_err(|e| e.scim_type),
            Err(Some("invalidSyntax"))
        );
        let lower = json!({"schemas": [PATCH_OP_SCHEMA], "operations": [{"op": "Replace", "path": "active", "value": false}]});
        assert_eq!(parse_patch(&lower).map(|o| o.len()), Ok(1));
        let empty = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": []});
        assert!(parse_patch(&empty).is_err());
        let bad_op =
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "move", "path": "a"}]});
        assert_eq!(
            parse_patch(&bad_op).map_err(|e| e.scim_type),
            Err(Some("invalidValue"))
        );
        let remove_no_path =
            json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "remove"}]});
        assert_eq!(
            parse_patch(&remove_no_path).map_err(|e| e.scim_type),
            Err(Some("noTarget"))
        );
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("name.givenName"),
            Ok(PatchPath::Attr {
                name: "name".into(),
                sub: Some("givenName".into())
            })
        );
        let filtered = parse_path(r#"members[value eq "a]b"]"#);
        assert!(
            matches!(filtered, Ok(PatchPath::Filtered { ref filter, sub: None, .. }) if filter.value == json!("a]b"))
        );
        assert_eq!(
            parse_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"),
            Ok(PatchPath::Attr {
                name: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User".into(),
                sub: Some("department".into())
            })
        );
        assert_eq!(
            parse_path("urn:ietf:params:scim:schemas:core:2.0:User:active"),
            Ok(PatchPath::Attr {
                name: "active".into(),
                sub: None
            })
        );
        for bad in [
            "a.b.c",
            "1abc",
            "members[value eq \"x\"",
            "members[value eq x]",
            "",
        ] {
            assert_eq!(
                parse_path(bad).map_err(|e| e.scim_type),
                Err(Some("invalidPath")),
                "{bad}"
            );
        }
    }

    #[test]
    fn replace_with_path_and_with_value_object() {
        let attrs = patched(json!([{"op": "replace", "path": "active", "value": false}]));
        assert_eq!(
            attrs.ok().and_then(|a| a.get("active").cloned()),
            Some(json!(false))
        );

        let attrs =
            patched(json!([{"op": "Replace", "value": {"ACTIVE": false, "name.givenName": "Al"}}]))
                .expect("patched");
        assert_eq!(attrs.get("active"), Some(&json!(false)));
        assert_eq!(attrs["name"]["givenName"], json!("Al"));
        assert_eq!(attrs["name"]["familyName"], json!("Smith"));
        assert!(!attrs.contains_key("ACTIVE"));
    }

    #[test]
    fn sub_attribute_and_complex_merge() {
        let attrs = patched(json!([
            {"op": "replace", "path": "name.familyName", "value": "Jones"},
            {"op": "add", "path": "name", "value": {"middleName": "Q"}},
            {"op": "remove", "path": "name.givenName"},
        ]))
        .expect("patched");
        assert_eq!(
            attrs["name"],
            json!({"familyName": "Jones", "middleName": "Q"})
        );
    }

    #[test]
    fn multi_valued_add_remove_and_filters() {
        let attrs = patched(json!([
            {"op": "add", "path": "emails", "value": [{"value": "a2@corp.com", "type": "home"}]},
            {"op": "replace", "path": "emails[type eq \"WORK\"].value", "value": "alice2@corp.com"},
        ]))
        .expect("patched");
        assert_eq!(attrs["emails"].as_array().map(Vec::len), Some(2));
        assert_eq!(attrs["emails"][0]["value"], json!("alice2@corp.com"));

        let attrs = patched(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}]))
            .expect("patched");
        assert!(!attrs.contains_key("emails"));

        let err = patched(
            json!([{"op": "replace", "path": "emails[type eq \"other\"].value", "value": "x"}]),
        );
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("noTarget")));

        let err = patched(json!([{"op": "replace", "path": "emails.value", "value": "x"}]));
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("invalidPath")));
    }

    #[test]
    fn read_only_attributes() {
        let err = patched(json!([{"op": "replace", "path": "id", "value": "x"}]));
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("mutability")));
        // In a value object they are ignored (Okta echoes `id`).
        let attrs = patched(json!([{"op": "replace", "value": {"id": "x", "active": false}}]))
            .expect("patched");
        assert!(!attrs.contains_key("id"));
        assert_eq!(attrs["active"], json!(false));
    }

    fn group_patch(
        members: &mut BTreeSet<String>,
        operations: Value,
    ) -> Result<Map<String, Value>, ScimError> {
        let mut attrs = Map::new();
        attrs.insert("displayName".into(), json!("Quarantine"));
        let known = |id: &str| id.starts_with('u');
        apply_group_ops(&mut attrs, members, &ops(operations), &known)?;
        Ok(attrs)
    }

    #[test]
    fn member_operations() {
        let mut members = BTreeSet::new();
        group_patch(
            &mut members,
            json!([{"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}, {"value": ""}]}]),
        )
        .expect("add");
        group_patch(
            &mut members,
            json!([{"op": "add", "path": "members", "value": [{"value": "u1"}]}]),
        )
        .expect("re-add is a no-op");
        assert_eq!(members.iter().collect::<Vec<_>>(), ["u1", "u2"]);

        group_patch(&mut members, json!([{"op": "remove", "path": "members", "value": [{"value": "u1"}, {"value": "nobody"}]}]))
            .expect("remove by value");
        assert_eq!(members.iter().collect::<Vec<_>>(), ["u2"]);

        group_patch(
            &mut members,
            json!([{"op": "remove", "path": "members[value eq \"u2\"]"}]),
        )
        .expect("remove by filter");
        assert!(members.is_empty());

        group_patch(&mut members, json!([{"op": "replace", "path": "members", "value": [{"value": "u3"}, {"value": "u4"}]}]))
            .expect("replace");
        assert_eq!(members.len(), 2);
        group_patch(&mut members, json!([{"op": "remove", "path": "members"}]))
            .expect("remove all");
        assert!(members.is_empty());

        let err = group_patch(
            &mut members,
            json!([{"op": "add", "path": "members", "value": [{"value": "x9"}]}]),
        );
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("invalidValue")));
        let err = group_patch(
            &mut members,
            json!([{"op": "replace", "path": "members[value eq \"u1\"]", "value": {}}]),
        );
        assert_eq!(err.map_err(|e| e.scim_type), Err(Some("invalidPath")));

        // Value-object form (Azure) for members and displayName.
        let attrs = group_patch(
            &mut members,
            json!([{"op": "add", "value": {"members": [{"value": "u7"}], "displayName": "Q2", "id": "ignored"}}]),
        )
        .expect("value object");
        assert!(members.contains("u7"));
        assert_eq!(attrs["displayName"], json!("Q2"));
    }
}
