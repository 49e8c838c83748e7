//! Which attributes a response shows: `attributes` and `excludedAttributes` (RFC 7644 §3.9),
//! plus Netskope's rule that a group's `members` appear only when asked for.
//!
//! Clients that read a resource back after changing it (the verifier's read-back, conformance
//! checkers) ask for a few attributes by name; honouring the projection exactly, including
//! sub-attributes (`name.givenName`), means a client that forgets to ask for something it reads
//! finds out against the simulator, not against the tenant.
//!
//! `id` and `schemas` are `returned: "always"` and survive any projection. Both parameters may be
//! given at once: the inclusion is applied first, then the exclusion (RFC 7644 calls them
//! mutually exclusive, but a server that refuses the combination helps no one).

use serde_json::{Map, Value};

use super::QueryParams;
use super::error::ScimError;
use super::patch::{PatchPath, parse_path};

/// Attributes that every representation keeps (RFC 7643 §3.1, `returned: "always"`).
const ALWAYS: [&str; 2] = ["id", "schemas"];

/// One attribute named in `attributes` / `excludedAttributes`: a top-level name (a core URN
/// prefix already stripped, an extension URN kept whole) and optionally one sub-attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttrRef {
    name: String,
    sub: Option<String>,
}

impl AttrRef {
    fn parse(text: &str) -> Result<Self, ScimError> {
        match parse_path(text) {
            Ok(PatchPath::Attr { name, sub }) => Ok(Self { name, sub }),
            Ok(PatchPath::Filtered { .. }) => Err(ScimError::invalid_value(format!(
                "`{text}`: an attribute list names attributes; it takes no filter"
            ))),
            Err(err) => Err(ScimError::invalid_value(err.detail)),
        }
    }

    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The projection a response gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Netskope leaves `members` out of group reads unless `attributes=members` asks for them.
    pub(crate) members: bool,
    /// From `attributes`: only these (and `id`, `schemas`) are shown. `None`: the defaults.
    only: Option<Vec<AttrRef>>,
    /// From `excludedAttributes`.
    excluded: Vec<AttrRef>,
}

impl View {
    /// The view of a write response: a created or replaced group shows its members.
    pub(crate) fn full() -> Self {
        Self {
            members: true,
            ..Self::default()
        }
    }

    /// From the two attribute lists, each entry one attribute path.
    pub(crate) fn parse<S: AsRef<str>>(
        attributes: &[S],
        excluded: &[S],
    ) -> Result<Self, ScimError> {
        let refs = |list: &[S]| -> Result<Vec<AttrRef>, ScimError> {
            list.iter()
                .map(|s| s.as_ref().trim())
                .filter(|s| !s.is_empty())
                .map(AttrRef::parse)
                .collect()
        };
        let asked = refs(attributes)?;
        let excluded = refs(excluded)?;
        let members = asked.iter().any(|r| r.is("members"))
            && !excluded.iter().any(|r| r.is("members") && r.sub.is_none());
        Ok(Self {
            members,
            only: (!asked.is_empty()).then_some(asked),
            excluded,
        })
    }

    /// From the query string, where each parameter is a comma-separated list.
    pub(crate) fn from_query(params: &QueryParams) -> Result<Self, ScimError> {
        let list = |key: &str| -> Vec<String> {
            params
                .get(key)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        Self::parse(&list("attributes"), &list("excludedAttributes"))
    }

    /// Applies the projection to a rendered resource.
    pub(crate) fn apply(&self, out: &mut Map<String, Value>) {
        let always = |key: &str| ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(key));
        if let Some(only) = &self.only {
            out.retain(|key, value| {
                if always(key) {
                    return true;
                }
                let refs: Vec<&AttrRef> = only.iter().filter(|r| r.is(key)).collect();
                if refs.is_empty() {
                    return false;
                }
                if refs.iter().all(|r| r.sub.is_some()) {
                    let subs: Vec<&str> = refs.iter().filter_map(|r| r.sub.as_deref()).collect();
                    for_each_object(value, |object| {
                        object.retain(|k, _| subs.iter().any(|s| s.eq_ignore_ascii_case(k)));
                    });
                }
                true
            });
        }
        for excluded in &self.excluded {
            if always(&excluded.name) {
                continue;
            }
            match &excluded.sub {
                None => out.retain(|key, _| !excluded.is(key)),
                Some(sub) => {
                    if let Some((_, value)) = out.iter_mut().find(|(key, _)| excluded.is(key)) {
                        for_each_object(value, |object| {
                            object.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                        });
                    }
                }
            }
        }
    }
}

/// Calls `f` on a complex value, or on each complex value of a multi-valued attribute.
fn for_each_object(value: &mut Value, mut f: impl FnMut(&mut Map<String, Value>)) {
    match value {
        Value::Object(object) => f(object),
        Value::Array(items) => items
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .for_each(f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user() -> Map<String, Value> {
        let value = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "1",
            "userName": "a@example.com",
            "name": {"givenName": "A", "familyName": "B"},
            "emails": [{"value": "a@example.com", "type": "work"}],
            "meta": {"resourceType": "User"},
        });
        value.as_object().cloned().unwrap_or_default()
    }

    fn shown(attributes: &[&str], excluded: &[&str]) -> Value {
        let view = View::parse(attributes, excluded).expect("view");
        let mut out = user();
        view.apply(&mut out);
        Value::Object(out)
    }

    #[test]
    fn attributes_keep_only_what_is_asked_plus_id_and_schemas() {
        let out = shown(&["USERNAME"], &[]);
        let keys: Vec<&String> = out
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["id", "schemas", "userName"]);
        let out = shown(&["name.givenName", "emails.value"], &[]);
        assert_eq!(out["name"], json!({"givenName": "A"}));
        assert_eq!(out["emails"], json!([{"value": "a@example.com"}]));
        let out = shown(&["urn:ietf:params:scim:schemas:core:2.0:User:name"], &[]);
        assert_eq!(out["name"]["familyName"], json!("B"));
    }

    #[test]
    fn excluded_attributes_remove_attributes_or_sub_attributes_but_never_id() {
        let out = shown(&[], &["name.givenName", "emails", "id", "schemas"]);
        assert_eq!(out["name"], json!({"familyName": "B"}));
        assert!(out.get("emails").is_none());
        assert_eq!(out["id"], json!("1"));
        assert!(out.get("schemas").is_some());
        assert!(out.get("meta").is_some());
    }

    #[test]
    fn members_only_when_asked_and_not_excluded() {
        assert!(!View::parse::<&str>(&[], &[]).expect("view").members);
        assert!(
            View::parse(&["displayName", "members"], &[])
                .expect("view")
                .members
        );
        assert!(
            View::parse(
                &["urn:ietf:params:scim:schemas:core:2.0:Group:members.value"],
                &[]
            )
            .expect("view")
            .members
        );
        assert!(
            !View::parse(&["members"], &["members"])
                .expect("view")
                .members
        );
    }

    #[test]
    fn query_lists_are_comma_separated_and_bad_names_are_400() {
        let params = QueryParams::parse(Some("attributes=userName,%20name.givenName,"));
        let view = View::from_query(&params).expect("view");
        assert_eq!(view.only.as_ref().map(Vec::len), Some(2));
        let params = QueryParams::parse(Some("excludedAttributes=emails[type%20eq%20%22work%22]"));
        let err = View::from_query(&params).expect_err("a filter is no attribute");
        assert_eq!(err.scim_type, Some("invalidValue"));
        let params = QueryParams::parse(Some("attributes=a.b.c"));
        assert!(View::from_query(&params).is_err());
    }
}
