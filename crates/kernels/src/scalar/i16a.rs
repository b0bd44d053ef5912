//! The twin of the integer MXFP4 kernels: weights in the [`crate::mxfp4_r16`] layout,
//! activations quantized by [`crate::mxfp4_r16::quantize_i16`]. Exactly the arithmetic that
//! module defines, so the vector kernels must match it bit for bit.

use crate::mxfp4::{BLOCK, BLOCK_BYTES};
use crate::mxfp4_r16::{tile_offset, weight_scale, FP4_X2, GROUP, TILE_BYTES};

/// Panics (a caller bug, not bad input) unless `xq [T, K]`, `xs [T, K/32]`, codes `[R, K/2]`,
/// scales `[R, K/32]` with R a multiple of 16, `bias [R]` and `out [R, T]` agree.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_i16a_shapes(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    k: usize,
    codes: usize,
    scales: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    assert!(k > 0 && k.is_multiple_of(BLOCK), "linear: K={k} is not a positive multiple of {BLOCK}");
    assert_eq!(xq.len(), n_tok * k, "linear: x is not [T, K]");
    assert_eq!(xs.len(), n_tok * k / BLOCK, "linear: x scales are not [T, K/32]");
    let rows = scales / (k / BLOCK);
    assert!(rows.is_multiple_of(GROUP), "linear: {rows} rows are not whole groups of {GROUP}");
    assert_eq!((codes, scales), (rows * k / 2, rows * (k / BLOCK)), "linear: codes/scales are not [R, K/2]/[R, K/32]");
    assert_eq!(out.len(), rows * n_tok, "linear: output is not [R, T]");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "linear: bias is not [R]");
    }
}

/// `out[r, t] = Σ_b fma(isum, comb) + bias[r]` as [`crate::mxfp4_r16`] defines it.
/// xq: `[T, K]`, xs: `[T, K/32]`, codes/scales: repacked `[R, K/2]`/`[R, K/32]`, out: `[R, T]`.
/// The scratch is the vector kernels' (unused here, so the twins share a signature).
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_mxfp4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    _scratch: &mut Vec<u32>,
) {
    let k = xq.len() / n_tok.max(1);
    check_i16a_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    let blocks = k / BLOCK;
    let rows = scales.len() / blocks;
    for r in 0..rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for t in 0..n_tok {
            let mut acc = 0f32;
            for b in 0..blocks {
                let tile = &codes[(g * blocks + b) * TILE_BYTES..][..TILE_BYTES];
                let x = &xq[t * k + b * BLOCK..][..BLOCK];
                let mut isum = 0i32;
                for p in 0..BLOCK_BYTES {
                    let byte = tile[tile_offset(lane, p)];
                    isum += FP4_X2[(byte & 0xf) as usize] as i32 * x[2 * p] as i32;
                    isum += FP4_X2[(byte >> 4) as usize] as i32 * x[2 * p + 1] as i32;
                }
                let comb = weight_scale(scales[(g * blocks + b) * GROUP + lane]) * xs[t * blocks + b];
                acc = (isum as f32).mul_add(comb, acc);
            }
            out[r * n_tok + t] = acc + bias.map_or(0.0, |b| b[r]);
        }
    }
}

/// `out[r, t] = Σ_b fma(isum, scale·xs) + bias[r]` as [`crate::affine_r16`] defines it:
/// 4-bit affine codes in tiles, scales `[R/16][K/32][16]`, `xq` in column order.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_affine4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    _scratch: &mut Vec<u32>,
) {
    use crate::affine_r16::{check_shapes, scale_at};
    let k = xq.len() / n_tok.max(1);
    let rows = check_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    let blocks = k / BLOCK;
    for r in 0..rows {
        let (g, lane) = (r / GROUP, r % GROUP);
        for t in 0..n_tok {
            let x = &xq[t * k..(t + 1) * k];
            let mut acc = 0f32;
            for b in 0..blocks {
                let tile = &codes[(g * blocks + b) * TILE_BYTES..][..TILE_BYTES];
                let mut isum = 0i32;
                for p in 0..BLOCK_BYTES {
                    let byte = tile[tile_offset(lane, p)];
                    let c = b * BLOCK + 2 * p;
                    isum += ((byte & 0xf) as i32 - 8) * x[c] as i32;
                    isum += ((byte >> 4) as i32 - 8) * x[c + 1] as i32;
                }
                let comb = scale_at(scales, k, r, b) * xs[t * blocks + b];
                acc = (isum as f32).mul_add(comb, acc);
            }
            out[r * n_tok + t] = acc + bias.map_or(0.0, |b| b[r]);
        }
    }
}
