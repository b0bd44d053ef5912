//! MXFP4 experts for prompt chunks on AArch64 CPUs with the i8mm extension (`smmla`: Apple
//! M2 and later, Graviton 3 and later, Neoverse V1/N2/V2, Cortex-A510/A710/X2 and later).
//! One token (decode) stays on the `sdot` kernel of [`super::neon_i16`]: a 2×2 product would
//! waste half of each instruction there, and decode is bound by memory anyway.
//!
//! `smmla` multiplies a 2×8 int8 matrix by the transpose of another into a 2×2 int32 tile:
//! 32 multiply-adds per instruction where the by-element `sdot` does 16. Here the first
//! operand is two weight rows and the second two tokens, over 8 columns. The activations are
//! split into bytes as in [`super::neon_i16`] (`x = 256·hi + lo`, `lo` stored as `lo − 128`,
//! `Σ w·x = 256·Σ w·hi + Σ w·(lo − 128) + 128·Σ w`), so every sum is exact and the results
//! are the scalar twin's bit for bit.
//!
//! A 16-byte chunk of the [`crate::mxfp4_r16`] layout holds rows 4m..4m+4 × 8 columns: row
//! 4m at bytes 0,2,4,6, 4m+1 at 1,3,5,7, 4m+2 at 8,10,12,14, 4m+3 at 9,11,13,15, each byte a
//! column pair (low nibble first). Decoding the low and high nibbles in place and
//! interleaving them byte by byte (`trn1`/`trn2`) gives rows (4m, 4m+2) and (4m+1, 4m+3),
//! each row's 8 columns in natural order: exactly `smmla`'s operand. The activations are laid
//! out once per call to match: per token pair and block, 8 vectors (hi, then lo, of column
//! chunks 0..4), each `[token 0's 8 columns, token 1's 8 columns]`.
//!
//! 4-bit affine codes ([`crate::affine_r16`], MLX checkpoints) run the same way, with the
//! centred codes `u − 8` and f32 scales.
//!
//! `smmla` is inline assembly: its intrinsic is not stable in Rust yet.

use std::arch::aarch64::*;
use std::arch::asm;

use super::neon_i16::{code_table, row_quad_scales};
use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{GROUP, TILE_BYTES};

/// Token pairs per tile: each chunk is decoded once for this many pairs (per row pair and
/// token pair two int32 and one f32 accumulator, next to the decoded weights and the
/// activations of one chunk, fit 32 registers).
const PAIRS: usize = 2;
/// Bytes of prepared activations per token pair and block: hi/lo × 4 chunks × 16.
const X_PAIR_BLOCK_BYTES: usize = 128;

/// u32 words of scratch for K inputs: one tile of token pairs' prepared activations, plus
/// room to align it to 16 bytes.
pub(crate) fn scratch_words(k: usize) -> usize {
    PAIRS * (k / BLOCK) * X_PAIR_BLOCK_BYTES / 4 + 4
}

/// `acc[2i + j] += Σ_c a[8i + c]·b[8j + c]`: rows i of `a` by rows j of `b`.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        ".arch_extension i8mm",
        "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Tokens `x0` and `x1` (`[K]` int16 codes each; `x1` None pads the pair with zeros, whose
/// results are never stored) as the kernel reads them: per block, hi of chunks 0..4, then lo.
#[target_feature(enable = "neon")]
unsafe fn prepare_pair(x0: *const i16, x1: Option<*const i16>, blocks: usize, dst: *mut i8) {
    let bias = vdupq_n_s8(-128);
    let zero = vdupq_n_s16(0);
    for b in 0..blocks {
        let d = dst.add(b * X_PAIR_BLOCK_BYTES);
        for c in 0..4 {
            let at = b * BLOCK + 8 * c;
            let v0 = vld1q_s16(x0.add(at));
            let v1 = x1.map_or(zero, |p| vld1q_s16(p.add(at)));
            let hi = vcombine_s8(vshrn_n_s16::<8>(v0), vshrn_n_s16::<8>(v1));
            let lo = veorq_s8(vcombine_s8(vmovn_s16(v0), vmovn_s16(v1)), bias);
            vst1q_s8(d.add(16 * c), hi);
            vst1q_s8(d.add(64 + 16 * c), lo);
        }
    }
}

/// Rows 4m..4m+4 of one group (`tile0` is its block 0, `scales0` its block-0 scales) for TB
/// token pairs whose prepared activations start at `x[p]` and block scales at `xs[p]`; the
/// first `valid` of the 2·TB tokens are stored, token t into `out[(4m + ρ)·n_tok + t]`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_quad<const TB: usize, const AFFINE: bool>(
    tile0: *const u8,
    scales0: *const u8,
    blocks: usize,
    m: usize,
    x: [*const i8; TB],
    xs: [[*const f32; 2]; TB],
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
    valid: usize,
) {
    let fp4 = vld1q_s8(code_table::<AFFINE>().as_ptr());
    let nibble = vdupq_n_u8(0x0f);
    let ones = vdupq_n_s8(1);
    // [pair A = rows (4m, 4m+2), pair B = rows (4m+1, 4m+3)] × token pairs, lanes
    // [r0·t0, r0·t1, r1·t0, r1·t1] of the row pair and token pair.
    let mut acc = [[vdupq_n_f32(0.0); TB]; 2];
    for b in 0..blocks {
        let tile = tile0.add(b * TILE_BYTES + m * 16);
        let mut w_hi = [[vdupq_n_s32(0); TB]; 2];
        let mut w_lo = [[vdupq_n_s32(0); TB]; 2];
        // Σ of the block's weights per byte position: 4 chunks of |w| ≤ 12 (affine: 8).
        let mut w_sum8 = [vdupq_n_s8(0); 2];
        for c in 0..4 {
            let raw = vld1q_u8(tile.add(c * 64));
            let even = vqtbl1q_s8(fp4, vandq_u8(raw, nibble));
            let odd = vqtbl1q_s8(fp4, vshrq_n_u8::<4>(raw));
            let w = [vtrn1q_s8(even, odd), vtrn2q_s8(even, odd)];
            for (pair, wv) in w.iter().enumerate() {
                w_sum8[pair] = vaddq_s8(w_sum8[pair], *wv);
            }
            for p in 0..TB {
                let xb = x[p].add(b * X_PAIR_BLOCK_BYTES + 16 * c);
                let (hi, lo) = (vld1q_s8(xb), vld1q_s8(xb.add(64)));
                for (pair, wv) in w.iter().enumerate() {
                    w_hi[pair][p] = smmla(w_hi[pair][p], *wv, hi);
                    w_lo[pair][p] = smmla(w_lo[pair][p], *wv, lo);
                }
            }
        }
        // [w0, w1, w2, w3]: rows 4m..4m+4's scales.
        let ws = row_quad_scales::<AFFINE>(scales0, b, m);
        // Per row pair, each row's scale twice: [w0, w0, w2, w2] and [w1, w1, w3, w3].
        let ws = [vtrn1q_f32(ws, ws), vtrn2q_f32(ws, ws)];
        for pair in 0..2 {
            // [Σ w of the first row ×2, Σ w of the second ×2] times 128.
            let w_sum_128 = vshlq_n_s32::<7>(smmla(vdupq_n_s32(0), w_sum8[pair], ones));
            for p in 0..TB {
                let isum = vaddq_s32(vaddq_s32(vshlq_n_s32::<8>(w_hi[pair][p]), w_lo[pair][p]), w_sum_128);
                let xsv = vld1_f32([*xs[p][0].add(b), *xs[p][1].add(b)].as_ptr());
                let comb = vmulq_f32(ws[pair], vcombine_f32(xsv, xsv));
                acc[pair][p] = vfmaq_f32(acc[pair][p], vcvtq_f32_s32(isum), comb);
            }
        }
    }
    let bias: [f32; 4] = match bias {
        Some(p) => std::array::from_fn(|rho| *p.add(4 * m + rho)),
        None => [0.0; 4],
    };
    for (pair, rows) in [[0, 2], [1, 3]].iter().enumerate() {
        let bias = vld1q_f32([bias[rows[0]], bias[rows[0]], bias[rows[1]], bias[rows[1]]].as_ptr());
        for (p, a) in acc[pair].iter().enumerate() {
            let mut y = [0f32; 4];
            vst1q_f32(y.as_mut_ptr(), vaddq_f32(*a, bias));
            for (i, &rho) in rows.iter().enumerate() {
                for j in 0..2 {
                    if 2 * p + j < valid {
                        *out.add((4 * m + rho) * n_tok + 2 * p + j) = y[2 * i + j];
                    }
                }
            }
        }
    }
}

/// All groups for the 2·TB tokens starting at `t0`, of which `valid` are real.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn token_tile<const TB: usize, const AFFINE: bool>(
    codes: &[u8],
    scales: &[u8],
    xprep: *const i8,
    xs: &[f32],
    t0: usize,
    valid: usize,
    n_tok: usize,
    blocks: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let x: [*const i8; TB] = std::array::from_fn(|p| xprep.add(p * blocks * X_PAIR_BLOCK_BYTES));
    // A padding token reads the first token's scales: its sums are never stored.
    let xs: [[*const f32; 2]; TB] = std::array::from_fn(|p| {
        std::array::from_fn(|j| {
            let t = if 2 * p + j < valid { t0 + 2 * p + j } else { t0 };
            xs.as_ptr().add(t * blocks)
        })
    });
    let scale_bytes = if AFFINE { 4 } else { 1 };
    for g in 0..codes.len() / (blocks * TILE_BYTES) {
        for m in 0..GROUP / 4 {
            row_quad::<TB, AFFINE>(
                codes.as_ptr().add(g * blocks * TILE_BYTES),
                scales.as_ptr().add(g * blocks * GROUP * scale_bytes),
                blocks,
                m,
                x,
                xs,
                bias.map(|b| b.as_ptr().add(g * GROUP)),
                out.as_mut_ptr().add(g * GROUP * n_tok + t0),
                n_tok,
                valid,
            );
        }
    }
}

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_impl<const AFFINE: bool>(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let k = xq.len() / n_tok.max(1);
    let blocks = k / BLOCK;
    scratch.resize(scratch_words(k), 0);
    let base = scratch.as_mut_ptr() as *mut i8;
    let xprep = base.add(base.align_offset(16));
    // Token tiles one after another: the rows of one call are few enough (a task's share of
    // an expert) to stay in cache while every tile reads them.
    let mut t0 = 0;
    while t0 < n_tok {
        let valid = (n_tok - t0).min(2 * PAIRS);
        let pairs = valid.div_ceil(2);
        for p in 0..pairs {
            let (a, b) = (t0 + 2 * p, t0 + 2 * p + 1);
            let second = (b < t0 + valid).then(|| xq.as_ptr().add(b * k));
            prepare_pair(xq.as_ptr().add(a * k), second, blocks, xprep.add(p * blocks * X_PAIR_BLOCK_BYTES));
        }
        match pairs {
            2 => token_tile::<2, AFFINE>(codes, scales, xprep, xs, t0, valid, n_tok, blocks, bias, out),
            _ => token_tile::<1, AFFINE>(codes, scales, xprep, xs, t0, valid, n_tok, blocks, bias, out),
        }
        t0 += valid;
    }
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]; `scratch` holds the prepared
/// activations of one tile of token pairs. One token goes to the `sdot` kernel.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_mxfp4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    if n_tok == 1 {
        return super::neon_i16::matmul_rows_i16a_mxfp4r16w(xq, xs, n_tok, codes, scales, bias, out, scratch);
    }
    let k = xq.len() / n_tok.max(1);
    crate::scalar::check_i16a_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has NEON, dotprod and i8mm; the
    // shapes were checked, so every tile, token and output offset is in bounds, and the
    // scratch is sized for one tile of token pairs.
    unsafe { matmul_impl::<false>(xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

/// See [`crate::scalar::matmul_rows_i16a_affine4r16w`]; as the MXFP4 kernel, with the
/// centred codes and f32 scales.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_affine4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    if n_tok == 1 {
        return super::neon_i16::matmul_rows_i16a_affine4r16w(xq, xs, n_tok, codes, scales, bias, out, scratch);
    }
    let k = xq.len() / n_tok.max(1);
    crate::affine_r16::check_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    let scales = crate::affine_r16::f32_bytes(scales);
    // SAFETY: as for the MXFP4 kernel; the scales are f32, 4 bytes each, read as such.
    unsafe { matmul_impl::<true>(xq, xs, n_tok, codes, scales, bias, out, scratch) }
}
