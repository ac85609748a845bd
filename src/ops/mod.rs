//! The operators' wing: what coupond's commands do besides serving.
//! `reconcile` and `rebuild` read and repair the stores; `dead_letters`
//! lists and replays the DLQ; `preload`, `events` and `watch` are gRPC
//! clients of a running server (`client`), as any admin tool would be.

pub mod dead_letters;
pub mod events;
pub mod preload;
pub mod rebuild;
pub mod reconcile;
pub mod watch;

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;

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
}

pub async fn connect(s: &ServerArgs) -> anyhow::Result<Admin> {
    let mut ep = Endpoint::from_shared(s.server.clone())
        .map_err(|e| anyhow::anyhow!("--server {}: {e}", s.server))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &s.tls_ca {
        let pem =
            std::fs::read(ca).map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", ca.display()))?;
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", s.server))?;
    let token = BearerToken::new(s.admin_token.as_deref())
        .map_err(|e| anyhow::anyhow!("COUPOND_ADMIN_TOKEN: {e}"))?;
    Ok(crate::proto::coupon_admin_client::CouponAdminClient::with_interceptor(channel, token))
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
        .map_err(|s| anyhow::anyhow!("GetEvent {id}: {}: {}", code_name(s.code()), s.message()))
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
