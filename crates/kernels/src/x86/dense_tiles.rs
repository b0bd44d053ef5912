//! The prompt tiles of the bf16 matmuls with f32 activations, for either vector width:
//! 8 lanes ([`super::avx2`]) or 16 ([`super::avx512_dense`]). Both give the bits of the
//! one-token dot product ([`super::avx2`]'s four 8-lane accumulators over 32-column groups):
//! with P = 32 / lanes passes per group, pass p's vector holds the accumulators for columns
//! `lanes·p .. lanes·p + lanes` of every group (one 8-lane accumulator, or two side by side),
//! adding the same products in the same order, and each (row, token) is finished as one token
//! is (the 8-wide rest, the reduction and the tail).
//!
//! Blocking: rows in blocks of [`ROW_BLOCK`] (their weights stay in L2), each run by every
//! tile of [`TOKENS`] tokens; K in chunks of [`K_CHUNK`] columns, each chunk through every
//! row of the block, a register tile of `L::TILE_ROWS` rows × the tile's tokens at a time,
//! one pass per accumulator, the accumulators parked in between. Weights are widened once per
//! tile instead of once per token, and neither operand streams from memory per row.

use std::arch::x86_64::__m256;

use super::avx2::{dots_bf16_finish, Acc};

/// Tokens per tile.
const TOKENS: usize = 6;
/// Rows that every token tile runs through in turn: their bf16 weights (92 KB at K = 2880)
/// stay in L2 while the tiles pass.
const ROW_BLOCK: usize = 16;
/// Columns a tile runs through every row of the block before moving on: the tile's
/// activations for them (12 KB) stay in L1 across the block's rows, where the whole of K
/// (69 KB at K = 2880) would be fetched from L2 again for every row.
const K_CHUNK: usize = 512;

/// A vector width for the tiles.
pub(super) trait Lanes {
    /// f32 lanes.
    type V: Copy;
    /// f32 lanes per vector: 8 or 16.
    const WIDTH: usize;
    /// Rows per register tile: [`TOKENS`] × this many accumulators, the widened weights and an
    /// activation vector fit the register file.
    const TILE_ROWS: usize;
    unsafe fn zero() -> Self::V;
    /// [`Self::WIDTH`] bf16 at `p`, widened.
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    unsafe fn load_f32(p: *const f32) -> Self::V;
    /// `x·w + acc`, fused.
    unsafe fn fma(x: Self::V, w: Self::V, acc: Self::V) -> Self::V;
    /// One (row, token)'s P accumulators as the one-token dot product's four.
    unsafe fn as_acc8<const P: usize>(acc: &[Self::V; P]) -> [__m256; 4];
}

/// Floats from one pass's columns of a token to the next pass's in the packed activations:
/// K32/P and a cache line.
fn packed_segment<const P: usize>(k32: usize) -> usize {
    k32 / P + 16
}

/// Floats from one token to the next: P segments and P more cache lines. Unpadded, at K =
/// 4096 (the attention output) every segment began a multiple of 4 KiB from the others, so
/// all that a row pair's passes read of a 6-token tile (192 cache lines, 8 lanes) fell in 8 of
/// the 64 sets of a 32 KiB L1, 24 lines to a set of 8 ways: the matmul ran at 26–28 GMAC/s on
/// Zen 4 against 33–38 at K = 2880. Padded, no set holds more than 4 at either K.
pub(super) fn packed_stride<const P: usize>(k32: usize) -> usize {
    P * packed_segment::<P>(k32) + 16 * P
}

/// x `[n_tok, K]` into `[n_tok][P][K32 / P]` (tokens [`packed_stride`] apart, passes
/// [`packed_segment`] apart, the padding zero): per token, pass p's columns (`w·p..w·p + w`
/// of each 32-wide group of the first K32, w = 32 / P) one after the other, so a pass reads
/// them contiguously (strided, they cost a sixth of its speed). Nothing for one token, which
/// reads x as it is.
pub(super) fn pack<const P: usize>(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    assert!(k > 0 && x.len() == n_tok * k, "pack: x is not [T, K]");
    xp.clear();
    if n_tok < 2 {
        return;
    }
    let (k32, width) = (k / 32 * 32, 32 / P);
    xp.reserve(n_tok * packed_stride::<P>(k32));
    for t in 0..n_tok {
        let row = &x[t * k..t * k + k32];
        let token_start = xp.len();
        for p in 0..P {
            for group in row.chunks_exact(32) {
                xp.extend_from_slice(&group[width * p..width * (p + 1)]);
            }
            xp.resize(token_start + (p + 1) * packed_segment::<P>(k32), 0.0);
        }
        xp.resize(token_start + packed_stride::<P>(k32), 0.0);
    }
}

thread_local! {
    /// A prompt packed by [`with_packed`], kept between calls (at most a prefill chunk's
    /// tokens × K: 8 MB at 512 × 4096), for callers that do not pack it themselves.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of x `[n_tok, K]` packed by [`pack`]`::<P>` into this thread's buffer.
pub(super) fn with_packed<const P: usize, R>(x: &[f32], n_tok: usize, k: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    PACKED.with_borrow_mut(|xp| {
        pack::<P>(x, n_tok, k, xp);
        f(xp)
    })
}

/// The floats [`pack`] writes for T tokens.
pub(super) fn packed_len<const P: usize>(n_tok: usize, k: usize) -> usize {
    if n_tok > 1 {
        n_tok * packed_stride::<P>(k / 32 * 32)
    } else {
        0
    }
}

/// Pass `p` (columns `w·p..w·p + w` of each 32-wide group in `from..to`) for R rows (`k`
/// apart from `w`) × T tokens (`xp` packed). Each (row, token, p) adds the same products in
/// the same order as one token would, and R·T sums share each load.
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn tile_pass<L: Lanes, const P: usize, const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[L::V; T]; R],
    p: usize,
    from: usize,
    to: usize,
) {
    let mut a = *acc;
    let xj = xp.add(p * packed_segment::<P>(k32));
    let stride = packed_stride::<P>(k32);
    for g in from / 32..to / 32 {
        let wv: [L::V; R] = std::array::from_fn(|r| L::load_bf16(w.add(r * k + 32 * g + L::WIDTH * p)));
        for t in 0..T {
            let xv = L::load_f32(xj.add(t * stride + L::WIDTH * g));
            for r in 0..R {
                a[r][t] = L::fma(xv, wv[r], a[r][t]);
            }
        }
    }
    *acc = a;
}

/// Columns `from..to` of R rows × T tokens: [`tile_pass`] for each pass, its accumulators
/// moved in and out of `acc` (`[row][token][pass]`, from the tile's first row).
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn pass_rows<L: Lanes, const P: usize, const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[[L::V; P]; T]],
    from: usize,
    to: usize,
) {
    for p in 0..P {
        let mut a: [[L::V; T]; R] = std::array::from_fn(|r| std::array::from_fn(|t| acc[r][t][p]));
        tile_pass::<L, P, R, T>(xp, k32, w, k, &mut a, p, from, to);
        for (r, ar) in a.iter().enumerate() {
            for (t, v) in ar.iter().enumerate() {
                acc[r][t][p] = *v;
            }
        }
    }
}

/// One tile of T tokens (`x`, and `xp` packed) through rows `block`: K in chunks of
/// [`K_CHUNK`], each chunk through every row of the block (R at a time, the rest alone).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16<L: Lanes, const P: usize, const R: usize, const T: usize>(
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
    // [row of the block][token][pass]
    let mut acc = [[[L::zero(); P]; T]; ROW_BLOCK];
    let (r0, n_rows) = (block.start, block.len());
    let tiled = n_rows / R * R; // rows in whole tiles
    let mut c0 = 0;
    while c0 < k32 {
        let c1 = (c0 + K_CHUNK).min(k32);
        for q in (0..tiled).step_by(R) {
            pass_rows::<L, P, R, T>(xp, k32, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        for q in tiled..n_rows {
            pass_rows::<L, P, 1, T>(xp, k32, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        c0 = c1;
    }
    for (r, a) in block.zip(acc.iter()) {
        let acc8: Acc<T> = std::array::from_fn(|t| L::as_acc8::<P>(&a[t]));
        let b = bias.map_or(0.0, |b| b[r]);
        dots_bf16_finish::<T>(x, k, k32, &w[r * k..(r + 1) * k], &acc8, b, out.add(r * n_tok));
    }
}

/// `out [R, T] = w [R, K]·x [T, K]ᵀ + bias` for T ≥ 2, x also packed by [`pack`]`::<P>` in
/// `xp`; P = 32 / `L::WIDTH` and R = `L::TILE_ROWS` (given at the call: Rust cannot yet derive
/// a const parameter from another). Called from a function with the features `L` needs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run<L: Lanes, const P: usize, const R: usize>(
    x: &[f32],
    xp: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
) {
    debug_assert!(P * L::WIDTH == 32 && R == L::TILE_ROWS && n_tok > 1);
    let rows = out.len() / n_tok;
    let op = out.as_mut_ptr();
    let stride = packed_stride::<P>(k / 32 * 32);
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let block = r0..(r0 + ROW_BLOCK).min(rows);
        let mut t = 0;
        while t < n_tok {
            let tb = (n_tok - t).min(TOKENS);
            let (xt, xpt, o) = (x.as_ptr().add(t * k), xp.as_ptr().add(t * stride), op.add(t));
            match tb {
                6 => tile_bf16::<L, P, R, 6>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                5 => tile_bf16::<L, P, R, 5>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                4 => tile_bf16::<L, P, R, 4>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                3 => tile_bf16::<L, P, R, 3>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                2 => tile_bf16::<L, P, R, 2>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                _ => tile_bf16::<L, P, R, 1>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
            }
            t += tb;
        }
    }
}
