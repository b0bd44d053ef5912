//! Router top-k and the clamped SwiGLU of gpt-oss (spec §4.5).

/// The sigmoid slope of gpt-oss's SwiGLU; not in any config file.
pub const SWIGLU_ALPHA: f32 = 1.702;

/// The `k` largest router logits in descending order (ties: lower expert index first, as
/// OpenAI's Metal kernels), and their softmax over those k only.
/// logits: `[E]`; experts, weights: `[k]`.
pub fn router_top_k(logits: &[f32], experts: &mut [usize], weights: &mut [f32]) {
    let k = experts.len();
    assert!(k >= 1 && k <= logits.len(), "router: k must be in 1..=E");
    assert_eq!(weights.len(), k, "router: weights length");
    // NaN ranks below everything, so it is picked only when nothing else is left.
    let value = |e: usize| {
        if logits[e].is_nan() {
            f32::NEG_INFINITY
        } else {
            logits[e]
        }
    };
    for slot in 0..k {
        let mut best: Option<usize> = None;
        for e in 0..logits.len() {
            if experts[..slot].contains(&e) {
                continue;
            }
            // A later index wins only when strictly larger: ties go to the lower index.
            if best.is_none_or(|b| value(e) > value(b)) {
                best = Some(e);
            }
        }
        experts[slot] = best.unwrap_or(slot);
    }
    let max = logits[experts[0]];
    let mut sum = 0.0;
    for (w, &e) in weights.iter_mut().zip(experts.iter()) {
        *w = (logits[e] - max).exp();
        sum += *w;
    }
    for w in weights.iter_mut() {
        *w /= sum;
    }
}

/// `u: [2I]` holds interleaved (gate, up) pairs: `gate = u[2n]`, `up = u[2n+1]`.
/// `out[n] = g·σ(α·g)·(up + 1)` with g = min(gate, limit) and up clamped to ±limit.
pub fn swiglu_interleaved_f32(u: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    assert_eq!(u.len(), 2 * out.len(), "swiglu: u is not [2I]");
    for (o, pair) in out.iter_mut().zip(u.chunks_exact(2)) {
        let gate = pair[0].min(limit);
        let up = pair[1].clamp(-limit, limit);
        let glu = gate * (1.0 / (1.0 + (-alpha * gate).exp()));
        *o = glu * (up + 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_spec_vector() {
        // spec §6.10
        let logits = [0.5, 2.0, -1.0, 3.0, 2.0, 1.5, 0.0, 2.5];
        let (mut e, mut w) = ([0usize; 4], [0f32; 4]);
        router_top_k(&logits, &mut e, &mut w);
        assert_eq!(e, [3, 7, 1, 4]);
        for (got, want) in w.iter().zip([0.42693272, 0.25894779, 0.15705977, 0.15705977]) {
            assert!((got - want).abs() < 1e-6, "{w:?}");
        }
    }

    #[test]
    fn swiglu_spec_table() {
        // spec §6.9 (fp32 column)
        let cases = [
            (0.0, 0.0, 0.0),
            (1.0, 0.0, 0.845795751),
            (1.0, 1.0, 1.6915915),
            (-1.0, 2.0, -0.462612689),
            (2.5, -0.5, 1.23250699),
            (20.0, -20.0, -41.9997177),
            (-20.0, 20.0, -2.63472566e-13),
            (7.0, 7.0, 55.9996262),
            (8.0, 8.0, 55.9996262),
            (-3.0, -9.0, 0.108427867),
            (3.0, -1.0, 0.0),
        ];
        for (g, u, want) in cases {
            let mut out = [0f32];
            swiglu_interleaved_f32(&[g, u], SWIGLU_ALPHA, 7.0, &mut out);
            assert!((out[0] - want).abs() <= 1e-6 * (1.0 + want.abs()), "gate {g} up {u}: {} vs {want}", out[0]);
        }
    }

    #[test]
    fn swiglu_pairs_are_interleaved_not_halves() {
        // u = [g0, u0, g1, u1]: unit 0 is (1, 0), unit 1 is (3, -1) which yields 0.
        let mut out = [0f32; 2];
        swiglu_interleaved_f32(&[1.0, 0.0, 3.0, -1.0], SWIGLU_ALPHA, 7.0, &mut out);
        assert!((out[0] - 0.845795751).abs() < 1e-6 && out[1] == 0.0, "{out:?}");
    }
}
