//! AVX2 + FMA: 8 f32 lanes, bf16 widened by a 16-bit shift.

use std::arch::x86_64::*;

use super::dense_tiles::{self, Lanes};
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

/// 8 lanes for [`super::dense_tiles`]: four passes per 32-column group, each the one-token dot
/// product's accumulator j. A tile of 2 rows × 6 tokens = 12 accumulators (FMA latency × ports
/// is 8 in flight: 8 would leave no slack), 2 widened weight vectors and an activation vector
/// take 15 of the 16 registers; each weight widening (a shift, on the FMA ports) feeds 6 FMAs.
struct Lanes8;

impl Lanes for Lanes8 {
    type V = __m256;
    const WIDTH: usize = 8;
    const TILE_ROWS: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        load_bf16x8(p)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn fma(x: __m256, w: __m256, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(x, w, acc)
    }
    #[inline(always)]
    unsafe fn as_acc8<const P: usize>(acc: &[__m256; P]) -> [__m256; 4] {
        std::array::from_fn(|j| acc[j])
    }
}

/// One token: a dot product per row, one row streaming at a time. Several: the tiles of
/// [`super::dense_tiles`] over `xp`, the tokens packed by [`pack_f32_for_bf16w`].
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    match n_tok {
        0 => {}
        1 => {
            for (r, (w_row, y)) in w.chunks_exact(k).zip(out.iter_mut()).enumerate() {
                *y = dot_f32_bf16(x, w_row) + bias.map_or(0.0, |b| b[r]);
            }
        }
        _ => dense_tiles::run::<Lanes8, 4, 2>(x, xp, n_tok, w, bias, out, k),
    }
}

/// x `[n_tok, K]` in the layout [`matmul_rows_f32_bf16w_packed`] reads (nothing for one
/// token, which reads x as it is).
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    dense_tiles::pack::<4>(x, n_tok, k, xp)
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
    assert_eq!(xp.len(), dense_tiles::packed_len::<4>(n_tok, k), "linear: packed activations do not match [T, K]");
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
    dense_tiles::with_packed::<4, _>(x, n_tok, k, |xp| matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out))
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
