//! The crypto provider behind every https client the worker builds: the Netskope client, the
//! admin CLI's client and the OTLP exporter.
//!
//! rustls runs on *ring* here, not on aws-lc-rs, which is reqwest's default. librdkafka already
//! needs OpenSSL built from source. aws-lc-rs would add a second C crypto library to compile:
//! about 35 s of a new machine's first build, on the path to the demo's first outcome. ring
//! compiles in a few seconds.
//!
//! Without its default provider, reqwest panics in `ClientBuilder::build` unless a provider is
//! installed for the whole process. So every place that builds a client calls [`install`]
//! first, tests and benches included; one that forgets fails at once, with reqwest's panic
//! naming the missing provider.

use std::sync::Once;

/// Installs ring as the process's rustls provider. The first call does it; later calls do
/// nothing. If another part of the process installed a provider first, that one stays.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already, which is all a client needs.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_builds_once_the_provider_is_installed() {
        install();
        install();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        assert!(reqwest::Client::builder().build().is_ok());
    }
}
