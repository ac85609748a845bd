//! Bearer-token authentication for the gRPC services.

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Compares in time that depends only on the lengths, so a caller cannot
/// learn a token byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Server side: what a service demands of its callers.
#[derive(Clone)]
pub enum Access {
    /// `authorization: Bearer <token>` must match.
    Token(std::sync::Arc<SecretString>),
    /// Anyone may call (trusted network, or explicit development mode).
    Open,
    /// Nobody may call: no token was configured and open access was not asked for.
    Closed(&'static str),
}

/// Server interceptor enforcing an `Access`.
#[derive(Clone)]
pub struct RequireToken {
    access: Access,
}

impl RequireToken {
    pub fn new(access: Access) -> Self {
        Self { access }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match &self.access {
            Access::Open => Ok(req),
            Access::Closed(why) => Err(Status::permission_denied(*why)),
            Access::Token(expected) => {
                let given = req.metadata().get("authorization").ok_or_else(|| {
                    Status::unauthenticated("missing authorization: Bearer <token>")
                })?;
                let token = given
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("authorization must be: Bearer <token>")
                    })?;
                if constant_time_eq(token.as_bytes(), expected.expose_secret().as_bytes()) {
                    Ok(req)
                } else {
                    Err(Status::unauthenticated("invalid token"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(access: Access, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        RequireToken::new(access)
            .call(req)
            .map(|_| ())
            .map_err(|s| s.code())
    }

    #[test]
    fn tokens_are_checked() {
        let t = || Access::Token(std::sync::Arc::new(SecretString::from("s3cret")));
        assert_eq!(call(t(), Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            call(t(), Some("Bearer s3creT")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(t(), Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(t(), None), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(Access::Open, None), Ok(()));
        assert_eq!(
            call(Access::Closed("no"), Some("Bearer x")),
            Err(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
