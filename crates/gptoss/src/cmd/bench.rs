//! `gptoss bench`: prompt processing and generation speed in the style of llama-bench, on
//! whichever device `--device` gives. On the CPU it is set against the machine's measured
//! read bandwidth (decoding reads every active weight once per token, so bandwidth ÷ bytes
//! per token is the ceiling); a GPU's memory is not probed, so there the bandwidth figures
//! are absent.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gptoss_engine::generator::PREFILL_CHUNK;
use gptoss_engine::profile;
use gptoss_engine::safetensors::Bytes;
use gptoss_engine::{EngineError, LogitsRequest, ModelConfig, Runner, SeqChunk, SeqId};

use super::{Device, Opened};

#[derive(clap::Args)]
/// `--threads`, `--dense` and `--device` are the global flags.
pub struct Args {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
    #[arg(required_unless_present = "synth", conflicts_with = "synth")]
    model: Option<String>,
    /// Random weights of this shape made in GPU memory instead of a checkpoint (needs a
    /// CUDA device).
    #[arg(long, value_enum, value_name = "SHAPE")]
    synth: Option<Shape>,
    /// Sequences decoding together in the generation test; tokens/s counts all of them.
    #[arg(short = 'b', long = "batch", default_value_t = 1, value_name = "N")]
    batch: usize,
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
    #[command(flatten, next_help_heading = "Loading the model")]
    pub load: super::ModelArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shape {
    #[value(name = "20b")]
    Gpt20b,
    #[value(name = "120b")]
    Gpt120b,
}

impl Shape {
    pub fn config(self) -> ModelConfig {
        match self {
            Shape::Gpt20b => ModelConfig::gpt_oss_20b(),
            Shape::Gpt120b => ModelConfig::gpt_oss_120b(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Gpt20b => "gpt-oss-20b-synth",
            Shape::Gpt120b => "gpt-oss-120b-synth",
        }
    }
}

/// The seed of `--synth`'s weights (as `gptoss synth`'s default).
const SYNTH_SEED: u64 = 0;

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
/// RSS is the process's minus exactly [`BandwidthProbe::BYTES`]. It is memory of the kind the
/// loaded weights live in ([`Bytes::build`]: anonymous, in 2 MiB pages where the kernel
/// allows): in 4 KiB pages the probe read 33 GB/s on a Zen 4 VM whose decode streamed 39
/// (a TLB walk per page, nested under a hypervisor), and generation showed as 117% of "the"
/// bandwidth.
struct BandwidthProbe {
    buffer: Bytes,
}

impl BandwidthProbe {
    /// 512 MiB: far past any cache, small next to the model.
    const BYTES: usize = 512 << 20;

    fn new() -> Self {
        let buffer = Bytes::build(Self::BYTES, |bytes| {
            for (i, word) in bytes.chunks_exact_mut(8).enumerate() {
                word.copy_from_slice(&(i as u64).to_le_bytes());
            }
        });
        BandwidthProbe { buffer }
    }

    fn words(&self) -> &[u64] {
        let bytes = self.buffer.as_slice();
        // SAFETY: `Bytes::build` memory is page-aligned (a map) or a u64 buffer, its length
        // a multiple of 8, and any bit pattern is a u64.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u64>(), bytes.len() / 8) }
    }

    /// Bytes per second: the best of [`BANDWIDTH_PASSES`] passes.
    fn measure(&self) -> f64 {
        let words = self.words();
        let per = words.len().div_ceil(rayon::current_num_threads());
        let mut best = 0f64;
        for _ in 0..BANDWIDTH_PASSES {
            let t0 = Instant::now();
            let sums = rayon::broadcast(|ctx| profile::sum_words(words.chunks(per).nth(ctx.index()).unwrap_or(&[])));
            black_box(sums);
            best = best.max(Self::BYTES as f64 / t0.elapsed().as_secs_f64());
        }
        best
    }
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

fn prompt_run(runner: &mut dyn Runner, tokens: &[u32]) -> Result<Duration> {
    with_sequences(runner, 1, |runner, seqs| {
        let t0 = Instant::now();
        let chunks = tokens.chunks(PREFILL_CHUNK).count();
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let logits = if i + 1 == chunks { LogitsRequest::Last } else { LogitsRequest::None };
            black_box(runner.forward(&[SeqChunk { seq: seqs[0], tokens: chunk, logits }])?);
        }
        Ok(t0.elapsed())
    })
}

/// `n` greedy tokens for each of `batch` sequences decoding together (one forward pass of
/// `batch` one-token chunks per step), from an empty context.
fn gen_run(runner: &mut dyn Runner, n: usize, batch: usize) -> Result<Duration> {
    with_sequences(runner, batch, |runner, seqs| {
        // Different first tokens, so the sequences do not all route to the same experts.
        let mut tokens: Vec<[u32; 1]> = (0..seqs.len() as u32).map(|i| [i]).collect();
        let t0 = Instant::now();
        for _ in 0..n {
            let chunks: Vec<SeqChunk> = seqs
                .iter()
                .zip(&tokens)
                .map(|(&seq, t)| SeqChunk { seq, tokens: t, logits: LogitsRequest::Last })
                .collect();
            // Greedy on the device where there is one: no logits cross the bus.
            let next = runner.forward_greedy(&chunks)?;
            for (t, n) in tokens.iter_mut().zip(next) {
                *t = [n];
            }
        }
        Ok(t0.elapsed())
    })
}

/// Runs `body` on `count` new sequences, removed afterwards whatever happens (a GPU runner
/// has a fixed number of slots, and the next run needs them).
fn with_sequences<T>(
    runner: &mut dyn Runner,
    count: usize,
    body: impl FnOnce(&mut dyn Runner, &[SeqId]) -> Result<T, EngineError>,
) -> Result<T> {
    let mut seqs = Vec::with_capacity(count);
    let mut result = Ok(());
    for _ in 0..count {
        match runner.add_sequence() {
            Ok(s) => seqs.push(s),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let out = result.and_then(|()| body(runner, &seqs));
    for s in seqs {
        runner.remove_sequence(s);
    }
    Ok(out?)
}

pub fn run(args: Args) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.prompt == 0 && args.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    let threads = rayon::current_num_threads();
    // Allocated before the model so that exactly its size comes off the peak RSS; only a CPU
    // run is compared with host memory's bandwidth.
    let gpu_certain = args.synth.is_some() || matches!(super::device(), Device::Cuda(_));
    let mut probe = (!gpu_certain).then(BandwidthProbe::new);
    let max_context = args.prompt.max(args.gen).max(2);
    let (opened, name) = match (&args.model, args.synth) {
        (Some(model), None) => {
            let path = super::resolve_model(model)?;
            let name = path.file_name().map_or_else(|| model.clone(), |n| n.to_string_lossy().into_owned());
            (super::open(&path, max_context, args.batch)?, name)
        }
        (None, Some(shape)) => {
            let (config, name) = match shape {
                Shape::Gpt20b => (ModelConfig::gpt_oss_20b(), "gpt-oss-20b (synth)"),
                Shape::Gpt120b => (ModelConfig::gpt_oss_120b(), "gpt-oss-120b (synth)"),
            };
            (Opened::Gpu(synth_runner(&config, max_context, args.batch)?), name.to_string())
        }
        _ => bail!("give exactly one of MODEL and --synth"),
    };
    // The CPU's kernels and dense format; a GPU's own are in its device string.
    let cpu = match &opened {
        Opened::Cpu(r) => Some((format!("{:?}", r.model.kernels()), r.model.dense.name())),
        Opened::Gpu(_) => None,
    };
    if cpu.is_none() {
        probe = None;
    }
    let mut runner = opened.into_runner();
    let runner = runner.as_mut();
    let device = runner.device();
    let cfg = runner.config();
    let limit = cfg.max_context;
    if args.prompt > limit || args.gen > limit {
        bail!("-p {} / -n {} exceeds the model's context of {limit} tokens", args.prompt, args.gen);
    }
    let bytes_per_token = runner.bytes_per_token();
    let (stage_bytes, config) = (runner.stage_bytes(), runner.config().clone());
    let prompt = prompt_ids(args.prompt, cfg.vocab_size);

    // Warm-up: pages the weights in and starts the threads.
    if args.prompt > 0 {
        prompt_run(runner, &prompt[..args.prompt.min(64)])?;
    }
    gen_run(runner, 2, args.batch)?;

    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // Per generation run: the read bandwidth around it and the fraction of it achieved.
    let (mut bandwidths, mut fractions) = (Vec::new(), Vec::new());
    let tg_name = match args.batch {
        1 => format!("tg{}", args.gen),
        b => format!("tg{} x{b}", args.gen),
    };
    for rep in 0..args.repetitions {
        if args.prompt > 0 {
            let secs = prompt_run(runner, &prompt)?.as_secs_f64();
            pp.push(args.prompt as f64 / secs);
        }
        if args.gen > 0 {
            let measure =
                |r: &mut dyn Runner| probe.as_ref().map(BandwidthProbe::measure).or_else(|| r.read_bandwidth());
            let before = measure(runner);
            let secs = gen_run(runner, args.gen, args.batch)?.as_secs_f64();
            tg.push((args.gen * args.batch) as f64 / secs);
            if let (Some(before), Some(after)) = (before, measure(runner)) {
                let bandwidth = before.max(after);
                bandwidths.push(bandwidth);
                // A step reads at least one token's weights, whatever the batch.
                fractions.push(args.gen as f64 / secs * bytes_per_token as f64 / bandwidth);
            }
        }
        if !args.json {
            let last = |test: &str, v: &[f64]| v.last().map_or(String::new(), |x| format!(" {test} {x:.2} tokens/s"));
            let (p, g) = (last(&format!("pp{}", args.prompt), &pp), last(&tg_name, &tg));
            eprintln!("run {}/{}:{p}{g}", rep + 1, args.repetitions);
        }
    }
    // Stage splits: one profiled run of each test, after the timed ones.
    let mut profiled =
        |run: &mut dyn FnMut(&mut dyn Runner) -> Result<Duration>| -> Result<(Duration, Vec<(profile::Stage, Duration)>)> {
            profile::enable(true);
            let total = run(runner);
            let totals = profile::totals();
            profile::enable(false);
            Ok((total?, totals))
        };
    let split = match args.profile && args.gen > 0 {
        true => Some(profiled(&mut |r| gen_run(r, args.gen, args.batch))?),
        false => None,
    };
    let prompt_split = match args.profile && args.prompt > 0 {
        true => Some(profiled(&mut |r| prompt_run(r, &prompt))?),
        false => None,
    };

    if bandwidths.is_empty() {
        if let Some(b) = probe.as_ref().map(BandwidthProbe::measure).or_else(|| runner.read_bandwidth()) {
            bandwidths.push(b);
        }
    }
    let bandwidth = (!bandwidths.is_empty()).then(|| stats(&bandwidths));
    let ceiling = bandwidth.as_ref().map(|b| b.mean / bytes_per_token as f64);
    let fraction = (!fractions.is_empty()).then(|| stats(&fractions));
    let probe_bytes = if probe.is_some() { BandwidthProbe::BYTES as u64 } else { 0 };
    let peak_rss = super::peak_rss().saturating_sub(probe_bytes);
    let (pp, tg) = ((!pp.is_empty()).then(|| stats(&pp)), (!tg.is_empty()).then(|| stats(&tg)));
    let (kernels, dense) = match &cpu {
        Some((kernels, dense)) => (kernels.clone(), Some(*dense)),
        None => (device.clone(), None),
    };
    if args.json {
        let mut v = serde_json::json!({
            "model": name,
            "device": device,
            "kernels": kernels,
            "dense": dense,
            "threads": threads,
            "batch": args.batch,
            "prompt_tokens": args.prompt,
            "gen_tokens": args.gen,
            "repetitions": args.repetitions,
            "prompt_tokens_per_s": pp.as_ref().map(|s| s.mean),
            "prompt_tokens_per_s_sd": pp.as_ref().map(|s| s.sd),
            "gen_tokens_per_s": tg.as_ref().map(|s| s.mean),
            "gen_tokens_per_s_sd": tg.as_ref().map(|s| s.sd),
            "read_bandwidth_gb_s": bandwidth.as_ref().map(|b| b.mean / 1e9),
            "read_bandwidth_gb_s_sd": bandwidth.as_ref().map(|b| b.sd / 1e9),
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
            v["profile"] = to_json(s, args.gen * args.batch);
        }
        if let Some(s) = &prompt_split {
            v["prompt_profile"] = to_json(s, args.prompt);
        }
        println!("{v}");
        return Ok(());
    }
    let dense = dense.unwrap_or("-");
    println!("| model | device | dense | threads | test | tokens/s |");
    println!("|---|---|---|---|---|---|");
    for (test, s) in [(format!("pp{}", args.prompt), &pp), (tg_name, &tg)] {
        if let Some(s) = s {
            println!("| {name} | {device} | {dense} | {threads} | {test} | {:.2} ± {:.2} |", s.mean, s.sd);
        }
    }
    println!();
    if let Some(bandwidth) = &bandwidth {
        let how = match &probe {
            Some(_) => format!("best of {BANDWIDTH_PASSES} passes over 512 MiB, {threads} threads"),
            None => "best of 10 passes over 4 GiB of device memory".to_string(),
        };
        println!(
            "read bandwidth: {:.1} ± {:.1} GB/s ({how}, right before and after each generation run)",
            bandwidth.mean / 1e9,
            bandwidth.sd / 1e9
        );
    }
    match ceiling {
        Some(ceiling) => println!(
            "weights read per generated token: {} -> bandwidth limit {:.2} tokens/s",
            super::human_bytes(bytes_per_token),
            ceiling
        ),
        None => println!("weights read per generated token: {}", super::human_bytes(bytes_per_token)),
    }
    if let (Some(s), Some(f)) = (&tg, &fraction) {
        if args.batch == 1 {
            println!(
                "generation: {:.2} tokens/s = {:.1} ± {:.1}% of the bandwidth limit (each run against the bandwidth around it)",
                s.mean,
                100.0 * f.mean,
                100.0 * f.sd
            );
        } else {
            println!(
                "generation: {:.2} tokens/s over {} sequences, {:.2} steps/s = {:.1} ± {:.1}% of the bandwidth limit of one token's weights per step",
                s.mean,
                args.batch,
                s.mean / args.batch as f64,
                100.0 * f.mean,
                100.0 * f.sd
            );
        }
    }
    if let Some(s) = &split {
        let n = args.gen * args.batch;
        // A step reads one token's weights however many sequences share it.
        let steps = args.gen as f64 / n as f64;
        let gb_s = |stage, secs: f64| {
            let bytes = stage_bytes.iter().find(|b| b.0 == stage).map_or(0, |b| b.1);
            (bytes >= 1 << 20).then(|| format!("{:>7.1} GB/s", bytes as f64 * steps / secs / 1e9))
        };
        print_split(&format!("time per generated token by stage ({n} tokens"), s, n, &gb_s);
    }
    if let Some(s) = &prompt_split {
        let gflop_s = |stage, secs: f64| {
            let flops = profile::stage_flops(&config, stage, args.prompt);
            (flops > 0.0).then(|| format!("{:>7.1} GFLOP/s", flops / secs / 1e9))
        };
        print_split(&format!("time per prompt token by stage (pp{}", args.prompt), s, args.prompt, &gflop_s);
    }
    if probe.is_some() {
        println!("peak RSS {} (the bench's 512 MiB bandwidth buffer not counted)", super::human_bytes(peak_rss));
    } else {
        println!("peak RSS {} (host memory)", super::human_bytes(peak_rss));
    }
    Ok(())
}

/// Random weights of `config`'s shape on the `--device` GPU (the first with room under
/// `auto`).
pub fn synth_runner(config: &ModelConfig, max_context: usize, max_sequences: usize) -> Result<Box<dyn Runner>> {
    const NEEDS_GPU: &str = "--synth builds random weights in GPU memory; it needs a CUDA device";
    let ordinal = match super::device() {
        Device::Cpu => bail!("{NEEDS_GPU} (--device is cpu)"),
        Device::Cuda(n) => n,
        Device::Auto => {
            let gpus = gptoss_cuda::devices();
            if gpus.is_empty() {
                bail!("{NEEDS_GPU} ({})", super::NO_GPU);
            }
            let ctx = max_context.min(config.max_context);
            match super::pick_gpu(&gpus, config, ctx, max_sequences) {
                Ok(gpu) => gpu.ordinal,
                Err(why) => bail!("{NEEDS_GPU} with room for it: {why}"),
            }
        }
    };
    super::dense_ignored(ordinal);
    let opts = gptoss_cuda::CudaOptions { ordinal, max_context: max_context.min(config.max_context), max_sequences };
    let t0 = Instant::now();
    let runner =
        gptoss_cuda::synth(config, SYNTH_SEED, &opts).with_context(|| format!("{NEEDS_GPU}; cuda:{ordinal}"))?;
    eprintln!("made random weights on {} in {:.2} s", runner.device(), t0.elapsed().as_secs_f64());
    Ok(runner)
}

/// A stage table: `title` is completed with the time per token. `rate(stage, seconds per
/// token)` gives the last column (GB/s of weights for decode, GFLOP/s for prompts), if any.
fn print_split(
    title: &str,
    (total, totals): &(Duration, Vec<(profile::Stage, Duration)>),
    n: usize,
    rate: &dyn Fn(profile::Stage, f64) -> Option<String>,
) {
    let per_tok = |d: Duration| d.as_secs_f64() / n as f64;
    println!();
    println!("{title}, {:.2} ms/token):", 1e3 * per_tok(*total));
    let mut rows = totals.clone();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (stage, d) in rows {
        let rate = if d.is_zero() { None } else { rate(stage, per_tok(d)) };
        println!(
            "  {:<28} {:>8.2} ms  {:>5.1}%{}",
            stage.name(),
            1e3 * per_tok(d),
            100.0 * d.as_secs_f64() / total.as_secs_f64(),
            rate.map_or(String::new(), |r| format!("  {r}"))
        );
    }
    let counted: Duration = totals.iter().map(|t| t.1).sum();
    println!("  {:<28} {:>8.2} ms", "other (sampling, glue)", 1e3 * per_tok(total.saturating_sub(counted)));
}
