//! `gptoss bench`: prompt processing and generation speed in the style of llama-bench, set
//! against the machine's measured read bandwidth (decoding reads every active weight once
//! per token, so bandwidth ÷ bytes per token is the ceiling).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gptoss_engine::generator::PREFILL_CHUNK;
use gptoss_engine::profile;
use gptoss_engine::sampler::argmax;
use gptoss_engine::{KvCache, LogitsRequest, Model, SeqChunk, Workspace};

#[derive(clap::Args)]
/// `--threads` and `--dense` are the global flags.
pub struct Args {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
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

/// Passes per bandwidth measurement; the best one counts.
const BANDWIDTH_PASSES: usize = 10;

/// Measures the machine's read bandwidth with every pool thread reading its own slice of
/// one buffer at the same time. Memory speed on a shared machine drifts by tens of percent
/// within minutes, so the bench measures right before and after each generation run and
/// compares each run with what the memory gave at that moment.
///
/// The buffer stays allocated (and resident) for the whole bench, so the model's own peak
/// RSS is the process's minus exactly [`BandwidthProbe::BYTES`].
struct BandwidthProbe {
    words: Vec<u64>,
}

impl BandwidthProbe {
    /// 512 MiB: far past any cache, small next to the model.
    const BYTES: usize = 512 << 20;

    fn new() -> Self {
        BandwidthProbe { words: (0..(Self::BYTES / 8) as u64).collect() }
    }

    /// Bytes per second: the best of [`BANDWIDTH_PASSES`] passes.
    fn measure(&self) -> f64 {
        let per = self.words.len().div_ceil(rayon::current_num_threads());
        let mut best = 0f64;
        for _ in 0..BANDWIDTH_PASSES {
            let t0 = Instant::now();
            let sums = rayon::broadcast(|ctx| sum_words(self.words.chunks(per).nth(ctx.index()).unwrap_or(&[])));
            black_box(sums);
            best = best.max(Self::BYTES as f64 / t0.elapsed().as_secs_f64());
        }
        best
    }
}

/// Eight independent sums, so the loop is bound by loads rather than by one add chain.
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
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
    let mut ws = Workspace::new();
    let chunks = tokens.chunks(PREFILL_CHUNK).count();
    for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
        let logits = if i + 1 == chunks { LogitsRequest::Last } else { LogitsRequest::None };
        black_box(model.forward_in(&mut ws, &mut cache, &[SeqChunk { seq, tokens: chunk, logits }])?);
    }
    Ok(t0.elapsed())
}

/// `n` greedy tokens, one forward pass each, from an empty context.
fn gen_run(model: &Model, n: usize) -> Result<Duration> {
    let mut cache = KvCache::new(&model.config, n);
    let seq = cache.add_sequence();
    let mut token = 0u32;
    let mut ws = Workspace::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let logits = model.forward_in(
            &mut ws,
            &mut cache,
            &[SeqChunk { seq, tokens: &[token], logits: LogitsRequest::Last }],
        )?;
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
    let probe = BandwidthProbe::new();
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

    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // Per generation run: the read bandwidth around it and the fraction of it achieved.
    let (mut bandwidths, mut fractions) = (Vec::new(), Vec::new());
    for rep in 0..args.repetitions {
        if args.prompt > 0 {
            let secs = prompt_run(&model, &prompt)?.as_secs_f64();
            pp.push(args.prompt as f64 / secs);
        }
        if args.gen > 0 {
            let before = probe.measure();
            let secs = gen_run(&model, args.gen)?.as_secs_f64();
            let bandwidth = before.max(probe.measure());
            tg.push(args.gen as f64 / secs);
            bandwidths.push(bandwidth);
            fractions.push(args.gen as f64 / secs * bytes_per_token as f64 / bandwidth);
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

    if bandwidths.is_empty() {
        bandwidths.push(probe.measure());
    }
    let bandwidth = stats(&bandwidths);
    let ceiling = bandwidth.mean / bytes_per_token as f64;
    let fraction = (!fractions.is_empty()).then(|| stats(&fractions));
    let peak_rss = super::peak_rss().saturating_sub(BandwidthProbe::BYTES as u64);
    let (pp, tg) = ((!pp.is_empty()).then(|| stats(&pp)), (!tg.is_empty()).then(|| stats(&tg)));
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
            "read_bandwidth_gb_s": bandwidth.mean / 1e9,
            "read_bandwidth_gb_s_sd": bandwidth.sd / 1e9,
            "bytes_per_token": bytes_per_token,
            "bandwidth_limit_tokens_per_s": ceiling,
            "bandwidth_fraction": fraction.as_ref().map(|f| f.mean),
            "bandwidth_fraction_sd": fraction.as_ref().map(|f| f.sd),
            "peak_rss_bytes": peak_rss,
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
    println!(
        "read bandwidth: {:.1} ± {:.1} GB/s (best of {BANDWIDTH_PASSES} passes over 512 MiB, {threads} threads, right before and after each generation run)",
        bandwidth.mean / 1e9,
        bandwidth.sd / 1e9
    );
    println!(
        "weights read per generated token: {} -> bandwidth limit {:.2} tokens/s",
        super::human_bytes(bytes_per_token),
        ceiling
    );
    if let (Some(s), Some(f)) = (&tg, &fraction) {
        println!(
            "generation: {:.2} tokens/s = {:.1} ± {:.1}% of the bandwidth limit (each run against the bandwidth around it)",
            s.mean,
            100.0 * f.mean,
            100.0 * f.sd
        );
    }
    if let Some(s) = &split {
        print_split(&format!("time per generated token by stage ({} tokens", args.gen), s, args.gen);
    }
    if let Some(s) = &prompt_split {
        print_split(&format!("time per prompt token by stage (pp{}", args.prompt), s, args.prompt);
    }
    println!("peak RSS {} (the bench's 512 MiB bandwidth buffer not counted)", super::human_bytes(peak_rss));
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
