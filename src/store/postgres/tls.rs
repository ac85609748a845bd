//! How coupond reaches PostgreSQL: the URL's libpq TLS parameters
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) over rustls. tokio-postgres
//! alone knows only `sslmode` disable/prefer/require and brings no TLS, so a
//! managed database that requires TLS refused every connection.
//!
//! The modes mean what they mean to `psql`: `prefer` and `require` encrypt
//! without checking the server's certificate (`require` with `sslrootcert`
//! checks it like `verify-ca`), `verify-ca` checks that a CA from
//! `sslrootcert` signed it, `verify-full` also that it names the host. A URL
//! without `sslmode` connects as before: in plain text.

use std::sync::Arc;

use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgStoreError;
use crate::causes::with_causes;

/// A parsed connection target: tokio-postgres's settings and, when the URL
/// asks for TLS, the connector.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

/// The TLS parameters taken out of the URL.
#[derive(Default, Debug, PartialEq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<Self, PgStoreError> {
        let (rest, params) = split_tls_params(url);
        let mut config: tokio_postgres::Config = rest.parse()?;
        let files = [&params.root_cert, &params.cert, &params.key];
        if params.mode.is_none() && files.iter().any(|f| f.is_some()) {
            // libpq would encrypt (prefer); plain text here would be a surprise.
            return Err(settings(
                "sslrootcert, sslcert and sslkey need an sslmode (require, verify-ca or verify-full)"
                    .into(),
            ));
        }
        // libpq ignores sslmode on Unix sockets; TLS there has no host name.
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        let tls = match params.mode.as_deref() {
            None | Some("disable") => None,
            Some(_) if sockets_only => None,
            Some(mode @ ("allow" | "prefer" | "require" | "verify-ca" | "verify-full")) => {
                config.ssl_mode(match mode {
                    "allow" | "prefer" => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                Some(MakeRustlsConnect::new(client_config(mode, &params)?))
            }
            Some(other) => {
                return Err(settings(format!(
                    "sslmode {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        };
        Ok(Self { config, tls })
    }

    /// A diesel-async connection (the pool's setup).
    pub async fn diesel(&self) -> ConnectionResult<AsyncPgConnection> {
        let failed =
            |e: tokio_postgres::Error| diesel::ConnectionError::BadConnection(with_causes(&e));
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
        }
    }

    /// A deadpool-postgres manager (the tokio-postgres writers' pools).
    pub fn manager(&self) -> deadpool_postgres::Manager {
        match &self.tls {
            None => deadpool_postgres::Manager::new(self.config.clone(), NoTls),
            Some(tls) => deadpool_postgres::Manager::new(self.config.clone(), tls.clone()),
        }
    }
}

fn settings(msg: String) -> PgStoreError {
    PgStoreError::Settings(msg)
}

/// Takes the TLS parameters out of a URL's query (`postgres://…?sslmode=…`)
/// or a key=value string (`host=… sslmode=…`), leaving the rest for
/// tokio-postgres.
fn split_tls_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: String| -> bool {
        let slot = match key {
            "sslmode" => &mut params.mode,
            "sslrootcert" => &mut params.root_cert,
            "sslcert" => &mut params.cert,
            "sslkey" => &mut params.key,
            _ => return false,
        };
        *slot = Some(value);
        true
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The query starts after the credentials, which may hold a '?'.
        let from = url.rfind('@').unwrap_or(0);
        let Some(at) = url[from..].find('?').map(|i| from + i) else {
            return (url.to_owned(), params);
        };
        let (base, query) = (&url[..at], &url[at + 1..]);
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                !take(k, percent_decode_str(v).decode_utf8_lossy().into_owned())
            })
            .collect();
        let rest = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return (rest, params);
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            !take(k, v.trim_matches('\'').to_owned())
        })
        .collect();
    (kept.join(" "), params)
}

fn client_config(mode: &str, p: &TlsParams) -> Result<rustls::ClientConfig, PgStoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, &p.root_cert) {
        ("verify-ca" | "verify-full", None) => {
            return Err(settings(format!(
            "sslmode={mode} needs sslrootcert: the CA (PEM) that signed the server's certificate"
        )))
        }
        (_, None) => Arc::new(EncryptOnly(provider.clone())),
        (_, Some(path)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("sslrootcert", path)? {
                roots
                    .add(cert)
                    .map_err(|e| settings(format!("sslrootcert {path}: {e}")))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .map_err(|e| settings(format!("sslrootcert {path}: {e}")))?;
            match mode {
                "verify-full" => webpki,
                _ => Arc::new(AnyName(webpki)),
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| settings(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&p.cert, &p.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| settings(format!("sslkey {key}: {e}")))?;
            builder
                .with_client_auth_cert(read_certs("sslcert", cert)?, key)
                .map_err(|e| settings(format!("sslcert {cert}: {e}")))
        }
        (Some(_), None) => Err(settings("sslcert needs sslkey (its private key)".into())),
        (None, Some(_)) => Err(settings("sslkey needs sslcert (its certificate)".into())),
    }
}

fn read_certs(param: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, PgStoreError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| settings(format!("{param} {path}: {e}")))?;
    match certs.is_empty() {
        true => Err(settings(format!("{param} {path}: no certificate in it"))),
        false => Ok(certs),
    }
}

/// `prefer`/`require` without a root certificate: encrypted, the server's
/// certificate taken as it comes (libpq's meaning), its handshake
/// signatures still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name may differ.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, p) = split_tls_params(
            "postgres://u:p@db:5432/coupond?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/coupond?application_name=x");
        assert_eq!(p.mode.as_deref(), Some("verify-full"));
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, p) =
            split_tls_params("host=db sslmode=require sslcert=/c.pem sslkey=/c.key user=u");
        assert_eq!(rest, "host=db user=u");
        assert_eq!(
            (p.cert.as_deref(), p.key.as_deref()),
            (Some("/c.pem"), Some("/c.key"))
        );
        let (rest, p) = split_tls_params("postgres://db/coupond");
        assert_eq!(
            (rest.as_str(), p),
            ("postgres://db/coupond", TlsParams::default())
        );
        let (rest, p) = split_tls_params("postgres://app:pa?ss@db/c?sslmode=require");
        assert_eq!(rest, "postgres://app:pa?ss@db/c");
        assert_eq!(p.mode.as_deref(), Some("require"));
    }

    #[test]
    fn bad_tls_settings_name_the_parameter() {
        let err = |url: &str| {
            PgTarget::parse(url)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("postgres://db/c?sslmode=maybe").contains("sslmode \"maybe\""));
        assert!(err("postgres://db/c?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(
            err("postgres://db/c?sslmode=require&sslcert=/x.pem").contains("sslcert needs sslkey")
        );
        assert!(
            err("postgres://db/c?sslmode=verify-ca&sslrootcert=/no/such.pem")
                .contains("sslrootcert /no/such.pem")
        );
        assert!(err("postgres://db/c?sslrootcert=/ca.pem").contains("need an sslmode"));
        assert!(PgTarget::parse("postgres://db/c?sslmode=require").is_ok());
        let socket = "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/c?sslmode=prefer";
        assert!(
            PgTarget::parse(socket).unwrap().tls.is_none(),
            "no TLS on a socket"
        );
        assert!(PgTarget::parse("postgres://db/c").unwrap().tls.is_none());
    }
}
