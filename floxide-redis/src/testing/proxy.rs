//! [`FaultProxy`]: a TCP proxy in front of a Redis server that loses replies and freezes
//! connections on request, to test what a client does when the network misbehaves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy on a free local port that forwards to a server, and on request:
/// - [`cut_after_request`](Self::cut_after_request): forwards the next request whose bytes
///   contain a marker (e.g. `EVALSHA`), then closes that connection before the reply comes
///   back: the server applied the request, the client never hears of it;
/// - [`freeze_existing`](Self::freeze_existing): stops forwarding on every open connection
///   (they stay open, silently dead), while new connections work.
///
/// Dropping the proxy stops it.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The marker of the request after which to cut, if armed.
    cut_marker: std::sync::Mutex<Option<Vec<u8>>>,
    /// Requests cut so far.
    cuts: AtomicU64,
    /// Connections opened before this generation are frozen.
    frozen_below: AtomicU64,
    next_connection: AtomicU64,
    stopped: AtomicBool,
    /// Milliseconds every reply is held before it is forwarded.
    reply_delay_ms: AtomicU64,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:<target_port>`.
    ///
    /// # Errors
    /// When no local port can be bound.
    pub async fn start(target_port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, target_port, Arc::clone(&state)));
        Ok(FaultProxy {
            port,
            state,
            accept,
        })
    }

    /// `redis://127.0.0.1:<port>/`: connect here instead of to the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Arms a cut: the next request containing `marker` is forwarded, and its connection
    /// closed before the reply.
    pub fn cut_after_request(&self, marker: &[u8]) {
        *self
            .state
            .cut_marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(marker.to_vec());
    }

    /// How many requests were cut so far.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Holds every reply for `delay` before forwarding it (a slow network), until set to zero.
    pub fn delay_replies(&self, delay: std::time::Duration) {
        self.state
            .reply_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Freezes every connection open now: nothing more goes through them in either
    /// direction, and they are not closed. Connections opened later work.
    pub fn freeze_existing(&self) {
        let next = self.state.next_connection.load(Ordering::SeqCst);
        self.state.frozen_below.store(next, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target_port: u16, state: Arc<State>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
            continue;
        };
        let generation = state.next_connection.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(pump_pair(client, server, generation, Arc::clone(&state)));
    }
}

/// Forwards between a client and the server until either side closes, a cut, or the stop.
async fn pump_pair(client: TcpStream, server: TcpStream, generation: u64, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let frozen = |state: &State| generation < state.frozen_below.load(Ordering::SeqCst);
    // Set when this connection's request was cut: its reply must not reach the client.
    let cutting = Arc::new(AtomicBool::new(false));
    let upstream = {
        let state = Arc::clone(&state);
        let cutting = Arc::clone(&cutting);
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if frozen(&state) || state.stopped.load(Ordering::SeqCst) {
                    // A frozen connection swallows what it gets, forever.
                    std::future::pending::<()>().await;
                }
                let cut = {
                    let mut marker = state
                        .cut_marker
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let hit = marker
                        .as_deref()
                        .is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == m));
                    if hit {
                        *marker = None;
                    }
                    hit
                };
                if cut {
                    cutting.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if cut {
                    state.cuts.fetch_add(1, Ordering::SeqCst);
                    // Let the server read the request before the connection goes.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    return;
                }
            }
        }
    };
    let downstream = {
        let state = Arc::clone(&state);
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let delay = state.reply_delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                if cutting.load(Ordering::SeqCst) {
                    return;
                }
                if frozen(&state) || state.stopped.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    // Either direction ending (a close, a cut) ends both: dropping the halves closes them.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
