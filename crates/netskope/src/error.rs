//! Typed errors of the Netskope client, each with the class the pipeline acts on.
//!
//! Netskope's answers tell us three different things, and the worker must react differently to
//! each: wait and retry (429, 5xx, timeouts), give this one event a `failed` outcome (an unknown
//! user, a rejected request), or stop the whole worker because no event can succeed (a revoked
//! token, a token without the right scope). [`NetskopeError::class`] is that decision.
//!
//! No variant ever holds a token: messages are built from the operation, the status and the
//! server's `detail`, and the transport scrubs the token out of any text it copies from a body.

use std::fmt;

/// What the pipeline does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Wait and try again later; keep the event's offset.
    Transient,
    /// This event cannot succeed: outcome `failed` with the reason.
    Permanent,
    /// No event can succeed until an operator fixes the configuration: stop with the message.
    Config,
}

/// Which of the configured tokens made a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// The token used for SCIM (and for audit too, when no separate events token is set).
    Scim,
    /// The separate events token.
    Events,
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRole::Scim => "SCIM",
            TokenRole::Events => "events",
        })
    }
}

/// The operations the client performs. Used in messages, spans and (later) metrics, so that
/// those carry a route template and never an id or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ListUsers,
    ResolveUser,
    GetUser,
    Deactivate,
    Reactivate,
    DeleteUser,
    FindGroup,
    CreateGroup,
    PatchMembers,
    GetGroupMembers,
    AuditPage,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::ListUsers => "list_users",
            Op::ResolveUser => "resolve_user",
            Op::GetUser => "get_user",
            Op::Deactivate => "deactivate",
            Op::Reactivate => "reactivate",
            Op::DeleteUser => "delete_user",
            Op::FindGroup => "find_group",
            Op::CreateGroup => "create_group",
            Op::PatchMembers => "patch_members",
            Op::GetGroupMembers => "group_members",
            Op::AuditPage => "audit_page",
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Op::ListUsers
            | Op::ResolveUser
            | Op::GetUser
            | Op::FindGroup
            | Op::GetGroupMembers
            | Op::AuditPage => "GET",
            Op::Deactivate | Op::Reactivate | Op::PatchMembers => "PATCH",
            Op::DeleteUser => "DELETE",
            Op::CreateGroup => "POST",
        }
    }

    /// The route, relative to the SCIM base (or the audit URL), with ids as placeholders.
    pub fn route(self) -> &'static str {
        match self {
            Op::ListUsers | Op::ResolveUser => "/Users",
            Op::GetUser | Op::Deactivate | Op::Reactivate | Op::DeleteUser => "/Users/{id}",
            Op::FindGroup | Op::CreateGroup => "/Groups",
            Op::PatchMembers | Op::GetGroupMembers => "/Groups/{id}",
            Op::AuditPage => "/api/v2/events/data/audit",
        }
    }

    /// The Netskope REST API v2 endpoint a token must be granted for this operation, and the
    /// privilege it needs. Netskope scopes tokens per endpoint, and a 403 says nothing else.
    pub fn scope(self) -> (&'static str, &'static str) {
        let endpoint = match self {
            Op::ListUsers
            | Op::ResolveUser
            | Op::GetUser
            | Op::Deactivate
            | Op::Reactivate
            | Op::DeleteUser => "/api/v2/scim/Users",
            Op::FindGroup | Op::CreateGroup | Op::PatchMembers | Op::GetGroupMembers => {
                "/api/v2/scim/Groups"
            }
            Op::AuditPage => "/api/v2/events/data/audit",
        };
        let access = if self.method() == "GET" {
            "read"
        } else {
            "read+write"
        };
        (endpoint, access)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.method(), self.route(), self.name())
    }
}

/// An error of one client operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetskopeError {
    /// A 429, 5xx, timeout or connection fault that outlasted the retries.
    #[error("{op}: temporary failure after {attempts} attempt(s): {reason}")]
    Transient {
        op: Op,
        status: Option<u16>,
        reason: String,
        attempts: u32,
    },
    /// The user, group or resource does not exist.
    #[error("{op}: {what} not found")]
    NotFound { op: Op, what: String },
    /// More than one user (or group) matches a name case-insensitively: acting on one of them
    /// could lock out the wrong person.
    #[error(
        "{op}: {name:?} matches {count} resources case-insensitively; refusing to guess which one"
    )]
    Ambiguous { op: Op, name: String, count: usize },
    /// 409 that the operation could not resolve by itself.
    #[error("{op}: conflict (409): {detail}")]
    Conflict { op: Op, detail: String },
    /// Another 4xx (or 501): the server understood and refused this request.
    #[error("{op}: rejected with HTTP {status}{}: {detail}", scim_type.as_ref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Rejected {
        op: Op,
        status: u16,
        scim_type: Option<String>,
        detail: String,
    },
    /// The request was not sent because an input cannot be valid (an empty user name, say).
    #[error("{op}: invalid input: {reason}")]
    InvalidInput { op: Op, reason: String },
    /// A success status with a body we cannot use.
    #[error("{op}: unusable response (HTTP {status}): {reason}")]
    InvalidResponse { op: Op, status: u16, reason: String },
    /// 401: the token is wrong, expired or revoked.
    #[error(
        "{op}: Netskope rejected the {token} token (HTTP 401): it is invalid, expired or revoked. {hint}"
    )]
    Unauthorized {
        op: Op,
        token: TokenRole,
        /// What to do, by where the token came from (an env var or a file).
        hint: &'static str,
    },
    /// 403: the token is valid but not granted this endpoint. Netskope's 403 has no body, so the
    /// message says which endpoint and privilege to add.
    #[error(
        "{op}: the {token} token lacks the scope for {endpoint} (HTTP 403): grant the token {access} on {endpoint} (Settings > Tools > REST API v2){hint}"
    )]
    Forbidden {
        op: Op,
        token: TokenRole,
        endpoint: &'static str,
        access: &'static str,
        hint: &'static str,
    },
    /// A 3xx. Redirects are not followed, because the token header would go with them.
    #[error(
        "{op}: the server redirected (HTTP {status}) to {location:?}; redirects are not followed so the token is not sent elsewhere. Fix the URL in the config"
    )]
    Redirect {
        op: Op,
        status: u16,
        location: String,
    },
}

impl NetskopeError {
    pub fn class(&self) -> ErrorClass {
        match self {
            NetskopeError::Transient { .. } => ErrorClass::Transient,
            NetskopeError::NotFound { .. }
            | NetskopeError::Ambiguous { .. }
            | NetskopeError::Conflict { .. }
            | NetskopeError::Rejected { .. }
            | NetskopeError::InvalidInput { .. }
            | NetskopeError::InvalidResponse { .. } => ErrorClass::Permanent,
            NetskopeError::Unauthorized { .. }
            | NetskopeError::Forbidden { .. }
            | NetskopeError::Redirect { .. } => ErrorClass::Config,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// A short, stable name for outcomes and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            NetskopeError::Transient { .. } => "transient",
            NetskopeError::NotFound { .. } => "not_found",
            NetskopeError::Ambiguous { .. } => "ambiguous",
            NetskopeError::Conflict { .. } => "conflict",
            NetskopeError::Rejected { .. } => "rejected",
            NetskopeError::InvalidInput { .. } => "invalid_input",
            NetskopeError::InvalidResponse { .. } => "invalid_response",
            NetskopeError::Unauthorized { .. } => "unauthorized",
            NetskopeError::Forbidden { .. } => "forbidden",
            NetskopeError::Redirect { .. } => "redirect",
        }
    }

    /// The HTTP status behind the error, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            NetskopeError::Transient { status, .. } => *status,
            NetskopeError::NotFound { .. } => Some(404),
            NetskopeError::Conflict { .. } => Some(409),
            NetskopeError::Rejected { status, .. }
            | NetskopeError::InvalidResponse { status, .. }
            | NetskopeError::Redirect { status, .. } => Some(*status),
            NetskopeError::Unauthorized { .. } => Some(401),
            NetskopeError::Forbidden { .. } => Some(403),
            NetskopeError::Ambiguous { .. } | NetskopeError::InvalidInput { .. } => None,
        }
    }

    pub fn op(&self) -> Op {
        match self {
            NetskopeError::Transient { op, .. }
            | NetskopeError::NotFound { op, .. }
            | NetskopeError::Ambiguous { op, .. }
            | NetskopeError::Conflict { op, .. }
            | NetskopeError::Rejected { op, .. }
            | NetskopeError::InvalidInput { op, .. }
            | NetskopeError::InvalidResponse { op, .. }
            | NetskopeError::Unauthorized { op, .. }
            | NetskopeError::Forbidden { op, .. }
            | NetskopeError::Redirect { op, .. } => *op,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names_the_endpoint_and_privilege() {
        let (endpoint, access) = Op::AuditPage.scope();
        let e = NetskopeError::Forbidden {
            op: Op::AuditPage,
            token: TokenRole::Scim,
            endpoint,
            access,
            hint: "",
        };
        let msg = e.to_string();
        assert!(msg.contains("/api/v2/events/data/audit"), "{msg}");
        assert!(msg.contains("read"), "{msg}");
        assert!(msg.contains("SCIM token"), "{msg}");
        assert_eq!(e.class(), ErrorClass::Config);
        assert_eq!(Op::Deactivate.scope(), ("/api/v2/scim/Users", "read+write"));
        assert_eq!(
            Op::PatchMembers.scope(),
            ("/api/v2/scim/Groups", "read+write")
        );
    }

    #[test]
    fn classes() {
        let t = NetskopeError::Transient {
            op: Op::Deactivate,
            status: Some(503),
            reason: "x".into(),
            attempts: 3,
        };
        assert!(t.is_transient());
        let nf = NetskopeError::NotFound {
            op: Op::ResolveUser,
            what: "user".into(),
        };
        assert_eq!(nf.class(), ErrorClass::Permanent);
        assert_eq!(nf.http_status(), Some(404));
        let u = NetskopeError::Unauthorized {
            op: Op::Deactivate,
            token: TokenRole::Scim,
            hint: "",
        };
        assert_eq!(u.class(), ErrorClass::Config);
    }
}
