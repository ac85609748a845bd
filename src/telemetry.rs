//! Logs and traces: the tracing subscriber (text or JSON on stderr), and,
//! when an OTLP endpoint is set (`--otlp-endpoint`, `COUPOND_OTLP_ENDPOINT`),
//! OpenTelemetry export of the spans over OTLP/gRPC (off by default).

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetrySettings;

/// Quiet defaults for the chatty dependencies; `RUST_LOG` overrides all.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn,rdkafka=warn,tonic=info";

/// The trace exporter, flushed by `shutdown`.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber writing to stderr: text, or one JSON
/// object per line (with the current span's fields: event, user and
/// request ids on the issue path) when `json`; plus the OTLP exporter when
/// an endpoint is set (call from inside the
/// Tokio runtime then). Safe to call twice (tests do): the second call is a
/// no-op.
pub fn init(settings: &TelemetrySettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colour only for a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match settings.json {
        true => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        _ => fmt.boxed(),
    };
    let otlp = settings
        .otlp_endpoint
        .as_deref()
        .and_then(|endpoint| match tracer(endpoint) {
            Ok(provider) => {
                // Its own level, apart from RUST_LOG: coupond's spans are
                // exported even when the logs say only warnings.
                let spans = EnvFilter::new(&settings.otlp_filter);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("coupond"))
                    .with_filter(spans);
                let _ = PROVIDER.set(provider);
                Some(layer)
            }
            Err(e) => {
                // The exporter's error quotes the endpoint, password and all.
                let shown = crate::config::redacted_url(endpoint);
                let why = format!("{e:#}").replace(endpoint, &shown);
                eprintln!("COUPOND_OTLP_ENDPOINT {shown:?}: {why}; traces are not exported");
                None
            }
        });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otlp)
        .try_init();
}

/// An OTLP/gRPC span exporter batching on the Tokio runtime.
fn tracer(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let batch = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("coupond")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build())
}

/// Exports the spans still batched (at exit).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            eprintln!("exporting the last traces failed: {e}");
        }
    }
}
