//! AVX-512F: 16 f32 lanes, bf16 widened by a 16-bit shift.

use std::arch::x86_64::*;

use crate::bf16::bf16_to_f32;

#[inline(always)]
unsafe fn load_bf16x16(p: *const u16) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
}

/// Σ x[i]·y(i) over `n` elements: `load(o)` gives y[o..o+16], `at(i)` one y. Four
/// accumulators over 64-wide groups, one for the 16-wide rest, then the tail in order: every
/// dot product here sums in this one order.
#[inline(always)]
unsafe fn dot_with(x: &[f32], n: usize, load: impl Fn(usize) -> __m512, at: impl Fn(usize) -> f32) -> f32 {
    let xp = x.as_ptr();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let o = i + 16 * j;
            *a = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(o)), load(o), *a);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i)), load(i), acc[0]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    while i < n {
        s += x[i] * at(i);
        i += 1;
    }
    s
}

/// Σ x[i]·w[i], w in bf16.
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32_bf16(x: &[f32], w: &[u16]) -> f32 {
    let wp = w.as_ptr();
    dot_with(x, x.len().min(w.len()), |o| load_bf16x16(wp.add(o)), |i| bf16_to_f32(w[i]))
}

/// See [`crate::scalar::matmul_rows_f32_affinew`]: each row decoded by the AVX2 decoder
/// (every AVX-512 CPU has AVX2), then this set's dot product for every token.
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
        // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F (and so AVX2 and
        // FMA); the shapes were checked above.
        unsafe {
            super::avx2::decode_affine_row(c, s, b, w.bits, w.group, row_buf);
            for (t, y) in out_row.iter_mut().enumerate() {
                *y = dot_f32(&x[t * k..(t + 1) * k], row_buf) + bias_r;
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn matmul_impl(x: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    for (r, (w_row, out_row)) in w.chunks_exact(k).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            *y = dot_f32_bf16(&x[t * k..(t + 1) * k], w_row) + b;
        }
    }
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
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F; every access is within
    // the slices, whose lengths were checked above.
    unsafe { matmul_impl(x, n_tok, w, bias, out, k) }
}

/// Σ a[i]·b[i] in f32.
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let bp = b.as_ptr();
    dot_with(a, a.len().min(b.len()), |o| _mm512_loadu_ps(bp.add(o)), |i| b[i])
}

/// One MXFP4 block: 16 code bytes at `codes` → 32 weights (low nibble first), times `scale`.
/// The E2M1 table is a whole register, so each nibble is one lane permute.
#[inline(always)]
unsafe fn decode_block(codes: *const u8, scale: __m512, lut: __m512) -> (__m512, __m512) {
    let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes as *const __m128i));
    let lo = _mm512_permutexvar_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0xf)), lut);
    let hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut);
    // [lo0 hi0 lo1 hi1 ... lo7 hi7] and [lo8 hi8 ... lo15 hi15]; index bit 4 picks `hi`.
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    (
        _mm512_mul_ps(_mm512_permutex2var_ps(lo, first, hi), scale),
        _mm512_mul_ps(_mm512_permutex2var_ps(lo, second, hi), scale),
    )
}

#[target_feature(enable = "avx512f")]
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
    let lut = _mm512_loadu_ps(crate::mxfp4::FP4_VALUES.as_ptr());
    let rows = codes.chunks_exact(k / 2).zip(scales.chunks_exact(k / crate::mxfp4::BLOCK));
    for (r, ((c, s), out_row)) in rows.zip(out.chunks_exact_mut(n_tok)).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        if n_tok == 1 {
            // Decode: weights go straight from the codes into the dot product, summed in
            // exactly `dot_f32`'s order (a result must not depend on the batch size): blocks
            // pair up into its 64-wide groups; an odd last block goes to its 16-wide loop.
            let mut acc = [_mm512_setzero_ps(); 4];
            let paired = s.len() & !1;
            for (blk, &sc) in s.iter().enumerate() {
                let scale = _mm512_set1_ps(crate::mxfp4::e8m0_to_f32(sc));
                let (w0, w1) = decode_block(c.as_ptr().add(blk * 16), scale, lut);
                let (x0, x1) =
                    (_mm512_loadu_ps(x.as_ptr().add(blk * 32)), _mm512_loadu_ps(x.as_ptr().add(blk * 32 + 16)));
                if blk < paired {
                    let j = 2 * (blk % 2);
                    acc[j] = _mm512_fmadd_ps(x0, w0, acc[j]);
                    acc[j + 1] = _mm512_fmadd_ps(x1, w1, acc[j + 1]);
                } else {
                    acc[0] = _mm512_fmadd_ps(x0, w0, acc[0]);
                    acc[0] = _mm512_fmadd_ps(x1, w1, acc[0]);
                }
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            out_row[0] = _mm512_reduce_add_ps(sum) + b;
        } else {
            // Several tokens: widen the row once, then one dot per token.
            for (blk, &sc) in s.iter().enumerate() {
                let scale = _mm512_set1_ps(crate::mxfp4::e8m0_to_f32(sc));
                let (w0, w1) = decode_block(c.as_ptr().add(blk * 16), scale, lut);
                _mm512_storeu_ps(row_buf.as_mut_ptr().add(blk * 32), w0);
                _mm512_storeu_ps(row_buf.as_mut_ptr().add(blk * 32 + 16), w1);
            }
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
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F; the shapes were checked
    // above, so every block read and row_buf write is in bounds.
    unsafe { matmul_mxfp4_impl(x, n_tok, codes, scales, bias, out, row_buf) }
}

/// [`crate::scalar::swiglu_interleaved_f32`] on 16 units at a time. σ(z) is 1/(1 + e^−z)
/// for z ≥ 0 and e^z/(1 + e^z) below, so the exponential never overflows; within a few
/// ulps of the scalar twin.
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_impl(u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    let n = out.len();
    // Gates in the even lanes of each pair of vectors, ups in the odd.
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
    let (lim, one) = (_mm512_set1_ps(limit), _mm512_set1_ps(1.0));
    let mut i = 0;
    while i + 16 <= n {
        let (a, b) = (_mm512_loadu_ps(u.as_ptr().add(2 * i)), _mm512_loadu_ps(u.as_ptr().add(2 * i + 16)));
        let gate = _mm512_min_ps(_mm512_permutex2var_ps(a, evens, b), lim);
        // Operand order keeps a NaN up (clamp passes it) and drops a NaN gate (min does).
        let up = _mm512_max_ps(
            _mm512_sub_ps(_mm512_setzero_ps(), lim),
            _mm512_min_ps(lim, _mm512_permutex2var_ps(a, odds, b)),
        );
        let z = _mm512_mul_ps(_mm512_set1_ps(alpha), gate);
        let neg_abs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(z), _mm512_set1_epi32(i32::MIN)));
        let e = super::attention::exp_nonpositive(neg_abs);
        let num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(z, _mm512_setzero_ps()), e, one);
        let sig = _mm512_div_ps(num, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_mul_ps(gate, sig), _mm512_add_ps(up, one)));
        i += 16;
    }
    crate::scalar::swiglu_interleaved_f32(&u[2 * i..], alpha, limit, &mut out[i..]);
}

pub fn swiglu_interleaved_f32(u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    assert_eq!(u.len(), 2 * out.len(), "swiglu: u is not [2I]");
    // SAFETY: handed out by `Kernels` only with AVX-512F; loads and stores stay below 2·n and n.
    unsafe { swiglu_impl(u, alpha, limit, out) }
}

/// [`crate::scalar::rmsnorm_f32`] bit for bit: Σx² in the reference order (eight partial
/// sums of separately rounded products, combined pairwise, then the tail), then the same
/// scalar inverse and the same two roundings per element.
#[target_feature(enable = "avx512f")]
unsafe fn rmsnorm_impl(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
        i += 8;
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    let tail: f32 = x[i..].iter().map(|v| v * v).sum();
    let sum_sq = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail;
    let inv_rms = 1.0 / (sum_sq / n as f32 + eps).sqrt();
    let inv = _mm512_set1_ps(inv_rms);
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv);
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(v, _mm512_loadu_ps(gain.as_ptr().add(i))));
        i += 16;
    }
    for j in i..n {
        out[j] = (x[j] * inv_rms) * gain[j];
    }
}

pub fn rmsnorm_f32(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), gain.len(), "rmsnorm: gain length");
    assert_eq!(x.len(), out.len(), "rmsnorm: out length");
    // SAFETY: handed out by `Kernels` only with AVX-512F; every access is below n (checked).
    unsafe { rmsnorm_impl(x, gain, eps, out) }
}

/// [`crate::scalar::YarnRope::apply`] bit for bit (the same separately rounded products).
#[target_feature(enable = "avx512f")]
unsafe fn rope_impl(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        let (x1, x2) = head.split_at_mut(half);
        let mut i = 0;
        while i + 16 <= half {
            let (a, b) = (_mm512_loadu_ps(x1.as_ptr().add(i)), _mm512_loadu_ps(x2.as_ptr().add(i)));
            let (c, s) = (_mm512_loadu_ps(cos.as_ptr().add(i)), _mm512_loadu_ps(sin.as_ptr().add(i)));
            _mm512_storeu_ps(x1.as_mut_ptr().add(i), _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
            _mm512_storeu_ps(x2.as_mut_ptr().add(i), _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s)));
            i += 16;
        }
        for j in i..half {
            let (a, b) = (x1[j], x2[j]);
            x1[j] = a * cos[j] - b * sin[j];
            x2[j] = b * cos[j] + a * sin[j];
        }
    }
}

pub fn rope_apply_f32(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    assert_eq!(cos.len(), sin.len(), "rope: cos and sin lengths differ");
    assert!(!cos.is_empty() && x.len().is_multiple_of(2 * cos.len()), "rope: x is not [heads, head_dim]");
    // SAFETY: handed out by `Kernels` only with AVX-512F; every access is within a head.
    unsafe { rope_impl(x, cos, sin) }
}
