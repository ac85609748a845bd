//! The one shutdown signal every task listens to.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// The process's shutdown signal: a token cancelled on the first SIGTERM or
/// SIGINT (ctrl-c), which every long-running task gets a clone (or a child)
/// of, and the listener that cancels it. The caller runs the listener
/// beside its work (it never ends by itself): no task of its own. A second
/// signal exits at once, with a log line: the operator means it.
pub fn signals() -> (CancellationToken, impl Future<Output = ()> + Send + 'static) {
    let token = CancellationToken::new();
    let t = token.clone();
    let listener = async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining (a second signal exits at once)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting now, without draining");
        eprintln!("coupond: second signal: exiting now, without draining");
        std::process::exit(130);
    };
    (token, listener)
}

/// Runs `work` until it ends, with the signal listener beside it: `work`
/// gets the token.
pub async fn until_signalled<T, F>(work: impl FnOnce(CancellationToken) -> F) -> T
where
    F: Future<Output = T>,
{
    let (token, listener) = signals();
    let work = work(token);
    tokio::pin!(listener);
    tokio::select! {
        out = work => out,
        _ = &mut listener => unreachable!("the listener exits the process on a second signal"),
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
