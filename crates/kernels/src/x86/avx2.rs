//! AVX2 + FMA: 8 f32 lanes, bf16 widened by a 16-bit shift.

use std::arch::x86_64::*;

use crate::bf16::bf16_to_f32;

/// `[8]` bf16 at `p` as f32.
#[inline(always)]
unsafe fn load_bf16x8(p: *const u16) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
}

/// Horizontal sum of 8 lanes, halves then pairs.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Σ x[i]·y(i) over `n` elements: `load(o)` gives y[o..o+8], `at(i)` one y. Four
/// accumulators over 32-wide groups, one for the 8-wide rest, then the tail in order: every
/// dot product here sums in this one order.
#[inline(always)]
unsafe fn dot_with(x: &[f32], n: usize, load: impl Fn(usize) -> __m256, at: impl Fn(usize) -> f32) -> f32 {
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * j;
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), load(o), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), load(i), acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += x[i] * at(i);
        i += 1;
    }
    s
}

/// Bytes ahead of a one-token matmul's weight stream to prefetch, into L2 (`prefetcht1`).
/// The rows follow each other in memory, but the hardware prefetcher stops at every 4 KiB
/// page: without a prefetch the dense matrices streamed at 15–16 GB/s on a Xeon where the
/// experts (prefetched) reached 21. Into L1 a page ahead was not enough where memory is fast:
/// on a Zen 4 VM whose plain loads read 50–59 GB/s, a C twin of this loop streamed 36–39
/// (42–45 into L2 two pages ahead) and the model's attn_out 27–32 (now 32–43); likely the
/// L1's few outstanding misses, which an L2 prefetch does not hold.
const PREFETCH_AHEAD: usize = 8192;

/// Σ x[i]·w[i], w in bf16, prefetching [`PREFETCH_AHEAD`] bytes past each 32-wide group
/// (one cache line of weights) into L2.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_bf16(x: &[f32], w: &[u16]) -> f32 {
    let wp = w.as_ptr();
    let load = |o: usize| {
        if o.is_multiple_of(32) {
            _mm_prefetch::<_MM_HINT_T1>((wp.add(o) as *const i8).wrapping_add(PREFETCH_AHEAD));
        }
        load_bf16x8(wp.add(o))
    };
    dot_with(x, x.len().min(w.len()), load, |i| bf16_to_f32(w[i]))
}

/// Tokens per prompt tile (see [`TILE_ROWS`]).
const TOKENS: usize = 6;
/// Rows that every token tile runs through in turn: their bf16 weights (92 KB at K = 2880)
/// stay in L2 while the tiles pass.
const ROW_BLOCK: usize = 16;
/// Columns a tile runs through every row of the block before moving on: the tile's
/// activations for them (12 KB) stay in L1 across the block's rows, where the whole of K
/// (69 KB at K = 2880) would be fetched from L2 again for every row.
const K_CHUNK: usize = 512;

/// [`dot_with`]'s four accumulators for T tokens.
pub(super) type Acc<const T: usize> = [[__m256; 4]; T];

/// The rest of [`dot_with`] after its 32-wide groups (`k32` columns): the 8-wide groups, the
/// reduction and the tail, written to `out` (the T tokens side by side) plus `bias`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) unsafe fn dots_bf16_finish<const T: usize>(
    x: *const f32,
    k: usize,
    k32: usize,
    w: &[u16],
    acc: &Acc<T>,
    bias: f32,
    out: *mut f32,
) {
    let wp = w.as_ptr();
    let mut a = *acc;
    let mut i = k32;
    while i + 8 <= k {
        let wv = load_bf16x8(wp.add(i));
        for t in 0..T {
            a[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(t * k + i)), wv, a[t][0]);
        }
        i += 8;
    }
    for t in 0..T {
        let a = &a[t];
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
        for c in i..k {
            s += *x.add(t * k + c) * bf16_to_f32(w[c]);
        }
        *out.add(t) = s + bias;
    }
}

/// Rows in a prompt register tile: 2 rows × 6 tokens = 12 accumulators (FMA latency × ports
/// is 8 in flight: 8 would leave no slack), 2 widened weight vectors and an activation
/// vector take 15 of the 16 registers; each weight widening (a shift, on the FMA ports)
/// feeds 6 FMAs.
const TILE_ROWS: usize = 2;

/// Floats from one accumulator's columns of a token to the next's in the packed activations:
/// K32/4 and a cache line. See [`packed_stride`].
fn packed_segment(k32: usize) -> usize {
    k32 / 4 + 16
}

/// Floats from one token to the next in the packed activations: four segments and four more
/// cache lines. Unpadded, at K = 4096 (the attention output) every segment began a multiple
/// of 4 KiB from the others, so all that a row pair's passes read of a 6-token tile (192
/// cache lines) fell in 8 of the 64 sets of a 32 KiB L1, 24 lines to a set of 8 ways: the
/// matmul ran at 26–28 GMAC/s on Zen 4 against 33–38 at K = 2880. Padded, no set holds more
/// than 4 at either K.
fn packed_stride(k32: usize) -> usize {
    4 * packed_segment(k32) + 64
}

/// x `[n_tok, K]` into `[n_tok][4][K32 / 4]` (tokens [`packed_stride`] apart, accumulators
/// [`packed_segment`] apart, the padding zero): per token, [`dot_with`]'s accumulator `j`'s
/// columns (`8j..8j + 8` of each 32-wide group of the first `k32`) one after the other, so a
/// [`tile_pass`] reads them contiguously (strided, they cost a sixth of its speed).
fn pack_by_accumulator(x: &[f32], n_tok: usize, k: usize, k32: usize, xp: &mut Vec<f32>) {
    xp.clear();
    xp.reserve(n_tok * packed_stride(k32));
    for t in 0..n_tok {
        let row = &x[t * k..t * k + k32];
        let token_start = xp.len();
        for j in 0..4 {
            for group in row.chunks_exact(32) {
                xp.extend_from_slice(&group[8 * j..8 * j + 8]);
            }
            xp.resize(token_start + (j + 1) * packed_segment(k32), 0.0);
        }
        xp.resize(token_start + packed_stride(k32), 0.0);
    }
}

/// Accumulator `j` of [`dot_with`] (columns `8j..8j + 8` of each 32-wide group in
/// `from..to`) for R rows (`k` apart from `w`) × T tokens (`xp` packed by
/// [`pack_by_accumulator`]). [`dot_with`] keeps its four accumulators
/// apart until the end, so the four can be run one after the other: each (row, token, j)
/// still adds the same products in the same order, and R·T sums share each load.
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn tile_pass<const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[__m256; T]; R],
    j: usize,
    from: usize,
    to: usize,
) {
    let mut a = *acc;
    let xj = xp.add(j * packed_segment(k32));
    let mut g = from / 32;
    while g < to / 32 {
        let wv: [__m256; R] = std::array::from_fn(|r| load_bf16x8(w.add(r * k + 32 * g + 8 * j)));
        for t in 0..T {
            let xv = _mm256_loadu_ps(xj.add(t * packed_stride(k32) + 8 * g));
            for r in 0..R {
                a[r][t] = _mm256_fmadd_ps(xv, wv[r], a[r][t]);
            }
        }
        g += 1;
    }
    *acc = a;
}

/// Columns `from..to` of R rows × T tokens: [`tile_pass`] for each of the four
/// accumulators, moved in and out of `acc` (`[row][token][j]`, from the tile's first row).
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn pass_rows<const R: usize, const T: usize>(
    xp: *const f32,
    k32: usize,
    w: *const u16,
    k: usize,
    acc: &mut [[[__m256; 4]; T]],
    from: usize,
    to: usize,
) {
    for j in 0..4 {
        let mut a: [[__m256; T]; R] = std::array::from_fn(|r| std::array::from_fn(|t| acc[r][t][j]));
        tile_pass::<R, T>(xp, k32, w, k, &mut a, j, from, to);
        for (r, ar) in a.iter().enumerate() {
            for (t, v) in ar.iter().enumerate() {
                acc[r][t][j] = *v;
            }
        }
    }
}

/// One tile of T tokens (`x`, and `xp` packed) through rows `block`: K in chunks of
/// [`K_CHUNK`], each chunk through every row of the block ([`TILE_ROWS`] at a time, an odd
/// last row alone), the accumulators parked in between.
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
    // [row of the block][token][j]
    let mut acc = [[[_mm256_setzero_ps(); 4]; T]; ROW_BLOCK];
    let (r0, n_rows) = (block.start, block.len());
    let tiled = n_rows / TILE_ROWS * TILE_ROWS; // rows in whole tiles
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
        let b = bias.map_or(0.0, |b| b[r]);
        dots_bf16_finish::<T>(x, k, k32, &w[r * k..(r + 1) * k], a, b, out.add(r * n_tok));
    }
}

thread_local! {
    /// [`pack_by_accumulator`]'s copy of a prompt, kept between calls (at most a prefill
    /// chunk's tokens × K: 8 MB at 512 × 4096), for callers that do not pack it themselves.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One token: a dot product per row, one row streaming at a time. Several: blocks of
/// [`ROW_BLOCK`] rows, each block run by every tile of [`TOKENS`] tokens (`xp`, the tokens
/// packed by [`pack_by_accumulator`]), so weights are widened once per tile instead of once
/// per token, and neither operand streams from memory per row.
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    if n_tok == 0 {
        return;
    }
    if n_tok == 1 {
        for (r, (w_row, y)) in w.chunks_exact(k).zip(out.iter_mut()).enumerate() {
            *y = dot_f32_bf16(x, w_row) + bias.map_or(0.0, |b| b[r]);
        }
        return;
    }
    let rows = out.len() / n_tok;
    let op = out.as_mut_ptr();
    let k32 = k / 32 * 32;
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let block = r0..(r0 + ROW_BLOCK).min(rows);
        let mut t = 0;
        while t < n_tok {
            let tb = (n_tok - t).min(TOKENS);
            let (xt, xpt, o) = (x.as_ptr().add(t * k), xp.as_ptr().add(t * packed_stride(k32)), op.add(t));
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

/// x `[n_tok, K]` in the layout [`matmul_rows_f32_bf16w_packed`] reads (`n_tok` ×
/// [`packed_stride`] floats; nothing for one token, which reads x as it is).
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    assert!(k > 0 && x.len() == n_tok * k, "pack: x is not [T, K]");
    if n_tok > 1 {
        pack_by_accumulator(x, n_tok, k, k / 32 * 32, xp);
    } else {
        xp.clear();
    }
}

/// [`matmul_rows_f32_bf16w`] with the activations already packed by [`pack_f32_for_bf16w`]:
/// a prompt's row blocks, split over threads, then share one packing per call instead of
/// each packing the whole prompt again. The same bits.
pub fn matmul_rows_f32_bf16w_packed(
    x: &[f32],
    xp: &[f32],
    n_tok: usize,
    k: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    let packed_len = if n_tok > 1 { n_tok * packed_stride(k / 32 * 32) } else { 0 };
    assert_eq!(xp.len(), packed_len, "linear: packed activations do not match [T, K]");
    // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA; every access is
    // within the slices, whose lengths were checked above.
    unsafe { matmul_impl(x, xp, n_tok, w, bias, out, k) }
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
        // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA; every access
        // is within the slices, whose lengths were checked above.
        unsafe { matmul_impl(x, xp, n_tok, w, bias, out, k) }
    })
}

/// Σ a[i]·b[i] in f32.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let bp = b.as_ptr();
    dot_with(a, a.len().min(b.len()), |o| _mm256_loadu_ps(bp.add(o)), |i| b[i])
}

/// 8 code bytes at `codes` → 16 weights (low nibble first), times `scale`. The magnitude is
/// an 8-entry lane permute; the code's bit 3 is the sign.
#[inline(always)]
unsafe fn decode_half_block(codes: *const u8, scale: __m256, mag: __m256) -> (__m256, __m256) {
    let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes as *const __m128i));
    let value = |n: __m256i| {
        let m = _mm256_permutevar8x32_ps(mag, n);
        let sign = _mm256_slli_epi32(_mm256_and_si256(n, _mm256_set1_epi32(8)), 28);
        _mm256_xor_ps(m, _mm256_castsi256_ps(sign))
    };
    let lo = value(_mm256_and_si256(bytes, _mm256_set1_epi32(0xf)));
    let hi = value(_mm256_srli_epi32(bytes, 4));
    // unpack interleaves within 128-bit halves; permute2f128 puts the halves in order.
    let (a, b) = (_mm256_unpacklo_ps(lo, hi), _mm256_unpackhi_ps(lo, hi));
    (_mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), scale), _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), scale))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_mxfp4_impl(
    x: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let mag = _mm256_loadu_ps(crate::mxfp4::FP4_VALUES.as_ptr());
    let rows = codes.chunks_exact(k / 2).zip(scales.chunks_exact(k / crate::mxfp4::BLOCK));
    for (r, ((c, s), out_row)) in rows.zip(out.chunks_exact_mut(n_tok)).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        // With one token the weights go straight into the dot product. A block is one of
        // `dot_f32`'s 32-wide groups, so the sum has its order: the result does not depend
        // on the batch size.
        let mut acc = [_mm256_setzero_ps(); 4];
        for (blk, &sc) in s.iter().enumerate() {
            let scale = _mm256_set1_ps(crate::mxfp4::e8m0_to_f32(sc));
            for half in 0..2 {
                let (w0, w1) = decode_half_block(c.as_ptr().add(blk * 16 + half * 8), scale, mag);
                let o = blk * 32 + half * 16;
                if n_tok == 1 {
                    acc[2 * half] = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(o)), w0, acc[2 * half]);
                    acc[2 * half + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(o + 8)), w1, acc[2 * half + 1]);
                } else {
                    _mm256_storeu_ps(row_buf.as_mut_ptr().add(o), w0);
                    _mm256_storeu_ps(row_buf.as_mut_ptr().add(o + 8), w1);
                }
            }
        }
        if n_tok == 1 {
            out_row[0] = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + b;
        } else {
            for (t, y) in out_row.iter_mut().enumerate() {
                *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + b;
            }
        }
    }
}

/// See [`crate::scalar::matmul_rows_f32_mxfp4w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_mxfp4w(
    x: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    crate::scalar::check_mxfp4_shapes(x, n_tok, row_buf.len(), codes.len(), scales.len(), bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA; the shapes were
    // checked above, so every block read and row_buf write is in bounds.
    unsafe { matmul_mxfp4_impl(x, n_tok, codes, scales, bias, out, row_buf) }
}

/// One affine row `[K]` into `out` as f32, the bits of [`crate::affine::decode_row`]: 8
/// codes of 1, 2 or 4 bits from one u32 by per-lane shifts, 8-bit codes by widening bytes,
/// then `scale·q + bias` as a multiply and an add (not fused). 3, 5 and 6 bits, whose codes
/// straddle bytes unevenly, go through the scalar decoder.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn decode_affine_row(
    codes: &[u8],
    scales: &[f32],
    biases: &[f32],
    bits: u32,
    group: usize,
    out: &mut [f32],
) {
    if !matches!(bits, 1 | 2 | 4 | 8) {
        return crate::affine::decode_row(codes, scales, biases, bits, group, out);
    }
    let shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits as i32));
    let mask = _mm256_set1_epi32((1 << bits) - 1);
    let chunk_bytes = bits as usize; // 8 codes
    let (cp, op) = (codes.as_ptr(), out.as_mut_ptr());
    for (g, (&s, &b)) in scales.iter().zip(biases).enumerate() {
        let (sv, bv) = (_mm256_set1_ps(s), _mm256_set1_ps(b));
        for c in 0..group / 8 {
            let j = g * group + 8 * c;
            let src = cp.add(j * chunk_bytes / 8);
            let word = match bits {
                8 => 0,
                4 => std::ptr::read_unaligned(src as *const u32),
                2 => std::ptr::read_unaligned(src as *const u16) as u32,
                _ => *src as u32,
            };
            let q = if bits == 8 {
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(src as *const __m128i))
            } else {
                _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word as i32), shifts), mask)
            };
            let w = _mm256_add_ps(_mm256_mul_ps(sv, _mm256_cvtepi32_ps(q)), bv);
            _mm256_storeu_ps(op.add(j), w);
        }
    }
}

/// See [`crate::scalar::matmul_rows_f32_affinew`]: each row decoded, then this set's dot
/// product for every token.
pub fn matmul_rows_f32_affinew(
    x: &[f32],
    n_tok: usize,
    w: crate::affine::AffineRows,
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let rows = crate::scalar::check_affine_shapes(x, n_tok, k, &w, bias, out);
    for (r, out_row) in out.chunks_exact_mut(n_tok).enumerate().take(rows) {
        let (c, s, b) = w.row(k, r);
        let bias_r = bias.map_or(0.0, |b| b[r]);
        // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA; the shapes were
        // checked above, so the row's codes, scales and biases cover K inputs.
        unsafe {
            decode_affine_row(c, s, b, w.bits, w.group, row_buf);
            for (t, y) in out_row.iter_mut().enumerate() {
                *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + bias_r;
            }
        }
    }
}

/// See [`crate::scalar::matmul_rows_f32_f32w`]; this set's dot product and summation order.
pub fn matmul_rows_f32_f32w(
    x: &[f32],
    n_tok: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    for (r, (w_row, out_row)) in w.chunks_exact(k).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            // SAFETY: handed out by `Kernels` only when the CPU has the set's features (avx2,fma);
            // both slices are K long.
            *y = unsafe { dot_f32(&x[t * k..(t + 1) * k], w_row) } + b;
        }
    }
}
