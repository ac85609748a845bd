//! The operators' wing: what coupond's commands do besides serving.
//! `reconcile` and `rebuild` read and repair the stores, `archive` moves an
//! ended event's coupons out of the way; `dead_letters`
//! lists and replays the DLQ; `preload`, `events` and `watch` are gRPC
//! clients of a running server (`client`), as any admin tool would be.

pub mod archive;
pub mod dead_letters;
pub mod events;
pub mod preload;
pub mod rebuild;
pub mod reconcile;
pub mod watch;

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::causes::{append_causes, with_causes};
use crate::client::{Admin, BearerToken};
use crate::proto;

/// How to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The coupond server.
    #[arg(
        long,
        env = "COUPOND_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// The admin token (sent as a bearer token).
    #[arg(
        long = "admin-token",
        env = "COUPOND_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// CA certificate (PEM) to trust for an https server.
    #[arg(long = "tls-ca", env = "COUPOND_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) to present to a server that requires
    /// one (mTLS), with --client-key.
    #[arg(
        long = "client-cert",
        env = "COUPOND_CLIENT_CERT",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "client-key",
        env = "COUPOND_CLIENT_KEY",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<std::path::PathBuf>,
}

/// A file the TLS configuration names, its flag in the error.
fn read_pem(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
}

/// With TLS 1.3 a server refuses a client certificate (or its absence)
/// after the handshake, so the refusal would surface at the first call as
/// "transport error": a health check makes it surface here, where we can
/// say what to do. Any answer, even an error status, means it was accepted.
async fn handshake_accepted(s: &ServerArgs, channel: &Channel) -> anyhow::Result<()> {
    let check = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    let Err(status) = check else { return Ok(()) };
    if std::error::Error::source(&status).is_none() {
        return Ok(());
    }
    let hint = match s.client_cert {
        None => "; a server that requires client certificates (mTLS) needs --client-cert and --client-key",
        Some(_) => "; is the client certificate signed by a CA the server trusts?",
    };
    anyhow::bail!(
        "TLS connection to {} refused: {}{hint}",
        s.server,
        status_text(&status)
    )
}

/// The client's TLS configuration, when the server is reached over TLS.
fn tls_config(s: &ServerArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    if s.tls_ca.is_none() && s.client_cert.is_none() {
        return Ok(None);
    }
    let mut cfg = ClientTlsConfig::new();
    if let Some(ca) = &s.tls_ca {
        cfg = cfg.ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&s.client_cert, &s.client_key) {
        let (cert, key) = (
            read_pem("--client-cert", cert)?,
            read_pem("--client-key", key)?,
        );
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(cfg))
}

pub async fn connect(s: &ServerArgs) -> anyhow::Result<Admin> {
    let mut ep = Endpoint::from_shared(s.server.clone())
        .map_err(|e| anyhow::anyhow!("--server {}: {e}", s.server))?
        .connect_timeout(Duration::from_secs(5));
    let tls = tls_config(s)?;
    let tls_on = tls.is_some();
    if let Some(cfg) = tls {
        ep = ep.tls_config(cfg)?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {}", s.server, with_causes(&e)))?;
    if tls_on {
        handshake_accepted(s, &channel).await?;
    }
    let token = BearerToken::new(s.admin_token.as_deref())
        .map_err(|e| anyhow::anyhow!("COUPOND_ADMIN_TOKEN: {e}"))?;
    Ok(crate::proto::coupon_admin_client::CouponAdminClient::with_interceptor(channel, token))
}

/// A failed call as an operator reads it: the code, the message, and the
/// causes of a transport failure (a refused client certificate).
pub fn status_text(s: &tonic::Status) -> String {
    let mut out = format!("{}: {}", code_name(s.code()), s.message());
    append_causes(&mut out, std::error::Error::source(s));
    out
}

/// A status code as the gRPC spec spells it (`INVALID_ARGUMENT`).
pub fn code_name(c: Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{c:?}").chars().enumerate() {
        if i > 0 && ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

async fn get_event(admin: &mut Admin, id: &str) -> anyhow::Result<proto::Event> {
    admin
        .get_event(proto::GetEventRequest {
            event_id: id.into(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| anyhow::anyhow!("GetEvent {id}: {}", status_text(&s)))
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(crate::proto::wire::to_datetime)
        .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_spelled_as_in_the_grpc_spec() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }
}
