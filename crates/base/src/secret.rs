//! Secrets (Netskope tokens, Kafka passwords) are never values in the config file. The file
//! names where each one lives: an environment variable or a file, so that secret stores,
//! Kubernetes and systemd can provide them without the config repository ever holding one.

use std::io::Read;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Largest secret file read. A real token or password is a few hundred bytes; a bigger file is a
/// mistake (a wrong path) and must not be loaded into memory whole.
const MAX_SECRET_FILE_BYTES: u64 = 16 * 1024;

/// Where a secret is read from. At most one of the two may be set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable that holds the secret.
    pub env: Option<String>,
    /// Path of a file whose content (trimmed) is the secret.
    pub file: Option<PathBuf>,
}

/// A secret could not be read. Names the setting and the place, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{which}: set either env or file, not both")]
    TwoSources { which: String },
    #[error("{which}: environment variable {var} is not set or empty")]
    EnvMissing { which: String, var: String },
    #[error("{which}: cannot read secret file {path}: {reason}")]
    File {
        which: String,
        path: String,
        reason: String,
    },
}

impl SecretSource {
    /// Reads the secret. `which` names the setting in messages (e.g. `netskope.scim_token`).
    /// With neither source set, `default_env` is read if given, else there is no secret.
    pub fn read(
        &self,
        which: &str,
        default_env: Option<&str>,
    ) -> Result<Option<SecretString>, SecretError> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Err(SecretError::TwoSources {
                which: which.into(),
            }),
            (None, Some(path)) => read_file(which, path).map(Some),
            (env, None) => {
                let Some(var) = env.as_deref().or(default_env) else {
                    return Ok(None);
                };
                match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => {
                        Ok(Some(SecretString::from(v.trim().to_string())))
                    }
                    _ => Err(SecretError::EnvMissing {
                        which: which.into(),
                        var: var.to_string(),
                    }),
                }
            }
        }
    }

    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some()
    }
}

fn read_file(which: &str, path: &Path) -> Result<SecretString, SecretError> {
    let err = |reason: String| SecretError::File {
        which: which.into(),
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(err(format!(
            "larger than {MAX_SECRET_FILE_BYTES} bytes; is this the right file?"
        )));
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(SecretString::from(secret.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn file_source(path: &Path) -> SecretSource {
        SecretSource {
            env: None,
            file: Some(path.to_path_buf()),
        }
    }

    #[test]
    fn a_secret_file_is_trimmed_and_bounded() {
        let dir = std::env::temp_dir().join(format!("offboarder-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "  tok-123\n").unwrap();
        let t = file_source(&good).read("x", None).unwrap().unwrap();
        assert_eq!(t.expose_secret(), "tok-123");

        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 20_000]).unwrap();
        assert!(matches!(
            file_source(&big).read("x", None),
            Err(SecretError::File { .. })
        ));
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(file_source(&empty).read("x", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_sources_is_an_error() {
        let src = SecretSource {
            env: Some("X".into()),
            file: Some("/nonexistent".into()),
        };
        assert_eq!(
            src.read("netskope.scim_token", None).unwrap_err(),
            SecretError::TwoSources {
                which: "netskope.scim_token".into()
            }
        );
    }

    #[test]
    fn no_source_and_no_default_is_no_secret() {
        assert!(SecretSource::default().read("x", None).unwrap().is_none());
        let missing = SecretSource::default()
            .read("x", Some("OFFBOARDER_TEST_SURELY_UNSET_VAR"))
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("OFFBOARDER_TEST_SURELY_UNSET_VAR")
        );
    }
}
