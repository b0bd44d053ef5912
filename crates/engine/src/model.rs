//! The gpt-oss forward pass (spec §4), one screen per block. Every intermediate has a name
//! and can be observed through [`Trace`] to compare with a reference layer by layer.
//!
//! Activations are f32 (the reference path). One call runs a batch of chunks, each from its
//! own sequence at its own positions; a single sequence is just a batch of one.

use std::path::Path;

use gptoss_kernels::scalar::{self, KvSpan, YarnRope, SWIGLU_ALPHA};
use gptoss_kernels::Kernels;
use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::config::{Layout, ModelConfig};
use crate::error::{EngineError, LoadError};
use crate::kv_cache::{KvCache, SeqId};
use crate::ops;
use crate::profile::{self, Stage};
use crate::weights::{AttentionWeights, Bf16Layout, DenseFormat, ModelWeights, MoeWeights, Mxfp4Layout};
use crate::workspace::{recycle, sized, BatchPlan, MoeBuffers, PlanItem, Workspace};

pub struct Model {
    pub config: ModelConfig,
    /// The kernels it runs on ([`Kernels::scalar`] is the float32 reference); set with
    /// [`Model::set_kernels`], which also lays the experts out for them.
    kernels: &'static Kernels,
    pub layout: Layout,
    /// How the dense attention and unembedding weights are held (q8 when a GGUF holds
    /// them in Q8_0, whatever was asked).
    pub dense: DenseFormat,
    pub weights: ModelWeights,
    rope: YarnRope,
}

/// Tokens to append to one sequence in a batched forward call.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub logits: LogitsRequest,
}

/// Which positions of a chunk need logits (the unembedding is the largest matmul).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRequest {
    None,
    Last,
    All,
}

/// Logits `[rows, vocab]` for the positions that asked for them, in batch order.
#[derive(Clone, Debug, Default)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
    pub rows: Vec<LogitsRow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogitsRow {
    /// Index of the chunk in the batch.
    pub item: usize,
    /// Absolute position of the token whose next-token logits these are.
    pub position: usize,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The logits of the last requested position of batch item `item`.
    pub fn last_for(&self, item: usize) -> Option<&[f32]> {
        self.rows.iter().rposition(|r| r.item == item).map(|i| self.row(i))
    }
}

/// The bf16 layout of the attention and unembedding matrices `kernels` read: tiled for the
/// bf16-activation kernels, else as stored.
fn dense_layout_for(kernels: &Kernels) -> Bf16Layout {
    if kernels.bf16_act.is_some() {
        Bf16Layout::Tiles8
    } else {
        Bf16Layout::Rows
    }
}

/// The MXFP4 layout `kernels` read: repacked for the integer kernels, else as stored.
fn expert_layout_for(kernels: &Kernels) -> Mxfp4Layout {
    if kernels.i16_act.is_some() {
        Mxfp4Layout::Rows16
    } else {
        Mxfp4Layout::Rows
    }
}

/// The layout of 4-bit affine matrices (MLX): repacked where the kernels have an integer
/// kernel for them, else as stored.
fn affine_layout_for(kernels: &Kernels) -> Mxfp4Layout {
    match kernels.i16_act.as_ref().and_then(|ia| ia.matmul_rows_i16a_affine4r16w) {
        Some(_) => Mxfp4Layout::Rows16,
        None => Mxfp4Layout::Rows,
    }
}

/// Puts every matrix in the layout `kernels` read, dense ones first: late in a load the page
/// cache holds the checkpoint and the kernel often has no 2 MiB block free, so the last copies
/// land partly in 4 KiB pages, and every byte of a dense matrix is read for every token where
/// an expert's is read for 1 in 8. (With the experts repacked first, /proc/PID/pagemap showed
/// ~860 of the 1210 MiB of attention matrices of a 20b load in 4 KiB pages.)
fn set_layouts_for(weights: &mut ModelWeights, kernels: &Kernels) {
    weights.set_dense_layout(dense_layout_for(kernels));
    weights.set_affine_layout(affine_layout_for(kernels));
    weights.set_expert_layout(expert_layout_for(kernels), affine_layout_for(kernels));
}

/// Receives named intermediates `[T, width]` (layer None for whole-model tensors).
pub type Trace<'a> = &'a mut dyn FnMut(&str, Option<usize>, &[f32]);

impl Model {
    /// Opens a checkpoint folder of either safetensors layout, or a llama.cpp GGUF file;
    /// every tensor is checked against the config.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_with(path, DenseFormat::Bf16)
    }

    /// With the dense attention and unembedding weights held as `dense`.
    pub fn load_with(path: &Path, dense: DenseFormat) -> Result<Self, LoadError> {
        let ck = Checkpoint::open(path)?;
        Self::from_checkpoint_with(&ck, dense)
    }

    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self, LoadError> {
        Self::from_checkpoint_with(ck, DenseFormat::Bf16)
    }

    pub fn from_checkpoint_with(ck: &Checkpoint, dense: DenseFormat) -> Result<Self, LoadError> {
        let kernels = Kernels::from_env()?;
        let mut weights = ModelWeights::load(ck)?;
        weights.set_dense_format(dense);
        let dense = weights.dense_format();
        set_layouts_for(&mut weights, kernels);
        weights.populate();
        let c = &ck.config;
        let rope = YarnRope::new(
            c.head_dim,
            c.rope_theta,
            c.rope_factor,
            c.rope_original_context as f64,
            c.rope_beta_fast,
            c.rope_beta_slow,
            c.rope_truncate,
        );
        Ok(Model { config: c.clone(), kernels, layout: ck.layout, dense, weights, rope })
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// Runs on `kernels` from now on, repacking the MXFP4 experts and the dense bf16 matrices
    /// if they read other layouts.
    pub fn set_kernels(&mut self, kernels: &'static Kernels) {
        self.kernels = kernels;
        set_layouts_for(&mut self.weights, kernels);
    }

    /// One forward pass with a fresh [`Workspace`]; loops should hold one and call
    /// [`Model::forward_in`], which allocates nothing once warm.
    pub fn forward(&self, cache: &mut KvCache, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
        self.forward_traced(cache, batch, &mut |_, _, _| {})
    }

    pub fn forward_traced(&self, cache: &mut KvCache, batch: &[SeqChunk], trace: Trace) -> Result<Logits, EngineError> {
        let mut ws = Workspace::new();
        self.forward_in_traced(&mut ws, cache, batch, trace)?;
        Ok(ws.take_logits())
    }

    /// Runs `batch` with `ws` holding every intermediate; the logits live in `ws` until the
    /// next call.
    ///
    /// The pass runs on a thread of the pool, so its parallel loops are the pool's own joins:
    /// called from outside, the caller hands it over once and waits, instead of once per
    /// matmul (each a lock, a wake-up and, now and then, an allocation in rayon's queue).
    /// The other pool threads stay awake until it ends (`ops::with_workers_awake`).
    pub fn forward_in<'w>(
        &self,
        ws: &'w mut Workspace,
        cache: &mut KvCache,
        batch: &[SeqChunk],
    ) -> Result<&'w Logits, EngineError> {
        ops::with_workers_awake(|| self.forward_in_traced(&mut *ws, cache, batch, &mut |_, _, _| {}).map(|_| ()))?;
        Ok(&ws.logits)
    }

    pub fn forward_in_traced<'w>(
        &self,
        ws: &'w mut Workspace,
        cache: &mut KvCache,
        batch: &[SeqChunk],
        trace: Trace,
    ) -> Result<&'w Logits, EngineError> {
        let cfg = &self.config;
        ws.plan.build(cache, batch, cfg.vocab_size)?;
        let (t, h) = (ws.plan.tokens.len(), cfg.hidden_size);
        let scratch_for = (cfg.hidden_size.max(cfg.q_dim()).max(cfg.intermediate_size), cache.max_context());
        if ws.thread_scratch_for != Some(scratch_for) {
            ops::reserve_thread_scratch(scratch_for.0, scratch_for.1);
            ws.thread_scratch_for = Some(scratch_for);
        }
        ws.logits.vocab = cfg.vocab_size;
        if t == 0 {
            ws.logits.data.clear();
            ws.logits.rows.clear();
            return Ok(&ws.logits);
        }

        let timer = profile::time(Stage::Embedding);
        let x = sized(&mut ws.x, t * h); // [T, H] residual stream
        for (row, &tok) in x.chunks_exact_mut(h).zip(&ws.plan.tokens) {
            self.weights.embedding.row_f32(tok as usize, row);
        }
        drop(timer);
        trace("embedding", None, x);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.attention_block(l, &layer.attn, ws, cache, trace);
            add_assign(&mut ws.x[..t * h], &ws.block_out[..t * h]);
            trace("attn_residual", Some(l), &ws.x[..t * h]);

            self.moe_block(l, &layer.moe, ws, trace);
            add_assign(&mut ws.x[..t * h], &ws.block_out[..t * h]);
            trace("moe_residual", Some(l), &ws.x[..t * h]);
        }

        // Only the positions that asked for logits go through the final norm and unembedding.
        let Workspace { plan, x, final_norm, logits, ops, .. } = ws;
        let n_rows = plan.logit_rows.len();
        let timer = profile::time(Stage::FinalNorm);
        let final_norm = sized(final_norm, n_rows * h); // [R, H]
        for (out, &(_, r)) in final_norm.chunks_exact_mut(h).zip(&plan.logit_rows) {
            (self.kernels.rmsnorm_f32)(&x[r * h..(r + 1) * h], &self.weights.norm, cfg.rms_norm_eps, out);
        }
        drop(timer);
        trace("final_norm", None, final_norm);
        let timer = profile::time(Stage::Unembedding);
        exactly(&mut logits.data, n_rows * cfg.vocab_size); // [R, V]
        if n_rows > 0 {
            ops::linear_dense(self.kernels, final_norm, n_rows, &self.weights.unembedding, None, &mut logits.data, ops);
        }
        drop(timer);
        trace("logits", None, &logits.data);

        for (item, chunk) in batch.iter().enumerate() {
            cache.advance(chunk.seq, chunk.tokens);
            debug_assert_eq!(cache.len(chunk.seq), Some(plan.items[item].start + chunk.tokens.len()));
        }
        logits.rows.clear();
        logits.rows.extend(plan.logit_rows.iter().map(|&(item, r)| LogitsRow { item, position: plan.positions[r] }));
        Ok(logits)
    }

    /// RMSNorm, q/k/v projections, YaRN RoPE, sink attention over the cache, output projection.
    /// Appends this layer's keys and values to the cache. Reads `ws.x`, writes
    /// `ws.block_out [T, H]`.
    fn attention_block(&self, l: usize, w: &AttentionWeights, ws: &mut Workspace, cache: &mut KvCache, trace: Trace) {
        let cfg = &self.config;
        let Workspace { plan, x, norm, q, k, v, cos, sin, spans, span_ranges, attn, block_out, ops, .. } = ws;
        let (t, h, hd) = (plan.tokens.len(), cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let x = &x[..t * h];

        let timer = profile::time(Stage::AttnNorm);
        let attn_norm = sized(norm, t * h); // [T, H]
        rmsnorm_rows(self.kernels, x, &w.norm, cfg.rms_norm_eps, h, attn_norm);
        drop(timer);
        trace("attn_norm", Some(l), attn_norm);

        let timer = profile::time(Stage::Qkv);
        let q = sized(q, t * qd); // [T, NQ·HD]
        let k = sized(k, t * kvd); // [T, NKV·HD]
        let v = sized(v, t * kvd); // [T, NKV·HD]
        ops::linear_dense(self.kernels, attn_norm, t, &w.q, Some(&w.q_bias), q, ops);
        ops::linear_dense(self.kernels, attn_norm, t, &w.k, Some(&w.k_bias), k, ops);
        ops::linear_dense(self.kernels, attn_norm, t, &w.v, Some(&w.v_bias), v, ops);
        drop(timer);

        let timer = profile::time(Stage::Rope);
        let half = hd / 2;
        let (cos, sin) = (sized(cos, half), sized(sin, half));
        for (i, &pos) in plan.positions.iter().enumerate() {
            self.rope.cos_sin(pos, cos, sin);
            (self.kernels.rope_apply_f32)(&mut q[i * qd..(i + 1) * qd], cos, sin);
            (self.kernels.rope_apply_f32)(&mut k[i * kvd..(i + 1) * kvd], cos, sin);
        }
        drop(timer);
        trace("q", Some(l), q);
        trace("k", Some(l), k);
        trace("v", Some(l), v);

        let timer = profile::time(Stage::Attention);
        // Each chunk sees its sequence's cached positions, then its own new keys.
        let mut item_spans: Vec<KvSpan> = recycle(std::mem::take(spans));
        span_ranges.clear();
        for item in &plan.items {
            let first = item_spans.len();
            cache.spans_into(item.seq, l, &mut item_spans);
            let r = &item.rows;
            item_spans.push(KvSpan {
                first_pos: item.start,
                k: &k[r.start * kvd..r.end * kvd],
                v: &v[r.start * kvd..r.end * kvd],
            });
            span_ranges.push(first..item_spans.len());
        }
        let window = cfg.window(l);
        let group = cfg.num_heads / cfg.num_kv_heads; // query heads per kv head
        let scale = 1.0 / (hd as f32).sqrt();
        let attn = sized(attn, t * qd); // [T, NQ·HD], heads in order
                                        // One task per (row, kv head): the group's query heads are adjacent in q and attn.
        ops::for_each_chunk(attn, group * hd, |i, out, scores| {
            let (row, kvh) = (i / cfg.num_kv_heads, i % cfg.num_kv_heads);
            let pos = plan.positions[row];
            let lo = first_visible_key(pos, window);
            let heads = kvh * group..(kvh + 1) * group;
            let qg = &q[row * qd + heads.start * hd..row * qd + heads.end * hd];
            (self.kernels.attend_heads_f32)(
                qg,
                &item_spans[span_ranges[plan.item_of_row[row]].clone()],
                kvd,
                kvh * hd,
                lo,
                pos,
                scale,
                &w.sinks[heads],
                scores,
                out,
            );
        });
        *spans = recycle(item_spans);
        for item in &plan.items {
            let r = &item.rows;
            cache.write(item.seq, l, item.start, &k[r.start * kvd..r.end * kvd], &v[r.start * kvd..r.end * kvd]);
        }
        drop(timer);
        trace("attn", Some(l), attn);

        let timer = profile::time(Stage::AttnOut);
        let attn_out = sized(block_out, t * h); // [T, H]
        ops::linear_dense(self.kernels, attn, t, &w.out, Some(&w.out_bias), attn_out, ops);
        drop(timer);
        trace("attn_out", Some(l), attn_out);
    }

    /// RMSNorm, router top-k, the selected experts (gate_up, clamped SwiGLU, down) and their
    /// weighted sum. Tokens are grouped by expert so each expert's weights are read once.
    /// Reads `ws.x`, writes `ws.block_out [T, H]`.
    fn moe_block(&self, l: usize, w: &MoeWeights, ws: &mut Workspace, trace: Trace) {
        let cfg = &self.config;
        let (h, i_dim, n_exp, k) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token);
        let Workspace { plan, x, norm, moe, block_out, ops, .. } = ws;
        let MoeBuffers { router_logits, experts, gates, starts, row_of_slot, groups, xs, gate_up, act, down } = moe;
        let t = plan.tokens.len();
        let n = t * k; // rows through the experts, one per (token, choice)
        let x = &x[..t * h];

        let timer = profile::time(Stage::MlpNorm);
        let mlp_norm = sized(norm, t * h); // [T, H]
        rmsnorm_rows(self.kernels, x, &w.norm, cfg.rms_norm_eps, h, mlp_norm);
        drop(timer);
        trace("mlp_norm", Some(l), mlp_norm);

        let timer = profile::time(Stage::Router);
        let router_logits = sized(router_logits, t * n_exp); // [T, E]
        ops::linear_router(self.kernels, mlp_norm, t, &w.router, Some(&w.router_bias), router_logits, ops);
        trace("router_logits", Some(l), router_logits);
        let experts = sized(experts, n); // [T, k], best first
        let gates = sized(gates, n); // [T, k], softmax over the k
        for ((logits, e), g) in
            router_logits.chunks_exact(n_exp).zip(experts.chunks_exact_mut(k)).zip(gates.chunks_exact_mut(k))
        {
            scalar::router_top_k(logits, e, g);
        }

        // Slots s = token·k + j grouped by expert (a counting sort, stable in s): expert e's
        // rows are ends[e-1]..ends[e] of the grouped buffers.
        let ends = sized(starts, n_exp);
        ends.fill(0);
        for &e in experts.iter() {
            ends[e] += 1;
        }
        let mut first = 0;
        for c in ends.iter_mut() {
            (*c, first) = (first, first + *c);
        }
        let row_of_slot = sized(row_of_slot, n);
        for (slot_row, &e) in row_of_slot.iter_mut().zip(experts.iter()) {
            *slot_row = ends[e];
            ends[e] += 1;
        }
        groups.clear();
        groups.extend((0..n_exp).filter_map(|e| {
            let start = if e == 0 { 0 } else { ends[e - 1] };
            (ends[e] > start).then(|| ops::ExpertGroup { expert: e, rows: start..ends[e] })
        }));
        let xs = sized(xs, n * h); // [T·k, H] grouped
        for (s, &row) in row_of_slot.iter().enumerate() {
            xs[row * h..(row + 1) * h].copy_from_slice(&mlp_norm[(s / k) * h..(s / k + 1) * h]);
        }
        drop(timer);

        let timer = profile::time(Stage::GateUp);
        let gate_up = sized(gate_up, n * 2 * i_dim); // [T·k, 2I] interleaved (gate, up)
        ops::linear_experts(self.kernels, &w.gate_up, groups, xs, &w.gate_up_bias, gate_up, ops);
        drop(timer);

        let timer = profile::time(Stage::Swiglu);
        let swiglu = self.kernels.swiglu_interleaved_f32;
        let act = sized(act, n * i_dim); // [T·k, I]
        act.par_chunks_mut(i_dim)
            .zip(gate_up.par_chunks(2 * i_dim))
            .for_each(|(a, gu)| swiglu(gu, SWIGLU_ALPHA, cfg.swiglu_limit, a));
        drop(timer);

        let timer = profile::time(Stage::Down);
        let down = sized(down, n * h); // [T·k, H]
        ops::linear_experts(self.kernels, &w.down, groups, act, &w.down_bias, down, ops);
        drop(timer);

        let timer = profile::time(Stage::MoeSum);
        // moe_out[t] = Σ_j gates[t, j]·down[row of (t, j)], summed best expert first.
        let moe_out = sized(block_out, t * h); // [T, H]
        for (tok, out) in moe_out.chunks_exact_mut(h).enumerate() {
            out.fill(0.0);
            for j in 0..k {
                let (g, row) = (gates[tok * k + j], row_of_slot[tok * k + j]);
                for (o, &y) in out.iter_mut().zip(&down[row * h..(row + 1) * h]) {
                    *o += g * y;
                }
            }
        }
        drop(timer);
        trace("moe_out", Some(l), moe_out);
    }
}

impl BatchPlan {
    /// Checks everything up front, so a forward pass never fails half way through the cache.
    fn build(&mut self, cache: &KvCache, batch: &[SeqChunk], vocab: usize) -> Result<(), EngineError> {
        self.clear();
        check_batch(batch, vocab, cache.max_context(), |s| cache.len(s))?;
        for (i, chunk) in batch.iter().enumerate() {
            let start = cache.len(chunk.seq).ok_or(EngineError::UnknownSequence(chunk.seq.0))?;
            let needed = start + chunk.tokens.len();
            let first_row = self.tokens.len();
            self.tokens.extend_from_slice(chunk.tokens);
            self.positions.extend(start..needed);
            self.item_of_row.extend(std::iter::repeat_n(i, chunk.tokens.len()));
            let rows = first_row..self.tokens.len();
            match chunk.logits {
                LogitsRequest::None => {}
                LogitsRequest::Last => self.logit_rows.push((i, rows.end - 1)),
                LogitsRequest::All => self.logit_rows.extend(rows.clone().map(|r| (i, r))),
            }
            self.items.push(PlanItem { seq: chunk.seq, start, rows });
        }
        Ok(())
    }
}

/// What every device checks before a forward pass changes anything: each chunk's sequence
/// exists (its length from `len_of`) and appears once, has tokens, all in the vocabulary,
/// and fits `max_context`.
pub fn check_batch(
    batch: &[SeqChunk],
    vocab: usize,
    max_context: usize,
    len_of: impl Fn(crate::kv_cache::SeqId) -> Option<usize>,
) -> Result<(), EngineError> {
    for (i, chunk) in batch.iter().enumerate() {
        let id = chunk.seq.0;
        let start = len_of(chunk.seq).ok_or(EngineError::UnknownSequence(id))?;
        if batch[..i].iter().any(|c| c.seq == chunk.seq) {
            return Err(EngineError::DuplicateSequence(id));
        }
        if chunk.tokens.is_empty() {
            return Err(EngineError::EmptyChunk(id));
        }
        check_tokens(chunk.tokens, vocab)?;
        let needed = start + chunk.tokens.len();
        if needed > max_context {
            return Err(EngineError::ContextOverflow { seq: id, needed, limit: max_context });
        }
    }
    Ok(())
}

/// Every id must be a row of the embedding.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), EngineError> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(&id) => Err(EngineError::TokenOutOfVocab { id, vocab }),
        None => Ok(()),
    }
}

/// The oldest position a query at `pos` attends to: a window of W keys includes the query's
/// own position, so it sees `pos - W + 1 ..= pos` (spec §4.3 step 5).
pub fn first_visible_key(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

fn rmsnorm_rows(kern: &Kernels, x: &[f32], gain: &[f32], eps: f32, width: usize, out: &mut [f32]) {
    for (o, row) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        (kern.rmsnorm_f32)(row, gain, eps, o);
    }
}

/// `buf` resized to exactly `len` (kept allocation when it shrinks).
fn exactly(buf: &mut Vec<f32>, len: usize) {
    if buf.len() > len {
        buf.truncate(len);
    } else {
        buf.resize(len, 0.0);
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::first_visible_key;

    #[test]
    fn window_of_128_includes_the_current_token() {
        // spec §6.12
        let w = Some(128);
        assert_eq!(first_visible_key(0, w), 0);
        assert_eq!(first_visible_key(127, w), 0); // 128 keys: 0..=127
        assert_eq!(first_visible_key(128, w), 1);
        assert_eq!(first_visible_key(200, w), 73);
        assert_eq!(first_visible_key(200, None), 0);
    }
}
