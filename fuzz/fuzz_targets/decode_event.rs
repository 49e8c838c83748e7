//! Any bytes on an input topic: decoding never panics, and whatever decodes can be decided.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use offboarder::event::{EventKind, Schemas};
use offboarder::policy::{Policy, PolicyConfig};

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| Schemas::load().expect("the bundled schemas compile"))
}

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Policy::new(PolicyConfig::default()).expect("the default policy"))
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topic, the rest is the record's value.
    let Some((first, payload)) = data.split_first() else {
        return;
    };
    let kind = if first % 2 == 0 {
        EventKind::Termination
    } else {
        EventKind::RiskSignal
    };
    if let Ok(event) = schemas().decode(kind, Some(payload), 64 * 1024) {
        let _ = policy().decide(&event);
    }
});
