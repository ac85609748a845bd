//! gRPC-Web over HTTP/1.1: each request's body is read whole before the
//! call is served. An answer given without reading the body (a refused
//! token is answered before it) makes hyper close the connection, and a
//! client that reuses its keep-alive connection for the next call (Node's
//! agent does) then fails that call with EPIPE. gRPC-Web calls are unary,
//! their bodies one message: reading it first costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub struct ReadWholeLayer {
    /// Largest body read (the largest message and its frame header); a
    /// longer one is passed on cut off, and the call fails decoding it.
    pub limit: usize,
}

impl<S> Layer<S> for ReadWholeLayer {
    type Service = ReadWhole<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadWhole {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadWhole<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<http::Request<Body>> for ReadWhole<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.version() >= http::Version::HTTP_2 {
            return Box::pin(self.inner.call(req));
        }
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(all) => all.to_bytes(),
                Err(_) => bytes::Bytes::new(),
            };
            let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            inner.call(req).await
        })
    }
}
