//! `gptoss perplexity`: the NLL of every next token.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gptoss_engine::model::check_tokens;
use gptoss_engine::sampler::log_sum_exp;
use gptoss_engine::{EngineError, LogitsRequest, Runner, SeqChunk, SeqId, Tokenizer};

use gptoss_engine::generator::PREFILL_CHUNK;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
    model: PathBuf,
    /// Text file, encoded as ordinary text.
    #[arg(long, conflicts_with = "tokens_file", required_unless_present = "tokens_file")]
    file: Option<PathBuf>,
    /// Token ids separated by whitespace or commas.
    #[arg(long, value_name = "F")]
    tokens_file: Option<PathBuf>,
    /// Score in independent windows of this many tokens (default: the model's context); the
    /// first token of each window has no context and is not scored.
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Print {"nll": [...], "perplexity": x} instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten, next_help_heading = "Loading the model")]
    pub load: super::ModelArgs,
}

pub fn run(args: Args) -> Result<()> {
    let tokenizer = Tokenizer::o200k_harmony()?;
    let tokens = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            tokenizer.encode(&text)
        }
        None => super::prompt_tokens(None, args.tokens_file.as_deref(), &tokenizer)?,
    };
    if tokens.len() < 2 {
        bail!("need at least 2 tokens to score a next token, got {}", tokens.len());
    }
    if args.ctx.is_some_and(|w| w < 2) {
        bail!("--ctx must be at least 2");
    }
    // No window is longer than the input, so neither need the cache be.
    let cache_len = args.ctx.unwrap_or(usize::MAX).min(tokens.len());
    let mut runner = super::open_runner(&super::resolve_model_path(&args.model)?, cache_len, 1)?;
    let limit = runner.config().max_context;
    let window = args.ctx.unwrap_or(limit);
    if window > limit {
        bail!("--ctx must be between 2 and the model's context of {limit}");
    }

    check_tokens(&tokens, runner.config().vocab_size)?;

    let t0 = Instant::now();
    let mut nll = Vec::with_capacity(tokens.len());
    // A trailing window of one token has no next token to score.
    for win in tokens.chunks(window).filter(|w| w.len() >= 2) {
        let seq = runner.add_sequence()?;
        let scored = score(runner.as_mut(), seq, win, &mut nll);
        runner.remove_sequence(seq);
        scored?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mean = nll.iter().sum::<f64>() / nll.len().max(1) as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"nll": nll, "mean_nll": mean, "perplexity": mean.exp(), "tokens": tokens.len()})
        );
    } else {
        println!("tokens: {}  scored: {}  mean NLL: {mean:.6}  perplexity: {:.4}", tokens.len(), nll.len(), mean.exp());
    }
    eprintln!(
        "{} tokens in {secs:.2} s ({}); {}",
        tokens.len(),
        super::rate(tokens.len(), secs),
        super::memory_report()
    );
    Ok(())
}

/// Appends the NLL of every next token of `win` (all but its first) to `nll`.
fn score(runner: &mut dyn Runner, seq: SeqId, win: &[u32], nll: &mut Vec<f64>) -> Result<(), EngineError> {
    for chunk in win.chunks(PREFILL_CHUNK) {
        let logits = runner.forward(&[SeqChunk { seq, tokens: chunk, logits: LogitsRequest::All }])?;
        for (i, row) in logits.rows.iter().enumerate() {
            if let Some(&target) = win.get(row.position + 1) {
                let z = logits.row(i);
                nll.push((log_sum_exp(z) - z[target as usize]) as f64);
            }
        }
    }
    Ok(())
}
