//! MXFP4 experts by integer dot products on AArch64 CPUs with the dotprod extension (`sdot`:
//! Apple M1 and later, Graviton 2 and later, Ampere Altra, Cortex-A76 and later). The weights
//! are the [`crate::mxfp4_r16`] layout the x86 integer kernels read; the arithmetic is the one
//! that module defines, so the results are the scalar twin's bit for bit.
//!
//! `sdot` multiplies int8 by int8, and the activations are int16, so each activation is split
//! into two bytes: `x = 256·hi + lo` with `hi = x >> 8` in −128..127 and `lo` in 0..255,
//! stored as `lo − 128` to be a signed byte. Per row and block:
//!
//! `Σ w·x = 256·Σ w·hi + Σ w·(lo − 128) + 128·Σ w`,
//!
//! three exact int32 sums (the largest, 32·12·32767, is far from 2^31). `Σ w` depends only on
//! the weights, so it costs one `sdot` per block and row quad whatever the number of tokens.
//!
//! Lanes are rows. A tile's 16-byte chunk holds 4 rows × 8 columns with the rows interleaved
//! byte by byte; one table lookup (`tbl`) regroups it so that bytes 4ρ..4ρ+4 are row ρ's, two
//! more decode the low and high nibbles (even and odd columns) to 2×E2M1 integers, and the
//! by-element `sdot` multiplies each row's 4 weights with 4 activations broadcast from one
//! 32-bit lane. The activations are laid out once per call to match: per token and block,
//! four 16-byte vectors (hi even, hi odd, lo even, lo odd columns), lane q holding the columns
//! of quad q.
//!
//! 4-bit affine codes ([`crate::affine_r16`], MLX checkpoints) run the same way: the lookup
//! gives `u − 8` instead of 2×E2M1 and the scales are f32.
//!
//! The `sdot` instructions are inline assembly: their intrinsics are not stable in Rust yet.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{FP4_X2, GROUP, TILE_BYTES};

/// The code lookup as int8: 2×E2M1 (MXFP4) or the centred affine codes `u − 8`.
pub(super) fn code_table<const AFFINE: bool>() -> [i8; 16] {
    std::array::from_fn(|i| if AFFINE { i as i8 - 8 } else { FP4_X2[i] as i8 })
}

/// Rows 4m..4m+4's weight scales of one block, `scales0` being the group's block-0 scales:
/// E8M0 bytes as `weight_scale` computes them (2^(s − 127) · 0.5), or f32 (affine).
#[inline(always)]
pub(super) unsafe fn row_quad_scales<const AFFINE: bool>(scales0: *const u8, b: usize, m: usize) -> float32x4_t {
    if AFFINE {
        vld1q_f32((scales0 as *const f32).add(b * GROUP + 4 * m))
    } else {
        let s = std::ptr::read_unaligned(scales0.add(b * GROUP + 4 * m) as *const u32);
        let s = vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(s)))));
        vmulq_n_f32(vreinterpretq_f32_u32(vshlq_n_u32::<23>(s)), 0.5)
    }
}

/// Tokens per tile: each chunk is decoded once for this many tokens (2 int32 accumulators and
/// one f32 accumulator per token, next to the decoded weights and constants, fit 32 registers).
const TOKENS: usize = 4;
/// Bytes of prepared activations per token and block: hi/lo × even/odd columns, 16 each.
const X_BLOCK_BYTES: usize = 64;

/// u32 words of scratch for K inputs: one tile of tokens' prepared activations, plus room to
/// align it to 16 bytes.
pub(crate) fn scratch_words(k: usize) -> usize {
    TOKENS * (k / BLOCK) * X_BLOCK_BYTES / 4 + 4
}

/// `acc += Σ_i a[4l + i]·b[4·LANE + i]` in every 32-bit lane l.
#[inline(always)]
unsafe fn sdot_lane<const LANE: i32>(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{lane}]",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        lane = const LANE,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc += Σ_i a[4l + i]·b[4l + i]` in every 32-bit lane l.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Token t's `[K]` int16 codes as the kernel reads them: per block, `[4][16]` bytes (hi even,
/// hi odd, lo even, lo odd) where byte `4q + i` is column `8q + 2i` (even) or `8q + 2i + 1`.
#[target_feature(enable = "neon")]
unsafe fn prepare_token(xq: *const i16, blocks: usize, dst: *mut i8) {
    let bias = vdupq_n_s8(-128);
    for b in 0..blocks {
        // vld2 splits even and odd columns: [16] each from 32 values.
        let v0 = vld2q_s16(xq.add(b * BLOCK));
        let v1 = vld2q_s16(xq.add(b * BLOCK + 16));
        let hi = |a: int16x8_t, c: int16x8_t| vcombine_s8(vshrn_n_s16::<8>(a), vshrn_n_s16::<8>(c));
        let lo = |a: int16x8_t, c: int16x8_t| veorq_s8(vcombine_s8(vmovn_s16(a), vmovn_s16(c)), bias);
        let d = dst.add(b * X_BLOCK_BYTES);
        vst1q_s8(d, hi(v0.0, v1.0));
        vst1q_s8(d.add(16), hi(v0.1, v1.1));
        vst1q_s8(d.add(32), lo(v0.0, v1.0));
        vst1q_s8(d.add(48), lo(v0.1, v1.1));
    }
}

/// Rows 4m..4m+4 of one group (`tile0` is its block 0, `scales0` its block-0 scales) for TB
/// tokens whose prepared activations start at `x[t]`, into `out[(4m + ρ)·n_tok + t]`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_quad<const TB: usize, const AFFINE: bool>(
    tile0: *const u8,
    scales0: *const u8,
    blocks: usize,
    m: usize,
    x: [*const i8; TB],
    xs: [*const f32; TB],
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    // Bytes 4ρ..4ρ+4 of the regrouped chunk are row ρ's pairs 0..4 (see the layout).
    const REGROUP: [u8; 16] = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];
    let regroup = vld1q_u8(REGROUP.as_ptr());
    let fp4 = vld1q_s8(code_table::<AFFINE>().as_ptr());
    let nibble = vdupq_n_u8(0x0f);
    let ones = vdupq_n_s8(1);
    let mut acc = [vdupq_n_f32(0.0); TB];
    for b in 0..blocks {
        let tile = tile0.add(b * TILE_BYTES + m * 16);
        let mut w_hi = [vdupq_n_s32(0); TB];
        let mut w_lo = [vdupq_n_s32(0); TB];
        // Σ of the block's weights per byte position: 4 quads of |w| ≤ 12 + 12 (affine: 8 + 8).
        let mut w_sum8 = vdupq_n_s8(0);
        macro_rules! quad {
            ($q:literal) => {{
                let raw = vqtbl1q_u8(vld1q_u8(tile.add($q * 64)), regroup);
                let even = vqtbl1q_s8(fp4, vandq_u8(raw, nibble));
                let odd = vqtbl1q_s8(fp4, vshrq_n_u8::<4>(raw));
                w_sum8 = vaddq_s8(w_sum8, vaddq_s8(even, odd));
                for t in 0..TB {
                    let xb = x[t].add(b * X_BLOCK_BYTES);
                    w_hi[t] = sdot_lane::<$q>(w_hi[t], even, vld1q_s8(xb));
                    w_hi[t] = sdot_lane::<$q>(w_hi[t], odd, vld1q_s8(xb.add(16)));
                    w_lo[t] = sdot_lane::<$q>(w_lo[t], even, vld1q_s8(xb.add(32)));
                    w_lo[t] = sdot_lane::<$q>(w_lo[t], odd, vld1q_s8(xb.add(48)));
                }
            }};
        }
        quad!(0);
        quad!(1);
        quad!(2);
        quad!(3);
        let w_sum = sdot(vdupq_n_s32(0), w_sum8, ones);
        let ws = row_quad_scales::<AFFINE>(scales0, b, m);
        let w_sum_128 = vshlq_n_s32::<7>(w_sum);
        for t in 0..TB {
            let isum = vaddq_s32(vaddq_s32(vshlq_n_s32::<8>(w_hi[t]), w_lo[t]), w_sum_128);
            let comb = vmulq_n_f32(ws, *xs[t].add(b));
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(isum), comb);
        }
    }
    let bias = match bias {
        Some(p) => vld1q_f32(p.add(4 * m)),
        None => vdupq_n_f32(0.0),
    };
    for (t, a) in acc.iter().enumerate() {
        let mut y = [0f32; 4];
        vst1q_f32(y.as_mut_ptr(), vaddq_f32(*a, bias));
        for (rho, v) in y.iter().enumerate() {
            *out.add((4 * m + rho) * n_tok + t) = *v;
        }
    }
}

/// All groups for the TB tokens starting at `t0`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn token_tile<const TB: usize, const AFFINE: bool>(
    codes: &[u8],
    scales: &[u8],
    xprep: *const i8,
    xs: &[f32],
    t0: usize,
    n_tok: usize,
    blocks: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let x: [*const i8; TB] = std::array::from_fn(|t| xprep.add(t * blocks * X_BLOCK_BYTES));
    let xs: [*const f32; TB] = std::array::from_fn(|t| xs.as_ptr().add((t0 + t) * blocks));
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
        let tb = (n_tok - t0).min(TOKENS);
        for t in 0..tb {
            prepare_token(xq.as_ptr().add((t0 + t) * k), blocks, xprep.add(t * blocks * X_BLOCK_BYTES));
        }
        match tb {
            4 => token_tile::<4, AFFINE>(codes, scales, xprep, xs, t0, n_tok, blocks, bias, out),
            3 => token_tile::<3, AFFINE>(codes, scales, xprep, xs, t0, n_tok, blocks, bias, out),
            2 => token_tile::<2, AFFINE>(codes, scales, xprep, xs, t0, n_tok, blocks, bias, out),
            _ => token_tile::<1, AFFINE>(codes, scales, xprep, xs, t0, n_tok, blocks, bias, out),
        }
        t0 += tb;
    }
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]; `scratch` holds the prepared
/// activations of one tile of tokens.
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
    let k = xq.len() / n_tok.max(1);
    crate::scalar::check_i16a_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has NEON and dotprod; the shapes were
    // checked, so every tile, token and output offset is in bounds, and the scratch is sized
    // for one tile of tokens.
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
    let k = xq.len() / n_tok.max(1);
    crate::affine_r16::check_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    let scales = crate::affine_r16::f32_bytes(scales);
    // SAFETY: as for the MXFP4 kernel; the scales are f32, 4 bytes each, read as such.
    unsafe { matmul_impl::<true>(xq, xs, n_tok, codes, scales, bias, out, scratch) }
}
