//! A TCP proxy in front of Redis that can lose one reply on purpose: armed
//! with a pattern, it lets the next command containing it through, then
//! drops that connection instead of passing the reply back (the command
//! ran; its caller never hears), and holds every later command on every
//! connection until released. What the test does meanwhile happens, for
//! certain, between the lost reply and the caller's retry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

#[derive(Default)]
struct Shared {
    /// Bytes of the command whose reply is to be lost.
    armed: Mutex<Option<Vec<u8>>>,
    /// Set when a reply was lost; every command waits while it is set.
    held: AtomicBool,
    lost: Notify,
}

pub struct RedisProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    release: watch::Sender<u64>,
}

impl RedisProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (release, released) = watch::channel(0u64);
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, s.clone(), released.clone()));
            }
        });
        Self {
            addr,
            shared,
            release,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The next command containing `pattern` runs, and its reply is lost.
    pub fn lose_reply_to(&self, pattern: &[u8]) {
        *self.shared.armed.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Waits until a reply was lost; commands are held from then on.
    pub async fn lost(&self) {
        let notified = self.shared.lost.notified();
        if !self.shared.held.load(Ordering::SeqCst) {
            notified.await;
        }
    }

    /// Lets held commands through.
    pub fn release(&self) {
        self.shared.held.store(false, Ordering::SeqCst);
        self.release.send_modify(|n| *n += 1);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    s: Arc<Shared>,
    released: watch::Receiver<u64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let doomed = Arc::new(AtomicBool::new(false));
    let up = {
        let (s, doomed, mut released) = (s.clone(), doomed.clone(), released);
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                while s.held.load(Ordering::SeqCst) {
                    if released.changed().await.is_err() {
                        return;
                    }
                }
                let chunk = &buf[..n];
                {
                    let mut armed = s.armed.lock().unwrap();
                    if armed.as_ref().is_some_and(|p| contains(chunk, p)) {
                        *armed = None;
                        doomed.store(true, Ordering::SeqCst);
                    }
                }
                if sw.write_all(chunk).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if doomed.load(Ordering::SeqCst) {
                // The command ran; its reply goes nowhere, the connection
                // drops, and everything after waits for the release.
                s.held.store(true, Ordering::SeqCst);
                s.lost.notify_waiters();
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending ends both: the connection drops.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
