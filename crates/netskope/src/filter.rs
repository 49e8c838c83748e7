//! SCIM filter expressions built from untrusted values.
//!
//! RFC 7644 §3.4.2.2 makes a filter's comparison value a JSON literal, so a string value is
//! written exactly as a JSON string: `"` becomes `\"`, `\` becomes `\\` and control characters
//! become `\uXXXX`. A user name such as `x" or userName pr` therefore stays one literal and
//! cannot add clauses to the filter. (URL encoding of the whole filter is the HTTP client's job.)

/// `attribute eq "value"`, with the value escaped as a JSON string.
pub fn eq(attribute: &str, value: &str) -> String {
    format!("{attribute} eq {}", quote(value))
}

/// A JSON string literal of `value`.
pub fn quote(value: &str) -> String {
    // Serialising a &str to JSON cannot fail; fall back to an always-empty match rather than
    // panic if that ever changed.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(eq("userName", r#"a"b\c"#), r#"userName eq "a\"b\\c""#);
        assert_eq!(
            eq("userName", r#"x" or userName pr"#),
            r#"userName eq "x\" or userName pr""#
        );
        assert_eq!(eq("userName", "a\nb\u{0}"), r#"userName eq "a\nb\u0000""#);
    }

    proptest! {
        /// Whatever the value, the filter is `<attr> eq ` followed by exactly one JSON string
        /// literal that decodes back to the value: nothing can escape the literal.
        #[test]
        fn the_literal_round_trips_and_ends_the_filter(value in any::<String>()) {
            let f = eq("userName", &value);
            let literal = f.strip_prefix("userName eq ").expect("prefix");
            let mut stream = serde_json::Deserializer::from_str(literal).into_iter::<String>();
            let decoded = stream.next().expect("one value").expect("a JSON string");
            prop_assert_eq!(&decoded, &value);
            prop_assert_eq!(stream.byte_offset(), literal.len());
        }
    }
}
