//! `gptoss serve`: the OpenAI APIs (chat completions, responses, completions) over one model
//! shared by every request through continuous batching.
//!
//! Two threads of control: an async runtime for connections, and the engine thread that
//! owns the model and runs the step loop. They talk through channels only: a request is a
//! job in, a stream of token events out; dropping the stream cancels the job.

pub mod chat;
pub mod completions;
pub mod conn;
pub mod constrain;
pub mod engine;
pub mod error;
pub mod executor;
pub mod fields;
pub mod http;
pub mod metrics;
pub mod output;
pub mod prompt;
pub mod responses;

use std::net::SocketAddr;
use std::sync::Arc;

pub use conn::{Ended, Limits};
pub use engine::{EngineConfig, EngineHandle};
pub use executor::{Executor, ModelExecutor, ScriptedExecutor};
use gptoss_engine::Tokenizer;

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// `None` (or empty) serves without a key.
    pub api_key: Option<String>,
    pub model_name: String,
    /// Other names requests may give for the model (the Hub id, the folder's name).
    pub aliases: Vec<String>,
    pub engine: EngineConfig,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("stopped at the shutdown deadline: {0} connections still had requests in flight, ended with an error")]
    Cut(usize),
    #[error("stopped by a second signal with {0} connections still open")]
    Interrupted(usize),
}

/// Runs the server until SIGTERM or SIGINT, then drains: no new connections, requests in
/// flight get up to `limits.shutdown_timeout` to finish, then what is left ends with an
/// error (a second signal ends at once). `Ok` when everything finished in time. Prints
/// `listening on http://ADDR` once it accepts connections (tests read the port from that
/// line when asked for port 0).
pub fn serve<E: Executor + 'static>(exec: E, tok: Tokenizer, opts: ServeOptions) -> Result<(), ServeError> {
    let listener = bind(&opts.host, opts.port)?;
    serve_on(listener, exec, tok, opts)
}

/// The listening socket, taken before a model loads so that a port in use is found at once.
pub fn bind(host: &str, port: u16) -> Result<std::net::TcpListener, ServeError> {
    let addr = format!("{host}:{port}");
    let listener = std::net::TcpListener::bind(&addr).map_err(|source| ServeError::Bind { addr, source })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`serve`] on a socket from [`bind`] (`opts.host` and `opts.port` are not used).
pub fn serve_on<E: Executor + 'static>(
    listener: std::net::TcpListener,
    exec: E,
    tok: Tokenizer,
    opts: ServeOptions,
) -> Result<(), ServeError> {
    let metrics = Arc::new(metrics::Metrics::default());
    constrain::prepare();
    let (handle, _engine_thread) = engine::start(exec, opts.engine, metrics.clone())?;
    let api_key = opts.api_key.filter(|k| !k.is_empty());
    let mut state = http::AppState::new(handle.clone(), tok, opts.model_name, api_key, metrics);
    state.body_timeout = opts.limits.body_timeout;
    state.aliases = opts.aliases;
    let state = Arc::new(state);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ended = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local: SocketAddr = listener.local_addr()?;
        println!("listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        Ok::<_, ServeError>(conn::serve_until_signal(listener, http::router(state), handle, opts.limits).await?)
    })?;
    // Blocking work (a tokenization) may still run; it is not waited for.
    runtime.shutdown_background();
    match ended {
        Ended::Drained => {
            eprintln!("shut down cleanly");
            Ok(())
        }
        Ended::Cut(n) => Err(ServeError::Cut(n)),
        Ended::Interrupted(n) => Err(ServeError::Interrupted(n)),
    }
}
