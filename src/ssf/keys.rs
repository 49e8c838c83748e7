//! A transmitter's signing keys: its JWKS, from a file or fetched from a URL.
//!
//! A fetched set is kept and fetched again every `jwks_refresh`, and at once when a SET names a
//! `kid` the set does not hold (the transmitter rotated its keys), but no more than once per
//! `jwks_min_refetch`: a stream of SETs with made-up `kid`s must not turn the receiver into a
//! load generator against the transmitter. A failed fetch keeps the keys held before.
//!
//! Only asymmetric signature keys are kept (`RSA`, `EC`, `OKP`): a symmetric (`oct`) key in a
//! published set would be a secret made public, and `use: enc` keys do not sign. A key that
//! cannot be read is skipped with a warning rather than spoiling the set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

/// Largest JWKS read, from a file or a URL: a set of a dozen RSA keys is about 10 KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How long a JWKS fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a transmitter's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Url(Url),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "{}", path.display()),
            KeySource::Url(url) => write!(f, "{url}"),
        }
    }
}

/// The keys could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("JWKS {source_name}: {reason}")]
pub struct KeyError {
    pub source_name: String,
    pub reason: String,
}

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// The algorithm the key is bound to (its JWK `alg`), if it names one.
    pub alg: Option<Algorithm>,
    family: Family,
    pub decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

impl Key {
    /// Whether this key may verify a signature made with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && family_of(alg) == Some(self.family)
    }
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

/// The usable keys of one JWKS document.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: used only by a SET whose header names none.
    unnamed: Vec<Key>,
}

impl KeySet {
    /// Reads a JWKS document. Unusable keys are skipped (and counted in `skipped`); a document
    /// that is not a JWKS is an error.
    pub fn parse(bytes: &[u8]) -> Result<(KeySet, usize), String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err("no \"keys\" list: not a JWKS document".into());
        };
        let mut set = KeySet::default();
        let mut skipped = 0;
        for key in keys {
            let Some((kid, key)) = usable(key) else {
                skipped += 1;
                continue;
            };
            match kid {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.unnamed.push(key),
            }
        }
        Ok((set, skipped))
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key a SET's header asks for: by `kid`, or, without one, the only key that fits.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) if key.fits(alg) => Lookup::Found(key),
                Some(_) => Lookup::WrongAlgorithm,
                None => Lookup::Missing,
            },
            None => {
                let mut fitting = self
                    .unnamed
                    .iter()
                    .chain(self.by_kid.values())
                    .filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    (None, _) => Lookup::Missing,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }
}

/// What [`KeySet::find`] found.
pub enum Lookup<'a> {
    Found(&'a Key),
    /// No key by that `kid` (or, without a `kid`, none that fits).
    Missing,
    /// The `kid` names a key of another type or bound to another algorithm.
    WrongAlgorithm,
    /// No `kid`, and several keys fit.
    Ambiguous,
}

fn usable(value: &Value) -> Option<(Option<String>, Key)> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signature_algorithm(a)?),
    };
    if alg.is_some_and(|a| family_of(a) != Some(family)) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some((
        jwk.common.key_id.clone(),
        Key {
            alg,
            family,
            decoding,
        },
    ))
}

fn signature_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A transmitter's keys as the receiver holds them.
pub struct TransmitterKeys {
    source: KeySource,
    refresh: Duration,
    min_refetch: Duration,
    http: reqwest::Client,
    state: Mutex<State>,
}

struct State {
    set: Arc<KeySet>,
    /// When the held set was read (or last tried to be).
    tried_at: Instant,
}

impl TransmitterKeys {
    /// Reads the keys once: an error here is a configuration error (the receiver does not start
    /// without every transmitter's keys).
    pub async fn load(
        source: KeySource,
        refresh: Duration,
        min_refetch: Duration,
        http: reqwest::Client,
    ) -> Result<Self, KeyError> {
        let set = read(&source, &http).await?;
        if set.is_empty() {
            return Err(KeyError {
                source_name: source.to_string(),
                reason: "no usable signature key (RSA, EC or OKP, not use=enc)".into(),
            });
        }
        Ok(Self {
            source,
            refresh,
            min_refetch,
            http,
            state: Mutex::new(State {
                set: Arc::new(set),
                tried_at: Instant::now(),
            }),
        })
    }

    /// How many usable keys are held.
    pub async fn count(&self) -> usize {
        self.state.lock().await.set.len()
    }

    /// The held keys, fetched again first when they are older than `jwks_refresh`, or when
    /// `kid` is missing from them and the last fetch is at least `min_refetch` old.
    pub async fn current(&self, kid: Option<&str>) -> Arc<KeySet> {
        let mut state = self.state.lock().await;
        let age = state.tried_at.elapsed();
        let missing = kid.is_some_and(|kid| !state.set.by_kid.contains_key(kid));
        let due = age >= self.refresh || (missing && age >= self.min_refetch);
        if due && matches!(self.source, KeySource::Url(_)) {
            state.tried_at = Instant::now();
            match read(&self.source, &self.http).await {
                Ok(set) if !set.is_empty() => state.set = Arc::new(set),
                Ok(_) => tracing::warn!(
                    jwks = %self.source,
                    "the transmitter's JWKS holds no usable key now; the keys held before stay"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the transmitter's JWKS could not be fetched again; the keys held before stay"
                ),
            }
        }
        state.set.clone()
    }
}

async fn read(source: &KeySource, http: &reqwest::Client) -> Result<KeySet, KeyError> {
    let err = |reason: String| KeyError {
        source_name: source.to_string(),
        reason,
    };
    let bytes = match source {
        KeySource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.len() > MAX_JWKS_BYTES as u64 {
                return Err(err(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            std::fs::read(path).map_err(|e| err(e.to_string()))?
        }
        KeySource::Url(url) => fetch(url, http).await.map_err(err)?,
    };
    let (set, skipped) = KeySet::parse(&bytes).map_err(err)?;
    if skipped > 0 {
        tracing::warn!(jwks = %source, skipped, "JWKS keys that cannot verify a SET were skipped (symmetric, use=enc, unknown type or algorithm)");
    }
    Ok(set)
}

async fn fetch(url: &Url, http: &reqwest::Client) -> Result<Vec<u8>, String> {
    let mut response = http
        .get(url.clone())
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JWKS URL must be https; plain http only for a loopback host (tests, a local sidecar).
pub fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{url} uses plain http; a JWKS is fetched over https (plain http only from a loopback host)"
        )),
        other => Err(format!("{url}: scheme {other:?} is not https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine as _;

    fn rsa(kid: Option<&str>, alg: Option<&str>) -> Value {
        // Any 2048-bit modulus will do: these tests look keys up, they verify nothing.
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let mut k = serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB", "use": "sig"});
        if let Some(kid) = kid {
            k["kid"] = kid.into();
        }
        if let Some(alg) = alg {
            k["alg"] = alg.into();
        }
        k
    }

    fn set(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("json")
    }

    #[test]
    fn keys_are_found_by_kid_and_bound_to_their_algorithm() {
        let (keys, skipped) = KeySet::parse(&set(vec![
            rsa(Some("a"), Some("RS256")),
            rsa(Some("b"), None),
        ]))
        .expect("a JWKS");
        assert_eq!((keys.len(), skipped), (2, 0));
        assert!(matches!(
            keys.find(Some("a"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.find(Some("a"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(Some("b"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.find(Some("b"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(Some("c"), Algorithm::RS256),
            Lookup::Missing
        ));
        assert!(matches!(
            keys.find(None, Algorithm::RS256),
            Lookup::Ambiguous
        ));
        let (one, _) = KeySet::parse(&set(vec![rsa(None, None)])).expect("a JWKS");
        assert!(matches!(one.find(None, Algorithm::RS256), Lookup::Found(_)));
    }

    #[test]
    fn symmetric_encryption_and_unknown_keys_are_skipped() {
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        let mut enc = rsa(Some("e"), None);
        enc["use"] = "enc".into();
        let odd = serde_json::json!({"kty": "XYZ", "kid": "x"});
        let hs = rsa(Some("h"), Some("HS256"));
        let (keys, skipped) =
            KeySet::parse(&set(vec![oct, enc, odd, hs, rsa(Some("ok"), None)])).expect("a JWKS");
        assert_eq!((keys.len(), skipped), (1, 4));
        assert!(matches!(
            keys.find(Some("s"), Algorithm::HS256),
            Lookup::Missing
        ));
    }

    #[test]
    fn a_document_without_keys_is_an_error() {
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"[1,2]").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }

    #[test]
    fn jwks_urls_are_https_except_on_loopback() {
        let ok = |s: &str| check_url(&Url::parse(s).expect("url")).is_ok();
        assert!(ok("https://idp.example.com/jwks"));
        assert!(ok("http://127.0.0.1:8080/jwks"));
        assert!(ok("http://[::1]:8080/jwks"));
        assert!(ok("http://localhost/jwks"));
        assert!(!ok("http://idp.example.com/jwks"));
        assert!(!ok("ftp://idp.example.com/jwks"));
    }
}
