//! A user as the server knows it: what a resolve finds and what a listing pages through.
//! Its own module because both the filtered resolve (`scim`) and the directory mirror
//! (`directory`) produce it, and neither should import the other for it.

use serde::Deserialize;

/// A user name resolved to the SCIM id that every per-user request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    pub id: String,
    /// The user name as the server spells it (it may differ in case from the event's).
    pub user_name: String,
    /// Whether the user was active when the lookup that found it was answered; `None` when it
    /// came from the cache (that state may be stale) or the server left `active` out. Kept so
    /// that a rescind never reactivates a user who was inactive before offboarder acted.
    pub active: Option<bool>,
}

/// A user as read back from the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScimUser {
    pub id: String,
    #[serde(rename = "userName")]
    pub user_name: String,
    /// Absent on servers that omit default values.
    #[serde(default)]
    pub active: Option<bool>,
}
