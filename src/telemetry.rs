//! Log subscriber setup.

use tracing_subscriber::EnvFilter;

/// Quiet defaults for the chatty dependencies; `RUST_LOG` overrides all.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn,rdkafka=warn,tonic=info";

/// Installs the global subscriber writing to stderr. Safe to call twice
/// (tests do): the second call is a no-op.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
