//! `gptoss serve`: the OpenAI-compatible server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use gptoss_engine::checkpoint::Checkpoint;
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
    #[arg(long, default_value_t = 8192, value_name = "N", value_parser = super::parse_ctx)]
    ctx: usize,
    /// Memory kept for the keys and values of prompts already processed, reused by later
    /// requests that start with the same tokens (a conversation's next turn, a shared system
    /// prompt or tool list); least recently used blocks go first. 0 turns it off.
    #[arg(long, default_value = "2GiB", value_name = "SIZE", value_parser = super::parse_bytes)]
    prefix_cache_bytes: usize,
    /// Tokens per forward step: every running sequence's next token plus prompt chunks.
    #[arg(long, default_value_t = 512, value_name = "N")]
    step_tokens: usize,
    /// The model name clients use (default: gpt-oss-20b or gpt-oss-120b, from the config;
    /// else the checkpoint folder's or GGUF file's name). The Hub id and the folder's name
    /// are accepted too.
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// Instead of MODEL: random weights of that shape made in GPU memory, to measure serving
    /// without a checkpoint (needs a CUDA device; the text is meaningless).
    #[arg(long, value_enum, value_name = "SHAPE", conflicts_with = "script")]
    synth: Option<super::bench::Shape>,
    /// Answer with scripted completions instead of the model (protocol tests).
    #[arg(long, value_name = "FILE", hide = true)]
    script: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Loading the model")]
    pub load: super::ModelArgs,
}

/// The name a checkpoint is served under: what clients send for the published models
/// (`gpt-oss-20b`, `gpt-oss-120b`, told apart by their shape), else the folder's or GGUF
/// file's name.
pub fn served_name(layers: usize, experts: usize, file_name: Option<&str>) -> String {
    match (layers, experts) {
        (24, 32) => "gpt-oss-20b".into(),
        (36, 128) => "gpt-oss-120b".into(),
        _ => file_name.unwrap_or("gpt-oss").to_string(),
    }
}

/// The folder's name, or a GGUF file's name without `.gguf`.
fn file_name(p: &Path) -> Option<String> {
    let c = p.canonicalize().ok()?;
    let gguf = c.is_file() && c.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let name = if gguf { c.file_stem() } else { c.file_name() };
    name.map(|n| n.to_string_lossy().into_owned())
}

/// What `serve` says once it is ready: the name to send, and a request to paste.
fn ready_text(addr: std::net::SocketAddr, name: &str, aliases: &[String], api_key: bool) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let base = format!("http://{host}:{}/v1", addr.port());
    let also = if aliases.is_empty() { String::new() } else { format!(" (also accepted: {})", aliases.join(", ")) };
    let auth = if api_key { " -H \"Authorization: Bearer $GPTOSS_API_KEY\"" } else { "" };
    format!(
        "model name: {name}{also}\nOpenAI API: {base} (base_url for OpenAI's clients)\ntry:\n  curl {base}/chat/completions \
         -H 'Content-Type: application/json'{auth} -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \
         \"content\": \"Hello!\"}}]}}'"
    )
}

pub fn run(args: Args) -> Result<()> {
    if args.max_batch == 0 {
        crate::usage!("--max-batch must be at least 1");
    }
    let secs = |flag: &str, s: f64| {
        if s.is_finite() && s > 0.0 && s < 1e9 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!("--{flag} must be a positive number of seconds, got {s}"))
        }
    };
    if args.max_connections == 0 {
        crate::usage!("--max-connections must be at least 1");
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
    if args.step_tokens == 0 {
        crate::usage!("--step-tokens must be at least 1");
    }
    // The port first: a port in use is found before minutes of loading.
    let listener = gptoss_server::bind(&args.host, args.port).map_err(|e| {
        anyhow::anyhow!(
            "{e} (--host {} --port {}: another server may be running; pick another --port, or 0 for any free one)",
            args.host,
            args.port
        )
    })?;
    let local = listener.local_addr().context("reading the listening address")?;
    let tok = Tokenizer::o200k_harmony().context("loading the tokenizer")?;
    let engine = EngineConfig { max_batch: args.max_batch, max_queue: args.max_queue, step_tokens: args.step_tokens };
    if let Some(script) = &args.script {
        let exec = ScriptedExecutor::from_file(script, Tokenizer::o200k_harmony()?, args.ctx)?;
        let name = args.served_model_name.unwrap_or_else(|| "scripted".into());
        eprintln!("serving scripted completions from {}", script.display());
        eprintln!("{}", ready_text(local, &name, &[], args.api_key.is_some()));
        let opts = ServeOptions {
            host: args.host,
            port: args.port,
            api_key: args.api_key,
            model_name: name,
            aliases: vec![],
            engine,
            limits,
        };
        return Ok(gptoss_server::serve_on(listener, exec, tok, opts)?);
    }
    // One sequence slot per batch place: a GPU allocates its cache for exactly that many.
    let mut aliases = Vec::new();
    let (runner, name) = match args.synth {
        Some(shape) => {
            let cfg = shape.config();
            let name = served_name(cfg.num_layers, cfg.num_experts, None);
            aliases.push(shape.name().to_string());
            (super::bench::synth_runner(&cfg, args.ctx.min(cfg.max_context), args.max_batch)?, name)
        }
        None => {
            let path = resolve_model(&args.model)?;
            let config = Checkpoint::open(&path)?.config;
            if args.ctx > config.max_context {
                crate::usage!("--ctx {} is more than the model's context of {} tokens", args.ctx, config.max_context);
            }
            let hub = super::pull::hub_ref(Path::new(&args.model));
            // A Hub snapshot's folder is named after its commit: not a name anyone would send.
            let folder = if hub.is_some() { None } else { file_name(&path) };
            let name = served_name(config.num_layers, config.num_experts, folder.as_deref());
            aliases.extend(hub.map(|h| h.repo.to_string()));
            aliases.extend(folder);
            (open_runner(&path, args.ctx, args.max_batch)?, name)
        }
    };
    let name = args.served_model_name.unwrap_or(name);
    aliases.retain(|a| *a != name);
    aliases.dedup();
    let mut runner = runner;
    if !runner.set_prefix_cache_bytes(args.prefix_cache_bytes) {
        crate::note!("prefix cache: off (not available on {})", runner.device());
    } else if args.prefix_cache_bytes > 0 {
        crate::note!("prefix cache: up to {}", human_bytes(args.prefix_cache_bytes as u64));
    }
    let ctx = runner.max_context();
    // Full-attention layers grow with the context; sliding ones hold a fixed window.
    let (per_token, per_seq) = runner.config().kv_bytes();
    let worst = (per_token * ctx as u64 + per_seq) * args.max_batch as u64;
    crate::note!("context {ctx} tokens, up to {} sequences: KV cache at most {}", args.max_batch, human_bytes(worst));
    eprintln!("{}", ready_text(local, &name, &aliases, args.api_key.is_some()));
    let exec = ModelExecutor::new(runner);
    let opts = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        model_name: name,
        aliases,
        engine,
        limits,
    };
    Ok(gptoss_server::serve_on(listener, exec, tok, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_shapes_get_the_names_clients_send() {
        assert_eq!(served_name(24, 32, Some("abc123")), "gpt-oss-20b");
        assert_eq!(served_name(36, 128, None), "gpt-oss-120b");
        assert_eq!(served_name(4, 8, Some("gpt-oss-tiny")), "gpt-oss-tiny");
        assert_eq!(served_name(4, 8, None), "gpt-oss");
        let addr: std::net::SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let text = ready_text(addr, "gpt-oss-20b", &["openai/gpt-oss-20b".into()], false);
        assert!(text.contains("http://127.0.0.1:8000/v1/chat/completions"), "{text}");
        assert!(text.contains(r#""model": "gpt-oss-20b""#) && text.contains("also accepted: openai/gpt-oss-20b"));
    }
}
