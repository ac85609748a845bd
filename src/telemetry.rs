//! Log subscriber setup.

use tracing_subscriber::EnvFilter;

/// Quiet defaults for the chatty dependencies; `RUST_LOG` overrides all.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn,rdkafka=warn,tonic=info";

/// Installs the global subscriber writing to stderr: text, or one JSON
/// object per line (with the current span's fields: event, user and
/// request ids on the issue path) when `COUPOND_LOG_FORMAT=json`. Safe to
/// call twice (tests do): the second call is a no-op.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match std::env::var("COUPOND_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        _ => builder.try_init(),
    };
}
