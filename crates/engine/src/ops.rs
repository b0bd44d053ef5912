//! The one place where work is split over threads. Kernels compute blocks of rows; this
//! module decides the blocks. Splitting never changes a result: every output element is
//! computed by exactly one task, in the kernel's fixed order.

use std::ops::Range;

use gptoss_kernels::Kernels;
use rayon::prelude::*;

use crate::weights::{Bf16Matrix, Dense, Mxfp4Experts, Mxfp4Layout, Q8Matrix};

/// Rows per task: enough tasks to keep every thread busy to the end, each big enough that
/// scheduling costs nothing next to it.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * 8).max(4)
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for a dense `W [R, K]` in either format.
pub fn linear_dense(kern: &Kernels, x: &[f32], n_tok: usize, w: &Dense, bias: Option<&[f32]>, y: &mut [f32]) {
    match w {
        Dense::Bf16(m) => linear_bf16(kern, x, n_tok, m, bias, y),
        Dense::Q8(m) => linear_q8(kern, x, n_tok, m, bias, y),
    }
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for q8 `W [R, K]`.
pub fn linear_q8(kern: &Kernels, x: &[f32], n_tok: usize, w: &Q8Matrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let (rows, k) = (w.rows, w.cols);
    let spr = k / gptoss_kernels::q8::BLOCK;
    let (codes, scales) = (&w.codes, &w.scales);
    if let Some(ba) = &kern.bf16_act {
        let xb = round_bf16(ba, x);
        let matmul = ba.matmul_rows_bf16a_q8w;
        rows_parallel(rows, n_tok, y, Vec::new, |r, out, scratch| {
            let (c, s) = (&codes[r.start * k..r.end * k], &scales[r.start * spr..r.end * spr]);
            matmul(&xb, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, scratch)
        });
        return;
    }
    let matmul = kern.matmul_rows_f32_q8w;
    rows_parallel(
        rows,
        n_tok,
        y,
        || vec![0f32; k],
        |r, out, buf| {
            let (c, s) = (&codes[r.start * k..r.end * k], &scales[r.start * spr..r.end * spr]);
            matmul(x, n_tok, c, s, bias.map(|b| &b[r.clone()]), out, buf)
        },
    );
}

/// `y[T, R] = x[T, K]·Wᵀ + b` for bf16 `W [R, K]`.
pub fn linear_bf16(kern: &Kernels, x: &[f32], n_tok: usize, w: &Bf16Matrix, bias: Option<&[f32]>, y: &mut [f32]) {
    linear_bf16_with(kern, true, x, n_tok, w, bias, y)
}

/// The same with f32 activations whatever the kernels: for the router, whose top-k choice
/// is discontinuous, so rounding its input would now and then pick another expert.
pub fn linear_bf16_f32a(kern: &Kernels, x: &[f32], n_tok: usize, w: &Bf16Matrix, bias: Option<&[f32]>, y: &mut [f32]) {
    linear_bf16_with(kern, false, x, n_tok, w, bias, y)
}

fn linear_bf16_with(
    kern: &Kernels,
    may_round: bool,
    x: &[f32],
    n_tok: usize,
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, k) = (w.rows, w.cols);
    let data = w.bf16();
    if let (true, Some(ba)) = (may_round, &kern.bf16_act) {
        let xb = round_bf16(ba, x);
        let matmul = ba.matmul_rows_bf16a_bf16w;
        rows_parallel(
            rows,
            n_tok,
            y,
            || (),
            |r, out, _| matmul(&xb, n_tok, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out),
        );
        return;
    }
    let matmul = kern.matmul_rows_f32_bf16w;
    rows_parallel(
        rows,
        n_tok,
        y,
        || vec![0f32; k],
        |r, out, buf| matmul(x, n_tok, &data[r.start * k..r.end * k], bias.map(|b| &b[r.clone()]), out, buf),
    );
}

/// Activations split into bf16 terms once per call for the bf16-activation kernels.
fn round_bf16(ba: &gptoss_kernels::dispatch::Bf16Act, x: &[f32]) -> Vec<u16> {
    let mut xb = vec![0u16; ba.terms * x.len()];
    (ba.split)(x, &mut xb);
    xb
}

/// One expert's share of a MoE projection: `y[T, R] = x[T, K]·W[expert]ᵀ + bias`.
pub struct ExpertJob<'a> {
    pub expert: usize,
    pub x: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub y: &'a mut [f32],
}

/// Every job of one MoE projection in a single parallel pass: row blocks of all the experts
/// are one pool of tasks, so the threads meet once per projection instead of once per expert
/// and none idles while another finishes an expert.
pub fn linear_mxfp4_experts(kern: &Kernels, w: &Mxfp4Experts, jobs: &mut [ExpertJob]) {
    let (rows, k) = (w.rows, w.cols);
    let (cpr, spr) = (k / 2, k / gptoss_kernels::mxfp4::BLOCK);
    let n_toks: Vec<usize> = jobs.iter().map(|j| j.x.len() / k).collect();
    for (job, &n) in jobs.iter().zip(&n_toks) {
        assert_eq!(job.y.len(), rows * n, "linear: output is not [T, R]");
    }
    // Activations as the kernels read them: int16 codes and block scales for repacked
    // weights, bf16 terms for the bf16-activation kernels, f32 otherwise.
    let acts: Vec<Act> = jobs.par_iter().map(|j| Act::new(kern, w.layout, j.x)).collect();
    // Repacked weights come in groups of 16 rows; whole groups per task.
    let chunk = match w.layout {
        Mxfp4Layout::Rows => rows_per_task(rows),
        Mxfp4Layout::Rows16 => rows_per_task(rows).next_multiple_of(gptoss_kernels::mxfp4_r16::GROUP),
    };
    // [R, T] outputs for jobs of several tokens ([R, 1] is [1, R], written in place).
    let mut outs_t: Vec<Vec<f32>> =
        n_toks.iter().map(|&n| if n == 1 { Vec::new() } else { vec![0f32; rows * n] }).collect();
    type Input<'a> = (usize, Option<&'a [f32]>); // (expert, bias)
    let inputs: Vec<Input> = jobs.iter().map(|j| (j.expert, j.bias)).collect();
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new(); // (job, first row, out [rows, T])
    for (i, (job, out_t)) in jobs.iter_mut().zip(outs_t.iter_mut()).enumerate() {
        let out: &mut [f32] = if n_toks[i] == 1 { job.y } else { out_t };
        for (c, block) in out.chunks_mut(chunk * n_toks[i]).enumerate() {
            tasks.push((i, c * chunk, block));
        }
    }
    tasks.into_par_iter().for_each_init(Scratch::default, |scratch, (i, r0, out)| {
        let n = n_toks[i];
        let (e, bias) = inputs[i];
        let (codes, scales) = w.expert(e);
        let r1 = r0 + out.len() / n;
        let (c, s) = (&codes[r0 * cpr..r1 * cpr], &scales[r0 * spr..r1 * spr]);
        let b = bias.map(|b| &b[r0..r1]);
        match &acts[i] {
            Act::I16 { q, scales: xs } => {
                // Set by the model only with kernels that have it; the twin keeps any other
                // pairing correct.
                let matmul =
                    kern.i16_act.as_ref().map_or(gptoss_kernels::scalar::matmul_rows_i16a_mxfp4r16w as _, |ia| {
                        ia.matmul_rows_i16a_mxfp4r16w
                    });
                matmul(q, xs, n, c, s, b, out, &mut scratch.words)
            }
            Act::Bf16(xb) => {
                let ba = kern.bf16_act.as_ref().expect("bf16 activations come from bf16 kernels");
                (ba.matmul_rows_bf16a_mxfp4w)(xb, n, c, s, b, out, &mut scratch.halves)
            }
            Act::F32(x) => {
                scratch.floats.resize(k, 0.0);
                (kern.matmul_rows_f32_mxfp4w)(x, n, c, s, b, out, &mut scratch.floats)
            }
        }
    });
    jobs.par_iter_mut().zip(outs_t.par_iter()).zip(n_toks.par_iter()).for_each(|((job, out_t), &n)| {
        if n > 1 {
            transpose_rt_to_tr(out_t, n, job.y);
        }
    });
}

/// One job's activations in the form its kernel reads.
enum Act<'a> {
    /// `q [T, K]` int16 codes and `scales [T, K/32]`.
    I16 {
        q: Vec<i16>,
        scales: Vec<f32>,
    },
    /// `[terms, T, K]` bf16 bits.
    Bf16(Vec<u16>),
    F32(&'a [f32]),
}

impl<'a> Act<'a> {
    fn new(kern: &Kernels, layout: Mxfp4Layout, x: &'a [f32]) -> Self {
        match (layout, &kern.bf16_act) {
            (Mxfp4Layout::Rows16, _) => {
                let mut q = vec![0i16; x.len()];
                let mut scales = vec![0f32; x.len() / gptoss_kernels::mxfp4::BLOCK];
                let quantize =
                    kern.i16_act.as_ref().map_or(gptoss_kernels::mxfp4_r16::quantize_i16 as _, |ia| ia.quantize);
                quantize(x, &mut q, &mut scales);
                Act::I16 { q, scales }
            }
            (Mxfp4Layout::Rows, Some(ba)) => Act::Bf16(round_bf16(ba, x)),
            (Mxfp4Layout::Rows, None) => Act::F32(x),
        }
    }
}

/// Per-thread kernel scratch, reused across tasks.
#[derive(Default)]
struct Scratch {
    words: Vec<u32>,
    halves: Vec<u16>,
    floats: Vec<f32>,
}

/// Runs `kernel(rows, out [rows, T], scratch)` over row blocks and leaves `y` as `[T, R]`.
fn rows_parallel<S>(
    rows: usize,
    n_tok: usize,
    y: &mut [f32],
    scratch: impl Fn() -> S + Sync + Send,
    kernel: impl Fn(Range<usize>, &mut [f32], &mut S) + Sync,
) {
    assert_eq!(y.len(), rows * n_tok, "linear: output is not [T, R]");
    let chunk = rows_per_task(rows);
    let run = |out_t: &mut [f32]| {
        out_t.par_chunks_mut(chunk * n_tok).enumerate().for_each_init(&scratch, |buf, (i, out)| {
            let r0 = i * chunk;
            kernel(r0..r0 + out.len() / n_tok, out, buf)
        });
    };
    if n_tok == 1 {
        // [R, 1] and [1, R] are the same layout.
        run(y);
    } else {
        let mut out_t = vec![0f32; rows * n_tok];
        run(&mut out_t);
        transpose_rt_to_tr(&out_t, n_tok, y);
    }
}

/// `y [T, R]` from the kernels' `out_t [R, T]`.
fn transpose_rt_to_tr(out_t: &[f32], n_tok: usize, y: &mut [f32]) {
    let rows = out_t.len() / n_tok;
    for (r, col) in out_t.chunks_exact(n_tok).enumerate() {
        for (t, &val) in col.iter().enumerate() {
            y[t * rows + r] = val;
        }
    }
}

/// Calls `f(i, chunk, scratch)` for every `chunk_len`-long piece of `out`, in parallel.
pub fn for_each_chunk(out: &mut [f32], chunk_len: usize, f: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync) {
    out.par_chunks_mut(chunk_len).enumerate().for_each_init(Vec::new, |scratch, (i, chunk)| f(i, chunk, scratch));
}
