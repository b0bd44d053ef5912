//! Everything a forward pass writes besides the KV cache, kept between calls so that a
//! decode step allocates nothing once the buffers have grown to the largest batch seen.

use std::ops::Range;

use gptoss_kernels::scalar::KvSpan;

use crate::model::Logits;
use crate::ops::{ExpertGroup, OpsBuffers};

/// The intermediates of [`crate::Model::forward_in`]; one per thread that runs the model.
/// Buffers are sized for the batch at hand and their contents are meaningless between calls.
#[derive(Default)]
pub struct Workspace {
    pub(crate) plan: BatchPlan,
    /// `[T, H]` residual stream.
    pub(crate) x: Vec<f32>,
    /// `[T, H]` attn_norm, then mlp_norm.
    pub(crate) norm: Vec<f32>,
    /// `[T, NQ·HD]`, `[T, NKV·HD]`, `[T, NKV·HD]`.
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    /// `[HD/2]` RoPE factors of one position.
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// Every batch item's visible keys, items one after another (`span_ranges`).
    pub(crate) spans: Vec<KvSpan<'static>>,
    pub(crate) span_ranges: Vec<Range<usize>>,
    /// `[T, NQ·HD]` attention output, heads in order.
    pub(crate) attn: Vec<f32>,
    /// `[T, H]` attn_out, then moe_out: what a block adds to the residual stream.
    pub(crate) block_out: Vec<f32>,
    pub(crate) moe: MoeBuffers,
    /// `[R, H]` final_norm of the rows that want logits.
    pub(crate) final_norm: Vec<f32>,
    pub(crate) logits: Logits,
    pub(crate) ops: OpsBuffers,
    /// (largest matmul K, most keys) the pool threads' scratch was last reserved for.
    pub(crate) thread_scratch_for: Option<(usize, usize)>,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last pass's logits, moved out (to outlive the next call).
    pub fn take_logits(&mut self) -> Logits {
        std::mem::take(&mut self.logits)
    }

    /// Hands logits from [`Workspace::take_logits`] back, for the next pass to reuse.
    pub fn restore_logits(&mut self, logits: Logits) {
        self.logits = logits;
    }
}

/// The MoE block's intermediates. Slot s = token·k + j is the token's j-th expert; slots
/// are grouped by expert into rows 0..T·k of the per-expert buffers.
#[derive(Default)]
pub(crate) struct MoeBuffers {
    /// `[T, E]`.
    pub(crate) router_logits: Vec<f32>,
    /// `[T, k]` chosen experts, best first, and their softmax weights.
    pub(crate) experts: Vec<usize>,
    pub(crate) gates: Vec<f32>,
    /// `[E + 1]` first grouped row of each expert.
    pub(crate) starts: Vec<usize>,
    /// `[T·k]` grouped row of each slot.
    pub(crate) row_of_slot: Vec<usize>,
    /// Active experts and their grouped rows.
    pub(crate) groups: Vec<ExpertGroup>,
    /// `[T·k, H]` mlp_norm rows in grouped order.
    pub(crate) xs: Vec<f32>,
    /// `[T·k, 2I]` interleaved (gate, up).
    pub(crate) gate_up: Vec<f32>,
    /// `[T·k, I]`.
    pub(crate) act: Vec<f32>,
    /// `[T·k, H]`.
    pub(crate) down: Vec<f32>,
}

/// The flattened batch: one row per token, in batch order.
#[derive(Default)]
pub(crate) struct BatchPlan {
    pub(crate) tokens: Vec<u32>,
    pub(crate) positions: Vec<usize>,
    pub(crate) item_of_row: Vec<usize>,
    pub(crate) items: Vec<PlanItem>,
    /// (batch item, row) for each row that wants logits.
    pub(crate) logit_rows: Vec<(usize, usize)>,
}

pub(crate) struct PlanItem {
    pub(crate) seq: crate::kv_cache::SeqId,
    /// Position of the chunk's first token.
    pub(crate) start: usize,
    pub(crate) rows: Range<usize>,
}

impl BatchPlan {
    pub(crate) fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.item_of_row.clear();
        self.items.clear();
        self.logit_rows.clear();
    }
}

/// The first `len` elements of `buf`, growing it if it is shorter. The contents are
/// whatever the last user left: callers overwrite every element they read.
pub(crate) fn sized<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// `v` emptied and retyped (in practice: given another lifetime) keeping its allocation,
/// so lists of borrowed slices can be rebuilt every call without allocating. The standard
/// library collects a mapped `IntoIter` in place when the element layouts match; the
/// allocation test (`tests/no_alloc.rs`) would catch it if that ever stopped.
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the vector was cleared")).collect()
}
