//! The gpt-oss forward pass (spec §4), one screen per block. Every intermediate has a name
//! and can be observed through [`Trace`] to compare with a reference layer by layer.
//!
//! Activations are f32 (the reference path). One call runs a batch of chunks, each from its
//! own sequence at its own positions; a single sequence is just a batch of one.

use std::ops::Range;
use std::path::Path;

use gptoss_kernels::bf16::bf16_slice_to_f32;
use gptoss_kernels::scalar::{self, KvSpan, YarnRope, SWIGLU_ALPHA};
use gptoss_kernels::Kernels;
use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::config::{Layout, ModelConfig};
use crate::error::{EngineError, LoadError};
use crate::kv_cache::{KvCache, SeqId};
use crate::ops;
use crate::profile::{self, Stage};
use crate::weights::{AttentionWeights, DenseFormat, ModelWeights, MoeWeights, Mxfp4Layout};

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

/// The MXFP4 layout `kernels` read: repacked for the integer kernels, else as stored.
fn expert_layout_for(kernels: &Kernels) -> Mxfp4Layout {
    if kernels.i16_act.is_some() {
        Mxfp4Layout::Rows16
    } else {
        Mxfp4Layout::Rows
    }
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
        weights.set_expert_layout(expert_layout_for(kernels));
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

    /// Runs on `kernels` from now on, repacking the MXFP4 experts if they read another layout.
    pub fn set_kernels(&mut self, kernels: &'static Kernels) {
        self.kernels = kernels;
        self.weights.set_expert_layout(expert_layout_for(kernels));
    }

    pub fn forward(&self, cache: &mut KvCache, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
        self.forward_traced(cache, batch, &mut |_, _, _| {})
    }

    pub fn forward_traced(&self, cache: &mut KvCache, batch: &[SeqChunk], trace: Trace) -> Result<Logits, EngineError> {
        let cfg = &self.config;
        let plan = BatchPlan::new(cache, batch, cfg.vocab_size)?;
        if plan.tokens.is_empty() {
            return Ok(Logits { vocab: cfg.vocab_size, data: Vec::new(), rows: Vec::new() });
        }
        let (t, h) = (plan.tokens.len(), cfg.hidden_size);

        let timer = profile::time(Stage::Embedding);
        let mut x = vec![0f32; t * h]; // [T, H] residual stream
        for (row, &tok) in x.chunks_exact_mut(h).zip(&plan.tokens) {
            bf16_slice_to_f32(self.weights.embedding.row(tok as usize), row);
        }
        drop(timer);
        trace("embedding", None, &x);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            let attn_out = self.attention_block(l, &layer.attn, &x, &plan, cache, trace);
            add_assign(&mut x, &attn_out);
            trace("attn_residual", Some(l), &x);

            let moe_out = self.moe_block(l, &layer.moe, &x, trace);
            add_assign(&mut x, &moe_out);
            trace("moe_residual", Some(l), &x);
        }

        // Only the positions that asked for logits go through the final norm and unembedding.
        let timer = profile::time(Stage::FinalNorm);
        let rows: Vec<usize> = plan.logit_rows.iter().map(|&(_, r)| r).collect();
        let mut final_norm = vec![0f32; rows.len() * h]; // [R, H]
        for (out, &r) in final_norm.chunks_exact_mut(h).zip(&rows) {
            (self.kernels.rmsnorm_f32)(&x[r * h..(r + 1) * h], &self.weights.norm, cfg.rms_norm_eps, out);
        }
        drop(timer);
        trace("final_norm", None, &final_norm);
        let timer = profile::time(Stage::Unembedding);
        let mut logits = vec![0f32; rows.len() * cfg.vocab_size]; // [R, V]
        if !rows.is_empty() {
            ops::linear_dense(self.kernels, &final_norm, rows.len(), &self.weights.unembedding, None, &mut logits);
        }
        drop(timer);
        trace("logits", None, &logits);

        for (item, chunk) in batch.iter().enumerate() {
            cache.advance(chunk.seq, chunk.tokens.len());
            debug_assert_eq!(cache.len(chunk.seq), Some(plan.items[item].start + chunk.tokens.len()));
        }
        let rows = plan.logit_rows.iter().map(|&(item, r)| LogitsRow { item, position: plan.positions[r] }).collect();
        Ok(Logits { vocab: cfg.vocab_size, data: logits, rows })
    }

    /// RMSNorm, q/k/v projections, YaRN RoPE, sink attention over the cache, output projection.
    /// Appends this layer's keys and values to the cache. Returns `[T, H]`.
    fn attention_block(
        &self,
        l: usize,
        w: &AttentionWeights,
        x: &[f32],
        plan: &BatchPlan,
        cache: &mut KvCache,
        trace: Trace,
    ) -> Vec<f32> {
        let cfg = &self.config;
        let (t, h, hd) = (plan.tokens.len(), cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());

        let timer = profile::time(Stage::AttnNorm);
        let attn_norm = rmsnorm_rows(self.kernels, x, &w.norm, cfg.rms_norm_eps, h); // [T, H]
        drop(timer);
        trace("attn_norm", Some(l), &attn_norm);

        let timer = profile::time(Stage::Qkv);
        let mut q = vec![0f32; t * qd]; // [T, NQ·HD]
        let mut k = vec![0f32; t * kvd]; // [T, NKV·HD]
        let mut v = vec![0f32; t * kvd]; // [T, NKV·HD]
        ops::linear_dense(self.kernels, &attn_norm, t, &w.q, Some(&w.q_bias), &mut q);
        ops::linear_dense(self.kernels, &attn_norm, t, &w.k, Some(&w.k_bias), &mut k);
        ops::linear_dense(self.kernels, &attn_norm, t, &w.v, Some(&w.v_bias), &mut v);
        drop(timer);

        let timer = profile::time(Stage::Rope);

        let half = hd / 2;
        let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
        for (i, &pos) in plan.positions.iter().enumerate() {
            self.rope.cos_sin(pos, &mut cos, &mut sin);
            (self.kernels.rope_apply_f32)(&mut q[i * qd..(i + 1) * qd], &cos, &sin);
            (self.kernels.rope_apply_f32)(&mut k[i * kvd..(i + 1) * kvd], &cos, &sin);
        }
        drop(timer);
        trace("q", Some(l), &q);
        trace("k", Some(l), &k);
        trace("v", Some(l), &v);

        let timer = profile::time(Stage::Attention);
        // Each chunk sees its sequence's cached positions, then its own new keys.
        let spans: Vec<Vec<KvSpan>> = plan
            .items
            .iter()
            .map(|item| {
                let mut s = cache.spans(item.seq, l);
                let r = &item.rows;
                s.push(KvSpan {
                    first_pos: item.start,
                    k: &k[r.start * kvd..r.end * kvd],
                    v: &v[r.start * kvd..r.end * kvd],
                });
                s
            })
            .collect();
        let window = cfg.window(l);
        let group = cfg.num_heads / cfg.num_kv_heads; // query heads per kv head
        let scale = 1.0 / (hd as f32).sqrt();
        let mut attn = vec![0f32; t * qd]; // [T, NQ·HD], heads in order
                                           // One task per (row, kv head): the group's query heads are adjacent in q and attn.
        ops::for_each_chunk(&mut attn, group * hd, |i, out, scores| {
            let (row, kvh) = (i / cfg.num_kv_heads, i % cfg.num_kv_heads);
            let pos = plan.positions[row];
            let lo = first_visible_key(pos, window);
            let heads = kvh * group..(kvh + 1) * group;
            let qg = &q[row * qd + heads.start * hd..row * qd + heads.end * hd];
            (self.kernels.attend_heads_f32)(
                qg,
                &spans[plan.item_of_row[row]],
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
        drop(spans);
        for item in &plan.items {
            let r = &item.rows;
            cache.write(item.seq, l, item.start, &k[r.start * kvd..r.end * kvd], &v[r.start * kvd..r.end * kvd]);
        }
        drop(timer);
        trace("attn", Some(l), &attn);

        let timer = profile::time(Stage::AttnOut);

        let mut attn_out = vec![0f32; t * h]; // [T, H]
        ops::linear_dense(self.kernels, &attn, t, &w.out, Some(&w.out_bias), &mut attn_out);
        drop(timer);
        trace("attn_out", Some(l), &attn_out);
        attn_out
    }

    /// RMSNorm, router top-k, the selected experts (gate_up, clamped SwiGLU, down) and their
    /// weighted sum. Tokens are grouped by expert so each expert's weights are read once.
    fn moe_block(&self, l: usize, w: &MoeWeights, x: &[f32], trace: Trace) -> Vec<f32> {
        let cfg = &self.config;
        let (h, i_dim, n_exp, k) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token);
        let t = x.len() / h;

        let timer = profile::time(Stage::MlpNorm);
        let mlp_norm = rmsnorm_rows(self.kernels, x, &w.norm, cfg.rms_norm_eps, h); // [T, H]
        drop(timer);
        trace("mlp_norm", Some(l), &mlp_norm);

        let timer = profile::time(Stage::Router);
        let mut router_logits = vec![0f32; t * n_exp]; // [T, E]
        ops::linear_bf16_f32a(self.kernels, &mlp_norm, t, &w.router, Some(&w.router_bias), &mut router_logits);
        trace("router_logits", Some(l), &router_logits);
        let mut experts = vec![0usize; t * k]; // [T, k], best first
        let mut gates = vec![0f32; t * k]; // [T, k], softmax over the k
        for ((logits, e), g) in
            router_logits.chunks_exact(n_exp).zip(experts.chunks_exact_mut(k)).zip(gates.chunks_exact_mut(k))
        {
            scalar::router_top_k(logits, e, g);
        }
        drop(timer);

        // Tokens grouped by expert: slots s = token·k + j routed to each active expert.
        let mut slots_of: Vec<Vec<usize>> = vec![Vec::new(); n_exp];
        for (s, &e) in experts.iter().enumerate() {
            slots_of[e].push(s);
        }
        let active: Vec<(usize, Vec<usize>)> =
            slots_of.into_iter().enumerate().filter(|(_, s)| !s.is_empty()).collect();
        let xes: Vec<Vec<f32>> = active // [n_e, H] per expert
            .iter()
            .map(|(_, slots)| slots.iter().flat_map(|&s| &mlp_norm[(s / k) * h..(s / k + 1) * h]).copied().collect())
            .collect();

        let timer = profile::time(Stage::GateUp);
        let mut gate_ups: Vec<Vec<f32>> = xes.iter().map(|x| vec![0f32; x.len() / h * 2 * i_dim]).collect(); // [n_e, 2I] interleaved (gate, up)
        let mut jobs: Vec<ops::ExpertJob> = active
            .iter()
            .zip(&xes)
            .zip(gate_ups.iter_mut())
            .map(|(((e, _), x), y)| ops::ExpertJob {
                expert: *e,
                x,
                bias: Some(&w.gate_up_bias[e * 2 * i_dim..(e + 1) * 2 * i_dim]),
                y,
            })
            .collect();
        ops::linear_mxfp4_experts(self.kernels, &w.gate_up, &mut jobs);
        drop(jobs);
        drop(timer);

        let timer = profile::time(Stage::Swiglu);
        let swiglu = self.kernels.swiglu_interleaved_f32;
        let acts: Vec<Vec<f32>> = gate_ups // [n_e, I]
            .par_iter()
            .map(|gu| {
                let mut act = vec![0f32; gu.len() / 2];
                for (a, u) in act.chunks_exact_mut(i_dim).zip(gu.chunks_exact(2 * i_dim)) {
                    swiglu(u, SWIGLU_ALPHA, cfg.swiglu_limit, a);
                }
                act
            })
            .collect();
        drop(timer);

        let timer = profile::time(Stage::Down);
        let mut downs: Vec<Vec<f32>> = acts.iter().map(|a| vec![0f32; a.len() / i_dim * h]).collect(); // [n_e, H]
        let mut jobs: Vec<ops::ExpertJob> = active
            .iter()
            .zip(&acts)
            .zip(downs.iter_mut())
            .map(|(((e, _), x), y)| ops::ExpertJob { expert: *e, x, bias: Some(&w.down_bias[e * h..(e + 1) * h]), y })
            .collect();
        ops::linear_mxfp4_experts(self.kernels, &w.down, &mut jobs);
        drop(jobs);
        let mut expert_out = vec![0f32; t * k * h]; // [T, k, H]
        for ((_, slots), down) in active.iter().zip(&downs) {
            for (src, &s) in down.chunks_exact(h).zip(slots) {
                expert_out[s * h..(s + 1) * h].copy_from_slice(src);
            }
        }
        drop(timer);

        let timer = profile::time(Stage::MoeSum);

        // moe_out[t] = Σ_j gates[t, j]·expert_out[t, j], summed best expert first.
        let mut moe_out = vec![0f32; t * h]; // [T, H]
        for (tok, out) in moe_out.chunks_exact_mut(h).enumerate() {
            for j in 0..k {
                let g = gates[tok * k + j];
                for (o, &y) in out.iter_mut().zip(&expert_out[(tok * k + j) * h..(tok * k + j + 1) * h]) {
                    *o += g * y;
                }
            }
        }
        drop(timer);
        trace("moe_out", Some(l), &moe_out);
        moe_out
    }
}

/// The flattened batch: one row per token, in batch order.
struct BatchPlan {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    item_of_row: Vec<usize>,
    items: Vec<PlanItem>,
    /// (batch item, row) for each row that wants logits.
    logit_rows: Vec<(usize, usize)>,
}

struct PlanItem {
    seq: SeqId,
    /// Position of the chunk's first token.
    start: usize,
    rows: Range<usize>,
}

impl BatchPlan {
    /// Checks everything up front, so a forward pass never fails half way through the cache.
    fn new(cache: &KvCache, batch: &[SeqChunk], vocab: usize) -> Result<Self, EngineError> {
        let mut plan =
            BatchPlan { tokens: vec![], positions: vec![], item_of_row: vec![], items: vec![], logit_rows: vec![] };
        for (i, chunk) in batch.iter().enumerate() {
            let id = chunk.seq.0;
            let start = cache.len(chunk.seq).ok_or(EngineError::UnknownSequence(id))?;
            if batch[..i].iter().any(|c| c.seq == chunk.seq) {
                return Err(EngineError::DuplicateSequence(id));
            }
            if chunk.tokens.is_empty() {
                return Err(EngineError::EmptyChunk(id));
            }
            check_tokens(chunk.tokens, vocab)?;
            let needed = start + chunk.tokens.len();
            if needed > cache.max_context() {
                return Err(EngineError::ContextOverflow { seq: id, needed, limit: cache.max_context() });
            }
            let first_row = plan.tokens.len();
            plan.tokens.extend_from_slice(chunk.tokens);
            plan.positions.extend(start..needed);
            plan.item_of_row.extend(std::iter::repeat_n(i, chunk.tokens.len()));
            let rows = first_row..plan.tokens.len();
            match chunk.logits {
                LogitsRequest::None => {}
                LogitsRequest::Last => plan.logit_rows.push((i, rows.end - 1)),
                LogitsRequest::All => plan.logit_rows.extend(rows.clone().map(|r| (i, r))),
            }
            plan.items.push(PlanItem { seq: chunk.seq, start, rows });
        }
        Ok(plan)
    }
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

fn rmsnorm_rows(kern: &Kernels, x: &[f32], gain: &[f32], eps: f32, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, row) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        (kern.rmsnorm_f32)(row, gain, eps, o);
    }
    out
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
