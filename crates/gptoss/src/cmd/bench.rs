//! `gptoss bench`: prompt processing and generation speed in the style of llama-bench, set
//! against the machine's measured read bandwidth (decoding reads every active weight once
//! per token, so bandwidth ÷ bytes per token is the ceiling).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gptoss_engine::generator::PREFILL_CHUNK;
use gptoss_engine::profile;
use gptoss_engine::sampler::argmax;
use gptoss_engine::{KvCache, LogitsRequest, Model, SeqChunk};
use rayon::prelude::*;

#[derive(clap::Args)]
/// `--threads` and `--dense` are the global flags.
pub struct Args {
    /// Checkpoint folder or llama.cpp .gguf file.
    model: String,
    /// Prompt tokens per prompt-processing run (0 skips the test).
    #[arg(short = 'p', long = "prompt", default_value_t = 512, value_name = "N")]
    prompt: usize,
    /// Tokens generated per generation run, from an empty context (0 skips the test).
    #[arg(short = 'n', long = "gen", default_value_t = 128, value_name = "N")]
    gen: usize,
    /// Timed runs of each test, after one untimed warm-up.
    #[arg(short = 'r', long, default_value_t = 3, value_name = "N")]
    repetitions: usize,
    /// Also time each stage of the forward pass over one extra generation run.
    #[arg(long)]
    profile: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

struct Stats {
    mean: f64,
    sd: f64,
}

fn stats(rates: &[f64]) -> Stats {
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let var = if rates.len() > 1 { rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Stats { mean, sd: var.sqrt() }
}

/// Best of five parallel passes over 1 GiB, all threads reading their own slice.
fn read_bandwidth() -> f64 {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = rayon::current_num_threads();
    let per = words.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sum: u64 =
            buf.par_chunks(per).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).reduce(|| 0, u64::wrapping_add);
        black_box(sum);
        best = best.max((words * 8) as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

/// A prompt of `n` ids spread over the vocabulary (xorshift), as llama-bench uses random ones.
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn prompt_run(model: &Model, tokens: &[u32]) -> Result<Duration> {
    let mut cache = KvCache::new(&model.config, tokens.len());
    let seq = cache.add_sequence();
    let t0 = Instant::now();
    let chunks = tokens.chunks(PREFILL_CHUNK).count();
    for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
        let logits = if i + 1 == chunks { LogitsRequest::Last } else { LogitsRequest::None };
        black_box(model.forward(&mut cache, &[SeqChunk { seq, tokens: chunk, logits }])?);
    }
    Ok(t0.elapsed())
}

/// `n` greedy tokens, one forward pass each, from an empty context.
fn gen_run(model: &Model, n: usize) -> Result<Duration> {
    let mut cache = KvCache::new(&model.config, n);
    let seq = cache.add_sequence();
    let mut token = 0u32;
    let t0 = Instant::now();
    for _ in 0..n {
        let logits = model.forward(&mut cache, &[SeqChunk { seq, tokens: &[token], logits: LogitsRequest::Last }])?;
        token = logits.last_for(0).map_or(0, argmax);
    }
    Ok(t0.elapsed())
}

pub fn run(args: Args) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.prompt == 0 && args.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    let path = super::resolve_model(&args.model)?;
    let threads = rayon::current_num_threads();
    if !args.json {
        eprintln!("measuring read bandwidth ({threads} threads)...");
    }
    let bandwidth = read_bandwidth();
    let model = super::load_model(&path)?;
    let cfg = &model.config;
    let limit = cfg.max_context;
    if args.prompt > limit || args.gen > limit {
        bail!("-p {} / -n {} exceeds the model's context of {limit} tokens", args.prompt, args.gen);
    }
    let bytes_per_token = model.weights.bytes_per_token(cfg.experts_per_token);
    let prompt = prompt_ids(args.prompt, cfg.vocab_size);

    // Warm-up: pages the weights in and starts the threads.
    if args.prompt > 0 {
        prompt_run(&model, &prompt[..args.prompt.min(64)])?;
    }
    gen_run(&model, 2)?;

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..args.repetitions {
        if args.prompt > 0 {
            let secs = prompt_run(&model, &prompt)?.as_secs_f64();
            pp.push(args.prompt as f64 / secs);
        }
        if args.gen > 0 {
            let secs = gen_run(&model, args.gen)?.as_secs_f64();
            tg.push(args.gen as f64 / secs);
        }
        if !args.json {
            let last = |test: String, v: &[f64]| v.last().map_or(String::new(), |x| format!(" {test} {x:.2} tokens/s"));
            let (p, g) = (last(format!("pp{}", args.prompt), &pp), last(format!("tg{}", args.gen), &tg));
            eprintln!("run {}/{}:{p}{g}", rep + 1, args.repetitions);
        }
    }
    // Stage splits: one profiled run of each test, after the timed ones.
    let profiled = |run: &dyn Fn() -> Result<Duration>| -> Result<(Duration, Vec<(profile::Stage, Duration)>)> {
        profile::enable(true);
        let total = run();
        let totals = profile::totals();
        profile::enable(false);
        Ok((total?, totals))
    };
    let split = match args.profile && args.gen > 0 {
        true => Some(profiled(&|| gen_run(&model, args.gen))?),
        false => None,
    };
    let prompt_split = match args.profile && args.prompt > 0 {
        true => Some(profiled(&|| prompt_run(&model, &prompt))?),
        false => None,
    };

    let ceiling = bandwidth / bytes_per_token as f64;
    let (pp, tg) = ((!pp.is_empty()).then(|| stats(&pp)), (!tg.is_empty()).then(|| stats(&tg)));
    let fraction = tg.as_ref().map(|s| s.mean / ceiling);
    let kernels = format!("{:?}", model.kernels());
    let name = path.file_name().map_or_else(|| args.model.clone(), |n| n.to_string_lossy().into_owned());
    if args.json {
        let mut v = serde_json::json!({
            "model": name,
            "kernels": kernels,
            "dense": model.dense.name(),
            "threads": threads,
            "prompt_tokens": args.prompt,
            "gen_tokens": args.gen,
            "repetitions": args.repetitions,
            "prompt_tokens_per_s": pp.as_ref().map(|s| s.mean),
            "prompt_tokens_per_s_sd": pp.as_ref().map(|s| s.sd),
            "gen_tokens_per_s": tg.as_ref().map(|s| s.mean),
            "gen_tokens_per_s_sd": tg.as_ref().map(|s| s.sd),
            "read_bandwidth_gb_s": bandwidth / 1e9,
            "bytes_per_token": bytes_per_token,
            "bandwidth_limit_tokens_per_s": ceiling,
            "bandwidth_fraction": fraction,
            "peak_rss_bytes": super::peak_rss(),
        });
        let to_json = |(total, totals): &(Duration, Vec<(profile::Stage, Duration)>), n: usize| {
            totals
                .iter()
                .map(|(stage, d)| {
                    serde_json::json!({
                        "stage": stage.name(),
                        "ms_per_token": d.as_secs_f64() * 1e3 / n as f64,
                        "share": d.as_secs_f64() / total.as_secs_f64(),
                    })
                })
                .collect::<serde_json::Value>()
        };
        if let Some(s) = &split {
            v["profile"] = to_json(s, args.gen);
        }
        if let Some(s) = &prompt_split {
            v["prompt_profile"] = to_json(s, args.prompt);
        }
        println!("{v}");
        return Ok(());
    }
    println!("| model | kernels | dense | threads | test | tokens/s |");
    println!("|---|---|---|---|---|---|");
    for (test, s) in [(format!("pp{}", args.prompt), &pp), (format!("tg{}", args.gen), &tg)] {
        if let Some(s) = s {
            println!(
                "| {name} | {kernels} | {} | {threads} | {test} | {:.2} ± {:.2} |",
                model.dense.name(),
                s.mean,
                s.sd
            );
        }
    }
    println!();
    println!("read bandwidth: {:.1} GB/s (best of 5 passes over 1 GiB, {threads} threads)", bandwidth / 1e9);
    println!(
        "weights read per generated token: {} -> bandwidth limit {:.2} tokens/s",
        super::human_bytes(bytes_per_token),
        ceiling
    );
    if let (Some(s), Some(f)) = (&tg, fraction) {
        println!("generation: {:.2} tokens/s = {:.1}% of the bandwidth limit", s.mean, 100.0 * f);
    }
    if let Some(s) = &split {
        print_split(&format!("time per generated token by stage ({} tokens", args.gen), s, args.gen);
    }
    if let Some(s) = &prompt_split {
        print_split(&format!("time per prompt token by stage (pp{}", args.prompt), s, args.prompt);
    }
    println!("{}", super::memory_report());
    Ok(())
}

/// A stage table: `title` is completed with the time per token.
fn print_split(title: &str, (total, totals): &(Duration, Vec<(profile::Stage, Duration)>), n: usize) {
    let per_tok = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
    println!();
    println!("{title}, {:.2} ms/token):", per_tok(*total));
    let mut rows = totals.clone();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (stage, d) in rows {
        println!(
            "  {:<28} {:>8.2} ms  {:>5.1}%",
            stage.name(),
            per_tok(d),
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }
    let counted: Duration = totals.iter().map(|t| t.1).sum();
    println!("  {:<28} {:>8.2} ms", "other (sampling, glue)", per_tok(total.saturating_sub(counted)));
}
