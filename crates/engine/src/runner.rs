//! The seam between what runs the model and everything above it: a model with its KV cache on
//! one device. `generate`, `chat`, `run`, `bench`, `perplexity` and the server hold a
//! `Box<dyn Runner>` and never ask which device it is: [`CpuRunner`] runs [`Model`] (the float32
//! reference and the CPU kernels), and `gptoss_cuda::CudaRunner` runs the same forward pass
//! on an NVIDIA GPU with the same [`Trace`] names.

use std::any::Any;

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv_cache::{KvCache, KvSnapshot, SeqId};
use crate::model::{Logits, Model, SeqChunk, Trace};
use crate::prefix_cache::PrefixCacheStats;
use crate::sampler::{pick_on_host, PickSpec, Sampled};
use crate::workspace::Workspace;

/// A sequence's cache state at some length, to rewind to later ([`Runner::restore`]): what
/// the device needs beyond the length (the sliding-window rings), in the device's own form.
pub struct Snapshot {
    /// Tokens the sequence held when the snapshot was taken.
    pub len: usize,
    pub data: Box<dyn Any + Send + Sync>,
}

/// Alternatives [`Runner::forward_pick`] reports per row at most (OpenAI's top_logprobs limit).
pub const MAX_PICK_ALTERNATIVES: usize = 20;

pub trait Runner: Send {
    fn config(&self) -> &ModelConfig;
    /// Where it runs, for logs: `cpu (avx512bf16 kernels)`, `cuda:0 (NVIDIA H200)`.
    fn device(&self) -> String;
    /// Tokens one sequence may hold.
    fn max_context(&self) -> usize;
    /// Sequences it can hold at once (a GPU's cache is sized for them when it is created).
    fn max_sequences(&self) -> usize;
    /// A new empty sequence; an error when [`Runner::max_sequences`] are held already.
    fn add_sequence(&mut self) -> Result<SeqId, EngineError>;
    /// Frees the sequence's cache. False if it did not exist.
    fn remove_sequence(&mut self, seq: SeqId) -> bool;
    /// Tokens the sequence holds (the position of its next token).
    fn seq_len(&self, seq: SeqId) -> Option<usize>;
    /// What it takes to rewind the sequence to its current length later.
    fn snapshot(&self, seq: SeqId) -> Option<Snapshot>;
    /// Rewinds the sequence to a snapshot taken from it when it was at most as long as now.
    /// False, and nothing changed, otherwise.
    fn restore(&mut self, seq: SeqId, snap: &Snapshot) -> bool;
    /// Appends each chunk to its sequence; logits for the positions the chunks ask for. The
    /// whole batch is checked first: on an error no sequence has changed.
    fn forward(&mut self, batch: &[SeqChunk]) -> Result<&Logits, EngineError>;
    /// [`Runner::forward`], handing every named intermediate to `trace` (slow: for comparing
    /// devices layer by layer).
    fn forward_traced(&mut self, batch: &[SeqChunk], trace: Trace) -> Result<&Logits, EngineError>;
    /// The last forward pass's logits, moved out (to outlive the next call).
    fn take_logits(&mut self) -> Logits;
    /// Hands logits from [`Runner::take_logits`] back, for the next pass to reuse.
    fn restore_logits(&mut self, logits: Logits);
    /// Bytes held for sequences' keys and values.
    fn cache_bytes(&self) -> usize;
    /// Keeps up to `bytes` of processed prompt blocks for later prompts that start the same
    /// way (0: off). False when this runner cannot cache prefixes.
    fn set_prefix_cache_bytes(&mut self, bytes: usize) -> bool {
        bytes == 0
    }
    /// Gives an empty sequence the longest cached prefix of `prompt` that leaves its last
    /// token to compute; returns how many tokens it now holds (0: none).
    fn attach_prefix(&mut self, _seq: SeqId, _prompt: &[u32]) -> usize {
        0
    }
    fn prefix_cache_stats(&self) -> PrefixCacheStats {
        PrefixCacheStats::default()
    }
    /// Weight bytes one decoded token reads (the bandwidth bound of generation).
    fn bytes_per_token(&self) -> u64;
    /// [`Runner::bytes_per_token`] by forward-pass stage, for the ones this runner times
    /// (`bench --profile`); empty where it does not.
    fn stage_bytes(&self) -> Vec<(crate::profile::Stage, u64)> {
        Vec::new()
    }
    /// [`Runner::forward`] for greedy decoding: the most likely next token of each row that
    /// asked for logits (in the order of [`Logits::rows`]), without handing the logits over.
    /// A GPU picks them on the device instead of copying 804 KB per row back.
    fn forward_greedy(&mut self, batch: &[SeqChunk]) -> Result<Vec<u32>, EngineError> {
        let logits = self.forward(batch)?;
        Ok((0..logits.rows.len()).map(|i| crate::sampler::argmax(logits.row(i))).collect())
    }
    /// [`Runner::forward`], then each logits row's next token picked as `picks[row]` says
    /// (rows in the order of [`Logits::rows`]). A GPU picks them beside the logits
    /// ([`Runner::picks_on_device`]); here they are picked from the logits on the host by the
    /// same rule ([`pick_on_host`]).
    fn forward_pick(&mut self, batch: &[SeqChunk], picks: &[PickSpec]) -> Result<Vec<Sampled>, EngineError> {
        let logits = self.forward(batch)?;
        if picks.len() != logits.rows.len() {
            return Err(EngineError::PickCount { rows: logits.rows.len(), picks: picks.len() });
        }
        Ok(picks.iter().enumerate().map(|(i, p)| pick_on_host(logits.row(i), p)).collect())
    }
    /// Whether [`Runner::forward_pick`] saves copying logits back (a GPU does).
    fn picks_on_device(&self) -> bool {
        false
    }
    /// The device memory's read bandwidth in bytes/s, measured now, when the runner measures
    /// its own (a GPU); None where the caller measures it (host memory).
    fn read_bandwidth(&mut self) -> Option<f64> {
        None
    }
}

/// [`Model`] on the CPU, with its cache and buffers.
pub struct CpuRunner {
    pub model: Model,
    cache: KvCache,
    ws: Workspace,
}

impl CpuRunner {
    pub fn new(model: Model, max_context: usize) -> Self {
        let cache = KvCache::new(&model.config, max_context);
        CpuRunner { model, cache, ws: Workspace::new() }
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
}

impl Runner for CpuRunner {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn device(&self) -> String {
        format!("cpu ({:?} kernels)", self.model.kernels())
    }

    fn max_context(&self) -> usize {
        self.cache.max_context()
    }

    fn max_sequences(&self) -> usize {
        usize::MAX
    }

    fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
        Ok(self.cache.add_sequence())
    }

    fn remove_sequence(&mut self, seq: SeqId) -> bool {
        self.cache.remove_sequence(seq)
    }

    fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.cache.len(seq)
    }

    fn snapshot(&self, seq: SeqId) -> Option<Snapshot> {
        let snap = self.cache.snapshot(seq)?;
        Some(Snapshot { len: snap.len, data: Box::new(snap) })
    }

    fn restore(&mut self, seq: SeqId, snap: &Snapshot) -> bool {
        match snap.data.downcast_ref::<KvSnapshot>() {
            Some(s) => self.cache.restore(seq, s),
            None => false,
        }
    }

    fn forward(&mut self, batch: &[SeqChunk]) -> Result<&Logits, EngineError> {
        self.model.forward_in(&mut self.ws, &mut self.cache, batch)
    }

    fn forward_traced(&mut self, batch: &[SeqChunk], trace: Trace) -> Result<&Logits, EngineError> {
        self.model.forward_in_traced(&mut self.ws, &mut self.cache, batch, trace)
    }

    fn take_logits(&mut self) -> Logits {
        self.ws.take_logits()
    }

    fn restore_logits(&mut self, logits: Logits) {
        self.ws.restore_logits(logits)
    }

    fn cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    fn set_prefix_cache_bytes(&mut self, bytes: usize) -> bool {
        self.cache.set_prefix_cache_bytes(bytes)
    }

    fn attach_prefix(&mut self, seq: SeqId, prompt: &[u32]) -> usize {
        self.cache.attach_prefix(seq, prompt)
    }

    fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.cache.prefix_cache_stats()
    }

    fn bytes_per_token(&self) -> u64 {
        self.model.weights.bytes_per_token(self.model.config.experts_per_token)
    }

    fn stage_bytes(&self) -> Vec<(crate::profile::Stage, u64)> {
        self.model.weights.stage_bytes(self.model.config.experts_per_token)
    }
}
