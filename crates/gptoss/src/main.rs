//! `gptoss`: run OpenAI's gpt-oss models. Argument parsing and wiring only.

mod cmd;
mod interrupt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gptoss",
    version,
    about = "Run OpenAI's gpt-oss-20b and gpt-oss-120b exactly, from their published checkpoints"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Dense attention and unembedding weights: bf16 as in the checkpoint (exact), or q8,
    /// requantized at load (fewer bytes per token; accuracy cost in the README).
    #[arg(long, global = true, value_enum, default_value_t = cmd::Dense::Bf16)]
    dense: cmd::Dense,
    /// Where models run: auto (the first GPU with room for the model, else the CPU), cpu,
    /// cuda (the first GPU) or cuda:N.
    #[arg(long, global = true, env = "GPTOSS_DEVICE", default_value = "auto", value_name = "DEVICE")]
    device: cmd::Device,
    /// Use the Hugging Face cache only, never the network (as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Raw completion of a prompt (no chat format), streamed to the terminal.
    Generate(cmd::generate::Args),
    /// Negative log-likelihood of every next token of a text or token file.
    Perplexity(cmd::perplexity::Args),
    /// What a checkpoint holds: layout, config, parameter counts, memory needed.
    Inspect {
        /// Checkpoint folder (Hugging Face or OpenAI original layout), llama.cpp .gguf file, or
        /// a Hub id: what the cache holds of it, never downloading.
        model: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Context for the GPU section: whether the model fits with one sequence this long.
        #[arg(long, default_value_t = 8192, value_name = "N")]
        ctx: usize,
    },
    /// Write a random-weight checkpoint with the real names, shapes, dtypes and config.
    Synth(cmd::synth::Args),
    /// Interactive multi-turn chat in the harmony format.
    Chat(cmd::chat::ChatArgs),
    /// Ask one question; the final answer goes to stdout.
    Run(cmd::chat::RunArgs),
    /// Render a conversation (openai-harmony JSON) to tokens.
    Render(cmd::harmony::RenderArgs),
    /// Encode text with the o200k_harmony tokenizer.
    Tokenize(cmd::harmony::TokenizeArgs),
    /// Parse model output tokens into harmony messages.
    Parse(cmd::harmony::ParseArgs),
    /// Prompt-processing and generation speed (llama-bench style), against the read bandwidth.
    Bench(cmd::bench::Args),
    /// Download a model from the Hugging Face Hub into its cache; prints the checkpoint folder.
    Pull(cmd::pull::Args),
    /// Serve the OpenAI APIs (chat completions, responses, completions) with continuous batching.
    Serve(cmd::serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    cmd::set_dense(cli.dense);
    cmd::set_device(cli.device);
    cmd::pull::set_offline(cli.offline);
    let result = match cli.command {
        Command::Generate(args) => cmd::generate::run(args),
        Command::Perplexity(args) => cmd::perplexity::run(args),
        Command::Inspect { model, json, ctx } => match cmd::pull::hub_id(&model) {
            Some(repo) => cmd::pull::inspect(&repo, json, ctx),
            None => cmd::inspect::run(&model, json, ctx),
        },
        Command::Synth(args) => cmd::synth::run(args),
        Command::Chat(args) => cmd::chat::chat(args),
        Command::Run(args) => cmd::chat::run(args),
        Command::Render(args) => cmd::harmony::render(args),
        Command::Tokenize(args) => cmd::harmony::tokenize(args),
        Command::Parse(args) => cmd::harmony::parse(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Pull(args) => cmd::pull::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
