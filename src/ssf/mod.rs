//! Shared Signals (OpenID SSF 1.0, with the RISC and CAEP event profiles): Security Event
//! Tokens from identity platforms turned into risk signals.
//!
//! SETs arrive two ways: pushed over HTTP to `offboarder ssf-receiver` (RFC 8935), which writes
//! the risk signals they stand for to the risk-signals topic, or forwarded as they are onto the
//! risk-signals topic, where the worker maps them the same way. Either way a SET is believed
//! only after its signature verifies with a key of the transmitter its `iss` names.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the `[ssf]` table: endpoint, audience, transmitters, event rules |
//! | [`keys`] | a transmitter's JWKS: from a file or a URL, refreshed, fetched again on an unknown `kid` |
//! | [`set`] | a compact JWS checked as a SET: header, signature, `iss`, `aud`, `iat`, `exp`, `jti`, `events` |
//! | [`subject`] | subject identifiers (RFC 9493) to user names |
//! | [`mapping`] | RISC and CAEP events to risk signals, by the configured rules |
//! | [`replay`] | a `jti` seen within `max_age` is refused |
//! | [`receiver`] | the push endpoint: bearer token, body limit, RFC 8935 answers, 202 only after the brokers acknowledged |

pub mod config;
pub mod keys;
pub mod mapping;
pub mod receiver;
pub mod replay;
pub mod set;
pub mod subject;

use std::collections::BTreeMap;
use std::time::Duration;

pub use config::{SsfConfig, SsfConfigError};
use mapping::{Rules, Signal};
use set::{SetError, SetVerifier, VerifiedSet};
use subject::SubjectRules;

/// Verification and mapping together: a token in, the risk signals it stands for out.
pub struct SetMapper {
    verifier: SetVerifier,
    rules: Rules,
    subjects: BTreeMap<String, SubjectRules>,
    max_age: Duration,
}

impl SetMapper {
    /// Reads the transmitters' keys (a JWKS URL is fetched now).
    pub async fn from_config(config: &SsfConfig) -> Result<Self, SsfConfigError> {
        Ok(Self {
            verifier: config.verifier().await?,
            rules: config.rules()?,
            subjects: config.subjects(),
            max_age: config.max_age,
        })
    }

    /// The verified SET and its risk signals (none when every event is ignored).
    pub async fn map(&self, token: &str) -> Result<(VerifiedSet, Vec<Signal>), SetError> {
        let set = self.verifier.verify(token).await?;
        let subjects = self
            .subjects
            .get(&set.transmitter)
            .copied()
            .unwrap_or_default();
        let signals = mapping::signals(&set, &self.rules, subjects)?;
        Ok((set, signals))
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The configured transmitters: name, issuer, and how many keys each holds now.
    pub async fn transmitters(&self) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        for t in self.verifier.transmitters() {
            out.push((t.name.clone(), t.issuer.clone(), t.keys.count().await));
        }
        out.sort();
        out
    }
}

/// A value from a SET, cut to `max` characters and without control characters, for a message.
fn clip(s: &str, max: usize) -> String {
    let cut: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        format!("{cut}…")
    } else {
        cut
    }
}
