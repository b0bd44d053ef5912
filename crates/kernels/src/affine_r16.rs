//! 4-bit affine weights (MLX `affine`, bits 4; W4A16 int4) repacked at load for the integer
//! kernels of [`crate::mxfp4_r16`]: the same 16-row tiles of code bytes (a 4-bit affine row
//! packs two codes per byte, low nibble first, as MXFP4 does), codes centred as `u − 8`
//! instead of looked up as E2M1, and one f32 weight scale per row and block of 32 instead of
//! an E8M0 byte. Centring keeps the integer sum near the size of the weights: the zero point
//! of an affine group is about `−8·scale`, and uncentred codes would make the activations'
//! int16 rounding error scale with `15·scale` instead. Activations are int16 codes per block of 32 ([`crate::mxfp4_r16::quantize_i16`]),
//! in column order, as the MXFP4 kernels take them (the AVX2 one-token kernel reorders them
//! by [`deinterleave8`] itself).
//!
//! Per row r, token t and block b (every kernel does exactly this):
//! - `isum = Σ_k (u[r, k] − 8)·xq[t, k]` exactly (u in 0..15, |xq| ≤ 32767);
//! - `acc = fma(isum as f32, scale[r, b]·xs[t, b], acc)`, blocks in order, `out = acc + bias`.
//!
//! The affine zero points, with the centring's `8·scale` (`(bias_g + 8·scale_g) · Σ_{k in g}
//! x[t, k]` per group), are not part of the kernel: the caller adds them (one small dot
//! product per row and token).

use crate::mxfp4::{BLOCK, BLOCK_BYTES};
use crate::mxfp4_r16::{tile_offset, GROUP, TILE_BYTES};

/// Whether an affine matrix can take this layout.
pub fn can_pack(rows: usize, k: usize, bits: u32, group: usize) -> bool {
    bits == 4 && rows.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK) && group.is_multiple_of(BLOCK) && k > 0
}

/// Codes `[R, K/2]` and scales `[R, K/group]` → tiles (see [`crate::mxfp4_r16`]) and scales
/// `[R/16][K/32][16]`.
pub fn pack(codes: &[u8], scales: &[f32], k: usize, group: usize, dst_codes: &mut [u8], dst_scales: &mut [f32]) {
    let rows = codes.len() / (k / 2);
    assert!(can_pack(rows, k, 4, group), "affine_r16::pack: [{rows}, {k}] group {group}");
    assert_eq!((scales.len(), dst_scales.len()), (rows * k / group, rows * k / BLOCK));
    crate::mxfp4_r16::pack_codes(codes, k, dst_codes);
    let (blocks, gpr) = (k / BLOCK, k / group);
    for r in 0..rows {
        for b in 0..blocks {
            dst_scales[((r / GROUP) * blocks + b) * GROUP + r % GROUP] = scales[r * gpr + b * BLOCK / group];
        }
    }
}

/// Row r's code bytes `[K/2]` out of the tiles (the embedding lookup).
pub fn unpack_row_codes(codes: &[u8], k: usize, r: usize, dst: &mut [u8]) {
    let blocks = k / BLOCK;
    for b in 0..blocks {
        let tile = &codes[((r / GROUP) * blocks + b) * TILE_BYTES..][..TILE_BYTES];
        for p in 0..BLOCK_BYTES {
            dst[b * BLOCK_BYTES + p] = tile[tile_offset(r % GROUP, p)];
        }
    }
}

/// Row r's scale of block b in the packed scales.
pub fn scale_at(scales: &[f32], k: usize, r: usize, b: usize) -> f32 {
    scales[((r / GROUP) * (k / BLOCK) + b) * GROUP + r % GROUP]
}

/// A token's codes with each 8 columns reordered as 0, 2, 4, 6, 1, 3, 5, 7: the low-nibble
/// columns of 4 pairs, then the high-nibble ones, as the one-token kernels broadcast them.
pub fn deinterleave8(xq: &[i16], dst: &mut [i16]) {
    for (s, d) in xq.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        for i in 0..4 {
            d[i] = s[2 * i];
            d[4 + i] = s[2 * i + 1];
        }
    }
}

/// Where column c of a token sits after [`deinterleave8`].
#[inline(always)]
pub fn deinterleaved_index(c: usize) -> usize {
    (c / 8) * 8 + if c.is_multiple_of(2) { (c % 8) / 2 } else { 4 + (c % 8) / 2 }
}

/// f32 weight scales as the bytes the integer kernels' drivers take (they read them back as
/// f32).
pub(crate) fn f32_bytes(scales: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialized bytes; u8 has no alignment requirement.
    unsafe { std::slice::from_raw_parts(scales.as_ptr() as *const u8, 4 * scales.len()) }
}

/// Panics (a caller bug) unless `xq [T, K]`, `xs [T, K/32]`, codes `[R, K/2]`, scales
/// `[R, K/32]` (R a multiple of 16), bias `[R]` and out `[R, T]` agree; returns R.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_shapes(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    k: usize,
    codes: usize,
    scales: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) -> usize {
    assert!(k > 0 && k.is_multiple_of(BLOCK), "linear: K={k} is not a positive multiple of {BLOCK}");
    assert_eq!((xq.len(), xs.len()), (n_tok * k, n_tok * k / BLOCK), "linear: x is not [T, K] with [T, K/32] scales");
    let rows = scales / (k / BLOCK);
    assert!(rows.is_multiple_of(GROUP), "linear: {rows} rows are not whole groups of {GROUP}");
    assert_eq!((codes, scales), (rows * k / 2, rows * (k / BLOCK)), "linear: codes/scales are not [R, K/2]/[R, K/32]");
    assert_eq!(out.len(), rows * n_tok, "linear: output is not [R, T]");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "linear: bias is not [R]");
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_every_code_and_scale() {
        let (rows, k, group) = (32, 128, 64);
        let codes: Vec<u8> = (0..rows * k / 2).map(|i| (i * 97 % 251) as u8).collect();
        let scales: Vec<f32> = (0..rows * k / group).map(|i| i as f32 - 10.0).collect();
        let (mut pc, mut ps) = (vec![0u8; codes.len()], vec![0f32; rows * k / 32]);
        pack(&codes, &scales, k, group, &mut pc, &mut ps);
        let mut row = vec![0u8; k / 2];
        for r in 0..rows {
            unpack_row_codes(&pc, k, r, &mut row);
            assert_eq!(row, &codes[r * k / 2..(r + 1) * k / 2], "row {r}");
            for b in 0..k / 32 {
                assert_eq!(scale_at(&ps, k, r, b), scales[r * k / group + b * 32 / group]);
            }
        }
        let x: Vec<i16> = (0..16).collect();
        let mut d = vec![0i16; 16];
        deinterleave8(&x, &mut d);
        for c in 0..16 {
            assert_eq!(d[deinterleaved_index(c)], x[c]);
        }
    }
}
