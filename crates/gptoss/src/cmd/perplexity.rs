//! `gptoss perplexity`: the NLL of every next token.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gptoss_engine::model::check_tokens;
use gptoss_engine::sampler::log_sum_exp;
use gptoss_engine::{KvCache, LogitsRequest, SeqChunk, Tokenizer, Workspace};

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
    let model = super::load_model(&super::resolve_model_path(&args.model)?)?;
    let window = args.ctx.unwrap_or(model.config.max_context);
    if window < 2 || window > model.config.max_context {
        bail!("--ctx must be between 2 and the model's context of {}", model.config.max_context);
    }

    check_tokens(&tokens, model.config.vocab_size)?;

    let t0 = Instant::now();
    let mut nll = Vec::with_capacity(tokens.len());
    let mut ws = Workspace::new();
    // A trailing window of one token has no next token to score.
    for win in tokens.chunks(window).filter(|w| w.len() >= 2) {
        let mut cache = KvCache::new(&model.config, win.len());
        let seq = cache.add_sequence();
        for chunk in win.chunks(PREFILL_CHUNK) {
            let logits = model.forward_in(
                &mut ws,
                &mut cache,
                &[SeqChunk { seq, tokens: chunk, logits: LogitsRequest::All }],
            )?;
            for (i, row) in logits.rows.iter().enumerate() {
                if let Some(&target) = win.get(row.position + 1) {
                    let z = logits.row(i);
                    nll.push((log_sum_exp(z) - z[target as usize]) as f64);
                }
            }
        }
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
