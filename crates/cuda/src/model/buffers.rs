//! What a runner allocates besides the weights: activations and scratch for a pass, and the
//! KV cache (pages for full-attention layers, rings for sliding ones), with the byte counts
//! `open` checks before allocating anything.

use gptoss_engine::ModelConfig;

use super::kernels::{DevPick, MAX_TOP};
use crate::driver::{DevBuf, Gpu};
use crate::kv::{KvBook, PAGE_TOKENS};
use crate::routing::{max_items, max_rows};
use crate::CudaError;

/// Tokens of one pass at most (longer batches run as several passes).
pub const MAX_PASS_TOKENS: usize = 2048;
/// Rows of logits one pass may produce (804 KB each for the real vocabulary).
pub const MAX_PASS_LOGIT_ROWS: usize = 128;
/// Bytes of attention partial sums (rows × key ranges × heads × 66 floats).
pub const PARTIAL_BYTES: usize = 256 << 20;

/// Where each pass's per-row metadata lives on the device (i32 offsets into `meta`).
#[derive(Default, Clone, Copy)]
pub(super) struct MetaPtrs {
    pub(super) tokens: u64,
    pub(super) positions: u64,
    pub(super) row_item: u64,
    pub(super) item_slot: u64,
    pub(super) item_start: u64,
    pub(super) item_row0: u64,
    pub(super) item_len: u64,
    pub(super) qblocks: u64,
    pub(super) logit_rows: u64,
}

/// Activations and scratch for passes of up to `tokens` rows.
pub(super) struct Buffers {
    pub(super) x: DevBuf,
    pub(super) norm: DevBuf,
    pub(super) qkv: DevBuf,
    pub(super) attn: DevBuf,
    pub(super) block_out: DevBuf,
    pub(super) router_logits: DevBuf,
    pub(super) experts: DevBuf,
    pub(super) gates: DevBuf,
    pub(super) prow: DevBuf,
    pub(super) row_src: DevBuf,
    pub(super) items: DevBuf,
    pub(super) counts: DevBuf,
    pub(super) act: DevBuf,
    pub(super) down: DevBuf,
    pub(super) part: DevBuf,
    pub(super) final_norm: DevBuf,
    pub(super) logits: DevBuf,
    pub(super) meta: DevBuf,
    /// `[logit rows]` greedy picks, or picks by spec.
    pub(super) picked: DevBuf,
    /// `[logit rows]` the picks' specs, log-probabilities, alternatives `[rows][MAX_TOP]`.
    pub(super) pick_specs: DevBuf,
    pub(super) pick_lp: DevBuf,
    pub(super) pick_top_ids: DevBuf,
    pub(super) pick_top_lps: DevBuf,
}

/// Device bytes of the buffers of a runner of `cfg` (what [`Buffers::new`] allocates).
pub fn buffer_bytes(cfg: &ModelConfig, max_sequences: usize) -> u64 {
    let t = MAX_PASS_TOKENS;
    let (h, e, k) = (cfg.hidden_size, cfg.num_experts, cfg.experts_per_token);
    let qkv = cfg.q_dim() + 2 * cfg.kv_dim();
    let rows = max_rows(t * k, e);
    let floats = 3 * t * h + t * qkv + t * cfg.q_dim() + t * e + 2 * t * k + rows * cfg.intermediate_size + rows * h;
    let logit_rows = MAX_PASS_LOGIT_ROWS.max(max_sequences);
    let ints = t * k + rows + 3 * max_items(t * k, e) + 2 + 16 * t;
    (4 * (floats + ints + logit_rows * h + logit_rows * cfg.vocab_size) + PARTIAL_BYTES + crate::weights::STAGING_BYTES)
        as u64
}

impl Buffers {
    pub(super) fn new(gpu: &Gpu, cfg: &ModelConfig, logit_rows: usize) -> Result<Self, CudaError> {
        let t = MAX_PASS_TOKENS;
        let (h, e, k) = (cfg.hidden_size, cfg.num_experts, cfg.experts_per_token);
        let qkv = cfg.q_dim() + 2 * cfg.kv_dim();
        let moe_rows = max_rows(t * k, e);
        let moe_items = max_items(t * k, e);
        let f = |n: usize| gpu.alloc(4 * n);
        Ok(Buffers {
            x: f(t * h)?,
            norm: f(t * h)?,
            qkv: f(t * qkv)?,
            attn: f(t * cfg.q_dim())?,
            block_out: f(t * h)?,
            router_logits: f(t * e)?,
            experts: f(t * k)?,
            gates: f(t * k)?,
            prow: f(t * k)?,
            row_src: f(moe_rows)?,
            items: f(3 * moe_items)?,
            counts: f(2)?,
            act: f(moe_rows * cfg.intermediate_size)?,
            down: f(moe_rows * h)?,
            part: gpu.alloc(PARTIAL_BYTES)?,
            final_norm: f(logit_rows * h)?,
            logits: f(logit_rows * cfg.vocab_size)?,
            meta: f(16 * t)?,
            picked: f(logit_rows)?,
            pick_specs: gpu.alloc(logit_rows * std::mem::size_of::<DevPick>())?,
            pick_lp: f(logit_rows)?,
            pick_top_ids: f(logit_rows * MAX_TOP)?,
            pick_top_lps: f(logit_rows * MAX_TOP)?,
        })
    }
}

/// A layer's keys and values: a page pool (full attention) or per-slot rings (sliding).
pub(super) struct LayerKv {
    pub(super) k: DevBuf,
    pub(super) v: DevBuf,
    pub(super) window: Option<usize>,
}

/// Device bytes of the KV cache of `max_sequences` sequences of `max_context` tokens.
pub fn kv_bytes(cfg: &ModelConfig, max_context: usize, max_sequences: usize) -> u64 {
    let kvd = cfg.kv_dim() as u64;
    let pages = (max_sequences * KvBook::pages_for(max_context)) as u64;
    let mut total = 4 * pages; // the page table
    for l in 0..cfg.num_layers {
        total += 2
            * 4
            * kvd
            * match cfg.window(l) {
                Some(w) => (max_sequences * w) as u64,
                None => pages * PAGE_TOKENS as u64,
            };
    }
    total
}

/// The rings of one sequence (f32 keys then values, per sliding layer).
pub(super) struct RingSnapshot {
    pub(super) rings: Vec<Vec<f32>>,
}
