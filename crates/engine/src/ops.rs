//! The one place where work is split over threads. Kernels compute blocks of rows; this
//! module decides the blocks. Splitting never changes a result: every output element is
//! computed by exactly one task, in the kernel's fixed order.
//!
//! Nothing here allocates once its buffers have grown to the largest batch seen: outputs
//! and converted activations live in the caller's [`OpsBuffers`], kernel scratch in one
//! buffer per thread.

use std::cell::RefCell;
use std::ops::Range;

use gptoss_kernels::Kernels;
use rayon::prelude::*;

use crate::weights::{AffineView, Bf16Layout, Bf16Matrix, Dense, Experts, Mxfp4Experts, Mxfp4Layout, Q8Matrix};
use crate::workspace::{recycle, sized};

/// Rows per task: enough tasks to keep every thread busy to the end, each big enough that
/// scheduling costs nothing next to it.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * 8).max(4)
}

/// What the matmuls need besides their inputs and outputs, kept between calls.
#[derive(Default)]
pub struct OpsBuffers {
    /// `[R, T]` kernel outputs before the transpose to `[T, R]`.
    out_t: Vec<f32>,
    /// Activations as bf16 terms.
    xb: Vec<u16>,
    /// A prompt's activations packed for the dense f32-activation kernels.
    xp: Vec<f32>,
    /// Activations as int16 codes `[T, K]` and their block scales `[T, K/32]`.
    xq: Vec<i16>,
    xq_scales: Vec<f32>,
    /// Per token the sums of each affine group of x `[T, K/group]` (the 4-bit affine
    /// kernels' zero points).
    x_group_sums: Vec<f32>,
    /// The expert matmul's tasks: (group, first row, output block `[rows, T]`).
    tasks: Vec<(usize, usize, &'static mut [f32])>,
    /// Per group, its `[R, T]` kernel output and its `[T, R]` destination.
    transposes: Vec<(&'static [f32], &'static mut [f32])>,
}

/// Kernel scratch of the thread running a task: grows to the largest size asked, then stays.
#[derive(Default)]
struct Scratch {
    words: Vec<u32>,
    halves: Vec<u16>,
    floats: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's kernel scratch. Kernels never re-enter the pool, so the
/// borrow is never contended.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for a dense `W [R, K]` in either format.
pub fn linear_dense(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Dense,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    match w {
        Dense::Bf16(m) => linear_bf16(kern, x, n_tok, m, bias, y, bufs),
        Dense::Q8(m) => linear_q8(kern, x, n_tok, m, bias, y, bufs),
        Dense::Affine(m) => linear_affine(kern, x, n_tok, m.block(0, m.rows), bias, y, bufs),
        Dense::F32(m) => {
            let (k, data) = (m.cols, &m.data);
            let matmul = kern.matmul_rows_f32_f32w;
            rows_parallel(m.rows, n_tok, y, &mut bufs.out_t, |r, out, scratch| {
                matmul(
                    x,
                    n_tok,
                    &data[r.start * k..r.end * k],
                    bias.map(|b| &b[r.clone()]),
                    out,
                    sized(&mut scratch.floats, k),
                )
            });
        }
        Dense::Mxfp4(m) => {
            let (k, codes, scales) = (m.cols, m.codes(), m.scales());
            let (cpr, spr) = (k / 2, k / gptoss_kernels::mxfp4::BLOCK);
            let matmul = kern.matmul_rows_f32_mxfp4w;
            rows_parallel(m.rows, n_tok, y, &mut bufs.out_t, |r, out, scratch| {
                let (c, s) = (&codes[r.start * cpr..r.end * cpr], &scales[r.start * spr..r.end * spr]);
                matmul(x, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, sized(&mut scratch.floats, k))
            });
        }
    }
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for affine `W [R, K]` (MLX), in either layout.
pub fn linear_affine(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: AffineView,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    if w.layout == Mxfp4Layout::Rows16 {
        return linear_affine4_r16(kern, x, n_tok, w, bias, y, bufs);
    }
    let (k, rows) = (w.cols, w.rows_view());
    let matmul = kern.matmul_rows_f32_affinew;
    rows_parallel(w.rows, n_tok, y, &mut bufs.out_t, |r, out, scratch| {
        let block = rows.row_block(k, r.start, r.end);
        matmul(x, n_tok, block, bias.map(|b| &b[r.clone()]), out, sized(&mut scratch.floats, k))
    });
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for 4-bit affine `W` repacked for the integer kernels: the
/// kernel gives `Σ scale·q·x` from int16 activations, and the zero points add
/// `Σ_g bias_g·Σ_{k∈g} x[t, k]` per row and token.
fn linear_affine4_r16(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: AffineView,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    use gptoss_kernels::mxfp4::BLOCK;
    let (rows, k, group) = (w.rows, w.cols, w.group);
    let groups = k / group;
    let OpsBuffers { out_t, xq, xq_scales, x_group_sums, .. } = bufs;
    let (q, xs) = (sized(xq, x.len()), sized(xq_scales, x.len() / BLOCK));
    let ia = kern.i16_act.as_ref();
    let quantize = ia.map_or(gptoss_kernels::mxfp4_r16::quantize_codes as _, |ia| ia.quantize);
    quantize(x, gptoss_kernels::mxfp4_r16::Q_MAX, q, xs);
    let sums = sized(x_group_sums, n_tok * groups);
    for (s, xg) in sums.iter_mut().zip(x.chunks_exact(group)) {
        *s = xg.iter().sum();
    }
    let (xq, xs, sums) = (&*q, &*xs, &*sums);
    // Set by the model only with kernels that have it; the twin keeps any other pairing correct.
    let matmul = ia
        .and_then(|ia| ia.matmul_rows_i16a_affine4r16w)
        .unwrap_or(gptoss_kernels::scalar::matmul_rows_i16a_affine4r16w);
    let (codes, scales, centred) = (w.codes, w.scales, w.biases);
    let group16 = gptoss_kernels::mxfp4_r16::GROUP;
    rows_parallel_in(rows, n_tok, group16, y, out_t, |r, out, scratch| {
        let (c, s) = (&codes[r.start * k / 2..r.end * k / 2], &scales[r.start * k / BLOCK..r.end * k / BLOCK]);
        matmul(xq, xs, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, &mut scratch.words);
        // The kernel multiplies centred codes q − 8; each group's `b + 8·s` (none when all
        // are 0: symmetric files) adds `Σ_g c_g·Σ_{k∈g} x[t, k]`.
        if centred.is_empty() {
            return;
        }
        for (i, row) in r.clone().enumerate() {
            let c = &centred[row * groups..(row + 1) * groups];
            for t in 0..n_tok {
                out[i * n_tok + t] += dot8(c, &sums[t * groups..(t + 1) * groups]);
            }
        }
    });
}

/// `Σ a·b` in eight lanes (one order for every call, so results stay batch-invariant).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The router's linear layer: f32 activations whatever the kernels (see
/// [`linear_bf16_f32a`]); the quantized formats take f32 activations anyway.
pub fn linear_router(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Dense,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    match w {
        Dense::Bf16(m) => linear_bf16_f32a(kern, x, n_tok, m, bias, y, bufs),
        other => linear_dense(kern, x, n_tok, other, bias, y, bufs),
    }
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for q8 `W [R, K]`.
pub fn linear_q8(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Q8Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    let (rows, k) = (w.rows, w.cols);
    let spr = k / gptoss_kernels::q8::BLOCK;
    let (codes, scales) = (&w.codes, &w.scales);
    let OpsBuffers { out_t, xb, .. } = bufs;
    if let Some(ba) = &kern.bf16_act {
        let xb = round_bf16(ba, x, xb);
        let matmul = ba.matmul_rows_bf16a_q8w;
        rows_parallel(rows, n_tok, y, out_t, |r, out, scratch| {
            let (c, s) = (&codes[r.start * k..r.end * k], &scales[r.start * spr..r.end * spr]);
            matmul(xb, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, &mut scratch.halves)
        });
        return;
    }
    let matmul = kern.matmul_rows_f32_q8w;
    rows_parallel(rows, n_tok, y, out_t, |r, out, scratch| {
        let (c, s) = (&codes[r.start * k..r.end * k], &scales[r.start * spr..r.end * spr]);
        matmul(x, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, sized(&mut scratch.floats, k))
    });
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for bf16 `W [R, K]`.
pub fn linear_bf16(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    linear_bf16_with(kern, true, x, n_tok, w, bias, y, bufs)
}

/// The same with f32 activations whatever the kernels: for the router, whose top-k choice
/// is discontinuous, so rounding its input would now and then pick another expert.
pub fn linear_bf16_f32a(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    linear_bf16_with(kern, false, x, n_tok, w, bias, y, bufs)
}

#[allow(clippy::too_many_arguments)]
fn linear_bf16_with(
    kern: &Kernels,
    may_round: bool,
    x: &[f32],
    n_tok: usize,
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    let (rows, k) = (w.rows, w.cols);
    let data = w.bf16();
    let OpsBuffers { out_t, xb, xp, .. } = bufs;
    if w.layout == Bf16Layout::Tiles8 {
        // Set by the model only with kernels that read tiles (bf16 activations, which the
        // router never takes); the twin keeps any other pairing correct.
        let (xb, matmul): (&[u16], gptoss_kernels::dispatch::MatmulBf16aBf16w) = match &kern.bf16_act {
            Some(ba) => (round_bf16(ba, x, xb), ba.matmul_rows_bf16a_bf16t8w),
            None => {
                let xb = sized(xb, 2 * x.len());
                let (hi, lo) = xb.split_at_mut(x.len());
                gptoss_kernels::bf16::split_slice_to_bf16(x, hi, Some(lo));
                (xb, gptoss_kernels::scalar::matmul_rows_bf16a_bf16t8w::<2>)
            }
        };
        // Whole groups of 8 rows per task, so each task's rows are a slice of the tiles.
        rows_parallel_in(rows, n_tok, gptoss_kernels::bf16_t8::ROWS, y, out_t, |r, out, _| {
            matmul(xb, n_tok, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out)
        });
        return;
    }
    if let (true, Some(ba)) = (may_round, &kern.bf16_act) {
        let xb = round_bf16(ba, x, xb);
        let matmul = ba.matmul_rows_bf16a_bf16w;
        rows_parallel(rows, n_tok, y, out_t, |r, out, _| {
            matmul(xb, n_tok, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out)
        });
        return;
    }
    if let (true, Some(p)) = (n_tok > 1, &kern.packed_f32_bf16w) {
        // Packed once here rather than by each of the tasks below (16 copies of the prompt).
        (p.pack)(x, n_tok, k, xp);
        let (xp, matmul) = (&xp[..], p.matmul_rows_f32_bf16w_packed);
        rows_parallel(rows, n_tok, y, out_t, |r, out, _| {
            matmul(x, xp, n_tok, k, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out)
        });
        return;
    }
    let matmul = kern.matmul_rows_f32_bf16w;
    rows_parallel(rows, n_tok, y, out_t, |r, out, scratch| {
        let buf = sized(&mut scratch.floats, k);
        matmul(x, n_tok, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out, buf)
    });
}

/// Activations split into bf16 terms once per call for the bf16-activation kernels.
fn round_bf16<'b>(ba: &gptoss_kernels::dispatch::Bf16Act, x: &[f32], buf: &'b mut Vec<u16>) -> &'b [u16] {
    let xb = sized(buf, ba.terms * x.len());
    (ba.split)(x, xb);
    xb
}

/// The rows of a MoE projection's input that go through one expert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertGroup {
    pub expert: usize,
    /// Rows of `x` and `y` (consecutive: tokens are grouped by expert).
    pub rows: Range<usize>,
}

/// `y[N, R] = x[N, K]·W[e]ᵀ + bias[e]` where each group of rows uses its own expert `e`, in
/// either format: MXFP4 through one pool of tasks ([`linear_mxfp4_experts`]), affine group
/// after group (each a parallel matmul over its expert's rows).
pub fn linear_experts(
    kern: &Kernels,
    w: &Experts,
    groups: &[ExpertGroup],
    x: &[f32],
    bias: &[f32],
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    match w {
        Experts::Mxfp4(m) => linear_mxfp4_experts(kern, m, groups, x, bias, y, bufs),
        Experts::Affine { w: m, .. } => {
            let (rows, k) = (w.rows(), w.cols());
            for g in groups {
                let (e, rr) = (g.expert, &g.rows);
                let view = m.block(e * rows, (e + 1) * rows);
                let (xg, yg) = (&x[rr.start * k..rr.end * k], &mut y[rr.start * rows..rr.end * rows]);
                linear_affine(kern, xg, rr.len(), view, Some(&bias[e * rows..(e + 1) * rows]), yg, bufs);
            }
        }
        Experts::Bf16 { w: m, .. } => {
            let (rows, k) = (w.rows(), w.cols());
            for g in groups {
                let (e, rr) = (g.expert, &g.rows);
                let block = m.row_block(e * rows, rows);
                let (xg, yg) = (&x[rr.start * k..rr.end * k], &mut y[rr.start * rows..rr.end * rows]);
                linear_bf16(kern, xg, rr.len(), &block, Some(&bias[e * rows..(e + 1) * rows]), yg, bufs);
            }
        }
    }
}

/// `y[N, R] = x[N, K]·W[e]ᵀ + bias[e]` where each group of rows uses its own expert `e`
/// (`bias` is `[E, R]`). Row blocks of every group form one pool of tasks, so the threads
/// meet once per projection instead of once per expert and none idles while another
/// finishes an expert.
pub fn linear_mxfp4_experts(
    kern: &Kernels,
    w: &Mxfp4Experts,
    groups: &[ExpertGroup],
    x: &[f32],
    bias: &[f32],
    y: &mut [f32],
    bufs: &mut OpsBuffers,
) {
    let (rows, k) = (w.rows, w.cols);
    let (cpr, spr) = (k / 2, k / gptoss_kernels::mxfp4::BLOCK);
    let n_rows = x.len() / k;
    assert_eq!(y.len(), n_rows * rows, "linear: output is not [N, R]");
    assert_eq!(bias.len(), w.experts * rows, "linear: bias is not [E, R]");
    assert!(groups.iter().all(|g| g.rows.end <= n_rows), "linear: group rows past the input");
    let OpsBuffers { out_t, xb, xq, xq_scales, tasks: task_buf, transposes: transpose_buf, .. } = bufs;

    // Activations as the kernels read them: int16 codes (int8-range for the `-int8` sets)
    // and block scales for repacked weights, bf16 terms for the bf16-activation kernels, f32 otherwise.
    let act = match (w.layout, &kern.bf16_act) {
        (Mxfp4Layout::Rows16, _) => {
            let (q, s) = (sized(xq, x.len()), sized(xq_scales, x.len() / gptoss_kernels::mxfp4::BLOCK));
            let (quantize, q_max) = kern
                .i16_act
                .as_ref()
                .map_or((gptoss_kernels::mxfp4_r16::quantize_codes as _, gptoss_kernels::mxfp4_r16::Q_MAX), |ia| {
                    (ia.quantize, ia.expert_q_max)
                });
            // Rows are independent, so any split gives the same codes.
            let per = rows_per_task(n_rows).div_ceil(4).max(1);
            x.par_chunks(per * k)
                .zip(q.par_chunks_mut(per * k))
                .zip(s.par_chunks_mut(per * spr))
                .for_each(|((x, q), s)| quantize(x, q_max, q, s));
            Act::I16 { q, scales: s }
        }
        (Mxfp4Layout::Rows, Some(ba)) => {
            // [terms, n, K] per group, groups one after another.
            let xb = sized(xb, ba.terms * x.len());
            for g in groups {
                let r = &g.rows;
                (ba.split)(&x[r.start * k..r.end * k], &mut xb[ba.terms * r.start * k..ba.terms * r.end * k]);
            }
            Act::Bf16 { xb, terms: ba.terms }
        }
        (Mxfp4Layout::Rows, None) => Act::F32(x),
    };

    // Repacked weights come in groups of 16 rows; whole groups per task.
    let chunk = match w.layout {
        Mxfp4Layout::Rows => rows_per_task(rows),
        Mxfp4Layout::Rows16 => rows_per_task(rows).next_multiple_of(gptoss_kernels::mxfp4_r16::GROUP),
    };
    // Each group's output block `[R, n]` sits where its `[n, R]` rows go: in `y` itself when
    // n is 1 (the same layout), else in `out_t`, transposed into `y` afterwards.
    let out_t = sized(out_t, y.len());
    let mut tasks: Vec<(usize, usize, &mut [f32])> = recycle(std::mem::take(task_buf));
    for_each_group_block(groups, rows, y, out_t, |gi, n, y_g, t_g| {
        let block = if n == 1 { y_g } else { t_g };
        for (c, b) in block.chunks_mut(chunk * n).enumerate() {
            tasks.push((gi, c * chunk, b));
        }
    });
    tasks.par_iter_mut().for_each(|(gi, r0, out)| {
        let g = &groups[*gi];
        let (rr, n) = (&g.rows, g.rows.len());
        let (codes, scales) = w.expert(g.expert);
        let r1 = *r0 + out.len() / n;
        let (c, s) = (&codes[*r0 * cpr..r1 * cpr], &scales[*r0 * spr..r1 * spr]);
        let b = Some(&bias[g.expert * rows + *r0..g.expert * rows + r1]);
        with_scratch(|scratch| match &act {
            Act::I16 { q, scales: xs } => {
                // Set by the model only with kernels that have it; the twin keeps any other
                // pairing correct.
                let matmul =
                    kern.i16_act.as_ref().map_or(gptoss_kernels::scalar::matmul_rows_i16a_mxfp4r16w as _, |ia| {
                        ia.matmul_rows_i16a_mxfp4r16w
                    });
                let (q, xs) = (&q[rr.start * k..rr.end * k], &xs[rr.start * spr..rr.end * spr]);
                matmul(q, xs, n, c, s, b, out, &mut scratch.words)
            }
            Act::Bf16 { xb, terms } => {
                let ba = kern.bf16_act.as_ref().expect("bf16 activations come from bf16 kernels");
                let xb = &xb[terms * rr.start * k..terms * rr.end * k];
                (ba.matmul_rows_bf16a_mxfp4w)(xb, n, c, s, b, out, &mut scratch.halves)
            }
            Act::F32(x) => {
                let x = &x[rr.start * k..rr.end * k];
                (kern.matmul_rows_f32_mxfp4w)(x, n, c, s, b, out, sized(&mut scratch.floats, k))
            }
        })
    });
    *task_buf = recycle(tasks);

    let mut transposes: Vec<(&[f32], &mut [f32])> = recycle(std::mem::take(transpose_buf));
    for_each_group_block(groups, rows, y, out_t, |_, n, y_g, t_g| {
        if n > 1 {
            transposes.push((t_g, y_g));
        }
    });
    transposes.par_iter_mut().for_each(|(src, dst)| transpose_rt_to_tr(src, src.len() / rows, dst));
    *transpose_buf = recycle(transposes);
}

/// Calls `f(group, n, y_block, out_t_block)` with each group's `n·R` elements of both
/// buffers (groups are in row order and do not overlap).
fn for_each_group_block<'a>(
    groups: &[ExpertGroup],
    rows: usize,
    y: &'a mut [f32],
    out_t: &'a mut [f32],
    mut f: impl FnMut(usize, usize, &'a mut [f32], &'a mut [f32]),
) {
    let (mut y_rest, mut t_rest, mut done) = (y, out_t, 0);
    for (gi, g) in groups.iter().enumerate() {
        assert!(g.rows.start >= done, "linear: expert groups overlap or are out of order");
        let (skip, len) = ((g.rows.start - done) * rows, g.rows.len() * rows);
        let (y_g, t_g);
        (y_g, y_rest) = std::mem::take(&mut y_rest)[skip..].split_at_mut(len);
        (t_g, t_rest) = std::mem::take(&mut t_rest)[skip..].split_at_mut(len);
        done = g.rows.end;
        f(gi, g.rows.len(), y_g, t_g);
    }
}

/// One projection's activations in the form its kernel reads.
enum Act<'a> {
    /// `q [N, K]` int16 codes and `scales [N, K/32]`.
    I16 {
        q: &'a [i16],
        scales: &'a [f32],
    },
    /// Per group, `[terms, n, K]` bf16 bits.
    Bf16 {
        xb: &'a [u16],
        terms: usize,
    },
    F32(&'a [f32]),
}

/// Runs `kernel(rows, out [rows, T], scratch)` over row blocks and leaves `y` as `[T, R]`.
fn rows_parallel(
    rows: usize,
    n_tok: usize,
    y: &mut [f32],
    out_t: &mut Vec<f32>,
    kernel: impl Fn(Range<usize>, &mut [f32], &mut Scratch) + Sync,
) {
    rows_parallel_in(rows, n_tok, 1, y, out_t, kernel)
}

/// [`rows_parallel`] with every block but the last a multiple of `multiple` rows.
fn rows_parallel_in(
    rows: usize,
    n_tok: usize,
    multiple: usize,
    y: &mut [f32],
    out_t: &mut Vec<f32>,
    kernel: impl Fn(Range<usize>, &mut [f32], &mut Scratch) + Sync,
) {
    assert_eq!(y.len(), rows * n_tok, "linear: output is not [T, R]");
    let chunk = rows_per_task(rows).next_multiple_of(multiple);
    let run = |out_t: &mut [f32]| {
        out_t.par_chunks_mut(chunk * n_tok).enumerate().for_each(|(i, out)| {
            let r0 = i * chunk;
            with_scratch(|scratch| kernel(r0..r0 + out.len() / n_tok, out, scratch))
        });
    };
    if n_tok == 1 {
        // [R, 1] and [1, R] are the same layout.
        run(y);
    } else {
        let out_t = sized(out_t, rows * n_tok);
        run(out_t);
        transpose_rt_to_tr_parallel(out_t, n_tok, y);
    }
}

/// Tokens per task of [`transpose_rt_to_tr_parallel`]: 16 floats of each `out_t` row, one
/// cache line.
const TRANSPOSE_TOKENS: usize = 16;

/// [`transpose_rt_to_tr`] over blocks of tokens in parallel: a prompt's `[R, T]` is many
/// megabytes (10 MB for q, k, v at 512 tokens), too long for one thread while the others wait.
fn transpose_rt_to_tr_parallel(out_t: &[f32], n_tok: usize, y: &mut [f32]) {
    let rows = out_t.len() / n_tok;
    if rows == 0 {
        return;
    }
    y.par_chunks_mut(rows * TRANSPOSE_TOKENS)
        .enumerate()
        .for_each(|(i, y_block)| transpose_columns(out_t, n_tok, i * TRANSPOSE_TOKENS, y_block));
}

/// `y [T, R]` from the kernels' `out_t [R, T]`.
fn transpose_rt_to_tr(out_t: &[f32], n_tok: usize, y: &mut [f32]) {
    transpose_columns(out_t, n_tok, 0, y)
}

/// `y_block [n, R]` from columns `t0..t0 + n` of `out_t [R, T]`.
fn transpose_columns(out_t: &[f32], n_tok: usize, t0: usize, y_block: &mut [f32]) {
    let rows = out_t.len() / n_tok;
    if rows == 0 {
        return;
    }
    let n = y_block.len() / rows;
    for (r, col) in out_t.chunks_exact(n_tok).enumerate() {
        for (t, &val) in col[t0..t0 + n].iter().enumerate() {
            y_block[t * rows + r] = val;
        }
    }
}

/// Calls `f(i, chunk, scores)` for every `chunk_len`-long piece of `out`, in parallel, with
/// the running thread's attention score buffer.
pub fn for_each_chunk(out: &mut [f32], chunk_len: usize, f: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync) {
    out.par_chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| SCORES.with(|s| f(i, chunk, &mut s.borrow_mut())));
}

/// Grows every pool thread's scratch to what matmuls of at most `max_k` inputs and attention
/// over at most `max_keys` keys can ask for. Which thread runs which task is up to work
/// stealing, so warming up by running is not enough: a thread that never ran a kind of task
/// would allocate the first time it does.
pub fn reserve_thread_scratch(max_k: usize, max_keys: usize) {
    let (words, halves) = gptoss_kernels::dispatch::max_scratch_len(max_k);
    fn grow<T>(v: &mut Vec<T>, len: usize) {
        v.reserve(len.saturating_sub(v.len()));
    }
    rayon::broadcast(|_| {
        with_scratch(|s| {
            grow(&mut s.words, words);
            grow(&mut s.halves, halves);
            grow(&mut s.floats, max_k);
        });
        SCORES.with(|s| grow(&mut s.borrow_mut(), max_keys));
    });
}

thread_local! {
    /// This thread is already keeping itself awake for a pass.
    static AWAKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a pool thread while every other pool thread stays awake, taking the pass's
/// parallel work as soon as it is offered, until `f` returns.
///
/// A rayon worker that finds nothing to do for a few microseconds goes to sleep, and a
/// decode pass has ~260 parallel loops per token with serial work (norms, RoPE, top-k)
/// between them. Waking a sleeping worker took 20–30 µs here, during which one core ran the
/// loop alone: measured, 16 tasks of 2 µs after a 50 µs serial gap took 34 µs, with the
/// workers kept awake 18 µs. Joins only, so nothing is allocated.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Sets `done` however `f` ends: a panic in `f` must not leave the others spinning,
    /// since the join waits for them before passing the panic on.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    fn stay_awake(done: &AtomicBool, home: Option<usize>) {
        // The home thread gets here only by popping this job while `f` waits in a join; it
        // must go back to `f`'s work. A thread already spinning (re-entered through
        // `yield_now`) has nothing to add.
        if rayon::current_thread_index() == home || AWAKE.with(|a| a.replace(true)) {
            return;
        }
        while !done.load(Ordering::Acquire) {
            if let Some(rayon::Yield::Idle) | None = rayon::yield_now() {
                std::hint::spin_loop();
            }
        }
        AWAKE.with(|a| a.set(false));
    }
    fn keep_awake(n: usize, done: &AtomicBool, home: Option<usize>) {
        match n {
            0 => {}
            1 => stay_awake(done, home),
            _ => {
                rayon::join(|| stay_awake(done, home), || keep_awake(n - 1, done, home));
            }
        }
    }
    let done = AtomicBool::new(false);
    rayon::scope(|_| {
        let home = rayon::current_thread_index();
        let others = rayon::current_num_threads().saturating_sub(1);
        let (out, ()) = rayon::join(
            || {
                let _done = Done(&done);
                f()
            },
            || keep_awake(others, &done, home),
        );
        out
    })
}
