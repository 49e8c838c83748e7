//! SCIM error responses (RFC 7644 §3.12).
//!
//! Every SCIM 4xx/5xx the simulator produces goes through [`ScimError`], so that a client sees the
//! same body shape for a validation error, a conflict and an injected fault. The only exceptions
//! are 401, 403 and 429, which Netskope answers from its API gateway rather than from the SCIM
//! service, and which therefore have their own (non-SCIM) shapes in `auth.rs`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The media type of SCIM bodies (RFC 7644 §8.1). Clients must not insist on `application/json`.
pub(crate) const SCIM_CONTENT_TYPE: &str = "application/scim+json";

/// `urn:ietf:params:scim:api:messages:2.0:Error`
pub(crate) const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A SCIM error: HTTP status, optional `scimType` keyword and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScimError {
    pub(crate) status: StatusCode,
    pub(crate) scim_type: Option<&'static str>,
    pub(crate) detail: String,
}

impl ScimError {
    pub(crate) fn new(
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid_filter(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidFilter"), detail)
    }

    pub(crate) fn invalid_value(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
    }

    pub(crate) fn invalid_path(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidPath"), detail)
    }

    pub(crate) fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidSyntax"), detail)
    }

    pub(crate) fn no_target(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("noTarget"), detail)
    }

    pub(crate) fn mutability(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("mutability"), detail)
    }

    pub(crate) fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, Some("uniqueness"), detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, detail)
    }

    /// The JSON body; `status` is a *string*, as RFC 7644 specifies.
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let (Some(kind), Some(map)) = (self.scim_type, body.as_object_mut()) {
            map.insert("scimType".into(), kind.into());
        }
        body
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        scim_response(self.status, &self.body())
    }
}

/// A response with a SCIM JSON body and the SCIM media type.
pub(crate) fn scim_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(SCIM_CONTENT_TYPE),
    );
    response
}
