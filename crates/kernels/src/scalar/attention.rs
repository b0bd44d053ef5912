//! Attention of one query head over cached keys, with the learned sink logit (spec §4.3).
//!
//! The sink joins the softmax as one extra logit that has no value vector: it takes part in
//! the max and the denominator and is then dropped, so the weights sum to less than one.

use super::dot_f32;

/// A run of consecutive positions in a KV cache (or in the chunk being processed).
#[derive(Clone, Copy, Debug)]
pub struct KvSpan<'a> {
    /// Absolute position of the first row.
    pub first_pos: usize,
    /// `[n, kv_dim]` keys (post-RoPE) and values.
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl KvSpan<'_> {
    /// The rows of this span (indices into its `[n, kv_dim]`) whose positions lie in `lo..=hi`.
    pub fn rows_in(&self, lo: usize, hi: usize, kv_dim: usize) -> std::ops::Range<usize> {
        let n = self.k.len() / kv_dim;
        let start = lo.max(self.first_pos);
        let end = (hi + 1).min(self.first_pos + n);
        (start.saturating_sub(self.first_pos))..(end.max(start) - self.first_pos)
    }
}

/// `out[hd] = Σ_s P[s]·v[s]` over the keys at positions `lo..=hi` found in `spans`, where
/// `P = softmax([z, sink])[..-1]` and `z[s] = (q·k[s])·scale`. `kv_off` selects the kv head's
/// `hd` columns inside each `kv_dim` row. `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend_head_f32(
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    sink: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    assert_eq!(out.len(), hd, "attention: out is not [head_dim]");
    assert!(kv_off + hd <= kv_dim, "attention: kv head outside kv_dim");
    scores.clear();
    for span in spans {
        for r in span.rows_in(lo, hi, kv_dim) {
            let k = &span.k[r * kv_dim + kv_off..r * kv_dim + kv_off + hd];
            scores.push(dot_f32(q, k) * scale);
        }
    }
    let max = scores.iter().fold(sink, |m, &z| m.max(z));
    let mut denom = (sink - max).exp();
    for z in scores.iter_mut() {
        *z = (*z - max).exp();
        denom += *z;
    }
    out.fill(0.0);
    let mut i = 0;
    for span in spans {
        for r in span.rows_in(lo, hi, kv_dim) {
            let p = scores[i] / denom;
            i += 1;
            let v = &span.v[r * kv_dim + kv_off..r * kv_dim + kv_off + hd];
            for (o, &vv) in out.iter_mut().zip(v) {
                *o += p * vv;
            }
        }
    }
}

/// Calls `f(i, k, v)` for the key and value rows at positions `lo..=hi`, in order, with
/// pointers to the head's `hd` columns (bounds-checked here): the walk every vector
/// attention kernel makes over the spans.
#[inline(always)]
pub(crate) fn for_each_row(
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    hd: usize,
    lo: usize,
    hi: usize,
    mut f: impl FnMut(usize, *const f32, *const f32),
) {
    let mut i = 0;
    for span in spans {
        for r in span.rows_in(lo, hi, kv_dim) {
            let off = r * kv_dim + kv_off;
            f(i, span.k[off..off + hd].as_ptr(), span.v[off..off + hd].as_ptr());
            i += 1;
        }
    }
}

/// Whether a vector attention kernel for head size `hd` takes these shapes: 1 to 64 query
/// heads of `hd` in `q` and `out`, the head's columns inside `kv_dim`, whole rows in every
/// span. Other head sizes, and bad shapes (which it reports), go to [`attend_heads_f32`].
pub(crate) fn vector_shapes_ok(
    hd: usize,
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    sinks: &[f32],
    out: &[f32],
) -> bool {
    let g = sinks.len();
    g > 0
        && g <= 64
        && q.len() == g * hd
        && out.len() == q.len()
        && kv_off + hd <= kv_dim
        && spans.iter().all(|s| s.k.len() % kv_dim == 0 && s.v.len() == s.k.len())
}

/// [`attend_head_f32`] for the G query heads that share one kv head: `q` and `out` are
/// `[G, hd]`, `sinks` is `[G]`. The fast kernels read each key and value once for the group.
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
    let g = sinks.len();
    assert!(g > 0 && q.len().is_multiple_of(g) && out.len() == q.len(), "attention: q/out are not [heads, head_dim]");
    let hd = q.len() / g;
    for ((qh, oh), &sink) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).zip(sinks) {
        attend_head_f32(qh, spans, kv_dim, kv_off, lo, hi, scale, sink, scores, oh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys chosen so q·k·scale gives the wanted scores with q = [1, 0].
    fn one_span(scores: &[f32], values: &[[f32; 2]]) -> (Vec<f32>, Vec<f32>) {
        let k = scores.iter().flat_map(|&z| [z, 0.0]).collect();
        let v = values.iter().flat_map(|v| v.iter().copied()).collect();
        (k, v)
    }

    #[test]
    fn sink_softmax_spec_vector() {
        // spec §6.11: scores [1, 2, 0.5], sink 1.5, values [[1,0],[0,1],[1,1]].
        let (k, v) = one_span(&[1.0, 2.0, 0.5], &[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        let spans = [KvSpan { first_pos: 0, k: &k, v: &v }];
        let mut out = [0f32; 2];
        attend_head_f32(&[1.0, 0.0], &spans, 2, 0, 0, 2, 1.0, 1.5, &mut Vec::new(), &mut out);
        assert!((out[0] - 0.26894140).abs() < 1e-6 && (out[1] - 0.55659056).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn first_token_weight_is_sigmoid_of_score_minus_sink() {
        for (z, s, w) in [(0.0, -2.0, 0.880797078), (0.0, 2.0, 0.119202922), (3.0, 0.0, 0.952574127)] {
            let (k, v) = one_span(&[z], &[[1.0, 0.0]]);
            let mut out = [0f32; 2];
            let spans = [KvSpan { first_pos: 0, k: &k, v: &v }];
            attend_head_f32(&[1.0, 0.0], &spans, 2, 0, 0, 0, 1.0, s, &mut Vec::new(), &mut out);
            assert!((out[0] - w).abs() < 1e-6, "z={z} S={s}: {}", out[0]);
        }
    }

    #[test]
    fn position_range_and_split_spans() {
        // Positions 10..16 in two spans; only 12..=14 take part.
        let scores: Vec<f32> = (0..6).map(|i| i as f32 * 0.3).collect();
        let values: Vec<[f32; 2]> = (0..6).map(|i| [i as f32, 1.0]).collect();
        let (k, v) = one_span(&scores, &values);
        let spans =
            [KvSpan { first_pos: 10, k: &k[..6], v: &v[..6] }, KvSpan { first_pos: 13, k: &k[6..], v: &v[6..] }];
        let mut out = [0f32; 2];
        attend_head_f32(&[1.0, 0.0], &spans, 2, 0, 12, 14, 1.0, f32::NEG_INFINITY, &mut Vec::new(), &mut out);
        let w: Vec<f64> = [0.6f64, 0.9, 1.2].iter().map(|z| z.exp()).collect();
        let expect = (2.0 * w[0] + 3.0 * w[1] + 4.0 * w[2]) / w.iter().sum::<f64>();
        assert!((out[0] as f64 - expect).abs() < 1e-6 && (out[1] - 1.0).abs() < 1e-6, "{out:?}");
    }
}
