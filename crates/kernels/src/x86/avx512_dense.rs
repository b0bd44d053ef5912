//! AVX-512F prompt matmuls over bf16 weights with f32 activations, for the `avx512` and
//! `avx512vnni` sets, whose one token goes through [`super::avx2`]'s dot product. They give
//! its bits: that dot product keeps four 8-lane accumulators over 32-column groups, and a
//! 512-bit accumulator here holds two of them side by side (lanes 0..8 accumulator 2h, lanes
//! 8..16 accumulator 2h + 1, columns `32g + 16h .. 32g + 16h + 16`), adding the same
//! products in the same order; at the end each splits back into its two halves for the
//! shared finish (the 8-wide rest, the reduction and the tail).
//!
//! Why: with 32 registers a tile of 4 rows × 6 tokens keeps 24 accumulators, so each widened
//! weight vector (16 columns per widening, where AVX2 widens 8) feeds 6 FMAs of 16 lanes, and
//! a pass over a 512-column chunk does four times the work of an AVX2 pass: the passes'
//! start and drain, which held the AVX2 tile to 10 of the 16 multiply-adds per cycle that
//! Zen 4 can issue, cost a quarter as much. Intel cores with two 512-bit FMA units issue
//! twice as many.

use std::arch::x86_64::*;

use super::avx2::{dots_bf16_finish, Acc};

/// Tokens per tile.
const TOKENS: usize = 6;
/// Rows per register tile: 4 × 6 = 24 accumulators, 4 widened weight vectors and an
/// activation vector take 29 of the 32 registers.
const TILE_ROWS: usize = 4;
/// Rows that every token tile runs through in turn (their weights stay in L2).
const ROW_BLOCK: usize = 16;
/// Columns a tile runs through every row of the block before moving on: the tile's
/// activations for them (12 KB) stay in L1 across the block's rows.
const K_CHUNK: usize = 512;

/// `[16]` bf16 at `p` as f32.
#[inline(always)]
unsafe fn load_bf16x16(p: *const u16) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
}

/// Floats from one half's columns of a token to the next half's in the packed activations:
/// K32/2 and a cache line.
fn packed_segment(k32: usize) -> usize {
    k32 / 2 + 16
}

/// Floats from one token to the next: two segments and two more cache lines, so that the
/// tokens of a tile fall in different L1 sets at K = 2880 and K = 4096 (unpadded, every
/// token of the attention output's 4096 columns would start a multiple of 4 KiB apart).
fn packed_stride(k32: usize) -> usize {
    2 * packed_segment(k32) + 32
}

/// x `[n_tok, K]` (T > 1) into `[n_tok][2][K32 / 2]`: per token, columns `16h..16h + 16` of
/// each 32-wide group of the first `k32`, half h after half, so a pass reads them contiguously.
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    assert!(k > 0 && x.len() == n_tok * k, "pack: x is not [T, K]");
    xp.clear();
    if n_tok < 2 {
        return;
    }
    let k32 = k / 32 * 32;
    xp.reserve(n_tok * packed_stride(k32));
    for t in 0..n_tok {
        let row = &x[t * k..t * k + k32];
        let token_start = xp.len();
        for h in 0..2 {
            for group in row.chunks_exact(32) {
                xp.extend_from_slice(&group[16 * h..16 * h + 16]);
            }
            xp.resize(token_start + (h + 1) * packed_segment(k32), 0.0);
        }
        xp.resize(token_start + packed_stride(k32), 0.0);
    }
}

/// Half `h` (columns `16h..16h + 16` of each 32-wide group in `from..to`) for R rows (`k`
/// apart from `w`) × T tokens (`xp` packed).
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn tile_pass<const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[__m512; T]; R],
    h: usize,
    from: usize,
    to: usize,
) {
    let mut a = *acc;
    let xh = xp.add(h * packed_segment(k32));
    for g in from / 32..to / 32 {
        let wv: [__m512; R] = std::array::from_fn(|r| load_bf16x16(w.add(r * k + 32 * g + 16 * h)));
        for t in 0..T {
            let xv = _mm512_loadu_ps(xh.add(t * packed_stride(k32) + 16 * g));
            for r in 0..R {
                a[r][t] = _mm512_fmadd_ps(xv, wv[r], a[r][t]);
            }
        }
    }
    *acc = a;
}

/// Columns `from..to` of R rows × T tokens: both halves, moved in and out of `acc`
/// (`[row][token][h]`, from the tile's first row).
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn pass_rows<const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[[__m512; 2]; T]],
    from: usize,
    to: usize,
) {
    for h in 0..2 {
        let mut a: [[__m512; T]; R] = std::array::from_fn(|r| std::array::from_fn(|t| acc[r][t][h]));
        tile_pass::<R, T>(xp, k32, w, k, &mut a, h, from, to);
        for (r, ar) in a.iter().enumerate() {
            for (t, v) in ar.iter().enumerate() {
                acc[r][t][h] = *v;
            }
        }
    }
}

/// One tile of T tokens (`x`, and `xp` packed) through rows `block`, K in chunks of
/// [`K_CHUNK`], then each (row, token) finished as the one-token dot product finishes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16<const T: usize>(
    x: *const f32,
    xp: *const f32,
    k: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    block: std::ops::Range<usize>,
    out: *mut f32,
    n_tok: usize,
) {
    let k32 = k / 32 * 32;
    // [row of the block][token][h]
    let mut acc = [[[_mm512_setzero_ps(); 2]; T]; ROW_BLOCK];
    let (r0, n_rows) = (block.start, block.len());
    let tiled = n_rows / TILE_ROWS * TILE_ROWS;
    let mut c0 = 0;
    while c0 < k32 {
        let c1 = (c0 + K_CHUNK).min(k32);
        for q in (0..tiled).step_by(TILE_ROWS) {
            pass_rows::<TILE_ROWS, T>(xp, k32, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        for q in tiled..n_rows {
            pass_rows::<1, T>(xp, k32, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        c0 = c1;
    }
    for (r, a) in block.zip(acc.iter()) {
        // Each 512-bit accumulator back into the two 8-lane ones it holds.
        let halves: Acc<T> = std::array::from_fn(|t| {
            let [lo, hi] = a[t];
            let upper = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            [_mm512_castps512_ps256(lo), upper(lo), _mm512_castps512_ps256(hi), upper(hi)]
        });
        let b = bias.map_or(0.0, |b| b[r]);
        dots_bf16_finish::<T>(x, k, k32, &w[r * k..(r + 1) * k], &halves, b, out.add(r * n_tok));
    }
}

/// Blocks of [`ROW_BLOCK`] rows, each run by every tile of [`TOKENS`] tokens.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    let rows = out.len() / n_tok;
    let op = out.as_mut_ptr();
    let stride = packed_stride(k / 32 * 32);
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let block = r0..(r0 + ROW_BLOCK).min(rows);
        let mut t = 0;
        while t < n_tok {
            let tb = (n_tok - t).min(TOKENS);
            let (xt, xpt, o) = (x.as_ptr().add(t * k), xp.as_ptr().add(t * stride), op.add(t));
            match tb {
                6 => tile_bf16::<6>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                5 => tile_bf16::<5>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                4 => tile_bf16::<4>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                3 => tile_bf16::<3>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                2 => tile_bf16::<2>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                _ => tile_bf16::<1>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
            }
            t += tb;
        }
    }
}

/// [`crate::scalar::matmul_rows_f32_bf16w`] with the activations packed by
/// [`pack_f32_for_bf16w`]: one token through [`super::avx2`]'s dot product, several
/// through the 512-bit tiles, the same bits either way.
pub fn matmul_rows_f32_bf16w_packed(
    x: &[f32],
    xp: &[f32],
    n_tok: usize,
    k: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if n_tok < 2 {
        return super::avx2::matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out);
    }
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    assert_eq!(xp.len(), n_tok * packed_stride(k / 32 * 32), "linear: packed activations do not match [T, K]");
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F (and so AVX2 and
    // FMA); every access is within the slices, whose lengths were checked above.
    unsafe { matmul_impl(x, xp, n_tok, w, bias, out, k) }
}

thread_local! {
    /// [`pack_f32_for_bf16w`]'s copy of a prompt, kept between calls, for callers that do not
    /// pack it themselves.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// See [`crate::scalar::matmul_rows_f32_bf16w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_bf16w(
    x: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    PACKED.with_borrow_mut(|xp| {
        pack_f32_for_bf16w(x, n_tok, k, xp);
        matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out)
    })
}
