//! The gpt-oss forward pass on one GPU, block by block in the order of the CPU's `model.rs`
//! (spec §4), with the same [`Trace`] names. Activations stay f32; the matmuls split them
//! into two bf16 terms on the tensor cores (see kernels/linear.cuh).

use std::ffi::c_void;

use gptoss_engine::model::Trace;
use gptoss_engine::sampler::{PickSpec, Sampled};
use gptoss_engine::{EngineError, Logits, ModelConfig, SeqChunk};
use gptoss_kernels::scalar::YarnRope;

use crate::args;
use crate::driver::{DevBuf, Gpu};
use crate::kv::{KvBook, PAGE_TOKENS};
use crate::plan::{self, PassLimits, PassMeta};
use crate::routing::{max_items, max_rows};
use crate::weights::{Dense16, DeviceWeights, Experts4};
use crate::CudaError;

mod buffers;
mod kernels;
mod profile;
mod runner;

pub use buffers::{buffer_bytes, kv_bytes};
use buffers::{Buffers, LayerKv, MetaPtrs, RingSnapshot, MAX_PASS_LOGIT_ROWS, MAX_PASS_TOKENS, PARTIAL_BYTES};
use kernels::AttnArgs;
pub(crate) use kernels::{launch_linear, DevPick, LinearArgs, RouteArgs};
pub use kernels::{smem_of, KernelSet, KERNELS, MAX_TOP};

/// What a pass hands back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum OutMode {
    Logits,
    Greedy,
    Pick,
}

/// Graphs kept at most (one per decode shape seen; dropped all at once past this).
const MAX_GRAPHS: usize = 256;
pub struct CudaRunner {
    gpu: Gpu,
    cfg: ModelConfig,
    w: DeviceWeights,
    book: KvBook,
    kv: Vec<LayerKv>,
    page_table: DevBuf,
    rope_cos: DevBuf,
    rope_sin: DevBuf,
    b: Buffers,
    kernels: KernelSet,
    limits: PassLimits,
    meta_host: Vec<i32>,
    pass: PassMeta,
    logits: Logits,
    bytes_per_token: u64,
    /// V zeros: the unembedding's bias (it has none).
    zero_bias: DevBuf,
    /// What a pass hands back: logits, greedy picks, or picks by `picks`.
    out: OutMode,
    picked: Vec<u32>,
    /// forward_pick: the picks of the batch's logits rows, the next one's index, and what
    /// was picked.
    picks: Vec<PickSpec>,
    pick_cursor: usize,
    sampled: Vec<Sampled>,
    /// Kernel timings by label (ms, calls, bytes), when profiling.
    prof: Option<std::collections::HashMap<String, (f64, usize, u64)>>,
    prof_label: &'static str,
    prof_bytes: u64,
    /// Decode steps recorded as graphs, by (rows, key ranges, logit rows, greedy).
    graphs: std::collections::HashMap<(usize, usize, usize, OutMode), crate::driver::Graph>,
    /// GPTOSS_CUDA_GRAPHS=0 turns them off.
    use_graphs: bool,
}

impl CudaRunner {
    pub fn new(
        mut gpu: Gpu,
        cfg: ModelConfig,
        w: DeviceWeights,
        max_context: usize,
        max_sequences: usize,
    ) -> Result<Self, CudaError> {
        let max_context = max_context.min(cfg.max_context).max(1);
        if cfg.head_dim != 64
            || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads)
            || (cfg.num_heads / cfg.num_kv_heads) * plan::QUERY_BLOCK > 64
        {
            return Err(CudaError::Unsupported(format!(
                "the CUDA kernels need head_dim 64 and at most 8 query heads per key/value head (this model: head_dim {}, {} heads, {} kv heads)",
                cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
            )));
        }
        if cfg.experts_per_token > 8 || cfg.num_experts > 256 {
            return Err(CudaError::Unsupported(format!(
                "the CUDA router handles up to 256 experts and 8 per token (this model: {} and {})",
                cfg.num_experts, cfg.experts_per_token
            )));
        }
        let book = KvBook::new(max_sequences, max_context);
        let kvd = cfg.kv_dim();
        let mut kv = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let window = cfg.window(l);
            let cells = match window {
                Some(w) => max_sequences * w,
                None => book.total_pages() * PAGE_TOKENS,
            };
            kv.push(LayerKv { k: gpu.alloc_zeroed(4 * cells * kvd)?, v: gpu.alloc_zeroed(4 * cells * kvd)?, window });
        }
        let page_table = gpu.alloc_zeroed(4 * book.total_pages().max(1))?;
        // The CPU's own YaRN code, so positions rotate by the same bits.
        let rope = YarnRope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_factor,
            cfg.rope_original_context as f64,
            cfg.rope_beta_fast,
            cfg.rope_beta_slow,
            cfg.rope_truncate,
        );
        let half = cfg.head_dim / 2;
        let (mut cos, mut sin) = (vec![0f32; max_context * half], vec![0f32; max_context * half]);
        for p in 0..max_context {
            rope.cos_sin(p, &mut cos[p * half..(p + 1) * half], &mut sin[p * half..(p + 1) * half]);
        }
        let rope_cos = gpu.alloc(cos.len() * 4)?;
        let rope_sin = gpu.alloc(sin.len() * 4)?;
        gpu.upload(rope_cos.ptr, &cos)?;
        gpu.upload(rope_sin.ptr, &sin)?;
        let logit_rows = MAX_PASS_LOGIT_ROWS.max(max_sequences);
        let b = Buffers::new(&gpu, &cfg, logit_rows)?;
        let row_splits = PARTIAL_BYTES / (4 * (cfg.head_dim + 2) * cfg.num_heads);
        let limits = PassLimits { tokens: MAX_PASS_TOKENS, logit_rows, row_splits };
        let bytes_per_token = cfg.bytes_read_per_token();
        // Kernels are looked up once, so no pass fails on a missing one.
        for name in KERNELS {
            gpu.func(name, smem_of(name))?;
        }
        let logits = Logits { vocab: cfg.vocab_size, data: Vec::new(), rows: Vec::new() };
        let zero_bias = gpu.alloc_zeroed(4 * cfg.vocab_size)?;
        Ok(CudaRunner {
            zero_bias,
            out: OutMode::Logits,
            picked: Vec::new(),
            picks: Vec::new(),
            pick_cursor: 0,
            sampled: Vec::new(),
            prof: None,
            prof_label: "",
            prof_bytes: 0,
            graphs: Default::default(),
            use_graphs: std::env::var("GPTOSS_CUDA_GRAPHS").as_deref() != Ok("0"),
            gpu,
            cfg,
            w,
            book,
            kv,
            page_table,
            rope_cos,
            rope_sin,
            b,
            kernels: KernelSet::from_env(),
            limits,
            meta_host: Vec::new(),
            pass: PassMeta::default(),
            logits,
            bytes_per_token,
        })
    }

    pub fn set_kernels(&mut self, k: KernelSet) {
        self.kernels = k;
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn gpu_mut(&mut self) -> &mut Gpu {
        &mut self.gpu
    }

    fn launch(
        &mut self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        let f = self.gpu.func(name, smem.max(smem_of(name)))?;
        self.gpu.launch(f, grid, block, smem, args)
    }

    fn forward_all(&mut self, batch: &[SeqChunk], mut trace: Option<Trace>) -> Result<(), EngineError> {
        self.gpu.bind().map_err(dev)?;
        plan::validate(&self.book, batch, self.cfg.vocab_size)?;
        self.logits.data.clear();
        self.logits.rows.clear();
        if batch.is_empty() {
            return Ok(());
        }
        let lens: Vec<usize> = batch.iter().map(|c| self.book.len(c.seq).unwrap_or(0)).collect();
        for pieces in plan::passes(batch, &lens, self.limits) {
            for p in &pieces {
                let len = self.book.len(p.seq).unwrap_or(0);
                if let Some(u) = self.book.reserve(p.seq, len + p.len)? {
                    let at = self.page_table.ptr + 4 * (u.slot as usize * self.book.max_pages() + u.first) as u64;
                    self.gpu.upload(at, &u.pages).map_err(dev)?;
                }
            }
            let mut pass = std::mem::take(&mut self.pass);
            pass.build(&pieces, batch, &self.book);
            let r = self.run_pass(&pass, &mut trace);
            self.pass = pass;
            r.map_err(dev)?;
            for p in &pieces {
                self.book.advance(p.seq, p.len);
            }
        }
        Ok(())
    }

    fn upload_meta(&mut self, pass: &PassMeta) -> Result<MetaPtrs, CudaError> {
        let h = &mut self.meta_host;
        h.clear();
        let base = self.b.meta.ptr;
        let mut put = |v: &[i32]| {
            let at = base + 4 * h.len() as u64;
            h.extend_from_slice(v);
            at
        };
        let m = MetaPtrs {
            tokens: put(&pass.tokens),
            positions: put(&pass.positions),
            row_item: put(&pass.row_item),
            item_slot: put(&pass.item_slot),
            item_start: put(&pass.item_start),
            item_row0: put(&pass.item_row0),
            item_len: put(&pass.item_len),
            qblocks: put(&pass.qblocks),
            logit_rows: put(&pass.logit_rows),
        };
        assert!(h.len() * 4 <= self.b.meta.bytes, "pass metadata outgrew its buffer");
        self.gpu.upload(base, h)?;
        Ok(m)
    }

    /// Downloads `[rows, width]` f32 at `ptr` for a trace.
    fn traced(
        &self,
        trace: &mut Option<Trace<'_>>,
        name: &str,
        layer: Option<usize>,
        ptr: u64,
        rows: usize,
        width: usize,
    ) -> Result<(), CudaError> {
        if let Some(t) = trace.as_mut() {
            let mut host = vec![0f32; rows * width];
            self.gpu.download(&mut host, ptr)?;
            t(name, layer, &host);
        }
        Ok(())
    }

    fn run_pass(&mut self, pass: &PassMeta, trace: &mut Option<Trace<'_>>) -> Result<(), CudaError> {
        let m = self.upload_meta(pass)?;
        let n_rows = pass.logit_rows.len();
        let mode = if trace.is_some() || n_rows == 0 { OutMode::Logits } else { self.out };
        if mode == OutMode::Pick {
            let specs: Vec<DevPick> =
                self.picks[self.pick_cursor..self.pick_cursor + n_rows].iter().map(DevPick::from).collect();
            self.gpu.upload(self.b.pick_specs.ptr, &specs)?;
        }
        // A decode step (one token per sequence) is the same kernels with the same arguments
        // every time for a given shape: record it once as a graph and replay it, instead of
        // ~300 launches from the host per token.
        let graphable = self.use_graphs
            && self.gpu.graphs()
            && self.kernels == KernelSet::Fast
            && trace.is_none()
            && self.prof.is_none()
            && pass.item_len.iter().all(|&l| l == 1);
        if graphable {
            let key = (pass.rows(), pass.splits, n_rows, mode);
            if !self.graphs.contains_key(&key) {
                if self.graphs.len() >= MAX_GRAPHS {
                    self.graphs.clear();
                }
                self.gpu.begin_capture()?;
                let r = self.enqueue(pass, &m, trace, mode);
                let g = self.gpu.end_capture();
                r?;
                self.graphs.insert(key, g?);
            }
            if let Some(g) = self.graphs.get(&key) {
                self.gpu.replay(g)?;
            }
        } else {
            self.enqueue(pass, &m, trace, mode)?;
        }
        let v = self.cfg.vocab_size;
        if mode == OutMode::Greedy {
            let mut ids = vec![0i32; n_rows];
            self.gpu.download(&mut ids, self.b.picked.ptr)?;
            self.picked.extend(ids.iter().map(|&i| i as u32));
        } else if mode == OutMode::Pick {
            let (mut ids, mut lps) = (vec![0i32; n_rows], vec![0f32; n_rows]);
            let (mut tids, mut tlps) = (vec![0i32; n_rows * MAX_TOP], vec![0f32; n_rows * MAX_TOP]);
            self.gpu.download(&mut ids, self.b.picked.ptr)?;
            self.gpu.download(&mut lps, self.b.pick_lp.ptr)?;
            if self.picks[self.pick_cursor..self.pick_cursor + n_rows].iter().any(|p| p.top_n > 0) {
                self.gpu.download(&mut tids, self.b.pick_top_ids.ptr)?;
                self.gpu.download(&mut tlps, self.b.pick_top_lps.ptr)?;
            }
            for r in 0..n_rows {
                let n = self.picks[self.pick_cursor + r].top_n.min(MAX_TOP);
                let top = (0..n).map(|j| (tids[r * MAX_TOP + j] as u32, tlps[r * MAX_TOP + j])).collect();
                self.sampled.push(Sampled { token: ids[r] as u32, logprob: lps[r], top_logprobs: top });
            }
            self.pick_cursor += n_rows;
        } else if n_rows > 0 {
            let start = self.logits.data.len();
            self.logits.data.resize(start + n_rows * v, 0.0);
            self.gpu.download(&mut self.logits.data[start..], self.b.logits.ptr)?;
            if let Some(tr) = trace.as_mut() {
                tr("logits", None, &self.logits.data[start..]);
            }
        } else {
            self.gpu.sync()?;
        }
        self.logits.rows.extend_from_slice(&pass.logit_meta);
        Ok(())
    }

    /// Every kernel of one pass, on the stream (recorded when capturing).
    fn enqueue(
        &mut self,
        pass: &PassMeta,
        m: &MetaPtrs,
        trace: &mut Option<Trace<'_>>,
        mode: OutMode,
    ) -> Result<(), CudaError> {
        let cfg = &self.cfg;
        let (h, qd, kvd, layers, vocab) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.num_layers, cfg.vocab_size);
        let (heads, half) = ((cfg.num_heads + cfg.num_kv_heads) as i32, (cfg.head_dim / 2) as i32);
        let t = pass.rows();
        let qkv_w = qd + 2 * kvd;
        let (ti, hi) = (t as u32, h as i32);

        let (emb, tok, x) = (self.w.embedding.ptr, m.tokens, self.b.x.ptr);
        self.launch("embed_rows", (ti, 1, 1), 256, 0, &mut args![emb, tok, hi, x])?;
        self.traced(trace, "embedding", None, x, t, h)?;

        for l in 0..layers {
            // --- attention block
            self.rmsnorm(self.b.x.ptr, 0, self.w.layers[l].attn_norm.ptr, t, self.b.norm.ptr)?;
            self.traced(trace, "attn_norm", Some(l), self.b.norm.ptr, t, h)?;
            let (norm, qkv) = (self.b.norm.ptr, self.b.qkv.ptr);
            self.linear(Lin::Dense(l, DenseSel::Qkv), t, norm, h, 0, qkv, qkv_w, 0, 0, None)?;
            let (stride, pos, cs, sn) = (qkv_w as i32, m.positions, self.rope_cos.ptr, self.rope_sin.ptr);
            self.launch("rope_qk", (ti, 1, 1), 256, 0, &mut args![qkv, stride, pos, cs, sn, heads, half])?;
            if trace.is_some() {
                let mut all = vec![0f32; t * qkv_w];
                self.gpu.download(&mut all, qkv)?;
                let tr = trace.as_mut().expect("checked");
                let part = |from: usize, w: usize| -> Vec<f32> {
                    all.chunks_exact(qkv_w).flat_map(|r| r[from..from + w].iter().copied()).collect()
                };
                tr("q", Some(l), &part(0, qd));
                tr("k", Some(l), &part(qd, kvd));
                tr("v", Some(l), &part(qd + kvd, kvd));
            }
            self.attention(l, pass, m)?;
            self.traced(trace, "attn", Some(l), self.b.attn.ptr, t, qd)?;
            let (attn, out, x) = (self.b.attn.ptr, self.b.block_out.ptr, self.b.x.ptr);
            self.linear(Lin::Dense(l, DenseSel::Out), t, attn, qd, 0, out, h, x, 1, None)?;
            self.traced(trace, "attn_out", Some(l), out, t, h)?;
            self.traced(trace, "attn_residual", Some(l), x, t, h)?;

            // --- MoE block
            self.rmsnorm(self.b.x.ptr, 0, self.w.layers[l].mlp_norm.ptr, t, self.b.norm.ptr)?;
            self.traced(trace, "mlp_norm", Some(l), self.b.norm.ptr, t, h)?;
            self.moe(l, t, trace)?;
        }

        let n_rows = pass.logit_rows.len();
        if n_rows > 0 {
            self.rmsnorm(self.b.x.ptr, m.logit_rows, self.w.norm.ptr, n_rows, self.b.final_norm.ptr)?;
            self.traced(trace, "final_norm", None, self.b.final_norm.ptr, n_rows, h)?;
            let (fnorm, lg) = (self.b.final_norm.ptr, self.b.logits.ptr);
            self.linear(Lin::Unembed, n_rows, fnorm, h, 0, lg, vocab, 0, 0, None)?;
            let v = vocab as i32;
            match mode {
                // The picked tokens only: a few bytes a row instead of 804 KB of logits.
                OutMode::Greedy => {
                    let out = self.b.picked.ptr;
                    self.launch("argmax_rows", (n_rows as u32, 1, 1), 1024, 0, &mut args![lg, v, out])?;
                }
                OutMode::Pick => {
                    let (specs, out, lp) = (self.b.pick_specs.ptr, self.b.picked.ptr, self.b.pick_lp.ptr);
                    let (tids, tlps, mt) = (self.b.pick_top_ids.ptr, self.b.pick_top_lps.ptr, MAX_TOP as i32);
                    self.launch(
                        "pick_tokens",
                        (n_rows as u32, 1, 1),
                        1024,
                        0,
                        &mut args![lg, v, specs, out, lp, tids, tlps, mt],
                    )?;
                }
                OutMode::Logits => {}
            }
        }
        Ok(())
    }

    fn rmsnorm(&mut self, x: u64, src_rows: u64, gain: u64, rows: usize, out: u64) -> Result<(), CudaError> {
        let (eps, h) = (self.cfg.rms_norm_eps, self.cfg.hidden_size as i32);
        self.launch("rmsnorm_rows", (rows as u32, 1, 1), 256, 0, &mut args![x, src_rows, gain, eps, h, out])
    }

    fn attention(&mut self, l: usize, pass: &PassMeta, m: &MetaPtrs) -> Result<(), CudaError> {
        let cfg = &self.cfg;
        let t = pass.rows();
        let kv = &self.kv[l];
        let a = AttnArgs {
            qkv: self.b.qkv.ptr,
            qkv_stride: (cfg.q_dim() + 2 * cfg.kv_dim()) as i32,
            kc: kv.k.ptr,
            vc: kv.v.ptr,
            page_table: if kv.window.is_some() { 0 } else { self.page_table.ptr },
            max_pages: self.book.max_pages() as i32,
            page: PAGE_TOKENS as i32,
            window: kv.window.unwrap_or(0) as i32,
            pos: m.positions,
            row_item: m.row_item,
            item_slot: m.item_slot,
            item_start: m.item_start,
            item_row0: m.item_row0,
            item_len: m.item_len,
            qblocks: m.qblocks,
            sinks: self.w.layers[l].sinks.ptr,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            nq: cfg.num_heads as i32,
            nkv: cfg.num_kv_heads as i32,
            t: t as i32,
            split_keys: plan::SPLIT_KEYS as i32,
            splits: pass.splits as i32,
            part: self.b.part.ptr,
            out: self.b.attn.ptr,
        };
        match self.kernels {
            KernelSet::Fast => {
                let blocks = (pass.qblocks.len() / 2) as u32;
                self.launch(
                    "attention_partial",
                    (blocks, cfg.num_kv_heads as u32, pass.splits as u32),
                    256,
                    0,
                    &mut args![a],
                )?;
                self.launch("attention_combine", (t as u32, 1, 1), 256, 0, &mut args![a])
            }
            KernelSet::Simple => {
                let n = (t * cfg.num_heads).div_ceil(64) as u32;
                self.launch("attention_ref", (n, 1, 1), 64, 0, &mut args![a])?;
                self.launch("kv_store", (t as u32, 1, 1), 256, 0, &mut args![a])
            }
        }
    }

    fn moe(&mut self, l: usize, t: usize, trace: &mut Option<Trace<'_>>) -> Result<(), CudaError> {
        let cfg = &self.cfg;
        let (h, e, k, i_dim) = (cfg.hidden_size, cfg.num_experts, cfg.experts_per_token, cfg.intermediate_size);
        let (x, norm, lw) = (self.b.norm.ptr, self.b.norm.ptr, &self.w.layers[l]);
        let (w, bias, out) = (lw.router.ptr, lw.router_bias.ptr, self.b.router_logits.ptr);
        let (ti, hi, ei) = (t as i32, h as i32, e as i32);
        self.launch(
            "router_f32",
            (e as u32, t.div_ceil(8) as u32, 1),
            128,
            0,
            &mut args![x, ti, hi, w, bias, ei, out],
        )?;
        self.traced(trace, "router_logits", Some(l), out, t, e)?;

        let item_ntiles = self.item_ntiles(t);
        let r = RouteArgs {
            logits: out,
            t: ti,
            e: ei,
            k: k as i32,
            experts: self.b.experts.ptr,
            gates: self.b.gates.ptr,
            prow: self.b.prow.ptr,
            row_src: self.b.row_src.ptr,
            items: self.b.items.ptr,
            counts: self.b.counts.ptr,
            max_rows: max_rows(t * k, e) as i32,
            max_items: max_items(t * k, e) as i32,
            item_ntiles: item_ntiles as i32,
        };
        self.launch("route_tokens", (1, 1, 1), 1024, 0, &mut args![r])?;

        let (act, down) = (self.b.act.ptr, self.b.down.ptr);
        let (items, counts, row_src) = (self.b.items.ptr, self.b.counts.ptr, self.b.row_src.ptr);
        let moe = Some(MoeItems { items, n_items: counts, max_items: max_items(t * k, e), rows: max_rows(t * k, e) });
        self.linear(Lin::Experts(l, ExpertSel::GateUp), t, norm, h, row_src, act, i_dim, 0, 2, moe)?;
        self.linear(Lin::Experts(l, ExpertSel::Down), t, act, i_dim, 0, down, h, 0, 0, moe)?;

        let (prow, gates, moe_out, xr) = (self.b.prow.ptr, self.b.gates.ptr, self.b.block_out.ptr, self.b.x.ptr);
        let ki = k as i32;
        self.launch("moe_combine", (t as u32, 1, 1), 256, 0, &mut args![down, prow, gates, ki, hi, moe_out, xr])?;
        self.traced(trace, "moe_out", Some(l), moe_out, t, h)?;
        self.traced(trace, "moe_residual", Some(l), xr, t, h)?;
        Ok(())
    }

    /// n-tiles per work item of a pass of `t` tokens: the decode kernel's NT, or the GEMM's 8.
    fn item_ntiles(&self, t: usize) -> usize {
        match (self.kernels, t <= 64) {
            (KernelSet::Fast, true) => t.div_ceil(8).next_power_of_two(),
            _ => 8,
        }
    }

    /// y = x Wᵀ + b for `t` tokens (the pass), dense or through the experts' work items.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        which: Lin,
        t: usize,
        x: u64,
        x_stride: usize,
        x_rows: u64,
        y: u64,
        y_stride: usize,
        resid: u64,
        mode: i32,
        moe: Option<MoeItems>,
    ) -> Result<(), CudaError> {
        let swiglu_limit = self.cfg.swiglu_limit;
        let (mx, w, scales, w_stride, s_stride, bias, shape, slices, rows_out) = match which {
            Lin::Dense(l, sel) => {
                let lw = &self.w.layers[l];
                let (d, b): (&Dense16, u64) = match sel {
                    DenseSel::Qkv => (&lw.qkv, lw.qkv_bias.ptr),
                    DenseSel::Out => (&lw.out, lw.out_bias.ptr),
                };
                (false, d.buf.ptr, 0, 0, 0, b, d.shape, d.slices, d.shape.rows)
            }
            Lin::Unembed => {
                let d = &self.w.unembedding;
                (false, d.buf.ptr, 0, 0, 0, self.zero_bias.ptr, d.shape, d.slices, d.shape.rows)
            }
            Lin::Experts(l, sel) => {
                let lw = &self.w.layers[l];
                let (ex, b): (&Experts4, u64) = match sel {
                    ExpertSel::GateUp => (&lw.gate_up, lw.gate_up_bias.ptr),
                    ExpertSel::Down => (&lw.down, lw.down_bias.ptr),
                };
                (
                    true,
                    ex.codes.ptr,
                    ex.scales.ptr,
                    ex.code_stride() as i64,
                    ex.scale_stride_words() as i64,
                    b,
                    ex.shape,
                    ex.slices,
                    ex.shape.rows,
                )
            }
        };
        let ntiles = t.div_ceil(8);
        let (items, n_items, grid_items, rows) = match moe {
            Some(mi) => (mi.items, mi.n_items, mi.max_items, mi.rows),
            None => (0, 0, ntiles.div_ceil(8), t),
        };
        let a = LinearArgs {
            w,
            scales,
            w_stride,
            s_stride,
            bias,
            x,
            x_rows,
            y,
            resid,
            items,
            n_items,
            ntiles: ntiles as i32,
            rows: rows as i32,
            r: rows_out as i32,
            mt: shape.mt as i32,
            k: shape.cols as i32,
            kb: shape.kb as i32,
            s: slices as i32,
            x_stride: x_stride as i32,
            y_stride: y_stride as i32,
            mode,
            swiglu_limit,
        };
        assert!(x_stride.is_multiple_of(4), "activation rows must be 16-byte aligned (cp.async)");
        if self.prof.is_some() {
            let per_matrix = match which {
                Lin::Experts(..) => (shape.frag4_code_words() + shape.frag4_scale_words()) as u64 * 4,
                _ => shape.frag16_words() as u64 * 4,
            };
            let mats =
                if moe.is_some() { self.cfg.experts_per_token.min(t * self.cfg.experts_per_token) } else { 1 } as u64;
            self.prof_bytes = per_matrix * mats;
            self.prof_label = match which {
                Lin::Dense(_, DenseSel::Qkv) => "qkv",
                Lin::Dense(_, DenseSel::Out) => "attn out",
                Lin::Experts(_, ExpertSel::GateUp) => "experts gate_up + swiglu",
                Lin::Experts(_, ExpertSel::Down) => "experts down",
                Lin::Unembed => "unembedding",
            };
        }
        let kernels = self.kernels;
        self.launch_timed(|gpu| launch_linear(gpu, &a, mx, t, kernels, grid_items))
    }

    /// Runs `f` (which enqueues one kernel), timing it when profiling.
    fn launch_timed(&mut self, f: impl FnOnce(&mut Gpu) -> Result<(), CudaError>) -> Result<(), CudaError> {
        if self.prof.is_none() {
            return f(&mut self.gpu);
        }
        let (e0, e1) = (self.gpu.event()?, self.gpu.event()?);
        self.gpu.record(&e0)?;
        f(&mut self.gpu)?;
        self.gpu.record(&e1)?;
        let ms = e0.elapsed_ms(&e1)? as f64;
        let (label, bytes) = (std::mem::take(&mut self.prof_label), std::mem::take(&mut self.prof_bytes));
        if let Some(p) = self.prof.as_mut() {
            let e = p.entry(label.to_string()).or_insert((0.0, 0, 0));
            e.0 += ms;
            e.1 += 1;
            e.2 += bytes;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum DenseSel {
    Qkv,
    Out,
}

#[derive(Clone, Copy)]
enum ExpertSel {
    GateUp,
    Down,
}

#[derive(Clone, Copy)]
enum Lin {
    Dense(usize, DenseSel),
    Experts(usize, ExpertSel),
    Unembed,
}

#[derive(Clone, Copy)]
struct MoeItems {
    items: u64,
    n_items: u64,
    max_items: usize,
    rows: usize,
}

fn dev(e: CudaError) -> EngineError {
    EngineError::Device(e.to_string())
}
