//! The worker's configuration: a TOML file, with `OFFBOARDER_<SECTION>__<KEY>` environment
//! variables overriding it (e.g. `OFFBOARDER_NETSKOPE__TENANT_URL`, and
//! `OFFBOARDER_NETSKOPE__SCIM_TOKEN__FILE` for a nested key).
//!
//! Unknown keys are errors, so a typo cannot silently fall back to a default. Tokens are never
//! keys of the file: the file names the env var or file that holds each token.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use netskope::NetskopeConfig;

use crate::admin::AdminConfig;
use crate::guard::GuardConfig;
use crate::pipeline::config::{KafkaConfig, PipelineConfig};
use crate::pipeline::envelope::OutcomesConfig;
use crate::policy::PolicyConfig;
use crate::ssf::SsfConfig;
use crate::verify::VerifyConfig;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "OFFBOARDER_";
/// Sections that environment variables may override. Other `OFFBOARDER_*` variables (the
/// simulator's, say) are not config keys and are left alone.
const SECTIONS: &[&str] = &[
    "netskope__",
    "kafka__",
    "policy__",
    "pipeline__",
    "verify__",
    "admin__",
    "guard__",
    "ssf__",
    "outcomes__",
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub netskope: NetskopeConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub ssf: SsfConfig,
    #[serde(default)]
    pub outcomes: OutcomesConfig,
}

/// The config file could not be read or does not fit the schema.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigFileError(String);

impl Config {
    /// Reads `path` (which must exist) and applies environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        if !path.is_file() {
            return Err(ConfigFileError(format!(
                "{} does not exist or is not a file",
                path.display()
            )));
        }
        Self::from_figment(Figment::from(Toml::file_exact(path)))
    }

    /// Parses TOML text (with environment overrides); used by tests and the demo.
    pub fn from_toml(text: &str) -> Result<Self, ConfigFileError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigFileError> {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                SECTIONS.iter().any(|s| key.starts_with(s))
            })
            .split("__");
        figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigFileError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_minimal_file_gets_sane_defaults() {
        let c = Config::from_toml(
            r#"
            [netskope]
            tenant_url = "https://acme.goskope.com"
            "#,
        )
        .unwrap();
        assert_eq!(c.netskope.requests_per_minute, 300);
        assert_eq!(c.netskope.request_timeout, Duration::from_secs(30));
        assert!(!c.netskope.allow_insecure_http);
    }

    #[test]
    fn durations_and_nested_tables_parse() {
        let c = Config::from_toml(
            r#"
            [netskope]
            tenant_url = "https://acme.goskope.com"
            request_timeout = "10s"
            auth_header = "bearer"
            audit_paging_param = "skip"
            scim_token = { file = "/run/secrets/scim" }
            [netskope.retry]
            max_attempts = 3
            initial_delay = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.netskope.request_timeout, Duration::from_secs(10));
        assert_eq!(c.netskope.retry.max_attempts, 3);
        assert_eq!(c.netskope.retry.initial_delay, Duration::from_millis(250));
        assert_eq!(
            c.netskope.scim_token.file.as_deref(),
            Some(Path::new("/run/secrets/scim"))
        );
    }

    #[test]
    fn a_token_in_the_file_is_refused() {
        let err = Config::from_toml(
            r#"
            [netskope]
            tenant_url = "https://acme.goskope.com"
            token = "abc123-very-secret"
            "#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token"), "{err}");
        assert!(!err.contains("abc123-very-secret"), "{err}");
    }

    #[test]
    fn env_overrides_reach_every_section() {
        // Keys that no other test asserts on, since tests run in parallel in one process.
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("OFFBOARDER_KAFKA__CONNECT_TIMEOUT", "7s");
            std::env::set_var("OFFBOARDER_PIPELINE__QUARANTINE_MEMORY", "2h");
        }
        let c = Config::from_toml("[kafka]\nconnect_timeout = \"1s\"\n").unwrap();
        unsafe {
            std::env::remove_var("OFFBOARDER_KAFKA__CONNECT_TIMEOUT");
            std::env::remove_var("OFFBOARDER_PIPELINE__QUARANTINE_MEMORY");
        }
        assert_eq!(c.kafka.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.pipeline.quarantine_memory, Duration::from_secs(7200));
    }

    #[test]
    fn typos_are_errors() {
        assert!(Config::from_toml("[netskope]\ntenant_ulr = \"https://x\"\n").is_err());
        assert!(Config::from_toml("[netskop]\n").is_err());
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::from_toml(include_str!("../offboarder.example.toml")).unwrap();
        let e = c.netskope.endpoints().unwrap();
        assert_eq!(e.scim_base.as_str(), "https://acme.goskope.com/api/v2/scim");
        c.kafka.validate().unwrap();
        c.pipeline.validate().unwrap();
        c.verify.validate().unwrap();
        let policy = crate::policy::Policy::new(c.policy.clone()).unwrap();
        assert!(!policy.dry_run());
        assert_eq!(c.kafka.topics.outcomes, "offboarder.outcomes");
        assert_eq!(c.pipeline.batch_window, Duration::from_millis(200));
        c.ssf.validate().unwrap();
        c.outcomes.validate().unwrap();
        assert!(!c.ssf.enabled(), "the example's transmitters are comments");
        // Its values are the defaults it says they are.
        let d = crate::ssf::SsfConfig::default();
        assert_eq!(
            (
                c.ssf.listen,
                c.ssf.max_age,
                c.ssf.replay_capacity,
                c.ssf.max_body_bytes
            ),
            (d.listen, d.max_age, d.replay_capacity, d.max_body_bytes)
        );
        assert_eq!(
            (c.ssf.jwks_refresh, c.ssf.jwks_min_refetch, c.ssf.path),
            (d.jwks_refresh, d.jwks_min_refetch, d.path)
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/offboarder.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/offboarder.toml"));
    }
}
