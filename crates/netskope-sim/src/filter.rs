//! The SCIM filter subset Netskope is known to honour: one `<attribute> eq <value>` comparison.
//!
//! The comparison value is parsed as a JSON literal with `serde_json` instead of by hand, because
//! the point of a simulator is to be *exact* about escaping: `userName eq "x\" or userName pr"`
//! is one string literal (`x" or userName pr`), not a string followed by an `or` clause. A
//! client that forgets to escape a quote in a user name gets a 400 here (trailing garbage), which
//! is how such a bug shows up in tests instead of silently matching the wrong user.
//!
//! Everything outside the subset (other operators, `and`/`or`/`not`, parentheses, value paths)
//! is rejected with `invalidFilter` rather than approximated: a client must not come to rely on
//! a filter that the real tenant may not support.

use serde_json::Value;

use super::error::ScimError;

/// Core schema URNs that may prefix an attribute name (RFC 7644 §3.10).
const CORE_PREFIXES: [&str; 2] = [
    "urn:ietf:params:scim:schemas:core:2.0:User:",
    "urn:ietf:params:scim:schemas:core:2.0:Group:",
];

/// A parsed `<attribute> eq <value>` filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    /// The attribute path as written, minus any core-schema URN prefix (e.g. `userName`,
    /// `emails.value`). Callers compare it case-insensitively, as RFC 7644 requires.
    pub(crate) attr: String,
    /// The comparison value: a JSON string, number, boolean or null.
    pub(crate) value: Value,
}

impl Filter {
    /// True if the filter's attribute is `name` (ASCII case-insensitive).
    pub(crate) fn is_attr(&self, name: &str) -> bool {
        self.attr.eq_ignore_ascii_case(name)
    }
}

/// Parses one `<attribute> eq <json-literal>` comparison.
pub(crate) fn parse_filter(input: &str) -> Result<Filter, ScimError> {
    let text = input.trim();
    let attr_end = text
        .find(char::is_whitespace)
        .ok_or_else(|| ScimError::invalid_filter(expected(input)))?;
    let attr = strip_core_prefix(&text[..attr_end]);
    if !is_attr_path(attr) {
        return Err(ScimError::invalid_filter(format!(
            "unsupported attribute path `{attr}`: only a single `<attribute> eq <value>` comparison is supported"
        )));
    }

    let rest = text[attr_end..].trim_start();
    let op_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let op = &rest[..op_end];
    if !op.eq_ignore_ascii_case("eq") {
        return Err(ScimError::invalid_filter(format!(
            "unsupported operator `{op}`: only `eq` is supported"
        )));
    }

    // `from_str` rejects anything after the literal except whitespace, so `"a" or x eq "b"`,
    // `"a" and ...` and an unescaped quote inside the value all fail here.
    let value_text = rest[op_end..].trim();
    let value: Value = serde_json::from_str(value_text).map_err(|_| {
        ScimError::invalid_filter(format!(
            "the comparison value must be one JSON literal (a quoted, escaped string, a number, \
             true, false or null) and nothing may follow it; got `{value_text}`"
        ))
    })?;
    if value.is_array() || value.is_object() {
        return Err(ScimError::invalid_filter(
            "the comparison value must be a string, number, boolean or null",
        ));
    }
    Ok(Filter {
        attr: attr.to_string(),
        value,
    })
}

fn expected(input: &str) -> String {
    format!("expected `<attribute> eq <value>`, got `{input}`")
}

/// Removes a core-schema URN prefix (`urn:...:core:2.0:User:userName` → `userName`).
pub(crate) fn strip_core_prefix(path: &str) -> &str {
    for prefix in CORE_PREFIXES {
        if path.len() > prefix.len()
            && path.is_char_boundary(prefix.len())
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            return &path[prefix.len()..];
        }
    }
    path
}

/// `ATTRNAME *1("." ATTRNAME)`, RFC 7644's `attrPath` without a schema URN.
fn is_attr_path(path: &str) -> bool {
    let mut parts = path.split('.');
    let ok = parts.next().is_some_and(is_attr_name) && parts.next().is_none_or(is_attr_name);
    ok && parts.next().is_none()
}

/// `ATTRNAME = ALPHA *(nameChar)`, `nameChar = "-" / "_" / DIGIT / ALPHA`, plus `$ref`.
pub(crate) fn is_attr_name(name: &str) -> bool {
    if name == "$ref" {
        return true;
    }
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Finds the `]` that closes a value filter starting at `open + 1`, skipping brackets inside
/// JSON string literals (so `members[value eq "a]b"]` closes at the last bracket).
pub(crate) fn find_closing_bracket(text: &str, open: usize) -> Option<usize> {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip_while(|(i, _)| *i <= open) {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ']' {
            return Some(i);
        }
    }
    None
}

/// Compares a resource value with a filter value the way SCIM does for `eq`: strings
/// case-insensitively unless `case_exact`, everything else by equality.
pub(crate) fn value_eq(actual: &Value, wanted: &Value, case_exact: bool) -> bool {
    match (actual, wanted) {
        (Value::String(a), Value::String(b)) if !case_exact => eq_ci(a, b),
        _ => actual == wanted,
    }
}

/// Unicode-aware case-insensitive string equality (user names are e-mail addresses, which may
/// contain non-ASCII characters).
pub(crate) fn eq_ci(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(input: &str) -> Filter {
        match parse_filter(input) {
            Ok(filter) => filter,
            Err(err) => panic!("{input}: {err:?}"),
        }
    }

    fn rejected(input: &str) {
        let err = parse_filter(input).expect_err(input);
        assert_eq!(err.scim_type, Some("invalidFilter"), "{input}");
        assert_eq!(err.status.as_u16(), 400, "{input}");
    }

    #[test]
    fn parses_simple_comparisons() {
        assert_eq!(
            ok(r#"userName eq "alice@corp.com""#),
            Filter {
                attr: "userName".into(),
                value: json!("alice@corp.com")
            }
        );
        assert_eq!(ok("active eq false").value, json!(false));
        assert_eq!(ok("  emails.value   EQ   \"a@b\"  ").attr, "emails.value");
        assert!(ok("USERNAME eq \"x\"").is_attr("userName"));
    }

    #[test]
    fn escaped_quote_stays_inside_the_literal() {
        let filter = ok(r#"userName eq "x\" or userName pr""#);
        assert_eq!(filter.value, json!("x\" or userName pr"));
        assert_eq!(ok(r#"userName eq "a\\b""#).value, json!("a\\b"));
        assert_eq!(ok(r#"userName eq "\u00e9""#).value, json!("é"));
    }

    #[test]
    fn strips_core_urn_prefix() {
        assert_eq!(
            ok(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a""#).attr,
            "userName"
        );
    }

    #[test]
    fn rejects_everything_outside_the_subset() {
        rejected(r#"userName co "a""#);
        rejected("userName pr");
        rejected(r#"userName eq "a" or userName eq "b""#);
        rejected(r#"userName eq "a" and active eq true"#);
        rejected(r#"userName eq "x" or userName pr""#); // unescaped quote breaks out
        rejected(r#"userName eq "unterminated"#);
        rejected("userName eq alice");
        rejected(r#"(userName eq "a")"#);
        rejected(r#"emails[type eq "work"] eq "a""#);
        rejected(r#"not(userName eq "a")"#);
        rejected(r#"userName eq ["a"]"#);
        rejected("");
        rejected("userName");
        rejected("a.b.c eq 1");
    }

    #[test]
    fn closing_bracket_skips_string_literals() {
        let text = r#"members[value eq "a]\"]b"].display"#;
        let close = find_closing_bracket(text, 7).expect("closed");
        assert_eq!(&text[close..], "].display");
        assert_eq!(find_closing_bracket(r#"m[value eq "x]"#, 1), None);
    }

    #[test]
    fn value_comparison() {
        assert!(value_eq(&json!("Alice@X"), &json!("alice@x"), false));
        assert!(!value_eq(&json!("Alice@X"), &json!("alice@x"), true));
        assert!(value_eq(&json!(true), &json!(true), false));
        assert!(!value_eq(&json!("true"), &json!(true), false));
    }
}
