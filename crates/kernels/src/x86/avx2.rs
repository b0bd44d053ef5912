//! AVX2 + FMA: 8 f32 lanes, bf16 widened by a 16-bit shift.

use std::arch::x86_64::*;

use super::dense_tiles::{self, Lanes, GROUP};

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

/// One token through one row in the order of [`super::dense_tiles`]: `xd` the token's whole
/// groups with each group's even columns before its odd ones, `x` as it is (for the columns
/// past them): the prompt tiles' pass ([`dense_tiles::tile_pass`]) for one token, 32 columns
/// at a time. Prefetches what it will read [`PREFETCH_AHEAD`] bytes from now into L2 (past the
/// row's end, in the rows after it), a cache line every 32 columns.
///
/// One row at a time, so a thread reads one address stream: on a Zen 4 VM two threads over
/// the unembedding read 53–60 GB/s this way against 44–48 with two rows side by side (53–59
/// for plain loads of the same memory; one thread 30 against 24, plain loads 29–31), and two
/// rows from the two halves of a block (two long streams) read 47–50. The cost is two FMA
/// chains instead of four: with the weights in cache one core runs 32 GB/s against 48, above
/// what a core draws from memory on the machines measured.
#[inline(always)]
unsafe fn row_one_token(xd: *const f32, x: *const f32, k: usize, w: *const u16, bias: f32) -> f32 {
    let k16 = k / GROUP * GROUP;
    // [row][token][even, odd]
    let mut acc = [[[_mm256_setzero_ps(); 2]; 1]; 1];
    let (mut pf_row, mut pf_col) = ((PREFETCH_AHEAD / 2) / k, (PREFETCH_AHEAD / 2) % k);
    let k32 = k / 32 * 32;
    for c in (0..k32).step_by(32) {
        _mm_prefetch::<_MM_HINT_T1>((w as *const i8).wrapping_add(2 * (pf_row * k + pf_col)));
        pf_col += 32;
        while pf_col >= k {
            (pf_col, pf_row) = (pf_col - k, pf_row + 1);
        }
        dense_tiles::tile_pass::<Lanes8, 2, 1, 1>(xd, 0, w, k, &mut acc, c, c + 32);
    }
    // The last group when K16 is an odd number of groups.
    dense_tiles::tile_pass::<Lanes8, 2, 1, 1>(xd, 0, w, k, &mut acc, k32, k16);
    dense_tiles::finish(Lanes8::pair_sums::<2>(&acc[0][0]), x, w, k16, k, bias)
}

/// The 8 words at `p` with their low halves cleared: the odd columns of a group, widened.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn and_high_halves(p: *const u16) -> __m256 {
    let mask = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let odd: __m256;
    std::arch::asm!("vpand {o}, {m}, [{p}]", o = lateout(ymm_reg) odd, m = in(ymm_reg) mask, p = in(reg) p,
        options(pure, readonly, nostack, preserves_flags));
    odd
}

/// 8 lanes for [`super::dense_tiles`]: a group's 16 weights as its even and its odd columns,
/// one shift and one AND of the same 8 words.
struct Lanes8;

impl Lanes for Lanes8 {
    type V = __m256;
    const WIDTH: usize = 8;
    const K_CHUNK: usize = K_CHUNK_8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_w(p: *const u16, h: usize) -> __m256 {
        if h == 0 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_loadu_si256(p as *const __m256i)))
        } else {
            // The AND reads the words from memory again: kept in a register from the shift,
            // they would take the 17th register of a 2-row tile (LLVM merges two loads of one
            // address, and turns an AND by a constant into a blend, which has no such form).
            and_high_halves(p)
        }
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
    unsafe fn pair_sums<const P: usize>(acc: &[__m256; P]) -> __m256 {
        _mm256_add_ps(acc[0], acc[1])
    }
    fn packed_column(i: usize) -> usize {
        if i < 8 {
            2 * i
        } else {
            2 * (i - 8) + 1
        }
    }
}

/// Columns per K chunk of a prompt tile: 3 tokens × 1024 columns of activations, 12 KB of L1.
const K_CHUNK_8: usize = 1024;
/// Rows whose one-token sums are kept on the stack before they are stored together.
const ONE_TOKEN_OUT: usize = 16;
/// Rows × tokens of a prompt tile: 2 × 3 × 2 vectors of sums, the two rows' widened weights,
/// an activation vector and the AND's mask take the 16 registers; each widening feeds 3 FMAs.
const TILE_ROWS_8: usize = 2;
const TILE_TOKENS_8: usize = 3;

/// One token: a row at a time ([`row_one_token`]). Several: the tiles of
/// [`super::dense_tiles`] over `xp`, the tokens packed by [`pack_f32_for_bf16w`].
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    match n_tok {
        0 => {}
        1 => dense_tiles::with_deinterleaved::<Lanes8, _>(x, |xd| {
            let b = |r: usize| bias.map_or(0.0, |b| b[r]);
            let (xd, xr, wp) = (xd.as_ptr(), x.as_ptr(), w.as_ptr());
            // The sums go out 16 rows at a time, not one store after every row: on an Intel
            // Xeon VM (family 6 model 167) one thread through this function over 1 GiB of
            // weights streamed 11.0-11.5 GB/s with a store per row, 13.5-14.2 without; the
            // model's dense stages 22-25 -> 27-31 GB/s. Why is not known (no PMU there).
            for (c, chunk) in out.chunks_mut(ONE_TOKEN_OUT).enumerate() {
                let mut sums = [0f32; ONE_TOKEN_OUT];
                for (i, s) in sums[..chunk.len()].iter_mut().enumerate() {
                    let r = ONE_TOKEN_OUT * c + i;
                    *s = row_one_token(xd, xr, k, wp.add(r * k), b(r));
                }
                chunk.copy_from_slice(&sums[..chunk.len()]);
            }
        }),
        _ => dense_tiles::run::<Lanes8, 2, TILE_ROWS_8, TILE_TOKENS_8>(x, xp, n_tok, w, bias, out, k),
    }
}

/// x `[n_tok, K]` in the layout [`matmul_rows_f32_bf16w_packed`] reads (nothing for one
/// token, which reads x as it is).
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    dense_tiles::pack::<Lanes8>(x, n_tok, k, xp)
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
    assert_eq!(xp.len(), dense_tiles::packed_len(n_tok, k), "linear: packed activations do not match [T, K]");
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
    dense_tiles::with_packed::<Lanes8, _>(x, n_tok, k, |xp| matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out))
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

/// [`crate::scalar::swiglu_interleaved_f32`] on 8 units at a time, as the 16-lane
/// [`super::avx512::swiglu_interleaved_f32`] does it: σ(z) is 1/(1 + e^−z) for z ≥ 0 and
/// e^z/(1 + e^z) below, so the exponential never overflows; within a few ulps of the scalar
/// twin.
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_impl(u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    let n = out.len();
    let (lim, one) = (_mm256_set1_ps(limit), _mm256_set1_ps(1.0));
    let mut i = 0;
    while i + 8 <= n {
        let (a, b) = (_mm256_loadu_ps(u.as_ptr().add(2 * i)), _mm256_loadu_ps(u.as_ptr().add(2 * i + 8)));
        // Even (gate) and odd (up) lanes, units [0, 1, 4, 5, 2, 3, 6, 7]; put in order at the
        // store.
        let gate = _mm256_min_ps(_mm256_shuffle_ps::<0b10_00_10_00>(a, b), lim);
        // Operand order keeps a NaN up (clamp passes it) and drops a NaN gate (min does).
        let up = _mm256_max_ps(
            _mm256_sub_ps(_mm256_setzero_ps(), lim),
            _mm256_min_ps(lim, _mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        );
        let z = _mm256_mul_ps(_mm256_set1_ps(alpha), gate);
        let neg_abs = _mm256_or_ps(z, _mm256_set1_ps(-0.0));
        let e = super::attention_avx2::exp_nonpositive(neg_abs);
        let num = _mm256_blendv_ps(e, one, _mm256_cmp_ps::<_CMP_GE_OQ>(z, _mm256_setzero_ps()));
        let sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
        let y = _mm256_mul_ps(_mm256_mul_ps(gate, sig), _mm256_add_ps(up, one));
        let y = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(y)));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
        i += 8;
    }
    crate::scalar::swiglu_interleaved_f32(&u[2 * i..], alpha, limit, &mut out[i..]);
}

pub fn swiglu_interleaved_f32(u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    assert_eq!(u.len(), 2 * out.len(), "swiglu: u is not [2I]");
    // SAFETY: handed out by `Kernels` only with AVX2 and FMA; loads and stores stay below
    // 2·n and n.
    unsafe { swiglu_impl(u, alpha, limit, out) }
}
