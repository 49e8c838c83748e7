//! TLS to a real broker, end to end: the worker consumes and produces through a TLS listener
//! whose certificate a test CA signed, with `ssl.ca.location` naming that CA; with another CA
//! it stops at start and says why.
//!
//! The broker is tansu (`scripts/test` sets `TANSU` to its binary). tansu speaks plaintext, so
//! each test starts one of its own behind a TLS-terminating proxy (tokio-rustls) and has tansu
//! advertise the proxy as its listener: the proxy's address is the only one any client learns,
//! from the bootstrap list or from metadata. The CA and the broker's certificate (for
//! 127.0.0.1, checked by librdkafka's default hostname verification) are made by rcgen for
//! each test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use netskope_sim::SimArgs;
use offboarder::pipeline::{Pipeline, PipelineError};
use offboarder::sandbox::{self, Sandbox};

const WAIT: Duration = Duration::from_secs(60);

/// A CA of the test's own, as PEM, and an issuer to sign with.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A directory of the test's own under the system's temporary directory.
fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "offboarder-tls-{label}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// tansu behind a TLS proxy. Both stop when this is dropped.
struct TlsBroker {
    bootstrap: String,
    ca_file: PathBuf,
    handshakes: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
    _tansu: tokio::process::Child,
    proxy: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

impl TlsBroker {
    async fn start(tansu: &str, dir: &Path) -> Self {
        let ca = ca("offboarder test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("broker certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy_addr = proxy_listener.local_addr().expect("proxy addr");
        let tansu_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let log = std::fs::File::create(dir.join("tansu.log")).expect("tansu log");
        let child = tokio::process::Command::new(tansu)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{tansu_port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{proxy_addr}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", tansu_port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen on {tansu_port}; see {}",
                dir.join("tansu.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let proxy = tokio::spawn({
            let (ok, failed) = (handshakes.clone(), failed_handshakes.clone());
            async move {
                while let Ok((client, _)) = proxy_listener.accept().await {
                    let (acceptor, ok, failed) = (acceptor.clone(), ok.clone(), failed.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(client).await else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        ok.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut upstream) =
                            TcpStream::connect(("127.0.0.1", tansu_port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                        }
                    });
                }
            }
        });
        Self {
            bootstrap: proxy_addr.to_string(),
            ca_file,
            handshakes,
            failed_handshakes,
            _tansu: child,
            proxy,
        }
    }

    async fn sandbox(&self, users: usize) -> Sandbox {
        let ca = self.ca_file.to_string_lossy().into_owned();
        let sim = SimArgs {
            users,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        };
        Sandbox::start_on_broker_with(
            &self.bootstrap,
            &[("security.protocol", "ssl"), ("ssl.ca.location", &ca)],
            sim,
            1,
        )
        .await
        .expect("sandbox on the TLS listener")
    }
}

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

fn finals(read: &[rdkafka::message::OwnedMessage]) -> Vec<Value> {
    read.iter()
        .filter_map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
        .filter(|o| {
            matches!(
                o["status"].as_str(),
                Some("verified" | "unverified" | "failed" | "skipped")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_consumes_and_produces_over_tls_with_the_brokers_ca() {
    let Some(tansu) = support::peer("TANSU") else {
        return;
    };
    let dir = scratch("ok");
    let broker = TlsBroker::start(&tansu, &dir).await;
    let sandbox = broker.sandbox(5).await;
    let records: Vec<_> = (1..=3)
        .map(|n| {
            let id = format!("hr-tls-{n}");
            (
                sandbox.topics.terminations.clone(),
                user(n),
                support::event(&id, &user(n), json!({})),
            )
        })
        .collect();
    sandbox.publish(&records).await.expect("publish over TLS");
    let config = support::broker_config(&sandbox, "tls-ok");
    assert_eq!(
        config
            .kafka
            .properties
            .get("security.protocol")
            .map(String::as_str),
        Some("ssl")
    );

    let before = broker.handshakes.load(Ordering::SeqCst);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client)
        .await
        .expect("pipeline over TLS");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let read = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| finals(r).len() >= 3)
        .await
        .expect("read outcomes");
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");

    let finals = finals(&read);
    assert_eq!(finals.len(), 3, "{finals:#?}");
    for o in &finals {
        assert_eq!(o["status"], "verified", "{o:#}");
    }
    for n in 1..=3 {
        assert!(!sandbox.sim.user(&user(n)).expect("user").active, "{n}");
    }
    assert!(sandbox.sim.user(&user(4)).expect("user").active);
    assert_eq!(summary.received, 3);
    // The worker's own consumer and producer connected through the proxy: the only address
    // they could know.
    let worker_handshakes = broker.handshakes.load(Ordering::SeqCst) - before;
    assert!(worker_handshakes >= 2, "{worker_handshakes} TLS handshakes");
    assert_eq!(broker.failed_handshakes.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_another_ca_the_worker_stops_at_start_and_says_why() {
    let Some(tansu) = support::peer("TANSU") else {
        return;
    };
    let dir = scratch("wrong-ca");
    let broker = TlsBroker::start(&tansu, &dir).await;
    let sandbox = broker.sandbox(1).await;
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, ca("some other CA").pem()).expect("write CA");
    let mut config = support::broker_config(&sandbox, "tls-wrong-ca");
    config.kafka.connect_timeout = Duration::from_secs(3);
    config.kafka.properties.insert(
        "ssl.ca.location".into(),
        other.to_string_lossy().into_owned(),
    );

    let client = sandbox.client(&config).expect("client");
    let error = match Pipeline::new(&config, client).await {
        Ok(_) => panic!("a worker started although the brokers' certificate does not verify"),
        Err(e) => e,
    };
    let text = error.to_string();
    assert!(matches!(error, PipelineError::Config(_)), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("ssl.ca.location"), "{text}");
    assert!(broker.failed_handshakes.load(Ordering::SeqCst) > 0);
    println!("the worker's error: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
