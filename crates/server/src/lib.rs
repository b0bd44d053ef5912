//! `gptoss serve`: the OpenAI APIs (chat completions, responses, completions) over one model
//! shared by every request through continuous batching.
//!
//! Two threads of control: an async runtime for connections, and the engine thread that
//! owns the model and runs the step loop. They talk through channels only: a request is a
//! job in, a stream of token events out; dropping the stream cancels the job.

pub mod chat;
pub mod completions;
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

pub use engine::{EngineConfig, EngineHandle};
pub use executor::{Executor, ModelExecutor, ScriptedExecutor};
use gptoss_engine::Tokenizer;

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub model_name: String,
    /// Other names requests may give for the model (the Hub id, the folder's name).
    pub aliases: Vec<String>,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until Ctrl-C. Prints `listening on http://ADDR` once it accepts
/// connections (tests read the port from that line when asked for port 0).
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
    let (handle, _engine_thread) = engine::start(exec, opts.engine, metrics.clone())?;
    let mut state = http::AppState::new(handle, tok, opts.model_name, opts.api_key, metrics);
    state.aliases = opts.aliases;
    let state = Arc::new(state);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local: SocketAddr = listener.local_addr()?;
        println!("listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
