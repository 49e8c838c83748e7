//! The RFC 7644 §4 discovery endpoints: `/ServiceProviderConfig`, `/ResourceTypes` and `/Schemas`.
//!
//! Netskope's documents that we have do not mention them, but generic SCIM tooling (conformance
//! checkers, identity providers that read the schema before mapping attributes) starts there, so
//! the simulator publishes them to be usable by that tooling at all. What they describe is what
//! the simulator actually does, not the whole RFC 7643 core schema: a client that reads them
//! must not be told about attributes or features (sorting, bulk, ETags) that are not there.
//!
//! Two Netskope facts show up here rather than being hidden: `members` of a group is
//! `returned: "request"` (Netskope omits it unless `attributes=members` is asked for), and
//! `bulk.supported` is false (Netskope does not support `/Bulk`).
//!
//! The documents are built once per request from constants; they are small and the endpoints
//! are rarely called, so nothing is cached.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{ScimError, scim_response};
use super::state::{GROUP_SCHEMA, LIST_SCHEMA, USER_SCHEMA};
use super::{SCIM_PATH, Sim};

const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// `maxResults` announced for filters: the simulator caps `count` at this many.
pub(crate) const MAX_RESULTS: usize = 1_000;

/// `GET /ServiceProviderConfig` (RFC 7643 §5).
pub(crate) fn service_provider_config(base_url: &str) -> Value {
    json!({
        "schemas": [SPC_SCHEMA],
        "patch": {"supported": true},
        // Netskope: "Bulk SCIM operations (/Bulk) are not supported".
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        // meta.version is informative only: If-Match / If-None-Match are not honoured.
        "etag": {"supported": false},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Netskope REST API v2 token",
            "description": "A REST API v2 token with the SCIM scope, sent as \
                            `Netskope-Api-Token: <token>` or `Authorization: Bearer <token>`.",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base_url}{SCIM_PATH}/ServiceProviderConfig"),
        },
    })
}

/// The resource types, as `(id, endpoint, schema, description)`.
const RESOURCE_TYPES: [(&str, &str, &str, &str); 2] = [
    ("User", "/Users", USER_SCHEMA, "A user of the tenant"),
    (
        "Group",
        "/Groups",
        GROUP_SCHEMA,
        "A group of users, e.g. a quarantine group that a policy applies to",
    ),
];

fn resource_type(base_url: &str, id: &str) -> Option<Value> {
    let (id, endpoint, schema, description) = RESOURCE_TYPES.iter().find(|(rt, ..)| *rt == id)?;
    Some(json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": id,
        "name": id,
        "endpoint": endpoint,
        "description": description,
        "schema": schema,
        "meta": {
            "resourceType": "ResourceType",
            "location": format!("{base_url}{SCIM_PATH}/ResourceTypes/{id}"),
        },
    }))
}

/// One attribute definition (RFC 7643 §7) with the characteristics the simulator cares about;
/// the rest get their RFC defaults spelled out, because some clients do not apply defaults.
struct Attr {
    name: &'static str,
    kind: &'static str,
    multi: bool,
    required: bool,
    case_exact: bool,
    mutability: &'static str,
    returned: &'static str,
    uniqueness: &'static str,
    description: &'static str,
    sub: Vec<Attr>,
    reference_types: &'static [&'static str],
}

impl Attr {
    fn new(name: &'static str, kind: &'static str, description: &'static str) -> Self {
        Self {
            name,
            kind,
            multi: false,
            required: false,
            case_exact: false,
            mutability: "readWrite",
            returned: "default",
            uniqueness: "none",
            description,
            sub: Vec::new(),
            reference_types: &[],
        }
    }

    fn string(name: &'static str, description: &'static str) -> Self {
        Self::new(name, "string", description)
    }

    fn complex(name: &'static str, description: &'static str, sub: Vec<Attr>) -> Self {
        Self {
            sub,
            ..Self::new(name, "complex", description)
        }
    }

    fn multi(self) -> Self {
        Self {
            multi: true,
            ..self
        }
    }

    fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }

    fn read_only(self) -> Self {
        Self {
            mutability: "readOnly",
            ..self
        }
    }

    fn to_json(&self) -> Value {
        let mut out = json!({
            "name": self.name,
            "type": self.kind,
            "multiValued": self.multi,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        });
        if let Some(map) = out.as_object_mut() {
            if !self.sub.is_empty() {
                let sub: Vec<Value> = self.sub.iter().map(Attr::to_json).collect();
                map.insert("subAttributes".into(), Value::Array(sub));
            }
            if !self.reference_types.is_empty() {
                map.insert("referenceTypes".into(), json!(self.reference_types));
            }
        }
        out
    }
}

/// A multi-valued complex attribute in the RFC 7643 §2.4 shape (`value`, `display`, `type`,
/// `primary`), with `value` of the given type.
fn multi_valued(name: &'static str, description: &'static str, value: Attr) -> Attr {
    Attr::complex(
        name,
        description,
        vec![
            value,
            Attr::string("display", "A label for display"),
            Attr::string("type", "A label such as work, home or other"),
            Attr::new("primary", "boolean", "The preferred value"),
        ],
    )
    .multi()
}

/// The User attributes: those the simulator filters on or computes, and the other RFC 7643 §4.1
/// core attributes, which it stores and returns as sent (it keeps any attribute a client
/// writes). `password` is left out: the simulator would echo it, and nothing needs it.
fn user_attributes() -> Vec<Attr> {
    let reference = |name, description| Attr {
        reference_types: &["external"],
        ..Attr::new(name, "reference", description)
    };
    vec![
        Attr {
            // Netskope: a duplicate userName is a 409; matching is case-insensitive.
            uniqueness: "server",
            ..Attr::string(
                "userName",
                "The user's e-mail address, unique in the tenant",
            )
            .required()
        },
        Attr::complex(
            "name",
            "The components of the user's name",
            vec![
                Attr::string("formatted", "The full name, formatted for display"),
                Attr::string("familyName", "The family name"),
                Attr::string("givenName", "The given name"),
                Attr::string("middleName", "The middle name"),
                Attr::string("honorificPrefix", "e.g. Ms."),
                Attr::string("honorificSuffix", "e.g. III"),
            ],
        ),
        Attr::string("displayName", "The name shown for the user"),
        Attr::string("nickName", "A casual name"),
        reference("profileUrl", "The user's online profile"),
        Attr::string("title", "The user's title, e.g. Vice President"),
        Attr::string("userType", "e.g. Employee or Contractor"),
        Attr::string("preferredLanguage", "e.g. en-US"),
        Attr::string("locale", "e.g. en-US"),
        Attr::string("timezone", "e.g. Europe/Paris"),
        Attr::new(
            "active",
            "boolean",
            "False once the user is deactivated (the offboarding action)",
        ),
        multi_valued(
            "emails",
            "E-mail addresses of the user",
            Attr::string("value", "The e-mail address"),
        ),
        multi_valued(
            "phoneNumbers",
            "Phone numbers of the user",
            Attr::string("value", "The phone number"),
        ),
        multi_valued(
            "ims",
            "Instant messaging addresses",
            Attr::string("value", "The address"),
        ),
        multi_valued(
            "photos",
            "Images of the user",
            reference("value", "The image's URL"),
        ),
        Attr::complex(
            "addresses",
            "Physical mailing addresses",
            vec![
                Attr::string("formatted", "The full address"),
                Attr::string("streetAddress", "Street and number"),
                Attr::string("locality", "City"),
                Attr::string("region", "State or region"),
                Attr::string("postalCode", "Postal code"),
                Attr::string("country", "ISO 3166-1 alpha-2 country code"),
                Attr::string("type", "work, home or other"),
                Attr::new("primary", "boolean", "The preferred address"),
            ],
        )
        .multi(),
        multi_valued(
            "entitlements",
            "Entitlements of the user",
            Attr::string("value", "The entitlement"),
        ),
        multi_valued(
            "roles",
            "Roles of the user",
            Attr::string("value", "The role"),
        ),
        multi_valued(
            "x509Certificates",
            "Certificates of the user",
            Attr::new("value", "binary", "A DER certificate, base64-encoded"),
        ),
        Attr::complex(
            "groups",
            "The groups the user is a member of, computed from group membership",
            vec![
                Attr::string("value", "The group's id").read_only(),
                Attr {
                    reference_types: &["Group"],
                    ..Attr::new("$ref", "reference", "The group's URI").read_only()
                },
                Attr::string("display", "The group's displayName").read_only(),
            ],
        )
        .multi()
        .read_only(),
    ]
}

/// The Group attributes the simulator stores.
fn group_attributes() -> Vec<Attr> {
    vec![
        Attr {
            // Netskope: creating a group that exists is a 409.
            uniqueness: "server",
            ..Attr::string("displayName", "The group's name, unique in the tenant").required()
        },
        Attr {
            // Netskope: GET /Groups/{id} omits members unless attributes=members asks for them,
            // which is what RFC 7643 §7 calls returned "request".
            returned: "request",
            ..Attr::complex(
                "members",
                "The users in the group (Netskope groups hold users only)",
                vec![
                    Attr {
                        mutability: "immutable",
                        ..Attr::string("value", "The member's user id")
                    },
                    Attr {
                        reference_types: &["User"],
                        mutability: "immutable",
                        ..Attr::new("$ref", "reference", "The member's URI")
                    },
                    Attr::string("display", "The member's userName").read_only(),
                    Attr {
                        mutability: "immutable",
                        ..Attr::string("type", "Always User")
                    },
                ],
            )
            .multi()
        },
    ]
}

/// The schemas, as `(id, name, description, attributes)`.
fn schema_defs() -> [(&'static str, &'static str, &'static str, Vec<Attr>); 2] {
    [
        (USER_SCHEMA, "User", "User account", user_attributes()),
        (GROUP_SCHEMA, "Group", "Group of users", group_attributes()),
    ]
}

fn schema(base_url: &str, id: &str) -> Option<Value> {
    let (id, name, description, attributes) = schema_defs()
        .into_iter()
        .find(|(schema_id, ..)| schema_id.eq_ignore_ascii_case(id))?;
    let attributes: Vec<Value> = attributes.iter().map(Attr::to_json).collect();
    Some(json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": id,
        "name": name,
        "description": description,
        "attributes": attributes,
        "meta": {
            "resourceType": "Schema",
            "location": format!("{base_url}{SCIM_PATH}/Schemas/{id}"),
        },
    }))
}

/// A list response of all items; discovery lists are tiny, so no paging is applied (RFC 7644
/// §4 lets a service provider ignore filtering and paging on these endpoints).
fn list(items: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": items.len(),
        "startIndex": 1,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

fn ok(value: &Value) -> Response {
    scim_response(StatusCode::OK, value)
}

fn found(value: Option<Value>, what: &str, id: &str) -> Response {
    match value {
        Some(value) => ok(&value),
        None => axum::response::IntoResponse::into_response(ScimError::not_found(format!(
            "no {what} `{id}`"
        ))),
    }
}

pub(crate) async fn get_service_provider_config(State(sim): State<Arc<Sim>>) -> Response {
    ok(&service_provider_config(&sim.base_url))
}

pub(crate) async fn list_resource_types(State(sim): State<Arc<Sim>>) -> Response {
    let items = RESOURCE_TYPES
        .iter()
        .filter_map(|(id, ..)| resource_type(&sim.base_url, id))
        .collect();
    ok(&list(items))
}

pub(crate) async fn get_resource_type(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
) -> Response {
    found(resource_type(&sim.base_url, &id), "resource type", &id)
}

pub(crate) async fn list_schemas(State(sim): State<Arc<Sim>>) -> Response {
    let items = schema_defs()
        .iter()
        .filter_map(|(id, ..)| schema(&sim.base_url, id))
        .collect();
    ok(&list(items))
}

pub(crate) async fn get_schema(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    found(schema(&sim.base_url, &id), "schema", &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://sim";

    #[test]
    fn service_provider_config_announces_only_what_exists() {
        let spc = service_provider_config(BASE);
        assert_eq!(spc["schemas"], json!([SPC_SCHEMA]));
        assert_eq!(spc["patch"]["supported"], json!(true));
        assert_eq!(spc["bulk"]["supported"], json!(false));
        assert_eq!(spc["sort"]["supported"], json!(false));
        assert_eq!(spc["etag"]["supported"], json!(false));
        assert_eq!(spc["filter"]["maxResults"], json!(MAX_RESULTS));
        assert_eq!(
            spc["meta"]["location"],
            json!("http://sim/api/v2/scim/ServiceProviderConfig")
        );
    }

    #[test]
    fn resource_types_point_at_published_schemas() {
        for (id, endpoint, schema_id, _) in RESOURCE_TYPES {
            let rt = resource_type(BASE, id).expect("resource type");
            assert_eq!(rt["endpoint"], json!(endpoint));
            assert_eq!(rt["schema"], json!(schema_id));
            assert!(
                schema(BASE, schema_id).is_some(),
                "{schema_id} is published"
            );
        }
        assert!(resource_type(BASE, "Device").is_none());
    }

    #[test]
    fn schemas_describe_netskope_characteristics() {
        let group = schema(BASE, GROUP_SCHEMA).expect("group schema");
        let attrs = group["attributes"].as_array().cloned().unwrap_or_default();
        let members = attrs
            .iter()
            .find(|a| a["name"] == "members")
            .expect("members");
        assert_eq!(members["returned"], json!("request"));
        assert_eq!(members["multiValued"], json!(true));
        let user = schema(BASE, &USER_SCHEMA.to_uppercase()).expect("ids are case-insensitive");
        let user_name = user["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == "userName"))
            .cloned()
            .expect("userName");
        assert_eq!(user_name["required"], json!(true));
        assert_eq!(user_name["uniqueness"], json!("server"));
        assert!(schema(BASE, "urn:nope").is_none());
    }
}
