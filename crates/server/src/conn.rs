//! Connections: accepting them, serving HTTP/1.1 and HTTP/2 (h2c, by prior knowledge) on
//! hyper, and the limits that keep hostile or broken clients from holding the server:
//!
//! - a cap on open connections; past it a connection is answered `503` (OpenAI's error
//!   shape) and closed at once, so half-open sockets cannot use up the file descriptors;
//! - a deadline for a request's headers (hyper's `header_read_timeout`), which also closes
//!   a connection that never sends a byte;
//! - an idle timeout: a connection with no traffic for that long is closed once no request
//!   is in flight (a request still generating is never cut by it).
//!
//! Body deadlines are per request, in `http::read_body`. Shutdown: [`serve_until_signal`]
//! stops accepting at SIGTERM or SIGINT, lets every connection finish what it is doing up to
//! a deadline, then has the engine end what is left with an error (streams get an error
//! event and `[DONE]`). A second signal ends at once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::engine::EngineHandle;
use crate::error::ApiError;

/// Connection limits and deadlines (`gptoss serve` flags).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// A request's headers must arrive within this long.
    pub header_timeout: Duration,
    /// A request's body must arrive within this long (else 408).
    pub body_timeout: Duration,
    /// A connection with no traffic for this long is closed when no request is in flight.
    pub idle_timeout: Duration,
    /// At shutdown, how long requests in flight may take to finish.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: crate::http::DEFAULT_BODY_TIMEOUT,
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// File descriptors kept back from connections: the model's files, the engine, the runtime.
const RESERVED_FDS: usize = 64;

/// The connection cap that fits the process's file-descriptor limit, raising the soft limit
/// to the hard one first (as servers do). With a cap above the limit, half-open connections
/// would use up the descriptors before the cap refused any, and `accept` would fail instead.
pub fn fit_fd_limit(max_connections: usize) -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return max_connections;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        if lim.rlim_cur == libc::RLIM_INFINITY {
            return max_connections;
        }
        let room = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX).saturating_sub(RESERVED_FDS).max(1);
        if max_connections > room {
            eprintln!(
                "note: --max-connections {max_connections} lowered to {room}: the file-descriptor limit is {} \
                 (ulimit -n) and {RESERVED_FDS} are kept for the server",
                lim.rlim_cur
            );
            return room;
        }
    }
    max_connections
}

/// How serving ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// Every request in flight finished before the deadline.
    Drained,
    /// The deadline passed: this many connections were still open and their requests were
    /// ended with an error.
    Cut(usize),
    /// A second signal: this many connections were still open.
    Interrupted(usize),
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream of signal names.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Serves `app` on `listener` until SIGTERM or SIGINT, then drains (see the module docs).
pub async fn serve_until_signal(
    listener: TcpListener,
    app: Router,
    engine: EngineHandle,
    limits: Limits,
) -> io::Result<Ended> {
    let mut signals = Signals::new()?;
    let max = fit_fd_limit(limits.max_connections).clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    // Connections being served (a permit each); read at shutdown.
    let open = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let signal = loop {
        let accepted = tokio::select! {
            name = signals.next() => break name,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or a connection reset before it was taken: wait a
                // moment rather than spin, and go on.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = Conn { builder: builder.clone(), app: app.clone(), stop: stop_rx.clone(), limits };
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    conn.serve(stream).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, max));
            }
        }
    };
    drop(listener);
    let count = || open.load(Ordering::SeqCst);
    eprintln!(
        "{signal}: shutting down; no new connections, {} open and {} requests generating, given up to {} s to \
         finish (a second signal stops at once)",
        count(),
        engine.running(),
        limits.shutdown_timeout.as_secs_f64()
    );
    let _ = stop_tx.send(true);
    let all_closed = async {
        while count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::pin!(all_closed);
    tokio::select! {
        _ = &mut all_closed => return Ok(Ended::Drained),
        _ = tokio::time::sleep(limits.shutdown_timeout) => {}
        name = signals.next() => {
            let left = count();
            eprintln!("{name}: stopping now, {left} connections open");
            // Streams still get their error event and [DONE] if they can be written at once.
            engine.abort("the server is stopping now");
            let _ = tokio::time::timeout(Duration::from_millis(250), &mut all_closed).await;
            return Ok(Ended::Interrupted(left));
        }
    }
    let left = count();
    eprintln!("shutdown deadline passed with {left} connections open: ending their requests with an error");
    engine.abort("the server is shutting down");
    // The streams now send their error event and [DONE]; give them a moment to be written.
    tokio::select! {
        _ = &mut all_closed => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        name = signals.next() => eprintln!("{name}: stopping now"),
    }
    Ok(Ended::Cut(left))
}

struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    stop: watch::Receiver<bool>,
    limits: Limits,
}

impl Conn {
    async fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let io = Watched::new(stream);
        let last = io.last.clone();
        let epoch = io.epoch;
        let service = TowerToHyperService::new(self.app.clone());
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let mut tick = tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
        let mut closing = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = self.stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick(), if !closing => {
                    let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    if quiet >= idle {
                        // Closes it now if no request is in flight, else after the response.
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Over the connection cap: a 503 in OpenAI's shape, then the connection is closed.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = ApiError::unavailable(format!("the server has its limit of {max} connections open; retry shortly"))
        .with_code("too_many_connections")
        .body()
        .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// A TCP stream that notes when it last moved bytes, for the idle timeout.
struct Watched {
    io: TcpStream,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last read or write.
    last: Arc<AtomicU64>,
}

impl Watched {
    fn new(io: TcpStream) -> Self {
        Watched { io, epoch: Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
