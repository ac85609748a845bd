use std::path::{Path, PathBuf};

use coupond::config::{Settings, TlsSettings};
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use coupond::startup::Application;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{isolated_settings, run_to_end, serve_settings, unique_tag, ADMIN_TOKEN};

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

/// Starts a server with `tls`; returns its port, shutdown token and
/// settings (for the commands that call it).
async fn serve_tls(tls: TlsSettings) -> (u16, CancellationToken, Settings) {
    let tag = unique_tag();
    let mut serve = serve_settings();
    serve.tls = tls;
    let settings = isolated_settings(&tag).await;
    let app = Application::build(settings.clone(), serve).await.unwrap();
    let port = app.port();
    let token = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(token.clone()));
    (port, token, settings)
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
    let (port, stop, _) = serve_tls(tls.clone()).await;
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
    let (port, stop, _) = serve_tls(mtls).await;
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

/// The admin commands reach an mTLS server with a client certificate, and a
/// failed handshake says why instead of "transport error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_present_a_client_certificate_and_name_a_tls_failure() {
    let dir = std::env::temp_dir().join(format!("coupond-tls-{}", unique_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, other_ca) = (Ca::new(), Ca::new());
    let (cert, key) = ca.leaf();
    let (client_cert, client_key) = ca.leaf();
    let path = |name: &str, body: &str| write(&dir, name, body).display().to_string();
    let (ca_pem, other_ca_pem) = (path("ca.pem", &ca.pem), path("other.pem", &other_ca.pem));
    let (client_cert, client_key) = (path("c.pem", &client_cert), path("c.key", &client_key));
    let (port, stop, settings) = serve_tls(TlsSettings {
        cert: Some(write(&dir, "server.pem", &cert)),
        key: Some(write(&dir, "server.key", &key)),
        client_ca: Some(write(&dir, "clients.pem", &ca.pem)),
    })
    .await;
    let server = format!("https://localhost:{port}");
    let events = |extra: &[&str]| {
        let base = ["events", "--server", &server, "--admin-token", ADMIN_TOKEN];
        run_to_end(crate::common::coupond(
            &settings,
            &[&base[..], extra].concat(),
        ))
    };

    let (code, out) = events(&[
        "--tls-ca",
        &ca_pem,
        "--client-cert",
        &client_cert,
        "--client-key",
        &client_key,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("EVENT"), "the events table: {out}");

    let (code, out) = events(&["--tls-ca", &other_ca_pem]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("transport error: invalid peer certificate: "),
        "names why the server's certificate was refused: {out}"
    );

    let (code, out) = events(&["--tls-ca", &ca_pem]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("TLS connection to") && out.contains("needs --client-cert and --client-key"),
        "names the missing client certificate: {out}"
    );

    let (code, out) = events(&["--tls-ca", &ca_pem, "--client-cert", &client_cert]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--client-key"), "{out}");
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
