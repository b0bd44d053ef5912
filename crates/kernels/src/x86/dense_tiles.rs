//! The bf16 matmuls with f32 activations of the x86 sets without bf16 instructions (`avx2`,
//! `avx-vnni`, `avx512`, `avx512vnni`), for one token and for prompts, in either vector width:
//! 8 lanes ([`super::avx2`]) or 16 ([`super::avx512_dense`]).
//!
//! Every (row, token) sums in one order, so a token gets the same bits alone or in a prompt, in
//! any set that shares it. Per group g of 16 columns, 16 running sums: `even[l]` adds
//! `x[16g + 2l]·w[16g + 2l]` and `odd[l]` adds `x[16g + 2l + 1]·w[16g + 2l + 1]` (l = 0..8),
//! each a fused multiply-add, groups in order. Then `s = hsum(even + odd)` ([`super::avx2::hsum`]),
//! the columns past the last whole group added one by one (`s += x·w`, not fused), and the bias.
//!
//! Why this order: 32 bytes of bf16 weights are 8 words, each an even column in its low half
//! and the next odd one in its high half, so AVX2 widens them to the two 8-lane vectors with one
//! shift and one AND; AVX-512 widens the same 16 weights in column order into one 16-lane
//! vector (`vpmovzxwd`, a shift), whose lane 2l + h is `even[l]` (h = 0) or `odd[l]` (h = 1).
//! With only 2 vectors of running sums per (row, token) (AVX2; 1 for AVX-512), a register tile
//! holds every sum of its rows × tokens for the whole of a K chunk: one pass per chunk, where
//! the four accumulators of the order before this one took four short passes, each parking
//! its tile's sums in memory. Measured on Zen 4 (README, performance log) that lifts the
//! 16-lane prompt tiles by ~12% and one token by ~10% with its weights in cache; the 8-lane
//! prompt tile runs as fast as before (~10 of the core's 16 multiply-adds per cycle: the
//! tile's loads, not its passes, are what hold it there).
//!
//! Blocking: rows in blocks of [`ROW_BLOCK`] (their weights stay in L2), each run by every
//! tile of `T` tokens; K in chunks ([`Lanes::K_CHUNK`]), each chunk through every row of the
//! block, `R` rows × the tile's tokens at a time, the sums parked between chunks. Weights are
//! widened once per tile instead of once per token, and neither operand streams from memory
//! per row.

use std::arch::x86_64::*;

use crate::bf16::bf16_to_f32;

/// Columns per group of the order.
pub(super) const GROUP: usize = 16;
/// Rows that every token tile runs through in turn: their bf16 weights (92 KB at K = 2880)
/// stay in L2 while the tiles pass.
const ROW_BLOCK: usize = 16;

/// A vector width for the tiles.
pub(super) trait Lanes {
    /// f32 lanes.
    type V: Copy;
    /// f32 lanes per vector: 8 or 16; a group is 16 / this many vectors.
    const WIDTH: usize;
    /// Columns a tile runs through every row of the block before moving on: the tile's
    /// activations for them stay in L1 across the block's rows, where the whole of K would
    /// be fetched from L2 again for every row.
    const K_CHUNK: usize;
    unsafe fn zero() -> Self::V;
    /// Vector `h` of the group of 16 bf16 weights at `p`, widened to f32: for 8 lanes the
    /// even (h = 0) or odd (h = 1) columns, for 16 all of them in order.
    unsafe fn load_w(p: *const u16, h: usize) -> Self::V;
    unsafe fn load_f32(p: *const f32) -> Self::V;
    /// `x·w + acc`, fused.
    unsafe fn fma(x: Self::V, w: Self::V, acc: Self::V) -> Self::V;
    /// One (row, token)'s P vectors of running sums → `even[l] + odd[l]` in lane l.
    unsafe fn pair_sums<const P: usize>(acc: &[Self::V; P]) -> __m256;
    /// The column of a group that position `i` of a packed group holds (the order in which
    /// [`Self::load_w`]'s vectors hold the weights).
    fn packed_column(i: usize) -> usize;
}

/// Σ of the 8 lanes of `pair_sums`, then the columns `k16..k` one by one, then the bias: the
/// end of every (row, token) of the order.
#[inline(always)]
pub(super) unsafe fn finish(pair_sums: __m256, x: *const f32, w: *const u16, k16: usize, k: usize, bias: f32) -> f32 {
    let mut s = super::avx2::hsum(pair_sums);
    for c in k16..k {
        s += *x.add(c) * bf16_to_f32(*w.add(c));
    }
    s + bias
}

/// Floats from one token to the next in the packed activations: K16 and a cache line, so that
/// the tokens of a tile (K = 4096: 16 KiB apart unpadded) do not all fall in the same L1 sets.
fn packed_stride(k16: usize) -> usize {
    k16 + 16
}

/// x `[n_tok, K]` → `[n_tok][K16]` (tokens [`packed_stride`] apart, the padding zero), each
/// group's columns in the order of `L`'s weight vectors ([`Lanes::packed_column`]), so a
/// vector of activations is one load. Nothing for one token, which reads x through
/// [`with_deinterleaved`] (8 lanes) or as it is.
pub(super) fn pack<L: Lanes>(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    assert!(k > 0 && x.len() == n_tok * k, "pack: x is not [T, K]");
    xp.clear();
    if n_tok < 2 {
        return;
    }
    let k16 = k / GROUP * GROUP;
    xp.reserve(n_tok * packed_stride(k16));
    for t in 0..n_tok {
        pack_token::<L>(&x[t * k..t * k + k16], xp);
        xp.resize((t + 1) * packed_stride(k16), 0.0);
    }
}

/// One token's whole groups, appended in `L`'s packed order.
fn pack_token<L: Lanes>(x16: &[f32], xp: &mut Vec<f32>) {
    for group in x16.chunks_exact(GROUP) {
        xp.extend((0..GROUP).map(|i| group[L::packed_column(i)]));
    }
}

/// The floats [`pack`] writes for T tokens.
pub(super) fn packed_len(n_tok: usize, k: usize) -> usize {
    if n_tok > 1 {
        n_tok * packed_stride(k / GROUP * GROUP)
    } else {
        0
    }
}

thread_local! {
    /// A prompt packed by [`with_packed`], kept between calls (at most a prefill chunk's
    /// tokens × K: 8 MB at 512 × 4096), for callers that do not pack it themselves.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One token's whole groups for [`with_deinterleaved`].
    static ONE_TOKEN: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` of x `[n_tok, K]` packed by [`pack`]`::<L>` into this thread's buffer.
pub(super) fn with_packed<L: Lanes, R>(x: &[f32], n_tok: usize, k: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    PACKED.with_borrow_mut(|xp| {
        pack::<L>(x, n_tok, k, xp);
        f(xp)
    })
}

/// `f` of one token's whole groups in `L`'s packed order (`[K16]`).
pub(super) fn with_deinterleaved<L: Lanes, R>(x: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
    ONE_TOKEN.with_borrow_mut(|xp| {
        xp.clear();
        pack_token::<L>(&x[..x.len() / GROUP * GROUP], xp);
        f(xp)
    })
}

/// Groups `from..to` (column indices, multiples of [`GROUP`]) for R rows (`k` apart from `w`)
/// × T tokens (`xp` packed, `stride` apart): each sum adds the same products in the same order
/// as one token does, and R·T sums share each load.
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
pub(super) unsafe fn tile_pass<L: Lanes, const P: usize, const R: usize, const T: usize>(
    xp: *const f32,
    stride: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[[L::V; P]; T]; R],
    from: usize,
    to: usize,
) {
    let mut a = *acc;
    for c in (from..to).step_by(GROUP) {
        for h in 0..P {
            let wv: [L::V; R] = std::array::from_fn(|r| L::load_w(w.add(r * k + c), h));
            for t in 0..T {
                let xv = L::load_f32(xp.add(t * stride + c + L::WIDTH * h));
                for r in 0..R {
                    a[r][t][h] = L::fma(xv, wv[r], a[r][t][h]);
                }
            }
        }
    }
    *acc = a;
}

/// R rows' sums (`acc`, `[row][token][vector]` from the tile's first row) through columns
/// `from..to`, moved into registers for the pass and back.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pass_rows<L: Lanes, const P: usize, const R: usize, const T: usize>(
    xp: *const f32,
    stride: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[[L::V; P]; T]],
    from: usize,
    to: usize,
) {
    let mut a: [[[L::V; P]; T]; R] = std::array::from_fn(|r| acc[r]);
    tile_pass::<L, P, R, T>(xp, stride, w, k, &mut a, from, to);
    acc[..R].copy_from_slice(&a);
}

/// One tile of T tokens (`x`, and `xp` packed) through rows `block`: K in chunks of
/// [`Lanes::K_CHUNK`], each chunk through every row of the block (R at a time, the rest alone).
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
    let k16 = k / GROUP * GROUP;
    let stride = packed_stride(k16);
    // [row of the block][token][vector]
    let mut acc = [[[L::zero(); P]; T]; ROW_BLOCK];
    let (r0, n_rows) = (block.start, block.len());
    let tiled = n_rows / R * R; // rows in whole tiles
    let mut c0 = 0;
    while c0 < k16 {
        let c1 = (c0 + L::K_CHUNK).min(k16);
        for q in (0..tiled).step_by(R) {
            pass_rows::<L, P, R, T>(xp, stride, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        for q in tiled..n_rows {
            pass_rows::<L, P, 1, T>(xp, stride, w.as_ptr().add((r0 + q) * k), k, &mut acc[q..], c0, c1);
        }
        c0 = c1;
    }
    for (r, a) in block.zip(acc.iter()) {
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, at) in a.iter().enumerate() {
            let y = finish(L::pair_sums::<P>(at), x.add(t * k), w.as_ptr().add(r * k), k16, k, b);
            *out.add(r * n_tok + t) = y;
        }
    }
}

/// `out [R, T] = w [R, K]·x [T, K]ᵀ + bias` for T ≥ 2, x also packed by [`pack`]`::<L>` in
/// `xp`: tiles of `TR` rows × `TT` tokens, `P` = 16 / `L::WIDTH` vectors per (row, token)
/// (given at the call: Rust cannot yet derive a const parameter from another). Called from a
/// function with the features `L` needs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run<L: Lanes, const P: usize, const TR: usize, const TT: usize>(
    x: &[f32],
    xp: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
) {
    debug_assert!(P * L::WIDTH == GROUP && (1..=6).contains(&TT) && n_tok > 1);
    let rows = out.len() / n_tok;
    let op = out.as_mut_ptr();
    let stride = packed_stride(k / GROUP * GROUP);
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let block = r0..(r0 + ROW_BLOCK).min(rows);
        let mut t = 0;
        while t < n_tok {
            let tb = (n_tok - t).min(TT);
            let (xt, xpt, o) = (x.as_ptr().add(t * k), xp.as_ptr().add(t * stride), op.add(t));
            match tb {
                6 => tile_bf16::<L, P, TR, 6>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                5 => tile_bf16::<L, P, TR, 5>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                4 => tile_bf16::<L, P, TR, 4>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                3 => tile_bf16::<L, P, TR, 3>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                2 => tile_bf16::<L, P, TR, 2>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
                _ => tile_bf16::<L, P, TR, 1>(xt, xpt, k, w, bias, block.clone(), o, n_tok),
            }
            t += tb;
        }
    }
}
