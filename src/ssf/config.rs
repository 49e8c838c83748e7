//! The `[ssf]` table: the push endpoint, this receiver's audience, the transmitters it trusts
//! and the event rules.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

use offboarder_base::secret::SecretSource;

use super::keys::{self, KeyError, KeySource, TransmitterKeys};
use super::mapping::{Rule, Rules};
use super::set::{DEFAULT_ALGORITHMS, MAX_SET_BYTES, SetVerifier, Transmitter};
use super::subject::SubjectRules;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsfConfig {
    /// Where `offboarder ssf-receiver` listens. Plain HTTP: put it behind the TLS ingress that
    /// transmitters reach.
    pub listen: SocketAddr,
    /// The push endpoint's path, registered with each transmitter as the stream's endpoint.
    pub path: String,
    /// The `aud` values that name this receiver; a SET must carry one of them.
    pub audience: Vec<String>,
    /// A bearer token the transmitters must send (`Authorization: Bearer ...`), from an env
    /// var or a file; none by default (the SET's signature authenticates the transmitter; the
    /// token keeps strangers from making the receiver verify their tokens).
    pub bearer_token: SecretSource,
    /// SETs issued longer ago than this are refused, and their `jti`s are remembered this long
    /// to refuse replays.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How many `jti`s the replay check remembers at most; beyond it, SETs are answered 503
    /// (the transmitter retries) rather than taken unchecked.
    pub replay_capacity: usize,
    /// Largest request body of the push endpoint.
    pub max_body_bytes: usize,
    /// How often a JWKS fetched from a URL is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A SET whose `kid` the held keys lack makes the receiver fetch the JWKS again (the
    /// transmitter rotated its keys), at most once per this long.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
    /// Rule overrides: event rule key → `ignore`, `clear`, `low`, `medium`, `high` or
    /// `critical` (the keys and defaults are in the README's Shared Signals section).
    pub events: BTreeMap<String, Rule>,
    pub transmitters: Vec<TransmitterConfig>,
}

impl Default for SsfConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9480)),
            path: "/ssf/events".into(),
            audience: Vec::new(),
            bearer_token: SecretSource::default(),
            max_age: Duration::from_secs(24 * 3600),
            replay_capacity: 200_000,
            max_body_bytes: MAX_SET_BYTES,
            jwks_refresh: Duration::from_secs(3600),
            jwks_min_refetch: Duration::from_secs(30),
            events: BTreeMap::new(),
            transmitters: Vec::new(),
        }
    }
}

/// One `[[ssf.transmitters]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransmitterConfig {
    /// A short name: the risk signals' `source`, and the name in logs.
    pub name: String,
    /// The transmitter's `iss`, exactly as in its SETs.
    pub issuer: String,
    /// Its JWKS: a URL (https; http only on loopback) ...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ... or a file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The algorithms it may sign with (default: RS256/384/512, PS256/384/512, ES256/384,
    /// EdDSA).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Which of its subject identifiers are Netskope user names as they are.
    #[serde(default)]
    pub subjects: SubjectRules,
}

/// The `[ssf]` table cannot work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SsfConfigError {
    #[error("ssf: {0}")]
    Invalid(String),
    #[error("ssf: transmitter {name:?}: {error}")]
    Keys { name: String, error: KeyError },
}

impl SsfConfig {
    /// Whether any transmitter is configured.
    pub fn enabled(&self) -> bool {
        !self.transmitters.is_empty()
    }

    /// Checks the table without reading any key.
    pub fn validate(&self) -> Result<(), SsfConfigError> {
        let invalid = |s: String| SsfConfigError::Invalid(s);
        Rules::new(&self.events).map_err(invalid)?;
        if !self.path.starts_with('/') {
            return Err(invalid(format!("path {:?} must start with /", self.path)));
        }
        if !(1024..=MAX_SET_BYTES).contains(&self.max_body_bytes) {
            return Err(invalid(format!(
                "max_body_bytes must be between 1024 and {MAX_SET_BYTES}"
            )));
        }
        if self.max_age < Duration::from_secs(60) {
            return Err(invalid("max_age must be at least 1m".into()));
        }
        if self.replay_capacity == 0 {
            return Err(invalid("replay_capacity must be at least 1".into()));
        }
        if self.jwks_refresh < Duration::from_secs(60) {
            return Err(invalid("jwks_refresh must be at least 1m".into()));
        }
        if self.jwks_min_refetch < Duration::from_secs(1) {
            return Err(invalid(
                "jwks_min_refetch must be at least 1s: a stream of made-up kids would otherwise make a fetch each".into(),
            ));
        }
        if self.enabled() && self.audience.iter().all(|a| a.trim().is_empty()) {
            return Err(invalid(
                "audience is empty: set the aud value(s) the transmitters put in SETs for this receiver".into(),
            ));
        }
        let (mut names, mut issuers) = (HashSet::new(), HashSet::new());
        for t in &self.transmitters {
            let problem = |s: String| invalid(format!("transmitter {:?}: {s}", t.name));
            if t.name.trim().is_empty() || t.name.len() > 64 {
                return Err(invalid(
                    "a transmitter's name must be 1 to 64 characters".into(),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(problem("two transmitters have this name".into()));
            }
            if t.issuer.is_empty() || !issuers.insert(t.issuer.as_str()) {
                return Err(problem(
                    "its issuer is empty or another transmitter's".into(),
                ));
            }
            t.source().map_err(problem)?;
            t.algorithms().map_err(problem)?;
        }
        Ok(())
    }

    /// Reads every transmitter's keys (fetching the JWKS URLs) into a verifier.
    pub async fn verifier(&self) -> Result<SetVerifier, SsfConfigError> {
        self.validate()?;
        offboarder_base::tls::install();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(keys::FETCH_TIMEOUT)
            .build()
            .map_err(|e| SsfConfigError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        let mut transmitters = Vec::new();
        for t in &self.transmitters {
            let source = t.source().map_err(SsfConfigError::Invalid)?;
            let keys = TransmitterKeys::load(
                source,
                self.jwks_refresh,
                self.jwks_min_refetch,
                http.clone(),
            )
            .await
            .map_err(|error| SsfConfigError::Keys {
                name: t.name.clone(),
                error,
            })?;
            transmitters.push(Transmitter {
                name: t.name.clone(),
                issuer: t.issuer.clone(),
                algorithms: t.algorithms().map_err(SsfConfigError::Invalid)?,
                keys,
            });
        }
        Ok(SetVerifier::new(
            transmitters,
            self.audience.clone(),
            self.max_age,
        ))
    }

    /// The event rules in force.
    pub fn rules(&self) -> Result<Rules, SsfConfigError> {
        Rules::new(&self.events).map_err(SsfConfigError::Invalid)
    }

    /// Each transmitter's subject rules, by name.
    pub fn subjects(&self) -> BTreeMap<String, SubjectRules> {
        self.transmitters
            .iter()
            .map(|t| (t.name.clone(), t.subjects))
            .collect()
    }
}

impl TransmitterConfig {
    fn source(&self) -> Result<KeySource, String> {
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) => {
                let url = Url::parse(url).map_err(|e| format!("jwks_url {url:?}: {e}"))?;
                keys::check_url(&url)?;
                Ok(KeySource::Url(url))
            }
            (None, Some(path)) => Ok(KeySource::File(path.clone())),
            _ => Err("set one of jwks_url and jwks_file".into()),
        }
    }

    fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        let Some(names) = &self.algorithms else {
            return Ok(DEFAULT_ALGORITHMS.to_vec());
        };
        if names.is_empty() {
            return Err("algorithms is empty".into());
        }
        names
            .iter()
            .map(|n| {
                n.parse::<Algorithm>()
                    .ok()
                    .filter(|a| DEFAULT_ALGORITHMS.contains(a))
                    .ok_or_else(|| {
                        format!("algorithm {n:?} is not an accepted signature algorithm (RS*, PS*, ES256, ES384, EdDSA)")
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<(), String> {
        use figment::providers::Format as _;
        let c: SsfConfig = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn transmitters_are_checked_before_any_key_is_read() {
        let ok = r#"
            audience = ["https://offboarder.example.com/ssf"]
            [[transmitters]]
            name = "okta"
            issuer = "https://example.okta.com"
            jwks_url = "https://example.okta.com/oauth2/v1/keys"
            algorithms = ["RS256"]
        "#;
        assert_eq!(config(ok), Ok(()));
        for (bad, says) in [
            (
                ok.replace("audience = [\"https://offboarder.example.com/ssf\"]", ""),
                "audience",
            ),
            (
                ok.replace(
                    "https://example.okta.com/oauth2",
                    "http://example.okta.com/oauth2",
                ),
                "plain http",
            ),
            (ok.replace("\"RS256\"", "\"HS256\""), "HS256"),
            (ok.replace("\"RS256\"", "\"none\""), "none"),
            (
                ok.replace("jwks_url = \"https://example.okta.com/oauth2/v1/keys\"", ""),
                "one of jwks_url",
            ),
            (
                format!("{ok}\n[events]\naccount-deleted = \"high\""),
                "account-deleted",
            ),
            (
                format!("{ok}\n[events]\naccount-disabled = \"severe\""),
                "severe",
            ),
        ] {
            let err = config(&bad).expect_err(says);
            assert!(err.contains(says), "{says}: {err}");
        }
        let twice = format!(
            "{ok}\n[[transmitters]]\nname = \"okta\"\nissuer = \"x\"\njwks_file = \"k.json\""
        );
        assert!(
            config(&twice)
                .expect_err("duplicate")
                .contains("two transmitters")
        );
    }
}
