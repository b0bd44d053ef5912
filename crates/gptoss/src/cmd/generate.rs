//! `gptoss generate`: raw completion, streamed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use gptoss_engine::model::check_tokens;
use gptoss_engine::tokenizer::{StreamDecoder, CALL, END_OF_TEXT, RETURN, VOCAB_SIZE};
use gptoss_engine::{KvCache, LogitsRequest, Sampler, SamplingParams, SeqChunk, Tokenizer};

/// Prompt tokens per forward call: long prompts go through in chunks of this many.
pub const PREFILL_CHUNK: usize = 512;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder.
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
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    temperature: f32,
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0, value_name = "K")]
    top_k: usize,
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    min_p: f32,
    /// Makes sampling reproducible.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Keep going past <|return|>, <|call|> and <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"tokens": [...], "text": "..."} at the end instead of streaming.
    #[arg(long)]
    json: bool,
    /// With --json: the log-probability of each generated token and of the N most likely.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "json")]
    top_logprobs: usize,
}

pub fn run(args: Args) -> Result<()> {
    let tokenizer = Tokenizer::o200k_harmony()?;
    let prompt = super::prompt_tokens(args.prompt.as_deref(), args.tokens_file.as_deref(), &tokenizer)?;
    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
    })?;
    let model = super::load_model(&args.model)?;
    if model.config.vocab_size > VOCAB_SIZE as usize {
        bail!(
            "the model's vocabulary ({} tokens) is larger than the o200k_harmony tokenizer's ({VOCAB_SIZE})",
            model.config.vocab_size
        );
    }
    check_tokens(&prompt, model.config.vocab_size)?;
    let limit = model.config.max_context;
    if args.max_tokens > limit.saturating_sub(prompt.len()) {
        bail!(
            "prompt ({} tokens) plus --max-tokens {} exceeds the model's context of {limit} tokens",
            prompt.len(),
            args.max_tokens
        );
    }
    let mut cache = KvCache::new(&model.config, prompt.len() + args.max_tokens);
    let seq = cache.add_sequence();

    let t0 = Instant::now();
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        logits = Some(model.forward(&mut cache, &[SeqChunk { seq, tokens: chunk, logits: LogitsRequest::Last }])?);
    }
    let prompt_secs = t0.elapsed().as_secs_f64();

    let stops: &[u32] = if args.ignore_eos { &[] } else { &[RETURN, CALL, END_OF_TEXT] };
    let mut out = std::io::stdout().lock();
    let mut decoder = StreamDecoder::default();
    let (mut tokens, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
    let mut finish = "length";
    let t1 = Instant::now();
    while let Some(l) = logits.take() {
        if tokens.len() == args.max_tokens {
            break;
        }
        let sampled = sampler.sample(l.last_for(0).expect("logits of the last position"), args.top_logprobs);
        let next = sampled.token;
        if args.top_logprobs > 0 {
            logprobs.push(serde_json::json!({"token": next, "logprob": sampled.logprob, "top": sampled.top_logprobs}));
        }
        if stops.contains(&next) {
            finish = "stop";
            break;
        }
        tokens.push(next);
        let piece = decoder.push(&tokenizer, next)?;
        if !args.json {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
        }
        text += &piece;
        if tokens.len() < args.max_tokens {
            logits =
                Some(model.forward(&mut cache, &[SeqChunk { seq, tokens: &[next], logits: LogitsRequest::Last }])?);
        }
    }
    let rest = decoder.finish();
    text += &rest;
    let gen_secs = t1.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::json!({"tokens": tokens, "text": text, "finish_reason": finish});
        if args.top_logprobs > 0 {
            v["logprobs"] = logprobs.into();
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{rest}")?;
    }
    eprintln!(
        "prompt: {} tokens in {prompt_secs:.2} s ({}); generated: {} tokens in {gen_secs:.2} s ({}); finish: {finish}; {}",
        prompt.len(),
        super::rate(prompt.len(), prompt_secs),
        tokens.len(),
        super::rate(tokens.len(), gen_secs),
        super::memory_report(),
    );
    Ok(())
}
