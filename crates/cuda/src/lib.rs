//! gpt-oss on NVIDIA GPUs. Always built: the CUDA driver is loaded at run time, so a machine
//! without one gets [`CudaError::NoDriver`], never a panic.
//!
//! (Being written: this is the public surface the command line is wired against.)

use std::path::Path;

use gptoss_engine::runner::Runner;
use gptoss_engine::ModelConfig;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so.1): install the NVIDIA driver to run on a GPU")]
    NoDriver,
    #[error("no CUDA device {ordinal}: this machine has {count}")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("cuda:{ordinal} ({name}) has {free} bytes free; the model needs {needed} (weights {weights}, KV cache {kv}, buffers {buffers})")]
    OutOfMemory { ordinal: usize, name: String, needed: u64, free: u64, weights: u64, kv: u64, buffers: u64 },
    #[error("CUDA: {0}")]
    Driver(String),
    #[error(transparent)]
    Load(#[from] gptoss_engine::LoadError),
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
    Vec::new()
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
    let _ = (config, max_context, max_sequences);
    MemoryNeeds { weights: 0, kv: 0, buffers: 0 }
}

/// How to open a model on a GPU.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// The device, 0 for the first.
    pub ordinal: usize,
    pub max_context: usize,
    pub max_sequences: usize,
}

/// Loads a checkpoint folder or GGUF file onto the GPU.
pub fn open(path: &Path, opts: &CudaOptions) -> Result<Box<dyn Runner>, CudaError> {
    let _ = (path, opts);
    Err(CudaError::NoDriver)
}

/// Random weights of `config`'s shape made directly in device memory (no checkpoint: the
/// 120b does not fit the disks of most GPU machines), for `gptoss bench --synth`.
pub fn synth(config: &ModelConfig, seed: u64, opts: &CudaOptions) -> Result<Box<dyn Runner>, CudaError> {
    let _ = (config, seed, opts);
    Err(CudaError::NoDriver)
}
