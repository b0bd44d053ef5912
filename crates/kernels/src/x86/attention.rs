//! Attention over the KV cache with AVX-512 (f32 throughout, like the reference): the query
//! heads of one kv head go together, so each key and value row is read once per group.
//!
//! Per query head the math is [`crate::scalar::attend_head_f32`]'s: scores `q·k·scale`, a
//! softmax that includes the sink logit, then `Σ P·v`. Results depend only on the query,
//! the key range and the keys, never on how the batch was formed.

use std::arch::x86_64::*;

use crate::scalar::{for_each_row, KvSpan};

/// The only head size the vector path takes (gpt-oss); others go to the scalar twin.
pub(super) const HD: usize = 64;
/// Heads processed together in the `Σ P·v` pass: 4 heads × 4 vectors of accumulators.
const PV_HEADS: usize = 4;

/// e^x for x ≤ 0 (anything larger is not asked for here): n = round(x·log2 e), r = x − n·ln 2
/// in two parts, e^r by Cephes' degree-6 polynomial, times 2^n by `vscalefps`. About 1 ulp.
#[inline(always)]
pub(crate) unsafe fn exp_nonpositive(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(p, n)
}

/// Lane i of the result is the sum of the lanes of `v[i]`; every input is summed by the same
/// tree whatever its slot, so a key's score does not depend on its place in the group.
#[inline(always)]
unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
    // Each level halves the vectors: pairs are interleaved so that one add sums half of
    // each of the two inputs' remaining lanes.
    let mut a: [__m512; 8] = std::array::from_fn(|i| {
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
    });
    // a[i] lanes (per 128-bit part): [x0+x2, y0+y2, x1+x3, y1+y3]
    let b: [__m512; 4] = std::array::from_fn(|i| {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
        let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
        _mm512_add_ps(lo, hi)
    });
    // b[i], per 128-bit part q: [v4i, v4i+1, v4i+2, v4i+3] partial sums over part q.
    a[0] = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(b[0], b[1]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(b[0], b[1]),
    );
    a[1] = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(b[2], b[3]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(b[2], b[3]),
    );
    _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a[0], a[1]), _mm512_shuffle_f32x4::<0b11_01_11_01>(a[0], a[1]))
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // c indexes the 4 column vectors of q, k, v and out alike
#[allow(clippy::too_many_arguments)]
unsafe fn attend_impl(
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    sinks: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let g = sinks.len();
    let n: usize = spans.iter().map(|s| s.rows_in(lo, hi, kv_dim).len()).sum();
    // [G, n] scores, then weights.
    scores.clear();
    scores.resize(g * n, 0.0);
    let sc = scores.as_mut_ptr();

    // Scores, 16 keys at a time per head.
    let mut rows: [*const f32; 16] = [std::ptr::null(); 16];
    let flush = |first: usize, count: usize, rows: &[*const f32; 16]| {
        for h in 0..g {
            let qv: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(h * HD + 16 * c)));
            let acc: [__m512; 16] = std::array::from_fn(|j| {
                if j >= count {
                    return _mm512_setzero_ps();
                }
                let k = rows[j];
                let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
                for c in 1..4 {
                    a = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k.add(16 * c)), a);
                }
                a
            });
            let s = _mm512_mul_ps(hsum16(&acc), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(sc.add(h * n + first), ((1u32 << count) - 1) as __mmask16, s);
        }
    };
    let mut filled = 0;
    for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, k, _| {
        rows[i % 16] = k;
        filled = i % 16 + 1;
        if filled == 16 {
            flush(i + 1 - 16, 16, &rows);
            filled = 0;
        }
    });
    if filled > 0 {
        flush(n - filled, filled, &rows);
    }

    // Softmax with the sink, per head: weights e^(z − max), and 1/denominator.
    let mut inv_denom = [0f32; 64];
    for h in 0..g {
        let row = sc.add(h * n);
        let mut mx = _mm512_set1_ps(sinks[h]);
        let mut i = 0;
        while i < n {
            let m = if n - i >= 16 { !0 } else { ((1u32 << (n - i)) - 1) as __mmask16 };
            mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, row.add(i)));
            i += 16;
        }
        let max = _mm512_reduce_max_ps(mx);
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = if n - i >= 16 { !0 } else { ((1u32 << (n - i)) - 1) as __mmask16 };
            let e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row.add(i)), _mm512_set1_ps(max)));
            _mm512_mask_storeu_ps(row.add(i), m, e);
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            i += 16;
        }
        inv_denom[h] = 1.0 / (_mm512_reduce_add_ps(sum) + (sinks[h] - max).exp());
    }

    // out[h] = (Σ_s e[h, s]·v[s]) / denominator, PV_HEADS heads per pass over the values.
    let mut h0 = 0;
    while h0 < g {
        let hb = (g - h0).min(PV_HEADS);
        let mut acc = [[_mm512_setzero_ps(); 4]; PV_HEADS];
        for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, _, v| {
            let vv: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(v.add(16 * c)));
            for (j, a) in acc.iter_mut().enumerate().take(hb) {
                let p = _mm512_set1_ps(*sc.add((h0 + j) * n + i));
                for c in 0..4 {
                    a[c] = _mm512_fmadd_ps(p, vv[c], a[c]);
                }
            }
        });
        for (j, a) in acc.iter().enumerate().take(hb) {
            let d = _mm512_set1_ps(inv_denom[h0 + j]);
            for c in 0..4 {
                _mm512_storeu_ps(out.as_mut_ptr().add((h0 + j) * HD + 16 * c), _mm512_mul_ps(a[c], d));
            }
        }
        h0 += hb;
    }
}

/// See [`crate::scalar::attend_heads_f32`].
#[allow(clippy::too_many_arguments)]
pub fn attend_heads_f32(
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    sinks: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    if !crate::scalar::vector_shapes_ok(HD, q, spans, kv_dim, kv_off, sinks, out) {
        // Other head sizes, and bad shapes, which the twin reports.
        return crate::scalar::attend_heads_f32(q, spans, kv_dim, kv_off, lo, hi, scale, sinks, scores, out);
    }
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F; every row read lies
    // inside its span (checked above: whole rows, and the head's columns inside kv_dim).
    unsafe { attend_impl(q, spans, kv_dim, kv_off, lo, hi, scale, sinks, scores, out) }
}
