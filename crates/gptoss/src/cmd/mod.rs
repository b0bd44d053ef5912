//! One module per command, plus what they share.

pub mod bench;
pub mod chat;
pub mod generate;
pub mod harmony;
pub mod inspect;
pub mod list;
pub mod perplexity;
pub mod pull;
pub mod serve;
pub mod synth;
pub mod ui;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gptoss_cuda::{CudaOptions, DeviceInfo, MemoryNeeds};
use gptoss_engine::checkpoint::Checkpoint;
use gptoss_engine::weights::DenseFormat;
use gptoss_engine::{CpuRunner, Model, ModelConfig, Runner, Sampler, SamplingParams};

/// The model used when a command is given none.
pub const DEFAULT_MODEL: &str = "openai/gpt-oss-20b";

/// The longest context of both gpt-oss models (`max_position_embeddings`).
pub const MODEL_MAX_CONTEXT: usize = 131_072;

/// A command line that cannot work, found before anything is loaded: exits with status 2,
/// as clap's own usage errors do.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a [`UsageError`] (exit status 2) from the current function.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::cmd::UsageError(format!($($arg)*)).into())
    };
}

/// `--temperature`: finite and at least 0.
pub fn parse_temperature(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a number >= 0 (0 is greedy), got {s}"))
    }
}

/// `--top-p`: in (0, 1].
pub fn parse_top_p(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("must be greater than 0 and at most 1 (1 keeps every token), got {s}"))
    }
}

/// `--min-p`: in [0, 1].
pub fn parse_min_p(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1 (0 keeps every token), got {s}"))
    }
}

/// `--ctx`: between 1 and the gpt-oss models' 131,072 tokens.
pub fn parse_ctx(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("`{s}` is not a whole number of tokens"))?;
    if (1..=MODEL_MAX_CONTEXT).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 1 and {MODEL_MAX_CONTEXT} tokens (the gpt-oss models' context), got {s}"))
    }
}

/// A size in bytes: `2GiB`, `512MiB`, `1.5GB`, `100000` (0 allowed).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024f64.powi(2),
        "gi" | "gib" => 1024f64.powi(3),
        "ti" | "tib" => 1024f64.powi(4),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v * scale < usize::MAX as f64 => Ok((v * scale) as usize),
        _ => Err(format!("`{s}` is not a size in bytes (e.g. 2GiB, 512MB, 0)")),
    }
}

/// A `--ctx` checked against the checkpoint's own limit, before its weights load.
pub fn check_ctx_against_model(path: &Path, ctx: usize) -> Result<()> {
    let config = Checkpoint::open(path)?.config;
    if ctx > config.max_context {
        usage!("--ctx {ctx} is more than the model's context of {} tokens ({})", config.max_context, path.display());
    }
    Ok(())
}

/// Flags for the commands that load a model (chat, run, serve, generate, perplexity, bench).
/// They are also taken before the command's name, as in earlier versions
/// (`gptoss --threads 2 serve`); after it they win.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Dense attention and unembedding weights: bf16 as in the checkpoint (exact), or q8,
    /// requantized at load (fewer bytes per token; accuracy cost in the README).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub dense: Option<Dense>,
    /// Where models run: auto (the first GPU with room for the model, else the CPU), cpu,
    /// cuda (the first GPU) or cuda:N [default: auto; env: GPTOSS_DEVICE].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<Device>,
    /// Use the Hugging Face cache only, never the network (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

impl ModelArgs {
    /// These flags, with `outer`'s (given before the command's name) where these lack one.
    pub fn or(&self, outer: &ModelArgs) -> ModelArgs {
        ModelArgs {
            threads: self.threads.or(outer.threads),
            dense: self.dense.or(outer.dense),
            device: self.device.or(outer.device),
            offline: self.offline || outer.offline,
        }
    }

    /// Sets the thread pool, the dense format, the device and offline mode.
    pub fn apply(&self) -> Result<()> {
        if let Some(n) = self.threads {
            if n == 0 {
                usage!("--threads must be at least 1");
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .with_context(|| format!("cannot start {n} threads"))?;
        }
        set_dense(self.dense.unwrap_or(Dense::Bf16));
        let device = match self.device {
            Some(d) => d,
            None => match std::env::var("GPTOSS_DEVICE") {
                Ok(v) if !v.is_empty() => v.parse().map_err(|e: String| UsageError(format!("GPTOSS_DEVICE: {e}")))?,
                _ => Device::Auto,
            },
        };
        set_device(device);
        pull::set_offline(self.offline);
        Ok(())
    }
}

/// Sampling flags shared by the commands that generate.
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 is greedy. OpenAI recommends 1.0 for gpt-oss.
    #[arg(long, default_value_t = 1.0, value_name = "T", value_parser = parse_temperature, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_name = "P", value_parser = parse_top_p, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the K most likely tokens; 0 keeps every token.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Drop tokens less likely than P times the most likely one, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_name = "P", value_parser = parse_min_p, allow_negative_numbers = true)]
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
    if let Some(model) = pull::hub_ref(path) {
        return pull::model_dir(&model.repo, &model.revision);
    }
    bail!(
        "{}: no such checkpoint folder or file (nor a Hub id: org/name, org/name@revision or \
         https://huggingface.co/org/name)",
        path.display()
    )
}

/// `--dense`: how attention and unembedding weights are held.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dense {
    #[default]
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

/// `--device`: where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first GPU with room for the model, else the CPU.
    Auto,
    Cpu,
    /// A GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: auto, cpu, cuda or cuda:N")),
        }
    }
}

static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

pub fn set_device(d: Device) {
    let _ = DEVICE.set(d);
}

pub fn device() -> Device {
    DEVICE.get().copied().unwrap_or(Device::Auto)
}

/// A model opened for a command: on the CPU (whose kernels and formats bench reports), or
/// on a GPU.
pub enum Opened {
    Cpu(Box<CpuRunner>),
    Gpu(Box<dyn Runner>),
}

impl Opened {
    pub fn into_runner(self) -> Box<dyn Runner> {
        match self {
            Opened::Cpu(r) => r,
            Opened::Gpu(r) => r,
        }
    }
}

/// The model at `path` on the `--device`, with a KV cache for `max_sequences` sequences of
/// `max_context` tokens (capped at the model's context).
pub fn open_runner(path: &Path, max_context: usize, max_sequences: usize) -> Result<Box<dyn Runner>> {
    Ok(open(path, max_context, max_sequences)?.into_runner())
}

/// [`open_runner`], saying which device it is. Under `auto` one line on stderr says what
/// was picked and why.
pub fn open(path: &Path, max_context: usize, max_sequences: usize) -> Result<Opened> {
    let cpu = || Ok(Opened::Cpu(Box::new(CpuRunner::new(load_model(path)?, max_context))));
    match device() {
        Device::Cpu => cpu(),
        Device::Cuda(ordinal) => {
            // Read for the context cap only: a GPU's cache is allocated at its full size.
            let config = Checkpoint::open(path)?.config;
            open_cuda(path, ordinal, max_context.min(config.max_context), max_sequences)
                .with_context(|| format!("--device cuda:{ordinal}"))
                .map(Opened::Gpu)
        }
        Device::Auto => {
            let gpus = gptoss_cuda::devices();
            if gpus.is_empty() {
                crate::note!("device: cpu ({NO_GPU})");
                return cpu();
            }
            let config = Checkpoint::open(path)?.config;
            let ctx = max_context.min(config.max_context);
            match pick_gpu(&gpus, &config, ctx, max_sequences) {
                Ok(gpu) => match open_cuda(path, gpu.ordinal, ctx, max_sequences) {
                    Ok(runner) => Ok(Opened::Gpu(runner)),
                    Err(e) => {
                        crate::note!("device: cpu (cuda:{} could not take the model: {e:#})", gpu.ordinal);
                        cpu()
                    }
                },
                Err(why) => {
                    crate::note!("device: cpu ({why})");
                    cpu()
                }
            }
        }
    }
}

/// Why `auto` found no GPU: [`gptoss_cuda::devices`] is empty both without a driver and
/// with a driver but no device, and cannot say which.
pub const NO_GPU: &str = "no CUDA device found: no driver, or no GPU";

/// The first GPU with room for `config` (under `auto`), said on stderr; or why there is none.
pub fn pick_gpu(
    gpus: &[DeviceInfo],
    config: &ModelConfig,
    max_context: usize,
    max_sequences: usize,
) -> Result<DeviceInfo, String> {
    let needs = gptoss_cuda::memory_needs(config, max_context, max_sequences);
    if let Some(gpu) = gpus.iter().find(|g| g.free_bytes >= needs.total()) {
        crate::note!(
            "device: cuda:{} ({}, {} free, needs {})",
            gpu.ordinal,
            gpu.name,
            human_bytes(gpu.free_bytes),
            human_bytes(needs.total())
        );
        return Ok(gpu.clone());
    }
    let free: Vec<String> =
        gpus.iter().map(|g| format!("cuda:{} has {} free", g.ordinal, human_bytes(g.free_bytes))).collect();
    Err(format!("{}, the model needs {}", free.join(", "), needs_text(&needs, max_context, max_sequences)))
}

/// 16.20 GB (weights 13.8 GB, KV cache 2.1 GB, buffers 0.3 GB for 8192 tokens x 1 sequence).
pub fn needs_text(needs: &MemoryNeeds, max_context: usize, max_sequences: usize) -> String {
    let seqs = if max_sequences == 1 { "1 sequence".to_string() } else { format!("{max_sequences} sequences") };
    format!(
        "{} (weights {}, KV cache {}, buffers {} for {max_context} tokens x {seqs})",
        human_bytes(needs.total()),
        human_bytes(needs.weights),
        human_bytes(needs.kv),
        human_bytes(needs.buffers)
    )
}

fn open_cuda(path: &Path, ordinal: usize, max_context: usize, max_sequences: usize) -> Result<Box<dyn Runner>> {
    dense_ignored(ordinal);
    let t0 = Instant::now();
    let spinner = ui::spinner(&format!("loading {} onto cuda:{ordinal}", path.display()));
    let runner = gptoss_cuda::open(path, &CudaOptions { ordinal, max_context, max_sequences });
    spinner.finish_and_clear();
    let runner = runner?;
    crate::note!("loaded {} on {} in {:.2} s", path.display(), runner.device(), t0.elapsed().as_secs_f64());
    Ok(runner)
}

/// `--dense q8` is a CPU format; a GPU holds the weights its own way.
pub fn dense_ignored(ordinal: usize) {
    if dense() == Dense::Q8 {
        eprintln!("--dense q8 applies to the CPU only; ignored on cuda:{ordinal}");
    }
}

/// Loads a checkpoint (with the `--dense` format) and says so on stderr.
pub fn load_model(path: &Path) -> Result<Model> {
    let t0 = Instant::now();
    let format = match dense() {
        Dense::Bf16 => DenseFormat::Bf16,
        Dense::Q8 => DenseFormat::Q8,
    };
    let spinner = ui::spinner(&format!("loading {}", path.display()));
    let model = Model::load_with(path, format);
    spinner.finish_and_clear();
    let model = model?;
    crate::note!(
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

/// Token ids separated by whitespace or commas, or a JSON array of them (as `tokenize --json`
/// and `render --json` print), or a JSON object with a `tokens` array (as `generate --json`
/// prints). `-` reads stdin.
pub fn read_tokens_file(path: &Path) -> Result<Vec<u32>> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading token ids from stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    parse_token_ids(&text, path)
}

fn parse_token_ids(text: &str, path: &Path) -> Result<Vec<u32>> {
    let name = if path == Path::new("-") { "stdin".to_string() } else { path.display().to_string() };
    let trimmed = text.trim_start();
    if trimmed.starts_with(['[', '{']) {
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{name}: starts like JSON but is not valid JSON"))?;
        let list = match &v {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => match o.get("tokens") {
                Some(serde_json::Value::Array(a)) => a,
                _ => bail!("{name}: a JSON object needs a `tokens` array of token ids"),
            },
            _ => bail!("{name}: expected a JSON array of token ids"),
        };
        return list
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .with_context(|| format!("{name}: entry {} (`{x}`) is not a token id", i + 1))
            })
            .collect();
    }
    let mut ids = Vec::new();
    for (i, field) in text.split(|c: char| c.is_whitespace() || c == ',').filter(|f| !f.is_empty()).enumerate() {
        match field.parse::<u32>() {
            Ok(id) => ids.push(id),
            Err(_) => {
                bail!("{name}: entry {} (`{}`) is not a token id", i + 1, field.chars().take(40).collect::<String>())
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("100000"), Ok(100_000));
        assert!(parse_bytes("2XB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn token_ids_from_text_json_and_objects() {
        let p = Path::new("t");
        assert_eq!(parse_token_ids("1 2,3\n4", p).unwrap(), [1, 2, 3, 4]);
        assert_eq!(parse_token_ids("[200006, 17360]\n", p).unwrap(), [200006, 17360]);
        assert_eq!(parse_token_ids(r#"{"tokens": [5, 6], "text": "x"}"#, p).unwrap(), [5, 6]);
        assert!(parse_token_ids("[1, -2]", p).unwrap_err().to_string().contains("entry 2"));
        assert!(parse_token_ids("[1, 2", p).is_err());
        assert!(parse_token_ids(r#"{"ids": [1]}"#, p).unwrap_err().to_string().contains("tokens"));
    }

    #[test]
    fn flag_values_name_their_limits() {
        assert!(parse_top_p("2").unwrap_err().contains("at most 1"));
        assert!(parse_top_p("0").is_err());
        assert_eq!(parse_top_p("0.9"), Ok(0.9));
        assert!(parse_temperature("-1").is_err());
        assert!(parse_temperature("nan").is_err());
        assert!(parse_min_p("1.5").is_err());
        assert!(parse_ctx("1000000").unwrap_err().contains("131072"));
        assert!(parse_ctx("0").is_err());
        assert_eq!(parse_ctx("131072"), Ok(131072));
    }

    #[test]
    fn devices_parse() {
        assert_eq!("auto".parse(), Ok(Device::Auto));
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_picks_the_first_gpu_with_room() {
        let gpu = |ordinal, free_bytes| DeviceInfo {
            ordinal,
            name: format!("gpu{ordinal}"),
            compute_capability: (9, 0),
            total_bytes: u64::MAX,
            free_bytes,
        };
        let config = ModelConfig::tiny();
        let needs = gptoss_cuda::memory_needs(&config, 128, 1).total();
        let gpus = [gpu(0, needs.saturating_sub(1)), gpu(1, needs), gpu(2, u64::MAX)];
        let first = if needs == 0 { 0 } else { 1 };
        assert_eq!(pick_gpu(&gpus, &config, 128, 1).map(|g| g.ordinal), Ok(first));
        if needs > 0 {
            let why = pick_gpu(&gpus[..1], &config, 128, 1).unwrap_err();
            assert!(why.starts_with("cuda:0 has ") && why.contains("the model needs"), "{why}");
        }
        assert!(pick_gpu(&[], &config, 128, 1).is_err());
    }
}
