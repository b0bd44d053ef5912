//! gpt-oss from checkpoint files to tokens: loading and validation, the forward pass, the
//! KV cache, sampling and the o200k_harmony tokenizer. Synchronous; no async runtime.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generator;
pub mod gguf;
pub mod harmony;
pub mod kv_cache;
pub mod mlx;
pub mod model;
mod ops;
pub mod prefix_cache;
pub mod profile;
pub mod rng;
pub mod runner;
pub mod safetensors;
pub mod sampler;
pub mod synth;
pub mod tokenizer;
pub mod w4a16;
pub mod weights;
pub mod workspace;

pub use config::{Layout, ModelConfig};
pub use error::{EngineError, LoadError};
pub use kv_cache::{KvCache, SeqId};
pub use model::{Logits, LogitsRequest, Model, SeqChunk, Trace};
pub use runner::{CpuRunner, Runner, Snapshot};
pub use sampler::{Sampled, Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
pub use workspace::Workspace;
