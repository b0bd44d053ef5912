//! gpt-oss on NVIDIA GPUs. Always built: the CUDA driver is loaded at run time, so a machine
//! without one gets [`CudaError::NoDriver`], never a panic, and the kernels are compiled
//! ahead of time into an image embedded in the binary (tools/build-cuda-kernels.sh), so
//! building needs no CUDA toolkit and running needs only the NVIDIA driver.
//!
//! [`CudaRunner`] is a [`Runner`]: the same batched forward pass as the CPU's `Model`, with
//! the weights (MXFP4 experts packed), the KV cache (paged full-attention layers, ring
//! sliding-window layers) and every activation on the device.

pub mod devcheck;
pub mod driver;
mod emu;
pub mod kv;
pub mod layout;
pub mod model;
pub mod plan;
pub mod probe;
pub mod routing;
pub mod weights;

use std::path::Path;

use gptoss_engine::checkpoint::Checkpoint;
use gptoss_engine::runner::Runner;
use gptoss_engine::weights::ModelWeights;
use gptoss_engine::ModelConfig;

pub use model::{CudaRunner, KernelSet};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so.1): install the NVIDIA driver to run on a GPU")]
    NoDriver,
    #[error("the NVIDIA driver supports CUDA {version}; gptoss needs CUDA 13.0 or newer (driver 580 or newer)")]
    OldDriver { version: String },
    #[error("no CUDA device {ordinal}: this machine has {count}")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("cuda:{ordinal} ({name}) has compute capability {}.{}; gptoss needs 8.0 or newer (Ampere and later)", cc.0, cc.1)]
    UnsupportedDevice { ordinal: usize, name: String, cc: (i32, i32) },
    #[error("cuda:{ordinal} ({name}) has {} free; the model needs {} (weights {}, KV cache {}, buffers {})",
        gb(*free), gb(*needed), gb(*weights), gb(*kv), gb(*buffers))]
    OutOfMemory { ordinal: usize, name: String, needed: u64, free: u64, weights: u64, kv: u64, buffers: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("CUDA: {0}")]
    Driver(String),
    #[error(transparent)]
    Load(#[from] gptoss_engine::LoadError),
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// One GPU as the driver reports it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The GPUs of this machine; empty when there is no driver or no device.
pub fn devices() -> Vec<DeviceInfo> {
    let Ok(n) = driver::device_count() else { return Vec::new() };
    (0..n)
        .filter_map(|ordinal| {
            let (_, facts) = driver::device_facts(ordinal).ok()?;
            let (free, total) = driver::mem_info(ordinal).ok()?;
            Some(DeviceInfo {
                ordinal,
                name: facts.name,
                compute_capability: facts.cc,
                total_bytes: total,
                free_bytes: free,
            })
        })
        .collect()
}

/// Why [`devices`] is empty, for messages: no driver, an old one, or no GPU.
pub fn why_no_devices() -> String {
    match driver::device_count() {
        Err(e) => e.to_string(),
        Ok(0) => "the NVIDIA driver reports no GPU".into(),
        Ok(n) => format!("{n} GPUs"),
    }
}

/// Device bytes a model of `config` needs: its weights as held on the device, a KV cache for
/// `max_sequences` sequences of `max_context` tokens, and the forward pass's buffers.
#[derive(Clone, Copy, Debug)]
pub struct MemoryNeeds {
    pub weights: u64,
    pub kv: u64,
    pub buffers: u64,
}

impl MemoryNeeds {
    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.buffers
    }
}

pub fn memory_needs(config: &ModelConfig, max_context: usize, max_sequences: usize) -> MemoryNeeds {
    let ctx = max_context.min(config.max_context).max(1);
    let rope = 2 * 4 * (ctx * config.head_dim / 2) as u64;
    MemoryNeeds {
        weights: weights::weight_bytes(config),
        kv: model::kv_bytes(config, ctx, max_sequences.max(1)),
        buffers: model::buffer_bytes(config, max_sequences.max(1)) + rope + 4 * config.vocab_size as u64,
    }
}

/// How to open a model on a GPU.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// The device, 0 for the first.
    pub ordinal: usize,
    pub max_context: usize,
    pub max_sequences: usize,
}

/// Fails before any allocation when the device cannot hold the model.
fn check_fits(gpu: &driver::Gpu, cfg: &ModelConfig, opts: &CudaOptions) -> Result<(), CudaError> {
    let needs = memory_needs(cfg, opts.max_context, opts.max_sequences);
    let (free, _) = driver::mem_info(opts.ordinal)?;
    // A little headroom for the driver's own allocations (module, stream, context).
    if needs.total() + (256 << 20) > free {
        return Err(CudaError::OutOfMemory {
            ordinal: opts.ordinal,
            name: gpu.facts.name.clone(),
            needed: needs.total(),
            free,
            weights: needs.weights,
            kv: needs.kv,
            buffers: needs.buffers,
        });
    }
    Ok(())
}

/// Loads a checkpoint folder or GGUF file onto the GPU.
pub fn open(path: &Path, opts: &CudaOptions) -> Result<Box<dyn Runner>, CudaError> {
    Ok(Box::new(open_runner(path, opts)?))
}

/// [`open`], keeping the concrete type (for tests and the device check).
pub fn open_runner(path: &Path, opts: &CudaOptions) -> Result<CudaRunner, CudaError> {
    let mut gpu = driver::Gpu::open(opts.ordinal)?;
    let ck = Checkpoint::open(path)?;
    let cfg = ck.config.clone();
    check_fits(&gpu, &cfg, opts)?;
    let host = ModelWeights::load(&ck)?;
    let w = weights::upload(&mut gpu, &host, &cfg)?;
    drop(host);
    CudaRunner::new(gpu, cfg, w, opts.max_context, opts.max_sequences)
}

/// [`open_runner`] on the CPU emulator (feature `emu`): the same kernels, run on the host,
/// for tests without a GPU.
#[cfg(feature = "emu")]
pub fn emulator_runner(path: &Path, max_context: usize, max_sequences: usize) -> Result<CudaRunner, CudaError> {
    let mut gpu = driver::Gpu::emulator();
    let ck = Checkpoint::open(path)?;
    let cfg = ck.config.clone();
    let host = ModelWeights::load(&ck)?;
    let w = weights::upload(&mut gpu, &host, &cfg)?;
    drop(host);
    CudaRunner::new(gpu, cfg, w, max_context, max_sequences)
}

/// Random weights of `config`'s shape made directly in device memory (no checkpoint: the
/// 120b does not fit the disks of most GPU machines), for `gptoss bench --synth`.
pub fn synth(config: &ModelConfig, seed: u64, opts: &CudaOptions) -> Result<Box<dyn Runner>, CudaError> {
    Ok(Box::new(synth_runner(config, seed, opts)?))
}

pub fn synth_runner(config: &ModelConfig, seed: u64, opts: &CudaOptions) -> Result<CudaRunner, CudaError> {
    let mut gpu = driver::Gpu::open(opts.ordinal)?;
    check_fits(&gpu, config, opts)?;
    let w = weights::synth(&mut gpu, config, seed)?;
    CudaRunner::new(gpu, config.clone(), w, opts.max_context, opts.max_sequences)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 120b with a 32k context must run on one H100 80 GB (the bar): what the
    /// runner allocates, by the same accounting `open` checks before allocating.
    #[test]
    fn gpt_oss_120b_with_32k_context_fits_80_gb() {
        for (name, cfg) in [("20b", ModelConfig::gpt_oss_20b()), ("120b", ModelConfig::gpt_oss_120b())] {
            let n = memory_needs(&cfg, 32768, 1);
            println!(
                "{name}, 32k context, 1 sequence: weights {:.2} GB, KV {:.2} GB, buffers {:.2} GB, total {:.2} GB",
                n.weights as f64 / 1e9,
                n.kv as f64 / 1e9,
                n.buffers as f64 / 1e9,
                n.total() as f64 / 1e9
            );
        }
        let n = memory_needs(&ModelConfig::gpt_oss_120b(), 32768, 1);
        // An H100 80 GB has 85.0e9 bytes of which the driver and context keep ~0.6 GB.
        assert!(n.total() + (256 << 20) < 84_000_000_000, "{n:?}");
        // The experts stay packed: the weights are within 5% of the checkpoint's bytes.
        let w = n.weights as f64;
        assert!(w < 1.05 * 65.2e9 && w > 0.95 * 60.0e9, "120b weights {w}");
    }
}
