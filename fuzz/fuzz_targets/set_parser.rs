//! Any bytes, as a pushed body or a Kafka record would bring them, through the SET parser, and
//! what it accepts through the subject and event mapping: refusals are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offboarder::ssf::mapping::{self, Rules};
use offboarder::ssf::set::{self, VerifiedSet};
use offboarder::ssf::subject::{self, SubjectRules};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = set::looks_like_jws(data);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut parsed) = set::parse(token) else {
        return;
    };
    let trusting = SubjectRules {
        iss_sub_is_user_name: true,
        opaque_is_user_name: true,
    };
    if let Some(sub_id) = parsed.claims.get("sub_id") {
        let _ = subject::user_name(sub_id, trusting);
    }
    let Some(Value::Object(events)) = parsed.claims.remove("events") else {
        return;
    };
    // As if the signature and the claims had verified: the mapping sees what a transmitter
    // could sign.
    let verified = VerifiedSet {
        transmitter: "fuzz".into(),
        iss: "https://fuzz.example/".into(),
        jti: "fuzz".into(),
        iat: 0,
        toe: None,
        txn: None,
        sub_id: parsed.claims.remove("sub_id"),
        events,
    };
    let _ = mapping::signals(&verified, &Rules::default(), trusting);
});
