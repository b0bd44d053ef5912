//! One module per command, plus what they share.

pub mod bench;
pub mod chat;
pub mod generate;
pub mod harmony;
pub mod inspect;
pub mod perplexity;
pub mod pull;
pub mod serve;
pub mod synth;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gptoss_engine::weights::DenseFormat;
use gptoss_engine::{Model, Sampler, SamplingParams};

/// The model used when a command is given none.
pub const DEFAULT_MODEL: &str = "openai/gpt-oss-20b";

/// Sampling flags shared by the commands that generate.
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 is greedy. OpenAI recommends 1.0 for gpt-oss.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Keep only the K most likely tokens; 0 keeps every token.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f32,
    /// Makes sampling reproducible.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn sampler(&self) -> Result<Sampler> {
        Ok(Sampler::new(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        })?)
    }
}

/// A MODEL argument: a checkpoint folder or .gguf file, or a Hub id (`org/name`, not a local
/// path), which is fetched into the Hugging Face cache unless it is there already (see `pull`).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    resolve_model_path(Path::new(arg))
}

pub fn resolve_model_path(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(repo) = pull::hub_id(path) {
        return pull::model_dir(&repo);
    }
    bail!("{}: no such checkpoint folder or file (nor a Hub id, org/name)", path.display())
}

/// `--dense`: how attention and unembedding weights are held.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dense {
    Bf16,
    Q8,
}

static DENSE: std::sync::OnceLock<Dense> = std::sync::OnceLock::new();

pub fn set_dense(d: Dense) {
    let _ = DENSE.set(d);
}

pub fn dense() -> Dense {
    DENSE.get().copied().unwrap_or(Dense::Bf16)
}

/// Loads a checkpoint (with the `--dense` format) and says so on stderr.
pub fn load_model(path: &Path) -> Result<Model> {
    let t0 = Instant::now();
    let format = match dense() {
        Dense::Bf16 => DenseFormat::Bf16,
        Dense::Q8 => DenseFormat::Q8,
    };
    let model = Model::load_with(path, format)?;
    eprintln!(
        "loaded {} ({} layout, {} layers, {} experts, {:?} kernels, {} dense weights) in {:.2} s",
        path.display(),
        model.layout.name(),
        model.config.num_layers,
        model.config.num_experts,
        model.kernels(),
        model.dense.name(),
        t0.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// Token ids separated by whitespace or commas.
pub fn read_tokens_file(path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut ids = Vec::new();
    for (i, field) in text.split(|c: char| c.is_whitespace() || c == ',').filter(|f| !f.is_empty()).enumerate() {
        match field.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => bail!(
                "{}: entry {} (`{}`) is not a token id",
                path.display(),
                i + 1,
                field.chars().take(40).collect::<String>()
            ),
        }
    }
    Ok(ids)
}

/// Prompt tokens from `--prompt` (ordinary encoding) or `--tokens-file`.
pub fn prompt_tokens(
    prompt: Option<&str>,
    tokens_file: Option<&Path>,
    tokenizer: &gptoss_engine::Tokenizer,
) -> Result<Vec<u32>> {
    let ids = match (prompt, tokens_file) {
        (Some(text), None) => tokenizer.encode(text),
        (None, Some(path)) => read_tokens_file(path)?,
        _ => bail!("give exactly one of --prompt and --tokens-file"),
    };
    if ids.is_empty() {
        bail!("the prompt is empty: at least one token is needed");
    }
    Ok(ids)
}

/// 13.76 GB, 2.10 MB, 512 B (decimal units, as disks and downloads count).
pub fn human_bytes(b: u64) -> String {
    scaled(b, &["B", "kB", "MB", "GB", "TB"])
}

/// 20.91 B, 3.61 M, 512 (parameter counts).
pub fn human_count(n: u64) -> String {
    scaled(n, &["", "K", "M", "B", "T"])
}

fn scaled(n: u64, units: &[&str]) -> String {
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} {}", units[0]).trim_end().to_string()
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// Peak resident memory of this process, with how much of the current resident set is
/// mapped checkpoint pages (which the kernel can drop and re-read) rather than our own heap.
/// Linux only; elsewhere an empty string.
pub fn memory_report() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return String::new();
    };
    // /proc counts in KiB.
    let bytes = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    format!(
        "peak RSS {} (now: {} heap, {} mapped weights)",
        human_bytes(bytes("VmHWM:")),
        human_bytes(bytes("RssAnon:")),
        human_bytes(bytes("RssFile:"))
    )
}

/// Peak resident set of this process in bytes (Linux; 0 elsewhere).
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// "12.34 tok/s", or "-" when nothing was timed.
pub fn rate(tokens: usize, secs: f64) -> String {
    if tokens == 0 || secs <= 0.0 {
        "- tok/s".into()
    } else {
        format!("{:.2} tok/s", tokens as f64 / secs)
    }
}
