//! Security Event Tokens (RFC 8417): a compact JWS checked against its transmitter's keys and
//! the receiver's rules, before anything in it is believed.
//!
//! The order matters. The header and the payload are read first without trust, only to pick
//! the keys: `iss` names the transmitter, `kid` its key. The signature is then verified with
//! that transmitter's key alone, so a SET signed by one configured transmitter can never pass
//! as another's. Only after it verifies are `aud`, `iat`, `exp`, `jti` and `events` checked.
//!
//! Refused outright: `alg: none` and every symmetric or unknown algorithm, a `crit` header (no
//! extension is understood), a `typ` other than `secevent+jwt`, a token without `events` (an ID
//! token or access token is not a SET).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::clip;
use super::keys::{Lookup, TransmitterKeys};

/// Most characters of a token's value quoted in a refusal.
const MAX_QUOTED_CHARS: usize = 100;
/// Largest SET accepted, on the push endpoint and on Kafka.
pub const MAX_SET_BYTES: usize = 64 * 1024;
/// Longest `jti` taken: it becomes the risk signal's `event_id` (at most 256 characters).
pub const MAX_JTI_CHARS: usize = 200;
/// How far in the future an `iat` may lie (the transmitter's clock may run ahead).
pub const IAT_LEEWAY_SECS: u64 = 60;

/// The error codes of RFC 8935 section 2.4 (IANA "Security Event Token Error Codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidKey,
    InvalidIssuer,
    InvalidAudience,
    AuthenticationFailed,
    AccessDenied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::InvalidIssuer => "invalid_issuer",
            ErrorCode::InvalidAudience => "invalid_audience",
            ErrorCode::AuthenticationFailed => "authentication_failed",
            ErrorCode::AccessDenied => "access_denied",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a SET was not taken. The description names what failed, never the token or its claims'
/// values beyond the names of what was checked (the `iss` of an unknown issuer is shown, as
/// the transmitter's operator needs it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// The SET is refused for good: the transmitter must not send it again as it is.
    #[error("{code}: {description}")]
    Refused {
        code: ErrorCode,
        description: String,
    },
    /// The receiver cannot decide now (its replay memory is full): the transmitter should
    /// retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl SetError {
    pub fn refused(code: ErrorCode, description: impl Into<String>) -> Self {
        SetError::Refused {
            code,
            description: description.into(),
        }
    }

    fn request(description: impl Into<String>) -> Self {
        Self::refused(ErrorCode::InvalidRequest, description)
    }

    fn key(description: impl Into<String>) -> Self {
        Self::refused(ErrorCode::InvalidKey, description)
    }

    /// The RFC 8935 code, for a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            SetError::Refused { code, .. } => Some(*code),
            SetError::Unavailable(_) => None,
        }
    }
}

/// A SET whose signature and claims were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSet {
    /// The configured name of the transmitter that signed it.
    pub transmitter: String,
    pub iss: String,
    pub jti: String,
    pub iat: u64,
    /// `toe`, the time of the event, when the SET says.
    pub toe: Option<u64>,
    pub txn: Option<String>,
    /// The SET's `sub_id` (SSF 1.0), when it has one.
    pub sub_id: Option<Value>,
    /// Event type URI → event payload, at least one.
    pub events: Map<String, Value>,
}

/// One configured transmitter, as the verifier needs it.
pub struct Transmitter {
    pub name: String,
    pub issuer: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: TransmitterKeys,
}

/// Checks SETs for the configured transmitters and audience.
pub struct SetVerifier {
    by_issuer: HashMap<String, Arc<Transmitter>>,
    audience: Vec<String>,
    max_age: Duration,
    clock: offboarder_base::clock::WallClock,
}

/// The asymmetric algorithms a transmitter may use unless its config narrows them.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl SetVerifier {
    pub fn new(transmitters: Vec<Transmitter>, audience: Vec<String>, max_age: Duration) -> Self {
        Self {
            by_issuer: transmitters
                .into_iter()
                .map(|t| (t.issuer.clone(), Arc::new(t)))
                .collect(),
            audience,
            max_age,
            clock: offboarder_base::clock::WallClock::new(),
        }
    }

    /// The configured transmitters.
    pub fn transmitters(&self) -> impl Iterator<Item = &Transmitter> {
        self.by_issuer.values().map(|t| t.as_ref())
    }

    /// Verifies a compact JWS as a SET.
    pub async fn verify(&self, token: &str) -> Result<VerifiedSet, SetError> {
        let token = token.trim();
        let Unverified { alg, kid, claims } = parse(token)?;
        let kid = kid.as_deref();
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| SetError::request("no \"iss\" claim"))?;
        let Some(transmitter) = self.by_issuer.get(iss) else {
            return Err(SetError::refused(
                ErrorCode::InvalidIssuer,
                format!(
                    "issuer {:?} is not a configured transmitter",
                    clip(iss, MAX_QUOTED_CHARS)
                ),
            ));
        };
        if !transmitter.algorithms.contains(&alg) {
            return Err(SetError::key(format!(
                "algorithm {alg:?} is not accepted from this transmitter"
            )));
        }
        let keys = transmitter.keys.current(kid).await;
        let key = match keys.find(kid, alg) {
            Lookup::Found(key) => key,
            Lookup::Missing => {
                return Err(SetError::key(match kid {
                    Some(_) => "no key of the transmitter has the SET's \"kid\"",
                    None => "the SET names no \"kid\" and no key of the transmitter fits it",
                }));
            }
            Lookup::WrongAlgorithm => {
                return Err(SetError::key(format!(
                    "the key named by \"kid\" is not a key for {alg:?}"
                )));
            }
            Lookup::Ambiguous => {
                return Err(SetError::key(
                    "the SET names no \"kid\" and the transmitter has several keys",
                ));
            }
        };
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    SetError::key("the signature does not verify with the transmitter's key")
                }
                _ => SetError::key(format!("the signature cannot be checked: {e}")),
            }
        })?;
        self.check_claims(transmitter, claims)
    }

    fn check_claims(
        &self,
        t: &Transmitter,
        mut claims: Map<String, Value>,
    ) -> Result<VerifiedSet, SetError> {
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => self.audience.iter().any(|a| a == aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audience.iter().any(|a| a == aud)),
            _ => false,
        };
        if !audience_ok {
            return Err(SetError::refused(
                ErrorCode::InvalidAudience,
                "\"aud\" does not name this receiver (ssf.audience)",
            ));
        }
        let now = self.clock.now_secs();
        let iat = seconds(claims.get("iat"))
            .ok_or_else(|| SetError::request("no numeric \"iat\" claim"))?;
        if iat > now + IAT_LEEWAY_SECS {
            return Err(SetError::request("\"iat\" lies in the future"));
        }
        if now.saturating_sub(iat) > self.max_age.as_secs() {
            return Err(SetError::request(format!(
                "the SET was issued more than ssf.max_age ({}) ago",
                humantime::format_duration(self.max_age)
            )));
        }
        if let Some(exp) = claims.get("exp") {
            match seconds(Some(exp)) {
                Some(exp) if exp + IAT_LEEWAY_SECS >= now => {}
                Some(_) => return Err(SetError::request("the SET has expired (\"exp\")")),
                None => return Err(SetError::request("\"exp\" is not a number")),
            }
        }
        let jti = match claims.get("jti") {
            Some(Value::String(jti))
                if !jti.is_empty()
                    && jti.chars().count() <= MAX_JTI_CHARS
                    && !jti.chars().any(char::is_control) =>
            {
                jti.clone()
            }
            _ => {
                return Err(SetError::request(format!(
                    "\"jti\" must be a string of 1 to {MAX_JTI_CHARS} printable characters"
                )));
            }
        };
        let events = match claims.remove("events") {
            Some(Value::Object(events)) if !events.is_empty() => events,
            _ => {
                return Err(SetError::request(
                    "no \"events\" object: not a Security Event Token",
                ));
            }
        };
        if let Some((kind, _)) = events.iter().find(|(_, payload)| !payload.is_object()) {
            return Err(SetError::request(format!(
                "the payload of event {:?} is not an object",
                clip(kind, MAX_QUOTED_CHARS)
            )));
        }
        Ok(VerifiedSet {
            transmitter: t.name.clone(),
            iss: t.issuer.clone(),
            jti,
            iat,
            toe: seconds(claims.get("toe")),
            txn: claims
                .get("txn")
                .and_then(Value::as_str)
                .map(str::to_string),
            sub_id: claims.remove("sub_id"),
            events,
        })
    }
}

/// A SET as read before its signature is checked: nothing in it is to be believed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Reads a compact JWS: its shape, its header (refusing what [`SetVerifier::verify`] refuses
/// before any key is looked up) and its claims. The parser the fuzz target drives.
pub fn parse(token: &str) -> Result<Unverified, SetError> {
    if token.len() > MAX_SET_BYTES {
        return Err(SetError::request(format!(
            "the SET is larger than {MAX_SET_BYTES} bytes"
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(SetError::request(
            "not a compact JWS (three base64url parts separated by dots); an encrypted SET (JWE) is not accepted",
        ));
    };
    if signature.is_empty() {
        return Err(SetError::key("the SET is not signed"));
    }
    let header = decode_part(header, "header")?;
    let alg = check_header(&header)?;
    let claims = decode_part(payload, "payload")?;
    Ok(Unverified {
        alg,
        kid: header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string),
        claims,
    })
}

/// Whether a record's bytes look like a compact JWS rather than JSON: three base64url parts.
pub fn looks_like_jws(bytes: &[u8]) -> bool {
    let text = bytes.trim_ascii();
    text.first() != Some(&b'{')
        && text.iter().filter(|b| **b == b'.').count() == 2
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

fn decode_part(part: &str, what: &str) -> Result<Map<String, Value>, SetError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| SetError::request(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(SetError::request(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// The header's algorithm, if the header is acceptable.
fn check_header(header: &Map<String, Value>) -> Result<Algorithm, SetError> {
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| SetError::request("the header names no \"alg\""))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(SetError::key("unsigned SETs (alg \"none\") are refused"));
    }
    let alg: Algorithm = alg
        .parse()
        .ok()
        .filter(|a| DEFAULT_ALGORITHMS.contains(a))
        .ok_or_else(|| {
            SetError::key(format!(
                "algorithm {:?} is not accepted",
                clip(alg, MAX_QUOTED_CHARS)
            ))
        })?;
    if header.contains_key("crit") {
        return Err(SetError::request(
            "the header lists critical extensions (\"crit\"), which this receiver does not understand",
        ));
    }
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().unwrap_or_default().to_ascii_lowercase();
        if typ != "secevent+jwt" && typ != "application/secevent+jwt" {
            return Err(SetError::request(format!(
                "the header's \"typ\" is {:?}, not \"secevent+jwt\": not a Security Event Token",
                clip(&typ, MAX_QUOTED_CHARS)
            )));
        }
    }
    Ok(alg)
}

fn seconds(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("json"))
    }

    #[test]
    fn headers_that_are_refused_before_any_key_is_looked_up() {
        let check = |h: Value| check_header(h.as_object().expect("object")).map_err(|e| e.code());
        assert_eq!(
            check(serde_json::json!({"alg": "RS256", "typ": "secevent+jwt", "kid": "k"})),
            Ok(Algorithm::RS256)
        );
        assert_eq!(
            check(serde_json::json!({"alg": "ES256"})),
            Ok(Algorithm::ES256)
        );
        for (header, code) in [
            (serde_json::json!({"alg": "none"}), ErrorCode::InvalidKey),
            (serde_json::json!({"alg": "NONE"}), ErrorCode::InvalidKey),
            (serde_json::json!({"alg": "HS256"}), ErrorCode::InvalidKey),
            (
                serde_json::json!({"alg": "RSA-OAEP"}),
                ErrorCode::InvalidKey,
            ),
            (serde_json::json!({}), ErrorCode::InvalidRequest),
            (
                serde_json::json!({"alg": "RS256", "typ": "JWT"}),
                ErrorCode::InvalidRequest,
            ),
            (
                serde_json::json!({"alg": "RS256", "crit": ["exp"]}),
                ErrorCode::InvalidRequest,
            ),
        ] {
            assert_eq!(check(header.clone()), Err(Some(code)), "{header}");
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_invalid_requests_and_unknown_issuers_invalid_issuers() {
        let verifier = SetVerifier::new(Vec::new(), vec!["aud".into()], Duration::from_secs(60));
        let header = b64(&serde_json::json!({"alg": "RS256"}));
        let payload = b64(&serde_json::json!({"iss": "https://unknown.example"}));
        for (token, code) in [
            ("".to_string(), ErrorCode::InvalidRequest),
            ("a.b".to_string(), ErrorCode::InvalidRequest),
            ("a.b.c.d.e".to_string(), ErrorCode::InvalidRequest),
            (format!("{header}.{payload}."), ErrorCode::InvalidKey),
            (format!("!!.{payload}.sig"), ErrorCode::InvalidRequest),
            (
                format!("{header}.bm90IGpzb24.sig"),
                ErrorCode::InvalidRequest,
            ),
            (format!("{header}.{payload}.sig"), ErrorCode::InvalidIssuer),
            ("x".repeat(MAX_SET_BYTES + 1), ErrorCode::InvalidRequest),
        ] {
            let got = verifier.verify(&token).await.map_err(|e| e.code());
            assert_eq!(got, Err(Some(code)), "{}", clip(&token, MAX_QUOTED_CHARS));
        }
    }

    proptest::proptest! {
        // Whatever arrives, the parser answers: a SET or a refusal with a code, never a panic.
        #[test]
        fn the_parser_refuses_anything_but_never_panics(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            raw in ".{0,300}",
        ) {
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let _ = parse(&raw);
            let _ = parse(&format!("{}.{}.c2ln", b64(&header), b64(&payload)));
            let _ = parse(&format!("{}.{}.c2ln", b64(br#"{"alg":"RS256"}"#), b64(&payload)));
        }
    }

    #[test]
    fn a_jws_is_told_from_json() {
        assert!(looks_like_jws(b"eyJhbGciOi.eyJpc3MiOi.c2ln"));
        assert!(looks_like_jws(b" eyJh.eyJp.c2ln\n"));
        assert!(!looks_like_jws(br#"{"event_id":"a.b.c"}"#));
        assert!(!looks_like_jws(b"a.b"));
        assert!(!looks_like_jws(b"a b.c.d"));
    }
}
