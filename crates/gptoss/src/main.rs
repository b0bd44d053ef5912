//! `gptoss`: run OpenAI's gpt-oss models. Argument parsing and wiring only.
//!
//! Exit status: 0 success, 1 a runtime error (a file, the network, the model), 2 a usage
//! error (the command line cannot work: an unknown flag, a value out of range), found before
//! any model loads.

mod cmd;
mod interrupt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use cmd::ui::{ColorChoice, Verbosity};
use cmd::{ModelArgs, UsageError};

#[derive(Parser)]
#[command(
    name = "gptoss",
    version,
    about = "Run OpenAI's gpt-oss-20b and gpt-oss-120b exactly, from their published checkpoints",
    after_help = "MODEL is a checkpoint folder, a llama.cpp .gguf file, or a Hugging Face Hub id \
                  (openai/gpt-oss-20b, org/name@revision, https://huggingface.co/org/name), \
                  downloaded into the Hugging Face cache on first use. Default: openai/gpt-oss-20b.\n\
                  Exit status: 0 success, 1 runtime error, 2 usage error (nothing was loaded)."
)]
struct Cli {
    /// Say more: what is read and decided along the way.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Say less: errors and results only (no notes, spinners or progress bars).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Colours and dimming: auto (on a terminal unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    color: ColorChoice,
    /// The model-loading flags, also taken before the command's name as in earlier versions.
    #[command(flatten)]
    outer: HiddenModelArgs,
    #[command(subcommand)]
    command: Command,
}

/// [`ModelArgs`] before the command's name: accepted, not shown (each model command lists
/// them in its own help).
#[derive(clap::Args)]
struct HiddenModelArgs {
    #[arg(long, hide = true, value_name = "N")]
    threads: Option<usize>,
    #[arg(long, hide = true, value_enum)]
    dense: Option<cmd::Dense>,
    #[arg(long, hide = true)]
    device: Option<cmd::Device>,
    #[arg(long, hide = true)]
    offline: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with the model in the terminal (multi-turn, harmony format).
    Chat(cmd::chat::ChatArgs),
    /// Ask one question; the final answer goes to stdout.
    Run(cmd::chat::RunArgs),
    /// Serve the OpenAI APIs (chat completions, responses, completions) with continuous batching.
    Serve(cmd::serve::Args),
    /// Download a model from the Hugging Face Hub into its cache; prints the checkpoint folder.
    Pull(cmd::pull::Args),
    /// The models in the Hugging Face cache: name, size, layouts, last used.
    List(cmd::list::ListArgs),
    /// Delete a model from the Hugging Face cache.
    Rm(cmd::list::RmArgs),
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
    /// Raw completion of a prompt (no chat format), streamed to the terminal.
    Generate(cmd::generate::Args),
    /// Prompt-processing and generation speed (llama-bench style), against the read bandwidth.
    Bench(cmd::bench::Args),
    /// Negative log-likelihood of every next token of a text or token file.
    Perplexity(cmd::perplexity::Args),
    /// Render a conversation (openai-harmony JSON) to tokens.
    Render(cmd::harmony::RenderArgs),
    /// Encode text with the o200k_harmony tokenizer.
    Tokenize(cmd::harmony::TokenizeArgs),
    /// Parse model output tokens into harmony messages.
    Parse(cmd::harmony::ParseArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// bash, zsh, fish, elvish or powershell. For bash:
        /// gptoss completions bash > ~/.local/share/bash-completion/completions/gptoss
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The model-loading flags of the commands that load a model.
    fn model_args(&self) -> Option<&ModelArgs> {
        match self {
            Command::Chat(a) => Some(a.model_args()),
            Command::Run(a) => Some(a.model_args()),
            Command::Serve(a) => Some(&a.load),
            Command::Generate(a) => Some(&a.load),
            Command::Bench(a) => Some(&a.load),
            Command::Perplexity(a) => Some(&a.load),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    cmd::ui::set(verbosity, cli.color);
    let outer = ModelArgs {
        threads: cli.outer.threads,
        dense: cli.outer.dense,
        device: cli.outer.device,
        offline: cli.outer.offline,
    };
    let mut load = cli.command.model_args().map_or(outer.clone(), |a| a.or(&outer));
    if let Command::Pull(a) = &cli.command {
        load.offline |= a.offline;
    }
    let result = load.apply().and_then(|()| dispatch(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
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
        Command::List(args) => cmd::list::list(args),
        Command::Rm(args) => cmd::list::rm(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "gptoss", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
