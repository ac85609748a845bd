//! OpenTelemetry export: with COUPOND_OTLP_ENDPOINT set, a server sends
//! its spans over OTLP/gRPC; the issue span carries the event, user and
//! request ids. The collector here is a real OTLP trace receiver (the
//! opentelemetry-proto service) on a free port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

use crate::common::eventually;
use crate::support::{free_port, Env, SERIAL};

/// Every span received: its name and string attributes.
type Received = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attrs = span
                    .attributes
                    .into_iter()
                    .filter_map(|kv| match kv.value?.value? {
                        Value::StringValue(v) => Some((kv.key, v)),
                        _ => None,
                    })
                    .collect();
                got.push((span.name, attrs));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_of_the_issue_path_are_exported_over_otlp_with_their_ids() {
    let _serial = SERIAL.lock().await;
    let received: Received = Arc::default();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let collector = TraceServiceServer::new(Collector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let env = Env::new().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = env
        .serve_env(
            &[],
            &[
                ("COUPOND_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ],
        )
        .await;
    let event = env.preload(10).await;
    let mut issuer =
        coupond::proto::coupon_issuer_client::CouponIssuerClient::new(env.channel().await);
    issuer
        .issue(coupond::proto::IssueRequest {
            event_id: event.clone(),
            user_id: "otlp-user".into(),
            request_id: "otlp-req".into(),
        })
        .await
        .unwrap();
    let wanted = |(name, attrs): &(String, HashMap<String, String>)| {
        name == "issue"
            && attrs.get("event_id") == Some(&event)
            && attrs.get("user_id").map(String::as_str) == Some("otlp-user")
            && attrs.get("request_id").map(String::as_str) == Some("otlp-req")
    };
    let seen = eventually(Duration::from_secs(30), || {
        let found = received.lock().unwrap().iter().any(wanted);
        async move { found }
    })
    .await;
    let names: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        seen,
        "no issue span with the ids among {} spans: {names:?}",
        names.len()
    );
    server.terminate().await;
}
