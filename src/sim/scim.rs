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
use super::filter::{parse_filter, strip_core_prefix};
use super::patch::parse_patch;
use super::state::{Page, View};
use super::{QueryParams, Sim};

/// Largest `count` a list request gets, whatever it asks for.
const MAX_COUNT: usize = 1_000;

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

fn view(params: &QueryParams) -> View {
    let names = |key: &str| -> Vec<String> {
        params
            .get(key)
            .map(|list| {
                list.split(',')
                    .map(|n| strip_core_prefix(n.trim()).to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let asked = names("attributes");
    let excluded: Vec<String> = names("excludedAttributes")
        .into_iter()
        .map(|n| n.split('.').next().unwrap_or_default().to_string())
        .collect();
    View {
        members: asked
            .iter()
            .any(|n| n == "members" || n.starts_with("members."))
            && !excluded.iter().any(|n| n == "members"),
        excluded,
    }
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
    let mut page = Page::default();
    // RFC 7644 §3.4.2.4: startIndex < 1 means 1, count < 0 means 0.
    if let Some(start) = number("startIndex")? {
        page.start_index = usize::try_from(start.max(1)).unwrap_or(usize::MAX);
    }
    if let Some(count) = number("count")? {
        page.count = usize::try_from(count.max(0))
            .unwrap_or(MAX_COUNT)
            .min(MAX_COUNT);
    }
    Ok(page)
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

fn list(kind: Kind, sim: &Sim, query: Option<&str>) -> Result<Response, ScimError> {
    let params = QueryParams::parse(query);
    let filter = params.get("filter").map(parse_filter).transpose()?;
    let page = page(&params)?;
    let view = view(&params);
    let dir = sim.directory();
    let list = match kind {
        Kind::Users => dir.list_users(filter.as_ref(), page, &view)?,
        Kind::Groups => dir.list_groups(filter.as_ref(), page, &view)?,
    };
    Ok(ok_json(&list))
}

fn get_one(kind: Kind, sim: &Sim, id: &str, query: Option<&str>) -> Result<Response, ScimError> {
    let view = view(&QueryParams::parse(query));
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
    use super::*;

    #[test]
    fn view_and_page_parameters() {
        let p = QueryParams::parse(Some(
            "attributes=displayName,members&startIndex=0&count=5000",
        ));
        assert!(view(&p).members);
        assert_eq!(
            page(&p),
            Ok(Page {
                start_index: 1,
                count: MAX_COUNT
            })
        );
        let p = QueryParams::parse(Some("attributes=members&excludedAttributes=members"));
        assert!(!view(&p).members);
        let p = QueryParams::parse(Some(
            "ATTRIBUTES=urn:ietf:params:scim:schemas:core:2.0:Group:members",
        ));
        assert!(view(&p).members);
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
}
