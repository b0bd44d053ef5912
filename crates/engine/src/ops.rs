//! The one place where work is split over threads. Kernels compute blocks of rows; this
//! module decides the blocks. Splitting never changes a result: every output element is
//! computed by exactly one task, in the kernel's fixed order.

use std::ops::Range;

use gptoss_kernels::Kernels;
use rayon::prelude::*;

use crate::weights::{Bf16Matrix, Dense, Mxfp4Experts, Q8Matrix};

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

/// `y[T, R] = x[T, K]·W[e]ᵀ + b` for one MXFP4 expert `W[e]: [R, K]`.
pub fn linear_mxfp4(
    kern: &Kernels,
    x: &[f32],
    n_tok: usize,
    w: &Mxfp4Experts,
    e: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, k) = (w.rows, w.cols);
    let (codes, scales) = w.expert(e);
    let (cpr, spr) = (k / 2, k / gptoss_kernels::mxfp4::BLOCK);
    if let Some(ba) = &kern.bf16_act {
        let xb = round_bf16(ba, x);
        let matmul = ba.matmul_rows_bf16a_mxfp4w;
        rows_parallel(rows, n_tok, y, Vec::new, |r, out, scratch| {
            matmul(
                &xb,
                n_tok,
                &codes[r.start * cpr..r.end * cpr],
                &scales[r.start * spr..r.end * spr],
                bias.map(|b| &b[r.clone()]),
                out,
                scratch,
            )
        });
        return;
    }
    let matmul = kern.matmul_rows_f32_mxfp4w;
    rows_parallel(
        rows,
        n_tok,
        y,
        || vec![0f32; k],
        |r, out, buf| {
            matmul(
                x,
                n_tok,
                &codes[r.start * cpr..r.end * cpr],
                &scales[r.start * spr..r.end * spr],
                bias.map(|b| &b[r.clone()]),
                out,
                buf,
            )
        },
    );
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
        for (r, col) in out_t.chunks_exact(n_tok).enumerate() {
            for (t, &val) in col.iter().enumerate() {
                y[t * rows + r] = val;
            }
        }
    }
}

/// Calls `f(i, chunk, scratch)` for every `chunk_len`-long piece of `out`, in parallel.
pub fn for_each_chunk(out: &mut [f32], chunk_len: usize, f: impl Fn(usize, &mut [f32], &mut Vec<f32>) + Sync) {
    out.par_chunks_mut(chunk_len).enumerate().for_each_init(Vec::new, |scratch, (i, chunk)| f(i, chunk, scratch));
}
