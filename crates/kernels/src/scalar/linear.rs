//! Linear layers `y = x·Wᵀ + b` over a block of output rows, for all tokens at once: each
//! weight row is widened once and then used by every token, which is what makes batched
//! prompt processing cheaper per token than decoding.

use super::dot_f32;
use crate::affine::{self, AffineRows};
use crate::bf16::bf16_slice_to_f32;
use crate::mxfp4;

/// `out[r, t] = Σ_k x[t, k]·w[r, k] + bias[r]` for the rows of `w`.
///
/// x: `[n_tok, K]` f32; w: `[R, K]` bf16 bits; bias: `[R]`; out: `[R, n_tok]` (row-major,
/// i.e. transposed with respect to x); row_buf: `[K]` scratch.
pub fn matmul_rows_f32_bf16w(
    x: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    check_shapes(x, n_tok, k, w.len() / k.max(1), bias, out);
    assert_eq!(w.len() % k.max(1), 0, "bf16 weight rows do not match K");
    for (r, (w_row, out_row)) in w.chunks_exact(k).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        bf16_slice_to_f32(w_row, row_buf);
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + b;
        }
    }
}

/// Same as [`matmul_rows_f32_bf16w`] with MXFP4 weights: codes `[R, K/2]`, scales `[R, K/32]`.
pub fn matmul_rows_f32_mxfp4w(
    x: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    check_mxfp4_shapes(x, n_tok, k, codes.len(), scales.len(), bias, out);
    let row_codes = codes.chunks_exact(k / 2);
    let row_scales = scales.chunks_exact(k / mxfp4::BLOCK);
    for (r, ((c, s), out_row)) in row_codes.zip(row_scales).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        mxfp4::decode_row(c, s, row_buf);
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + b;
        }
    }
}

/// Same as [`matmul_rows_f32_bf16w`] with affine weights ([`crate::affine`]): each row is
/// decoded to f32 and then used by every token.
pub fn matmul_rows_f32_affinew(
    x: &[f32],
    n_tok: usize,
    w: AffineRows,
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let rows = check_affine_shapes(x, n_tok, k, &w, bias, out);
    for (r, out_row) in out.chunks_exact_mut(n_tok).enumerate().take(rows) {
        let (c, s, b) = w.row(k, r);
        affine::decode_row(c, s, b, w.bits, w.group, row_buf);
        let bias_r = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + bias_r;
        }
    }
}

/// Panics (a caller bug) unless the affine rows, x `[T, K]`, bias `[R]` and out `[R, T]`
/// agree; returns R.
pub(crate) fn check_affine_shapes(
    x: &[f32],
    n_tok: usize,
    k: usize,
    w: &AffineRows,
    bias: Option<&[f32]>,
    out: &[f32],
) -> usize {
    let rows = w.rows(k);
    check_shapes(x, n_tok, k, rows, bias, out);
    rows
}

/// `out[r, t] = Σ_k x[t, k]·w[r, k] + bias[r]` with activations split into TERMS bf16 parts
/// (`x: [TERMS, n_tok, K]` bf16 bits, see [`crate::bf16::split_slice_to_bf16`]): the twin of
/// the AVX512-BF16 kernels, summing exact products in the reference order. out: `[R, n_tok]`.
pub fn matmul_rows_bf16a_bf16w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    let xf = widen::<TERMS>(x);
    let mut row = vec![0f32; k];
    for (r, (w_row, out_row)) in w.chunks_exact(k).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        bf16_slice_to_f32(w_row, &mut row);
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32(&xf[t * k..(t + 1) * k], &row) + b;
        }
    }
}

/// [`matmul_rows_bf16a_bf16w`] with `w` in the [`crate::bf16_t8`] layout (R a multiple of 8,
/// K of 32): the same sums, so the same bits.
pub fn matmul_rows_bf16a_bf16t8w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    let mut rows = vec![0u16; w.len()];
    crate::bf16_t8::unpack(w, k, &mut rows);
    matmul_rows_bf16a_bf16w::<TERMS>(x, n_tok, &rows, bias, out)
}

/// The same with MXFP4 weights (codes `[R, K/2]`, scales `[R, K/32]`); `scratch` is unused
/// here and holds decoded rows in the fast twin.
pub fn matmul_rows_bf16a_mxfp4w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    _scratch: &mut Vec<u16>,
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_mxfp4_bf16a_shapes(x, TERMS, n_tok, k, codes.len(), scales.len(), bias, out);
    let xf = widen::<TERMS>(x);
    let mut row = vec![0f32; k];
    matmul_rows_f32_mxfp4w(&xf, n_tok, codes, scales, bias, out, &mut row);
}

/// `out[r, t] = Σ_k x[t, k]·w[r, k] + bias[r]` with q8 weights (codes `[R, K]`, scales
/// `[R, K/32]`, see [`crate::q8`]) and f32 activations. out: `[R, n_tok]`; row_buf `[K]`.
pub fn matmul_rows_f32_q8w(
    x: &[f32],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    check_q8_shapes(n_tok, k, codes.len(), scales.len(), bias, out);
    assert_eq!(x.len(), n_tok * k, "linear: x is not [n_tok, K]");
    for (r, ((c, s), out_row)) in codes
        .chunks_exact(k)
        .zip(scales.chunks_exact(k / crate::q8::BLOCK))
        .zip(out.chunks_exact_mut(n_tok))
        .enumerate()
    {
        crate::q8::dequantize_row(c, s, row_buf);
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + b;
        }
    }
}

/// The same with activations as bf16 terms (the twin of the AVX512-BF16 q8 kernel).
pub fn matmul_rows_bf16a_q8w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    _scratch: &mut Vec<u16>,
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    let xf = widen::<TERMS>(x);
    matmul_rows_f32_q8w(&xf, n_tok, codes, scales, bias, out, &mut vec![0f32; k]);
}

pub(crate) fn check_q8_shapes(
    n_tok: usize,
    k: usize,
    codes_len: usize,
    scales_len: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    assert!(n_tok > 0 && k > 0 && k.is_multiple_of(crate::q8::BLOCK), "q8: K must be a positive multiple of 32");
    let rows = codes_len / k;
    assert_eq!(codes_len, rows * k, "q8 codes do not match [R, K]");
    assert_eq!(scales_len, rows * k / crate::q8::BLOCK, "q8 scales do not match [R, K/32]");
    check_out(n_tok, rows, bias, out);
}

/// hi (+ lo): exact in f32, both have 8 significant bits and lo is below hi's last one.
fn widen<const TERMS: usize>(x: &[u16]) -> Vec<f32> {
    let n = x.len() / TERMS;
    let mut xf = vec![0f32; n];
    bf16_slice_to_f32(&x[..n], &mut xf);
    if TERMS == 2 {
        for (v, &lo) in xf.iter_mut().zip(&x[n..]) {
            *v += crate::bf16::bf16_to_f32(lo);
        }
    }
    xf
}

pub(crate) fn check_bf16a_shapes(
    x: &[u16],
    terms: usize,
    n_tok: usize,
    k: usize,
    w_len: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    assert!(n_tok > 0 && k > 0 && x.len() == terms * n_tok * k, "linear: x is not [terms, n_tok, K]");
    assert!(w_len.is_multiple_of(k), "linear: weight rows do not match K");
    check_out(n_tok, w_len / k, bias, out);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_mxfp4_bf16a_shapes(
    x: &[u16],
    terms: usize,
    n_tok: usize,
    k: usize,
    codes_len: usize,
    scales_len: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    assert!(n_tok > 0 && k > 0 && x.len() == terms * n_tok * k, "linear: x is not [terms, n_tok, K]");
    check_out(n_tok, mxfp4_rows(k, codes_len, scales_len), bias, out);
}

/// Rows of MXFP4 codes `[R, K/2]` and scales `[R, K/32]`, checked against each other.
fn mxfp4_rows(k: usize, codes_len: usize, scales_len: usize) -> usize {
    assert!(k > 0 && k.is_multiple_of(mxfp4::BLOCK), "MXFP4: K must be a positive multiple of {}", mxfp4::BLOCK);
    let rows = scales_len / (k / mxfp4::BLOCK);
    assert_eq!(scales_len, rows * (k / mxfp4::BLOCK), "MXFP4 scales do not match [R, K/32]");
    assert_eq!(codes_len, rows * k / 2, "MXFP4 codes do not match [R, K/2]");
    rows
}

/// Panics unless the shapes fit: a caller's bug, never something input can cause.
pub(crate) fn check_matmul_shapes(x: &[f32], n_tok: usize, k: usize, w_len: usize, bias: Option<&[f32]>, out: &[f32]) {
    assert!(k > 0 && w_len.is_multiple_of(k), "linear: weight rows do not match K");
    check_shapes(x, n_tok, k, w_len / k, bias, out);
}

/// Same for MXFP4 rows: K a positive multiple of the block, codes `[R, K/2]`, scales `[R, K/32]`.
pub(crate) fn check_mxfp4_shapes(
    x: &[f32],
    n_tok: usize,
    k: usize,
    codes_len: usize,
    scales_len: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    check_shapes(x, n_tok, k, mxfp4_rows(k, codes_len, scales_len), bias, out);
}

fn check_shapes(x: &[f32], n_tok: usize, k: usize, rows: usize, bias: Option<&[f32]>, out: &[f32]) {
    assert!(k > 0, "linear: K must be positive");
    assert_eq!(x.len(), n_tok * k, "linear: x is not [n_tok, K]");
    check_out(n_tok, rows, bias, out);
}

fn check_out(n_tok: usize, rows: usize, bias: Option<&[f32]>, out: &[f32]) {
    assert_eq!(out.len(), rows * n_tok, "linear: out is not [R, n_tok]");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "linear: bias is not [R]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16::{bf16_to_f32, f32_to_bf16};

    #[test]
    fn bf16_matmul_matches_naive() {
        let (n_tok, k, rows) = (3, 37, 5);
        let x: Vec<f32> = (0..n_tok * k).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
        let w: Vec<u16> = (0..rows * k).map(|i| f32_to_bf16(((i % 11) as f32 - 5.0) / 4.0)).collect();
        let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.5).collect();
        let mut out = vec![0f32; rows * n_tok];
        let mut buf = vec![0f32; k];
        matmul_rows_f32_bf16w(&x, n_tok, &w, Some(&bias), &mut out, &mut buf);
        for r in 0..rows {
            for t in 0..n_tok {
                let naive: f64 = (0..k).map(|i| x[t * k + i] as f64 * bf16_to_f32(w[r * k + i]) as f64).sum();
                assert!((out[r * n_tok + t] as f64 - naive - bias[r] as f64).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn mxfp4_matmul_matches_decoded() {
        let (n_tok, k, rows) = (2, 64, 3);
        let codes: Vec<u8> = (0..rows * k / 2).map(|i| (i * 29 % 256) as u8).collect();
        let scales: Vec<u8> = (0..rows * k / 32).map(|i| 120 + (i % 5) as u8).collect();
        let x: Vec<f32> = (0..n_tok * k).map(|i| ((i % 7) as f32 - 3.0) / 2.0).collect();
        let mut out = vec![0f32; rows * n_tok];
        let mut buf = vec![0f32; k];
        matmul_rows_f32_mxfp4w(&x, n_tok, &codes, &scales, None, &mut out, &mut buf);
        let mut w = vec![0f32; k];
        for r in 0..rows {
            mxfp4::decode_row(&codes[r * k / 2..(r + 1) * k / 2], &scales[r * 2..r * 2 + 2], &mut w);
            for t in 0..n_tok {
                let naive: f64 = (0..k).map(|i| x[t * k + i] as f64 * w[i] as f64).sum();
                assert!((out[r * n_tok + t] as f64 - naive).abs() < 1e-5);
            }
        }
    }
}
