use std::path::{Path, PathBuf};

use coupond::config::TlsSettings;
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use coupond::startup::Application;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{isolated_settings, serve_settings, unique_tag};

/// A CA that signs leaf certificates for "localhost".
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate pem, key pem) for localhost.
    fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

/// Starts a server with `tls`; returns its port and shutdown token.
async fn serve_tls(tls: TlsSettings) -> (u16, CancellationToken) {
    let tag = unique_tag();
    let mut serve = serve_settings();
    serve.tls = tls;
    let app = Application::build(isolated_settings(&tag).await, serve)
        .await
        .unwrap();
    let port = app.port();
    let token = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(token.clone()));
    (port, token)
}

/// One Issue over TLS trusting `ca`, optionally presenting a client identity.
async fn call(port: u16, ca: &str, client: Option<&(String, String)>) -> Result<i32, String> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(cfg)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    CouponIssuerClient::new(ch)
        .issue(proto::IssueRequest {
            event_id: "no-such-event".into(),
            user_id: "u".into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().result)
        .map_err(|s| format!("call: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_mtls_requires_a_client_certificate() {
    let dir = std::env::temp_dir().join(format!("coupond-tls-{}", unique_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, other_ca) = (Ca::new(), Ca::new());
    let (cert, key) = ca.leaf();
    let tls = TlsSettings {
        cert: Some(write(&dir, "server.pem", &cert)),
        key: Some(write(&dir, "server.key", &key)),
        client_ca: None,
    };
    let (port, stop) = serve_tls(tls.clone()).await;
    assert_eq!(
        call(port, &ca.pem, None).await,
        Ok(IssueResult::EventNotFound as i32)
    );
    assert!(
        call(port, &other_ca.pem, None).await.is_err(),
        "a client trusting another CA refuses the server"
    );
    stop.cancel();

    let mtls = TlsSettings {
        client_ca: Some(write(&dir, "clients.pem", &ca.pem)),
        ..tls
    };
    let (port, stop) = serve_tls(mtls).await;
    let good_client = ca.leaf();
    let foreign_client = other_ca.leaf();
    assert_eq!(
        call(port, &ca.pem, Some(&good_client)).await,
        Ok(IssueResult::EventNotFound as i32)
    );
    assert!(
        call(port, &ca.pem, None).await.is_err(),
        "no client certificate, no call"
    );
    assert!(
        call(port, &ca.pem, Some(&foreign_client)).await.is_err(),
        "a client certificate from another CA is refused"
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
