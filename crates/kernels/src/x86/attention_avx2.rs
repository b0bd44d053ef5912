//! Attention over the KV cache with AVX2 and FMA: the 8-lane twin of [`super::attention`]
//! (f32 throughout, like the reference). The query heads of one kv head go together, so each
//! key and value row is read once per tile of heads rather than once per head.
//!
//! Per query head the math is [`crate::scalar::attend_head_f32`]'s: scores `q·k·scale`, a
//! softmax that includes the sink logit, then `Σ P·v`. Results depend only on the query,
//! the key range and the keys, never on how the keys are split into spans.

use std::arch::x86_64::*;

use super::attention::HD;
use super::avx2::hsum;
use crate::scalar::{for_each_row, KvSpan};

/// Vectors per head row.
const HV: usize = HD / 8;
/// Keys scored together: 2 heads × 4 keys = 8 accumulators, with the 4 key vectors and a
/// query vector in registers.
const KEYS: usize = 4;

/// e^x for x ≤ 0 (anything larger is not asked for here): n = round(x·log2 e), r = x − n·ln 2
/// in two parts, e^r by Cephes' degree-6 polynomial, times 2^n built from exponent bits in
/// two halves (2^n alone would be subnormal below n = −126). About 1 ulp.
#[inline(always)]
pub(super) unsafe fn exp_nonpositive(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-104.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    // n ≥ −150, so both halves are ≥ −75: normal powers of two; only the last product rounds.
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let pow2 = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))));
    _mm256_mul_ps(_mm256_mul_ps(p, pow2(n1)), pow2(n2))
}

/// Lane s: the sum of `a[s]`'s lanes, by the same tree for every slot.
#[inline(always)]
unsafe fn sum_lanes4(a: &[__m256; KEYS]) -> __m128 {
    // Per 128-bit half: [a0, a1, a2, a3] partial sums over that half's lanes.
    let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// Scores of HB query heads (`q` at the first, `[HB, HD]`) against KEYS keys, times `scale`,
/// written to `dst[h·n + j]` for the first `count` keys. Each score is one FMA chain over
/// the 8 column vectors and the same reduction whatever its slot, so a key's score does not
/// depend on which keys share its tile.
#[inline(always)]
unsafe fn score_heads<const HB: usize>(
    q: *const f32,
    keys: &[*const f32; KEYS],
    scale: f32,
    dst: *mut f32,
    n: usize,
    count: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); KEYS]; HB];
    for c in 0..HV {
        let kv: [__m256; KEYS] = std::array::from_fn(|s| _mm256_loadu_ps(keys[s].add(8 * c)));
        for (h, a) in acc.iter_mut().enumerate() {
            let qv = _mm256_loadu_ps(q.add(h * HD + 8 * c));
            for (a, &k) in a.iter_mut().zip(&kv) {
                *a = _mm256_fmadd_ps(qv, k, *a);
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        let s = _mm_mul_ps(sum_lanes4(a), _mm_set1_ps(scale));
        if count == KEYS {
            _mm_storeu_ps(dst.add(h * n), s);
        } else {
            let mut tmp = [0f32; KEYS];
            _mm_storeu_ps(tmp.as_mut_ptr(), s);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst.add(h * n), count);
        }
    }
}

/// [`score_heads`] over every key at positions `lo..=hi`: `dst` is `[HB, n]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn score_pass<const HB: usize>(
    q: *const f32,
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    dst: *mut f32,
    n: usize,
) {
    let mut keys: [*const f32; KEYS] = [std::ptr::null(); KEYS];
    let mut filled = 0;
    for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, k, _| {
        keys[filled] = k;
        filled += 1;
        if filled == KEYS {
            score_heads::<HB>(q, &keys, scale, dst.add(i + 1 - KEYS), n, KEYS);
            filled = 0;
        }
    });
    if filled > 0 {
        // The empty slots repeat a real key; their scores are computed and dropped.
        for j in filled..KEYS {
            keys[j] = keys[0];
        }
        score_heads::<HB>(q, &keys, scale, dst.add(n - filled), n, filled);
    }
}

/// `out[h, c] = (Σ_s e[h, s]·v[s, c]) · inv_denom[h]` for HB heads from h0 and the CV column
/// vectors from c0: HB·CV accumulators, each value vector loaded once for the HB heads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_values<const HB: usize, const CV: usize>(
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    weights: *const f32,
    n: usize,
    h0: usize,
    c0: usize,
    inv_denom: &[f32],
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); CV]; HB];
    for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, _, v| {
        let vv: [__m256; CV] = std::array::from_fn(|c| _mm256_loadu_ps(v.add(8 * (c0 + c))));
        for (h, a) in acc.iter_mut().enumerate() {
            let p = _mm256_broadcast_ss(&*weights.add((h0 + h) * n + i));
            for (a, &v) in a.iter_mut().zip(&vv) {
                *a = _mm256_fmadd_ps(p, v, *a);
            }
        }
    });
    for (h, a) in acc.iter().enumerate() {
        let d = _mm256_set1_ps(inv_denom[h0 + h]);
        for (c, &a) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add((h0 + h) * HD + 8 * (c0 + c)), _mm256_mul_ps(a, d));
        }
    }
}

/// Horizontal maximum of 8 lanes.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// Softmax with the sink over one head's `n` scores at `row`: they become e^(z − max);
/// returns 1/denominator.
#[inline(always)]
unsafe fn softmax_row(row: *mut f32, n: usize, sink: f32) -> f32 {
    let mut mx = _mm256_set1_ps(sink);
    let mut i = 0;
    while i + 8 <= n {
        mx = _mm256_max_ps(mx, _mm256_loadu_ps(row.add(i)));
        i += 8;
    }
    let mut max = hmax(mx);
    for j in i..n {
        max = max.max(*row.add(j));
    }
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row.add(i)), m));
        _mm256_storeu_ps(row.add(i), e);
        sum = _mm256_add_ps(sum, e);
        i += 8;
    }
    let mut total = hsum(sum);
    if i < n {
        // The last 1..7 scores through the same exp, padded with the max (e^0, dropped).
        let mut tail = [max; 8];
        for (j, t) in tail[..n - i].iter_mut().enumerate() {
            *t = *row.add(i + j);
        }
        let mut e = [0f32; 8];
        _mm256_storeu_ps(e.as_mut_ptr(), exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m)));
        for (j, &ej) in e[..n - i].iter().enumerate() {
            *row.add(i + j) = ej;
            total += ej;
        }
    }
    1.0 / (total + (sink - max).exp())
}

#[target_feature(enable = "avx2,fma")]
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

    // Scores: one pass over the keys per pair of heads, KEYS keys at a time.
    let mut h = 0;
    while h < g {
        let (qp, dst) = (q.as_ptr().add(h * HD), sc.add(h * n));
        if g - h >= 2 {
            score_pass::<2>(qp, spans, kv_dim, kv_off, lo, hi, scale, dst, n);
            h += 2;
        } else {
            score_pass::<1>(qp, spans, kv_dim, kv_off, lo, hi, scale, dst, n);
            h += 1;
        }
    }

    let mut inv_denom = [0f32; 64];
    for (h, d) in inv_denom.iter_mut().enumerate().take(g) {
        *d = softmax_row(sc.add(h * n), n, sinks[h]);
    }

    // out[h] = (Σ_s e[h, s]·v[s]) / denominator: 4 heads × 2 column vectors per pass over
    // the values, then pairs and single heads by halves of the row.
    let op = out.as_mut_ptr();
    let mut h0 = 0;
    while h0 < g {
        h0 += match g - h0 {
            4.. => {
                for c0 in (0..HV).step_by(2) {
                    weigh_values::<4, 2>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                4
            }
            2 | 3 => {
                for c0 in (0..HV).step_by(4) {
                    weigh_values::<2, 4>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                2
            }
            _ => {
                for c0 in (0..HV).step_by(4) {
                    weigh_values::<1, 4>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                1
            }
        };
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
    // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA; q and out are
    // [G, HD] and scores is resized to [G, n], checked above; every key and value row read
    // lies inside its span (whole rows, and the head's columns inside kv_dim, sliced with
    // bounds checks).
    unsafe { attend_impl(q, spans, kv_dim, kv_off, lo, hi, scale, sinks, scores, out) }
}
