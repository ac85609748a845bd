//! The client side of coupond's own API, for its commands and for tests:
//! the bearer-token interceptor and the admin client type.

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::proto::coupon_admin_client::CouponAdminClient;

/// A CouponAdmin client that sends the admin token.
pub type Admin = CouponAdminClient<InterceptedService<Channel, BearerToken>>;

/// Client side: adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self(
            token
                .map(|t| format!("Bearer {t}").parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("token must be printable ASCII"))?,
        ))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
