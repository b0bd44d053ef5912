//! `gptoss generate`: raw completion, streamed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use gptoss_engine::generator::{GenerateOptions, ModelSource, StopReason, TokenSource};
use gptoss_engine::tokenizer::{StreamDecoder, CALL, END_OF_TEXT, RETURN, VOCAB_SIZE};
use gptoss_engine::Tokenizer;

use super::SamplingArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
    model: PathBuf,
    /// Prompt text, encoded as ordinary text (special-token look-alikes stay plain text).
    #[arg(long, conflicts_with = "tokens_file", required_unless_present = "tokens_file")]
    prompt: Option<String>,
    /// Prompt as token ids separated by whitespace or commas.
    #[arg(long, value_name = "F")]
    tokens_file: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Keep going past <|return|>, <|call|> and <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"tokens": [...], "text": "..."} at the end instead of streaming.
    #[arg(long)]
    json: bool,
    /// With --json: the log-probability of each generated token and of the N most likely.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "json")]
    top_logprobs: usize,
    #[command(flatten, next_help_heading = "Loading the model")]
    pub load: super::ModelArgs,
}

pub fn run(args: Args) -> Result<()> {
    let tokenizer = Tokenizer::o200k_harmony()?;
    let prompt = super::prompt_tokens(args.prompt.as_deref(), args.tokens_file.as_deref(), &tokenizer)?;
    let sampler = args.sampling.sampler()?;
    let path = super::resolve_model_path(&args.model)?;
    let mut runner = super::open_runner(&path, prompt.len().saturating_add(args.max_tokens), 1)?;
    let config = runner.config();
    if config.vocab_size > VOCAB_SIZE as usize {
        bail!(
            "the model's vocabulary ({} tokens) is larger than the o200k_harmony tokenizer's ({VOCAB_SIZE})",
            config.vocab_size
        );
    }
    let limit = config.max_context;
    if args.max_tokens > limit.saturating_sub(prompt.len()) {
        bail!(
            "prompt ({} tokens) plus --max-tokens {} exceeds the model's context of {limit} tokens",
            prompt.len(),
            args.max_tokens
        );
    }
    let mut source = ModelSource::new(runner.as_mut(), sampler)?;
    let stop_tokens = if args.ignore_eos { vec![] } else { vec![RETURN, CALL, END_OF_TEXT] };
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        stop_tokens: stop_tokens.clone(),
        top_logprobs: args.top_logprobs,
    };

    let mut out = std::io::stdout().lock();
    let mut decoder = StreamDecoder::default();
    let (mut tokens, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    let mut failure = None;
    let generation = source.generate(&prompt, &opts, &mut |s| {
        if stop_tokens.contains(&s.token) {
            return true; // the stop token ends the output; it is not part of it
        }
        tokens.push(s.token);
        if args.top_logprobs > 0 {
            logprobs.push(serde_json::json!({"token": s.token, "logprob": s.logprob, "top": s.top_logprobs}));
        }
        let piece = match decoder.push(&tokenizer, s.token) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(e);
                return false;
            }
        };
        text += &piece;
        // A closed stdout (piped into `head`) ends generation quietly.
        args.json || out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let rest = decoder.finish();
    text += &rest;
    let finish = if matches!(generation.stop, StopReason::Stop(_)) { "stop" } else { "length" };
    if args.json {
        let mut v = serde_json::json!({"tokens": tokens, "text": text, "finish_reason": finish});
        if args.top_logprobs > 0 {
            v["logprobs"] = logprobs.into();
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{rest}")?;
    }
    crate::note!(
        "prompt: {} tokens in {:.2} s ({}); generated: {} tokens in {:.2} s ({}); finish: {finish}; {}",
        prompt.len(),
        generation.prompt_secs,
        super::rate(prompt.len(), generation.prompt_secs),
        generation.generated,
        generation.gen_secs,
        super::rate(generation.generated, generation.gen_secs),
        super::memory_report(),
    );
    Ok(())
}
