//! `gptoss serve`: the OpenAI-compatible server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use gptoss_engine::Tokenizer;
use gptoss_server::{EngineConfig, Limits, ModelExecutor, ScriptedExecutor, ServeOptions};

use super::{human_bytes, open_runner, resolve_model, DEFAULT_MODEL};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
    /// Address to listen on. Loopback by default; 0.0.0.0 exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API endpoints (also read from GPTOSS_API_KEY;
    /// set but empty means no key, as if unset).
    #[arg(long, value_name = "KEY", env = "GPTOSS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences generating together at most.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_batch: usize,
    /// Requests waiting for a batch slot at most; more get 429 with Retry-After. Requests that
    /// find a free slot never count (0: no waiting room).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_queue: usize,
    /// Connections open at once; past it a connection gets 503 and is closed.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
    /// Seconds a request's headers may take to arrive (also closes connections that send nothing).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    header_timeout: f64,
    /// Seconds a request's body may take to arrive; then 408.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    body_timeout: f64,
    /// Seconds a keep-alive connection may stay silent between requests before it is closed.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    idle_timeout: f64,
    /// At SIGTERM or SIGINT: seconds requests in flight get to finish before the rest end
    /// with an error (a second signal ends at once).
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    shutdown_timeout: f64,
    /// Context length per sequence (prompt plus completion), at most the model's 131072.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    ctx: usize,
    /// Tokens per forward step: every running sequence's next token plus prompt chunks.
    #[arg(long, default_value_t = 512, value_name = "N")]
    step_tokens: usize,
    /// The model name clients use (default: the checkpoint folder's or GGUF file's name).
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// Instead of MODEL: random weights of that shape made in GPU memory, to measure serving
    /// without a checkpoint (needs a CUDA device; the text is meaningless).
    #[arg(long, value_enum, value_name = "SHAPE", conflicts_with = "script")]
    synth: Option<super::bench::Shape>,
    /// Answer with scripted completions instead of the model (protocol tests).
    #[arg(long, value_name = "FILE", hide = true)]
    script: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if args.max_batch == 0 || args.ctx == 0 {
        anyhow::bail!("--max-batch and --ctx must be at least 1");
    }
    let secs = |flag: &str, s: f64| {
        if s.is_finite() && s > 0.0 && s < 1e9 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!("--{flag} must be a positive number of seconds, got {s}"))
        }
    };
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let limits = Limits {
        max_connections: args.max_connections,
        header_timeout: secs("header-timeout", args.header_timeout)?,
        body_timeout: secs("body-timeout", args.body_timeout)?,
        idle_timeout: secs("idle-timeout", args.idle_timeout)?,
        shutdown_timeout: secs("shutdown-timeout", args.shutdown_timeout)?,
    };
    if args.api_key.as_deref() == Some("") {
        eprintln!("note: the API key is set but empty (GPTOSS_API_KEY=): serving without a key");
    }
    let tok = Tokenizer::o200k_harmony().context("loading the tokenizer")?;
    let engine = EngineConfig { max_batch: args.max_batch, max_queue: args.max_queue, step_tokens: args.step_tokens };
    // The folder's name, or a GGUF file's name without `.gguf`.
    let name_of = |p: &std::path::Path| {
        p.canonicalize()
            .ok()
            .and_then(|c| {
                let gguf = c.is_file() && c.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
                let name = if gguf { c.file_stem() } else { c.file_name() };
                name.map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "gpt-oss".into())
    };
    if let Some(script) = &args.script {
        let exec = ScriptedExecutor::from_file(script, Tokenizer::o200k_harmony()?, args.ctx)?;
        let opts = ServeOptions {
            host: args.host,
            port: args.port,
            api_key: args.api_key,
            model_name: args.served_model_name.unwrap_or_else(|| "scripted".into()),
            engine,
            limits,
        };
        eprintln!("serving scripted completions from {}", script.display());
        return Ok(gptoss_server::serve(exec, tok, opts)?);
    }
    // One sequence slot per batch place: a GPU allocates its cache for exactly that many.
    let (runner, name) = match args.synth {
        Some(shape) => {
            let cfg = shape.config();
            (super::bench::synth_runner(&cfg, args.ctx.min(cfg.max_context), args.max_batch)?, shape.name().to_string())
        }
        None => {
            let path = resolve_model(&args.model)?;
            (open_runner(&path, args.ctx, args.max_batch)?, name_of(&path))
        }
    };
    let ctx = runner.max_context();
    // Full-attention layers grow with the context; sliding ones hold a fixed window.
    let (per_token, per_seq) = runner.config().kv_bytes();
    let worst = (per_token * ctx as u64 + per_seq) * args.max_batch as u64;
    eprintln!("context {ctx} tokens, up to {} sequences: KV cache at most {}", args.max_batch, human_bytes(worst));
    let exec = ModelExecutor::new(runner);
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        model_name: args.served_model_name.unwrap_or(name),
        engine,
        limits,
    };
    Ok(gptoss_server::serve(exec, tok, opts)?)
}
