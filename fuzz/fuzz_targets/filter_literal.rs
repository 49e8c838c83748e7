//! Any user name: the SCIM filter built from it is `userName eq ` and one JSON string literal
//! that decodes back to exactly that name, so nothing can escape the literal.
#![no_main]

use libfuzzer_sys::fuzz_target;

use netskope::filter;

fuzz_target!(|name: &str| {
    let built = filter::eq("userName", name);
    let literal = built
        .strip_prefix("userName eq ")
        .expect("the attribute and operator come first");
    let decoded: String = serde_json::from_str(literal).expect("one JSON string literal");
    assert_eq!(decoded, name);
    // The literal is the whole rest of the filter: its closing quote is the last character,
    // and no unescaped quote comes before it.
    assert!(literal.ends_with('"'));
    let inner = &literal[1..literal.len() - 1];
    let mut escaped = false;
    for c in inner.chars() {
        assert!(escaped || c != '"', "an unescaped quote inside the literal");
        escaped = !escaped && c == '\\';
    }
});
