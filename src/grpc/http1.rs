//! gRPC-Web over HTTP/1.1: each request's body is read whole before the
//! call is served. An answer given without reading the body (a refused
//! token is answered before it) makes hyper close the connection, and a
//! client that reuses its keep-alive connection for the next call (Node's
//! agent does) then fails that call with EPIPE. gRPC-Web calls are unary,
//! their bodies one message: reading it first costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::future::Either;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub struct ReadWholeLayer {
    /// Largest message accepted (`max_message_bytes`): a body is read up
    /// to it and its frame header; a longer one is passed on cut there,
    /// and the call is refused by its declared length (OUT_OF_RANGE).
    pub max_message: usize,
}

impl<S> Layer<S> for ReadWholeLayer {
    type Service = ReadWhole<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadWhole {
            inner,
            max_message: self.max_message,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadWhole<S> {
    inner: S,
    max_message: usize,
}

impl<S> ReadWhole<S> {
    /// How much of `req`'s body to read first: gRPC-Web over HTTP/1.1
    /// only (base64 text takes 4 bytes for 3); None for anything else.
    fn limit<B>(&self, req: &http::Request<B>) -> Option<usize> {
        if req.version() >= http::Version::HTTP_2 {
            return None;
        }
        let kind = req
            .headers()
            .get(http::header::CONTENT_TYPE)?
            .to_str()
            .ok()?;
        let framed = self.max_message + 5;
        if kind.starts_with("application/grpc-web-text") {
            Some(framed.div_ceil(3) * 4)
        } else if kind.starts_with("application/grpc-web") {
            Some(framed)
        } else {
            None
        }
    }
}

impl<S> Service<http::Request<Body>> for ReadWhole<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    /// gRPC over HTTP/2 (every call but gRPC-Web's) goes straight through.
    type Future = Either<
        S::Future,
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(limit) = self.limit(&req) else {
            return Either::Left(self.inner.call(req));
        };
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let mut read = BytesMut::new();
            while read.len() < limit {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            read.extend_from_slice(&data);
                        }
                    }
                    _ => break,
                }
            }
            if read.len() > limit {
                // Whole base64 quads, so the frame header decodes.
                read.truncate(limit - limit % 4);
            }
            let body = Body::new(Full::new(read.freeze()));
            inner.call(http::Request::from_parts(parts, body)).await
        }))
    }
}
