//! AVX2: prompt MXFP4 experts in the [`crate::mxfp4_r16`] layout times activations whose codes
//! fit a byte (|q| ≤ 127: [`crate::mxfp4_r16::quantize_codes`] with
//! [`crate::mxfp4_r16::Q_MAX_I8`]). `vpmaddubsw` multiplies 32 byte pairs per instruction
//! where `vpmaddwd` multiplies 16 word pairs, so a prompt tile needs 17 integer operations per
//! 256 multiply-adds instead of 32 (AVX-VNNI's `vpdpbusd`: 8 instead of 16 `vpdpwssd`).
//!
//! The integer block sums are exact, so the result is the bits of
//! [`crate::scalar::matmul_rows_i16a_mxfp4r16w`] and of the int16 kernels on the same codes.
//! One token goes through [`super::avx2_i16`]'s decode-in-registers kernel (memory-bound
//! either way), and codes outside ±127 (another quantizer's) through its int16 panels.
//!
//! `vpmaddubsw` takes one unsigned operand: the weights, as `u = w + 12` (w = 2 × E2M1, an
//! integer in ±12), each row's block sum corrected by `−12·Σx` of the block. A product pair is
//! at most 2·24·127 = 6096, so four of them add in an int16 lane without overflow (24384);
//! `vpmaddwd` by ones then widens every four columns to the row's int32 lane.

use std::arch::x86_64::*;

use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{GROUP, TILE_BYTES};

use super::avx2_i16::{fp4_offset_table, weight_scales};

/// What the decoded weights carry above their value (2×E2M1 + 12 ≥ 0).
const CODE_OFFSET: i32 = 12;
/// Bytes ahead of the decoder to prefetch codes (the hardware prefetcher stops at pages).
const PREFETCH_AHEAD: usize = 4096;
/// 256-bit vectors per block of a decoded group: `[half][column quad]` u8 codes (8 rows × 4
/// columns each), then the two halves' weight scales.
const PANEL_VECTORS: usize = 2 * 8 + 2;
/// Tokens per tile, measured best (`cached` in the matmul bench): `vpmaddubsw` keeps 2·TB
/// int16 accumulators, `vpdpbusd` TB int32 ones (the f32 accumulators are touched once per
/// block and may live in L1).
const fn tokens(vnni: bool) -> usize {
    if vnni {
        TOKENS_VNNI
    } else {
        TOKENS_AVX2
    }
}
const TOKENS_AVX2: usize = 4;
const TOKENS_VNNI: usize = 6;

/// `vpshufb` control that gathers, per 128-bit lane, the code bytes of its 4 rows: row ρ's
/// bytes for column pairs 0..4 of a quad half sit at `8(ρ/2) + 2i + ρ%2`.
#[inline(always)]
unsafe fn row_gather() -> __m256i {
    let lane: [i8; 16] = std::array::from_fn(|o| {
        let (row, pair) = (o / 4, o % 4);
        (8 * (row / 2) + 2 * pair + row % 2) as i8
    });
    _mm256_broadcastsi128_si256(_mm_loadu_si128(lane.as_ptr() as *const __m128i))
}

/// One group's tiles → `[block][PANEL_VECTORS]` at `panel`: vector `h·8 + 2q + s` holds rows
/// 8h..8h+8, each lane the offset codes of columns `8q + s + 2i` (i = 0..4) of the block, the
/// order [`narrow`] gives the activations. 6 operations per 64 codes, once for all tokens.
#[inline(always)]
unsafe fn decode_group(codes: *const u8, scales: *const u8, blocks: usize, panel: *mut __m256i) {
    let (table, gather, nibble) = (fp4_offset_table(), row_gather(), _mm256_set1_epi8(0x0f));
    for b in 0..blocks {
        let dst = panel.add(b * PANEL_VECTORS);
        for q in 0..4 {
            let src = codes.add(b * TILE_BYTES + q * 64);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD) as *const i8);
            for h in 0..2 {
                let rows = _mm256_shuffle_epi8(_mm256_loadu_si256(src.add(32 * h) as *const __m256i), gather);
                let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(rows, nibble));
                let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(rows), nibble));
                _mm256_store_si256(dst.add(h * 8 + 2 * q), lo);
                _mm256_store_si256(dst.add(h * 8 + 2 * q + 1), hi);
            }
        }
        _mm256_store_ps(dst.add(16) as *mut f32, weight_scales(scales.add(b * GROUP)));
        _mm256_store_ps(dst.add(17) as *mut f32, weight_scales(scales.add(b * GROUP + 8)));
    }
}

/// Sum of the 8 int32 lanes.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Codes `[values]` (whole blocks) → bytes with each 8 columns reordered as 0, 2, 4, 6, 1, 3,
/// 5, 7 (the decoded weights' order), and per block `−12·Σq` at `off`. False if a code is
/// outside ±127 (then the bytes are not the codes).
#[target_feature(enable = "avx2")]
unsafe fn narrow(xq: *const i16, values: usize, x8: *mut u8, off: *mut i32) -> bool {
    // Words 0, 2, 4, 6, 1, 3, 5, 7 of each 128-bit lane (8 columns).
    let order = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let (ones, hi, lo) = (_mm256_set1_epi16(1), _mm256_set1_epi16(127), _mm256_set1_epi16(-127));
    let mut outside = _mm256_setzero_si256();
    for b in 0..values / BLOCK {
        let src = xq.add(b * BLOCK);
        let v0 = _mm256_shuffle_epi8(_mm256_loadu_si256(src as *const __m256i), order);
        let v1 = _mm256_shuffle_epi8(_mm256_loadu_si256(src.add(16) as *const __m256i), order);
        for v in [v0, v1] {
            outside = _mm256_or_si256(outside, _mm256_or_si256(_mm256_cmpgt_epi16(v, hi), _mm256_cmpgt_epi16(lo, v)));
        }
        // packs interleaves the 128-bit lanes; the permute puts them back in order.
        let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(v0, v1));
        _mm256_storeu_si256(x8.add(b * BLOCK) as *mut __m256i, bytes);
        let sum = hsum_epi32(_mm256_add_epi32(_mm256_madd_epi16(v0, ones), _mm256_madd_epi16(v1, ones)));
        *off.add(b) = -CODE_OFFSET * sum;
    }
    _mm256_testz_si256(outside, outside) == 1
}

/// One decoded group × TB tokens over all of K: `x8`/`off`/`xs` the first token's bytes,
/// offsets and scales, `out` (row 0, token 0) of `[16, n_tok]`. Per block, row half and token:
/// the exact int32 sum, then `fma(isum, ws·xs, acc)` as the twin.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const TB: usize, const VNNI: bool>(
    panel: *const __m256i,
    blocks: usize,
    x8: *const u8,
    off: *const i32,
    xs: *const f32,
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    let k = blocks * BLOCK;
    let ones = _mm256_set1_epi16(1);
    let x_quad = |j: usize, b: usize, c: usize| {
        _mm256_set1_epi32(std::ptr::read_unaligned(x8.add(j * k + b * BLOCK + 4 * c) as *const i32))
    };
    let mut facc = [[_mm256_setzero_ps(); TB]; 2];
    for b in 0..blocks {
        let w = panel.add(b * PANEL_VECTORS);
        for h in 0..2 {
            let isum: [__m256i; TB] = if VNNI {
                let mut acc: [__m256i; TB] = std::array::from_fn(|j| _mm256_set1_epi32(*off.add(j * blocks + b)));
                for c in 0..8 {
                    let wv = _mm256_load_si256(w.add(h * 8 + c));
                    for j in 0..TB {
                        acc[j] = _mm256_dpbusd_avx_epi32(acc[j], wv, x_quad(j, b, c));
                    }
                }
                acc
            } else {
                // Columns 0..16 and 16..32 of the block, as int16 pair sums.
                let mut part = [[_mm256_setzero_si256(); TB]; 2];
                for c in 0..8 {
                    let wv = _mm256_load_si256(w.add(h * 8 + c));
                    for j in 0..TB {
                        let p = _mm256_maddubs_epi16(wv, x_quad(j, b, c));
                        part[c / 4][j] = if c % 4 == 0 { p } else { _mm256_add_epi16(part[c / 4][j], p) };
                    }
                }
                std::array::from_fn(|j| {
                    let s = _mm256_add_epi32(_mm256_madd_epi16(part[0][j], ones), _mm256_madd_epi16(part[1][j], ones));
                    _mm256_add_epi32(s, _mm256_set1_epi32(*off.add(j * blocks + b)))
                })
            };
            let ws = _mm256_load_ps(w.add(16 + h) as *const f32);
            for j in 0..TB {
                let comb = _mm256_mul_ps(ws, _mm256_set1_ps(*xs.add(j * blocks + b)));
                facc[h][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), comb, facc[h][j]);
            }
        }
    }
    super::avx2_i16::store_tile(&facc, bias, out, n_tok);
}

/// One group of 16 rows: decoded into `panel`, then every token through it, a tile of tokens at a
/// time ([`tokens`]). `x8`, `off`, `xs` are all tokens' ([`narrow`]); `out` is the group's `[16, n_tok]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_body<const VNNI: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    panel: *mut __m256i,
    x8: *const u8,
    off: *const i32,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    decode_group(codes, scales, blocks, panel);
    let k = blocks * BLOCK;
    let mut t = 0;
    while t < n_tok {
        let tb = (n_tok - t).min(tokens(VNNI));
        let (x, o, s, y) = (x8.add(t * k), off.add(t * blocks), xs.add(t * blocks), out.add(t));
        match tb {
            6 => tile::<6, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
            5 => tile::<5, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
            4 => tile::<4, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
            3 => tile::<3, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
            2 => tile::<2, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
            _ => tile::<1, VNNI>(panel, blocks, x, o, s, bias, y, n_tok),
        }
        t += tb;
    }
}

/// [`group_body`] with `vpmaddubsw`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn group(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    panel: *mut __m256i,
    x8: *const u8,
    off: *const i32,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    group_body::<false>(codes, scales, blocks, panel, x8, off, xs, n_tok, bias, out)
}

/// [`group_body`] with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_vnni(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    panel: *mut __m256i,
    x8: *const u8,
    off: *const i32,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    group_body::<true>(codes, scales, blocks, panel, x8, off, xs, n_tok, bias, out)
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]: several tokens with codes in ±127
/// through byte products, anything else through [`super::avx2_i16`] (the same bits either
/// way). `scratch` holds one decoded group and the activations as bytes. `VNNI`: AVX-VNNI's
/// `vpdpbusd` instead of `vpmaddubsw`, `vpmaddwd` and `vpaddd`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_mxfp4r16w<const VNNI: bool>(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let int16 = super::avx2_i16::matmul_rows_i16a_mxfp4r16w::<VNNI>;
    if n_tok <= 1 {
        return int16(xq, xs, n_tok, codes, scales, bias, out, scratch);
    }
    let k = xq.len() / n_tok;
    crate::scalar::check_i16a_shapes(xq, xs, n_tok, k, codes.len(), scales.len(), bias, out);
    let blocks = k / BLOCK;
    let groups = scales.len() / (blocks * GROUP);
    let panel_words = blocks * PANEL_VECTORS * 8;
    scratch.resize(panel_words + n_tok * k / 4 + n_tok * blocks + 8, 0);
    // SAFETY: the shapes were checked, so every tile, token and output offset is in bounds;
    // the scratch holds the 32-byte aligned panel, then T·K bytes and T·K/32 offsets; the
    // `Kernels` hand this out only on CPUs with AVX2 and FMA (and AVX-VNNI for `VNNI`).
    unsafe {
        let base = scratch.as_mut_ptr();
        let panel = base.add(base.align_offset(32));
        let x8 = panel.add(panel_words) as *mut u8;
        let off = x8.add(n_tok * k) as *mut i32;
        if !narrow(xq.as_ptr(), n_tok * k, x8, off) {
            return int16(xq, xs, n_tok, codes, scales, bias, out, scratch);
        }
        let run = if VNNI { group_vnni } else { group };
        for g in 0..groups {
            run(
                codes.as_ptr().add(g * blocks * TILE_BYTES),
                scales.as_ptr().add(g * blocks * GROUP),
                blocks,
                panel as *mut __m256i,
                x8,
                off,
                xs.as_ptr(),
                n_tok,
                bias.map(|b| b.as_ptr().add(g * GROUP)),
                out.as_mut_ptr().add(g * GROUP * n_tok),
            );
        }
    }
}
