//! The one back-off every loop that waits out a failing store uses (the
//! issue batcher, preload jobs and their callers, the finalizer): pauses
//! that double from a first one up to a cap, cut short by a stop signal.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The next pause (each twice the one before, up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Sleeps the next pause; false when `stop` fired first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(20), ms(100));
        let pauses: Vec<Duration> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [ms(20), ms(40), ms(80), ms(100), ms(100)]);
    }

    #[tokio::test]
    async fn a_stop_cuts_the_wait_short() {
        let stop = CancellationToken::new();
        stop.cancel();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(!b.wait(&stop).await);
    }
}
