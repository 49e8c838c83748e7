//! Subject identifiers (RFC 9493) to the user name offboarder acts on.
//!
//! Only identifiers that name a user can: an `email`, an `account` URI (`acct:` + address),
//! the `user` member of a `complex` subject, the first of `aliases` that names one. An
//! `iss_sub` or `opaque` identifier names a user only where the transmitter says its `sub` or
//! `id` is the Netskope user name (`subjects` in its config); elsewhere it is a number or an
//! internal id, and acting on it would act on nobody or on the wrong person.
//!
//! Older RISC transmitters (Google's among them) write `subject_type` instead of `format`, and
//! `iss-sub` for `iss_sub`: both spellings are read.

use serde::Deserialize;
use serde_json::Value;

use super::set::{ErrorCode, SetError};

/// Longest user name taken (the risk-signal schema's bound).
const MAX_USER_NAME_CHARS: usize = 512;

/// Which identifiers of a transmitter name Netskope users as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectRules {
    /// `iss_sub` subjects: their `sub` is the Netskope user name.
    pub iss_sub_is_user_name: bool,
    /// `opaque` subjects: their `id` is the Netskope user name.
    pub opaque_is_user_name: bool,
}

/// The user a subject identifier names.
pub fn user_name(subject: &Value, rules: SubjectRules) -> Result<String, SetError> {
    resolve(subject, rules, 0)
}

fn resolve(subject: &Value, rules: SubjectRules, depth: u8) -> Result<String, SetError> {
    let refuse = |why: String| SetError::refused(ErrorCode::InvalidRequest, why);
    let Some(fields) = subject.as_object() else {
        return Err(refuse("the subject identifier is not an object".into()));
    };
    let format = fields
        .get("format")
        .or_else(|| fields.get("subject_type"))
        .and_then(Value::as_str)
        .map(|f| f.replace('-', "_"))
        .ok_or_else(|| refuse("the subject identifier has no \"format\"".into()))?;
    let member = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(format!("a {format} subject without \"{name}\"")))
    };
    let name = match format.as_str() {
        "email" => member("email")?.to_string(),
        "account" => {
            let uri = member("uri")?;
            match uri.get(..5) {
                Some(scheme) if scheme.eq_ignore_ascii_case("acct:") => uri[5..].to_string(),
                _ => return Err(refuse("an account subject whose uri is not acct:".into())),
            }
        }
        "iss_sub" if rules.iss_sub_is_user_name => member("sub")?.to_string(),
        "opaque" if rules.opaque_is_user_name => member("id")?.to_string(),
        "iss_sub" | "opaque" => {
            return Err(refuse(format!(
                "{format} subjects do not name users for this transmitter (its subjects setting)"
            )));
        }
        "complex" if depth == 0 => match fields.get("user") {
            Some(user) => return resolve(user, rules, depth + 1),
            None => return Err(refuse("a complex subject without a user member".into())),
        },
        "aliases" if depth == 0 => {
            let identifiers = fields
                .get("identifiers")
                .and_then(Value::as_array)
                .ok_or_else(|| refuse("an aliases subject without identifiers".into()))?;
            let mut last = refuse("an aliases subject with no identifiers".into());
            for id in identifiers.iter().take(16) {
                match resolve(id, rules, depth + 1) {
                    Ok(name) => return Ok(name),
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
        other => {
            return Err(refuse(format!(
                "subject format {:?} does not name a user",
                super::clip(other, 40)
            )));
        }
    };
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_USER_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(refuse(format!(
            "the subject's user name must be 1 to {MAX_USER_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(subject: Value, rules: SubjectRules) -> Result<String, Option<ErrorCode>> {
        user_name(&subject, rules).map_err(|e| e.code())
    }

    #[test]
    fn the_formats_that_name_a_user() {
        let plain = SubjectRules::default();
        assert_eq!(
            name(
                json!({"format": "email", "email": "alice@example.com"}),
                plain
            ),
            Ok("alice@example.com".into())
        );
        assert_eq!(
            name(
                json!({"format": "account", "uri": "acct:bob@example.com"}),
                plain
            ),
            Ok("bob@example.com".into())
        );
        let complex = json!({
            "format": "complex",
            "user": {"format": "email", "email": "carol@example.com"},
            "device": {"format": "iss_sub", "iss": "https://idp", "sub": "d-1"}
        });
        assert_eq!(name(complex, plain), Ok("carol@example.com".into()));
        let aliases = json!({"format": "aliases", "identifiers": [
            {"format": "opaque", "id": "11112222"},
            {"format": "email", "email": "dave@example.com"}
        ]});
        assert_eq!(name(aliases, plain), Ok("dave@example.com".into()));
        // Google's RISC spelling.
        let google = json!({"subject_type": "iss-sub", "iss": "https://accounts.google.com", "sub": "erin@example.com"});
        assert_eq!(
            name(google.clone(), plain),
            Err(Some(ErrorCode::InvalidRequest))
        );
        let trusting = SubjectRules {
            iss_sub_is_user_name: true,
            opaque_is_user_name: true,
        };
        assert_eq!(name(google, trusting), Ok("erin@example.com".into()));
        assert_eq!(
            name(
                json!({"format": "opaque", "id": "frank@example.com"}),
                trusting
            ),
            Ok("frank@example.com".into())
        );
    }

    #[test]
    fn what_names_nobody_is_refused() {
        let plain = SubjectRules::default();
        for subject in [
            json!({"format": "phone_number", "phone_number": "+12065550100"}),
            json!({"format": "did", "url": "did:example:123"}),
            json!({"format": "opaque", "id": "x"}),
            json!({"format": "email"}),
            json!({"email": "no-format@example.com"}),
            json!({"format": "account", "uri": "mailto:a@example.com"}),
            json!({"format": "complex", "device": {"format": "opaque", "id": "d"}}),
            json!({"format": "complex", "user": {"format": "complex", "user": {"format": "email", "email": "deep@example.com"}}}),
            json!({"format": "email", "email": "bad\u{0}name"}),
            json!({"format": "email", "email": ""}),
            json!("alice@example.com"),
        ] {
            assert_eq!(
                name(subject.clone(), plain),
                Err(Some(ErrorCode::InvalidRequest)),
                "{subject}"
            );
        }
    }
}
