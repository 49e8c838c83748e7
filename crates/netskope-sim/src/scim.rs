//! HTTP handlers for `/api/v2/scim/Users` and `/api/v2/scim/Groups`.
//!
//! Handlers only translate HTTP to [`Directory`] calls: they parse the body and query *before*
//! taking the directory lock (so a malformed request costs no contention), and they read the
//! body as raw bytes instead of through `axum::Json`, so that a bad body gets a SCIM error
//! (400 `invalidSyntax`, or 413 over the 1 MiB limit) rather than axum's plain-text rejection.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::{ScimError, scim_response};
use super::filter::{Filter, parse_filter};
use super::patch::{get_ci, parse_patch};
use super::state::Page;
use super::view::View;
use super::{QueryParams, Sim};

/// Largest `count` a list request gets, whatever it asks for (announced as `filter.maxResults`).
const MAX_COUNT: usize = super::discovery::MAX_RESULTS;

/// `urn:ietf:params:scim:api:messages:2.0:SearchRequest`
const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Groups,
}

type Body = Result<Bytes, BytesRejection>;

fn parse_body(body: Body) -> Result<Value, ScimError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body larger than {} bytes", super::MAX_BODY_BYTES)
        } else {
            "could not read the request body".to_string()
        };
        ScimError::new(status, None, detail)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ScimError::invalid_syntax(format!("the body is not valid JSON: {e}")))
}

fn page(params: &QueryParams) -> Result<Page, ScimError> {
    let number = |key: &str| -> Result<Option<i64>, ScimError> {
        params
            .get(key)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    ScimError::invalid_value(format!("`{key}` must be an integer, got `{v}`"))
                })
            })
            .transpose()
    };
    Ok(page_from(number("startIndex")?, number("count")?))
}

/// Clamps the paging parameters of a list or search request.
fn page_from(start_index: Option<i64>, count: Option<i64>) -> Page {
    let mut page = Page::default();
    // RFC 7644 §3.4.2.4: startIndex < 1 means 1, count < 0 means 0.
    if let Some(start) = start_index {
        page.start_index = usize::try_from(start.max(1)).unwrap_or(usize::MAX);
    }
    if let Some(count) = count {
        page.count = usize::try_from(count.max(0))
            .unwrap_or(MAX_COUNT)
            .min(MAX_COUNT);
    }
    page
}

fn ok_json(value: &Value) -> Response {
    scim_response(StatusCode::OK, value)
}

fn created(value: &Value) -> Response {
    let mut response = scim_response(StatusCode::CREATED, value);
    if let Some(location) = value
        .pointer("/meta/location")
        .and_then(Value::as_str)
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn respond(result: Result<Response, ScimError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// What a list (`GET /Users?...`) or a search (`POST /Users/.search`) asks for.
struct ListQuery {
    filter: Option<Filter>,
    page: Page,
    view: View,
}

impl ListQuery {
    fn from_query(query: Option<&str>) -> Result<Self, ScimError> {
        let params = QueryParams::parse(query);
        Ok(Self {
            filter: params.get("filter").map(parse_filter).transpose()?,
            page: page(&params)?,
            view: View::from_query(&params)?,
        })
    }

    /// A SearchRequest body (RFC 7644 §3.4.3). `sortBy` / `sortOrder` are ignored, as for a
    /// GET list: sorting is announced as unsupported. The `schemas` member is required, as it
    /// is for PATCH, so that a client sending some other message here hears about it.
    fn from_search(body: &Value) -> Result<Self, ScimError> {
        let body = body
            .as_object()
            .ok_or_else(|| ScimError::invalid_syntax("a search body must be a JSON object"))?;
        let has_schema = get_ci(body, "schemas")
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .any(|s| s.eq_ignore_ascii_case(SEARCH_SCHEMA))
            });
        if !has_schema {
            return Err(ScimError::invalid_syntax(format!(
                "`schemas` must contain {SEARCH_SCHEMA}"
            )));
        }
        let names = |key: &str| -> Result<Vec<String>, ScimError> {
            match get_ci(body, key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                // The RFC makes these arrays; a comma-separated string (the query-string form)
                // is read the same way rather than refused.
                Some(Value::String(list)) => Ok(list.split(',').map(str::to_string).collect()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ScimError::invalid_syntax(format!("`{key}` must be a list of strings"))
                    }),
                Some(_) => Err(ScimError::invalid_syntax(format!(
                    "`{key}` must be a list of strings"
                ))),
            }
        };
        let number = |key: &str| -> Result<Option<i64>, ScimError> {
            match get_ci(body, key) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value.as_i64().map(Some).ok_or_else(|| {
                    ScimError::invalid_value(format!("`{key}` must be an integer, got {value}"))
                }),
            }
        };
        let filter = match get_ci(body, "filter") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(parse_filter(text)?),
            Some(_) => return Err(ScimError::invalid_filter("`filter` must be a string")),
        };
        Ok(Self {
            filter,
            page: page_from(number("startIndex")?, number("count")?),
            view: View::parse(&names("attributes")?, &names("excludedAttributes")?)?,
        })
    }
}

/// Runs a list or search on one resource type, or on both (`None`, the root `/.search`).
fn run_list(kind: Option<Kind>, sim: &Sim, query: &ListQuery) -> Result<Response, ScimError> {
    let ListQuery { filter, page, view } = query;
    let dir = sim.directory();
    let list = match kind {
        Some(Kind::Users) => dir.list_users(filter.as_ref(), *page, view)?,
        Some(Kind::Groups) => dir.list_groups(filter.as_ref(), *page, view)?,
        None => dir.list_all(filter.as_ref(), *page, view)?,
    };
    Ok(ok_json(&list))
}

fn list(kind: Kind, sim: &Sim, query: Option<&str>) -> Result<Response, ScimError> {
    let query = ListQuery::from_query(query)?;
    run_list(Some(kind), sim, &query)
}

fn search(kind: Option<Kind>, sim: &Sim, body: Body) -> Result<Response, ScimError> {
    let query = ListQuery::from_search(&parse_body(body)?)?;
    run_list(kind, sim, &query)
}

fn get_one(kind: Kind, sim: &Sim, id: &str, query: Option<&str>) -> Result<Response, ScimError> {
    let view = View::from_query(&QueryParams::parse(query))?;
    let dir = sim.directory();
    let resource = match kind {
        Kind::Users => dir.get_user(id, &view)?,
        Kind::Groups => dir.get_group(id, &view)?,
    };
    Ok(ok_json(&resource))
}

fn create(kind: Kind, sim: &Sim, body: Body) -> Result<Response, ScimError> {
    let body = parse_body(body)?;
    let now = sim.wall.now();
    let mut dir = sim.directory();
    let resource = match kind {
        Kind::Users => dir.create_user(&body, now)?,
        Kind::Groups => dir.create_group(&body, now)?,
    };
    Ok(created(&resource))
}

fn replace(kind: Kind, sim: &Sim, id: &str, body: Body) -> Result<Response, ScimError> {
    let body = parse_body(body)?;
    let now = sim.wall.now();
    let mut dir = sim.directory();
    let resource = match kind {
        Kind::Users => dir.replace_user(id, &body, now)?,
        Kind::Groups => dir.replace_group(id, &body, now)?,
    };
    Ok(ok_json(&resource))
}

fn patch(kind: Kind, sim: &Sim, id: &str, body: Body) -> Result<Response, ScimError> {
    let ops = parse_patch(&parse_body(body)?)?;
    let now = sim.wall.now();
    let mut dir = sim.directory();
    let resource = match kind {
        Kind::Users => dir.patch_user(id, &ops, now)?,
        Kind::Groups => dir.patch_group(id, &ops, now)?,
    };
    // Netskope's spec says 204 with no body; one guide shows 200 with the resource.
    Ok(if sim.patch_status == StatusCode::OK {
        ok_json(&resource)
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

fn delete(kind: Kind, sim: &Sim, id: &str) -> Result<Response, ScimError> {
    let now = sim.wall.now();
    let mut dir = sim.directory();
    match kind {
        Kind::Users => dir.delete_user(id, now)?,
        Kind::Groups => dir.delete_group(id)?,
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn list_users(State(sim): State<Arc<Sim>>, RawQuery(q): RawQuery) -> Response {
    respond(list(Kind::Users, &sim, q.as_deref()))
}

/// `POST /Users/.search`.
pub(crate) async fn search_users(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    respond(search(Some(Kind::Users), &sim, body))
}

/// `POST /Groups/.search`.
pub(crate) async fn search_groups(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    respond(search(Some(Kind::Groups), &sim, body))
}

/// `POST /.search`: users and groups in one list.
pub(crate) async fn search_all(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    respond(search(None, &sim, body))
}

pub(crate) async fn create_user(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    respond(create(Kind::Users, &sim, body))
}

pub(crate) async fn get_user(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    respond(get_one(Kind::Users, &sim, &id, q.as_deref()))
}

pub(crate) async fn replace_user(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    respond(replace(Kind::Users, &sim, &id, body))
}

pub(crate) async fn patch_user(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    respond(patch(Kind::Users, &sim, &id, body))
}

pub(crate) async fn delete_user(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    respond(delete(Kind::Users, &sim, &id))
}

pub(crate) async fn list_groups(State(sim): State<Arc<Sim>>, RawQuery(q): RawQuery) -> Response {
    respond(list(Kind::Groups, &sim, q.as_deref()))
}

pub(crate) async fn create_group(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    respond(create(Kind::Groups, &sim, body))
}

pub(crate) async fn get_group(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    respond(get_one(Kind::Groups, &sim, &id, q.as_deref()))
}

pub(crate) async fn replace_group(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    respond(replace(Kind::Groups, &sim, &id, body))
}

pub(crate) async fn patch_group(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    respond(patch(Kind::Groups, &sim, &id, body))
}

pub(crate) async fn delete_group(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    respond(delete(Kind::Groups, &sim, &id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn members(p: &QueryParams) -> bool {
        View::from_query(p).expect("view").members
    }

    #[test]
    fn view_and_page_parameters() {
        let p = QueryParams::parse(Some(
            "attributes=displayName,members&startIndex=0&count=5000",
        ));
        assert!(members(&p));
        assert_eq!(
            page(&p),
            Ok(Page {
                start_index: 1,
                count: MAX_COUNT
            })
        );
        let p = QueryParams::parse(Some("attributes=members&excludedAttributes=members"));
        assert!(!members(&p));
        let p = QueryParams::parse(Some(
            "ATTRIBUTES=urn:ietf:params:scim:schemas:core:2.0:Group:members",
        ));
        assert!(members(&p));
        let p = QueryParams::parse(Some("count=-3&startindex=4"));
        assert_eq!(
            page(&p),
            Ok(Page {
                start_index: 4,
                count: 0
            })
        );
        let p = QueryParams::parse(Some("count=ten"));
        assert_eq!(page(&p).map_err(|e| e.scim_type), Err(Some("invalidValue")));
    }

    #[test]
    fn search_bodies_read_like_query_strings() {
        let q = ListQuery::from_search(&json!({
            "schemas": [SEARCH_SCHEMA],
            "filter": "displayName eq \"Q\"",
            "attributes": ["members"],
            "startIndex": 2,
            "count": 5_000,
            "sortBy": "displayName",
        }))
        .expect("search");
        assert_eq!(q.filter.map(|f| f.attr), Some("displayName".to_string()));
        assert!(q.view.members);
        assert_eq!(
            q.page,
            Page {
                start_index: 2,
                count: MAX_COUNT
            }
        );
        let q = ListQuery::from_search(
            &json!({"schemas": [SEARCH_SCHEMA], "attributes": "members,displayName"}),
        )
        .expect("a comma string is read too");
        assert!(q.view.members);
        assert_eq!(q.page, Page::default());

        let err = |body: Value| {
            ListQuery::from_search(&body)
                .err()
                .and_then(|e| e.scim_type)
        };
        assert_eq!(err(json!({"filter": "id eq \"1\""})), Some("invalidSyntax"));
        assert_eq!(err(json!([])), Some("invalidSyntax"));
        assert_eq!(
            err(json!({"schemas": [SEARCH_SCHEMA], "count": "ten"})),
            Some("invalidValue")
        );
        assert_eq!(
            err(json!({"schemas": [SEARCH_SCHEMA], "attributes": [1]})),
            Some("invalidSyntax")
        );
        assert_eq!(
            err(json!({"schemas": [SEARCH_SCHEMA], "filter": "id gt 1"})),
            Some("invalidFilter")
        );
    }
}
