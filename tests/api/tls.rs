use std::path::{Path, PathBuf};

use coupond::causes::with_causes;
use coupond::config::{RedisTls, Settings, TlsSettings};
use coupond::proto::coupon_issuer_client::CouponIssuerClient;
use coupond::proto::{self, IssueResult};
use coupond::startup::Application;
use coupond::store::postgres::tls::PgTarget;
use coupond::store::RedisStore;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{
    finalized_drop, isolated_settings, run_to_end, serve_settings, spawn_with, unique_tag,
    ADMIN_TOKEN,
};

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

/// A server that requires client certificates (mTLS), with the files a
/// client needs: the CA that signed the server's certificate and a client
/// certificate and key that the server accepts.
pub(crate) struct MtlsServer {
    pub port: u16,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub settings: Settings,
    stop: CancellationToken,
    dir: PathBuf,
}

impl MtlsServer {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("coupond-tls-{}", unique_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new();
        let (cert, key) = ca.leaf();
        let (client_cert, client_key) = ca.leaf();
        let (port, stop, settings) = serve_tls(TlsSettings {
            cert: Some(write(&dir, "server.pem", &cert)),
            key: Some(write(&dir, "server.key", &key)),
            client_ca: Some(write(&dir, "clients.pem", &ca.pem)),
        })
        .await;
        Self {
            port,
            ca: write(&dir, "ca.pem", &ca.pem),
            client_cert: write(&dir, "c.pem", &client_cert),
            client_key: write(&dir, "c.key", &client_key),
            settings,
            stop,
            dir,
        }
    }

    pub fn stop(self) {
        drop(self);
    }
}

/// Stops the server and removes its keys, a failed test's too.
impl Drop for MtlsServer {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let server = MtlsServer::start().await;
    let other_ca = write(&server.dir, "other.pem", &Ca::new().pem);
    let path = |p: &Path| p.display().to_string();
    let (ca_pem, other_ca_pem) = (path(&server.ca), path(&other_ca));
    let (client_cert, client_key) = (path(&server.client_cert), path(&server.client_key));
    let (port, settings) = (server.port, server.settings.clone());
    let url = format!("https://localhost:{port}");
    let events = |extra: &[&str]| {
        let base = ["events", "--server", &url, "--admin-token", ADMIN_TOKEN];
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
    server.stop();
}

/// The stack's local CA and the certificates it signed (scripts/stack.sh).
fn stack_tls(file: &str) -> String {
    let cache = std::env::var("COUPOND_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/coupond", std::env::var("HOME").expect("HOME")));
    format!("{cache}/tls/{file}")
}

/// The server and its finalizer reach PostgreSQL over TLS, verified
/// (verify-full against the stack's CA) and with a client certificate;
/// every connection of theirs is encrypted and presented the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_over_verified_tls_with_a_client_certificate() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    let plain = settings.database.url.clone();
    settings.database.url = format!(
        "{plain}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        stack_tls("ca.pem"),
        stack_tls("client.pem"),
        stack_tls("client.key")
    );
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("pg-tls");
    finalized_drop(&app, &event, 10, 4).await;

    let (db, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl), \
                 count(*) FILTER (WHERE s.client_dn = '/CN=postgres') \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (tls, plain_conns, with_cert): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(
        tls >= 2,
        "the pool's and the finalizer's connections: {tls}"
    );
    assert_eq!(plain_conns, 0, "no connection in plain text");
    assert_eq!(with_cert, tls, "each presented the client certificate");
}

/// A database URL's TLS settings: wrong ones are refused naming the cause,
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_failures_name_their_cause() {
    let tag = unique_tag();
    let settings = isolated_settings(&tag).await;
    let dir = std::env::temp_dir().join(format!("coupond-pg-tls-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let foreign_ca = write(&dir, "foreign.pem", &Ca::new().pem);
    let migrate = |query: String| {
        let url = format!("{}?{query}", settings.database.url);
        let mut c = crate::common::coupond(&settings, &["migrate"]);
        c.env("COUPOND_DATABASE_URL", url);
        run_to_end(c)
    };
    let (code, out) = migrate(format!(
        "sslmode=verify-full&sslrootcert={}",
        foreign_ca.display()
    ));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("invalid peer certificate: UnknownIssuer"),
        "{out}"
    );
    let (code, out) = migrate("sslmode=verify-full".into());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("sslmode=verify-full needs sslrootcert"),
        "{out}"
    );
    let (code, out) = migrate("sslmode=required".into());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("sslmode \"required\""), "{out}");
    // Encrypted without verification (libpq's require), as before for psql.
    let (code, out) = migrate("sslmode=require".into());
    assert_eq!(code, 0, "{out}");
    let url = |q: &str| format!("{}?{q}", settings.database.url);
    assert_eq!(encrypted(&url("sslmode=require")).await, Ok(true));
    assert_eq!(
        encrypted(&settings.database.url).await,
        Ok(false),
        "no sslmode: as before"
    );
    // verify-ca checks the chain, verify-full also the name the client asked for.
    let ca = stack_tls("ca.pem");
    let misnamed = settings
        .database
        .url
        .replacen("127.0.0.1", "wrong.invalid", 1);
    let misnamed =
        |mode: &str| format!("{misnamed}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}");
    assert_eq!(encrypted(&misnamed("verify-ca")).await, Ok(true));
    let refused = encrypted(&misnamed("verify-full")).await.unwrap_err();
    assert!(
        refused.contains("certificate not valid for name \"wrong.invalid\""),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a connection made as coupond makes them (the URL's TLS
/// settings) is encrypted, in PostgreSQL's own view.
async fn encrypted(url: &str) -> Result<bool, String> {
    let target = PgTarget::parse(url).map_err(|e| e.to_string())?;
    let pool = deadpool_postgres::Pool::builder(target.manager())
        .max_size(1)
        .build()
        .unwrap();
    let client = pool.get().await.map_err(|e| with_causes(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// The stack's Redis that speaks only TLS and wants a client certificate.
const REDIS_TLS: &str = "rediss://127.0.0.1:6380";

fn stack_redis_tls() -> RedisTls {
    RedisTls {
        ca: Some(stack_tls("ca.pem").into()),
        cert: Some(stack_tls("client.pem").into()),
        key: Some(stack_tls("client.key").into()),
    }
}

/// The server, its finalizer and preload job reach Redis over TLS, trusting
/// the stack's CA and presenting a client certificate; nothing of the
/// event lands on the plain Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_with_a_client_certificate() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    let plain = RedisStore::open(&settings.redis).unwrap();
    settings.redis.url = REDIS_TLS.into();
    settings.redis.tls = stack_redis_tls();
    let app = spawn_with(settings, tag).await;
    let event = app.event_id("redis-tls");
    finalized_drop(&app, &event, 10, 4).await;
    assert_eq!(app.redis_state(&event).await.2, 4, "issued, over TLS");
    let on_plain: i64 = redis::cmd("EXISTS")
        .arg(&app.keys(&event).queue)
        .query_async(&mut plain.conn().await.unwrap())
        .await
        .unwrap();
    assert_eq!(on_plain, 0, "the event lives on the TLS Redis only");
}

/// The same over the stack's TLS-only Redis Cluster (7101-7106: TLS on
/// the cluster bus and replication too): the cluster client learns the
/// topology over TLS, every node trusts the client certificate, and the
/// replica guard's WAIT is answered over TLS replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_over_tls_with_a_client_certificate() {
    let tag = unique_tag();
    let mut settings = isolated_settings(&tag).await;
    settings.redis.cluster = (7101..=7103)
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect();
    settings.redis.tls = stack_redis_tls();
    let dir = std::env::temp_dir().join(format!("coupond-cluster-tls-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut foreign = settings.clone();
    foreign.redis.tls.ca = Some(write(&dir, "foreign.pem", &Ca::new().pem));
    let refused = match Application::build(foreign, serve_settings()).await {
        Ok(_) => "started".to_string(),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("UnknownIssuer"), "a foreign CA: {refused}");
    let _ = std::fs::remove_dir_all(&dir);
    let app = spawn_with(settings, tag).await;
    for n in 0..3 {
        let event = app.event_id(&format!("cluster-tls-{n}"));
        finalized_drop(&app, &event, 10, 4).await;
        assert_eq!(app.redis_state(&event).await.2, 4, "issued, over TLS");
    }
}

/// What a TLS connection to Redis was refused for, in the server's own
/// start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_failures_name_their_cause() {
    let tag = unique_tag();
    let settings = isolated_settings(&tag).await;
    let dir = std::env::temp_dir().join(format!("coupond-redis-tls-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let foreign_ca = write(&dir, "foreign.pem", &Ca::new().pem);
    let start = |tls: RedisTls| {
        let mut s = settings.clone();
        s.redis.url = REDIS_TLS.into();
        s.redis.tls = tls;
        async move {
            match Application::build(s, serve_settings()).await {
                Ok(_) => "started".to_string(),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let out = start(RedisTls {
        ca: Some(foreign_ca),
        ..stack_redis_tls()
    })
    .await;
    assert!(
        out.contains("invalid peer certificate: UnknownIssuer"),
        "{out}"
    );
    let out = start(RedisTls {
        cert: None,
        key: None,
        ..stack_redis_tls()
    })
    .await;
    assert!(
        out.starts_with("redis at") && out.contains("CertificateRequired"),
        "no client certificate, no start, and why: {out}"
    );
    let out = start(RedisTls {
        key: None,
        ..stack_redis_tls()
    })
    .await;
    assert!(
        out.contains("--redis-tls-cert and --redis-tls-key go together"),
        "{out}"
    );
    assert_eq!(start(stack_redis_tls()).await, "started");
    let mut plain = settings.redis.clone();
    plain.tls = stack_redis_tls();
    let err = RedisStore::open(&plain).err().expect("refused").to_string();
    assert!(err.contains("apply to rediss:// URLs"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
