//! Rotary position embedding with YaRN scaling (spec §4.4), half-split pairing: dims `i` and
//! `i + D` rotate together, D = head_dim / 2.
//!
//! The frequencies are computed with the same f32 operations as OpenAI's torch reference
//! (`RotaryEmbedding._compute_concentration_and_inv_freq`), so the table matches it to the last
//! bit or one ulp. The concentration `c` scales cos and sin, hence both q and k.

/// Frequencies and concentration for one head dimension.
#[derive(Clone, Debug)]
pub struct YarnRope {
    /// `[D]` radians per position for each rotation pair.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (so attention scores scale by c²). 1 without YaRN.
    pub concentration: f32,
}

impl YarnRope {
    /// `truncate` is the Hugging Face `rope_scaling.truncate` flag: the published configs say
    /// `false` (fractional ramp ends); `true` floors `low` and ceils `high` like ggml.
    pub fn new(
        head_dim: usize,
        base: f64,
        factor: f64,
        original_context: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    ) -> Self {
        assert!(head_dim >= 2 && head_dim.is_multiple_of(2), "RoPE head_dim must be even");
        let half = head_dim / 2;
        // freq[i] = base^(2i/d) in f32, as `base ** (arange(0, d, 2) / d)`.
        let freq: Vec<f32> = (0..half).map(|i| (base as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        if factor <= 1.0 {
            return Self { inv_freq: freq.iter().map(|f| 1.0 / f).collect(), concentration: 1.0 };
        }
        let concentration = (0.1 * factor.ln() + 1.0) as f32;
        let d_half = half as f64;
        let corr = |beta: f64| d_half * (original_context / (beta * 2.0 * std::f64::consts::PI)).ln() / base.ln();
        let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
        if truncate {
            low = low.floor();
            high = high.ceil();
        }
        let (low32, span32) = (low as f32, (high - low) as f32);
        let inv_freq = freq
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let interpolation = 1.0 / (factor as f32 * f);
                let extrapolation = 1.0 / f;
                let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
                let mask = 1.0 - ramp; // weight of the original (extrapolated) frequency
                interpolation * (1.0 - mask) + extrapolation * mask
            })
            .collect();
        Self { inv_freq, concentration }
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// cos, sin: `[D]`, already multiplied by the concentration.
    pub fn cos_sin(&self, position: usize, cos: &mut [f32], sin: &mut [f32]) {
        assert_eq!(cos.len(), self.half_dim(), "rope: cos length");
        assert_eq!(sin.len(), self.half_dim(), "rope: sin length");
        let p = position as f32;
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let phi = p * f;
            *c = phi.cos() * self.concentration;
            *s = phi.sin() * self.concentration;
        }
    }

    /// Rotate every head of `x: [heads, 2D]` in place.
    pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        assert_eq!(x.len() % (2 * half), 0, "rope: x is not [heads, head_dim]");
        for head in x.chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt_oss() -> YarnRope {
        YarnRope::new(64, 150000.0, 32.0, 4096.0, 32.0, 1.0, false)
    }

    // spec §6.5, fp32 bits of the reference inv_freq.
    const INV_FREQ_BITS: [u32; 32] = [
        0x3f800000, 0x3f306535, 0x3ef316a2, 0x3ea77faa, 0x3e66d3fa, 0x3e1f0cfd, 0x3ddb2f9f, 0x3d970764, 0x3d502194,
        0x3d01ddd5, 0x3c9e646f, 0x3c3dec94, 0x3bdea840, 0x3b7cfe14, 0x3b093803, 0x3a89f778, 0x39ef543c, 0x390799b9,
        0x3820adc6, 0x37dd6dfc, 0x37989328, 0x375242fa, 0x3710e12c, 0x36c7a82b, 0x3689928c, 0x363d9647, 0x3602a245,
        0x35b40668, 0x35781728, 0x352af200, 0x34eb93eb, 0x34a252d3,
    ];

    #[test]
    fn inv_freq_matches_reference_within_one_ulp() {
        let rope = gpt_oss();
        for (i, (&got, &bits)) in rope.inv_freq.iter().zip(&INV_FREQ_BITS).enumerate() {
            let diff = (got.to_bits() as i64 - bits as i64).abs();
            assert!(diff <= 1, "pair {i}: {got:e} vs {:e}", f32::from_bits(bits));
        }
        assert!((rope.concentration - 1.346_573_6).abs() < 1e-7);
    }

    #[test]
    fn truncated_ramp_is_not_the_published_semantics() {
        // Trap (spec §5.6): flooring/ceiling low/high changes pairs 9..17.
        let exact = gpt_oss();
        let truncated = YarnRope::new(64, 150000.0, 32.0, 4096.0, 32.0, 1.0, true);
        assert!((truncated.inv_freq[9] - 3.162_075_2e-2).abs() < 1e-8);
        assert!((exact.inv_freq[9] - 3.170_569_6e-2).abs() < 1e-8);
        assert!((exact.inv_freq[17] - 1.293_186_9e-4).abs() < 1e-10);
    }

    #[test]
    fn cos_sin_samples() {
        // spec §6.6
        let rope = gpt_oss();
        let (mut c, mut s) = (vec![0f32; 32], vec![0f32; 32]);
        rope.cos_sin(1, &mut c, &mut s);
        let (ec, es) =
            ([0.72755688, 1.03935814, 1.19763231, 1.27515590], [1.13310254, 0.85615128, 0.61557889, 0.43271011]);
        for i in 0..4 {
            assert!((c[i] - ec[i]).abs() < 2e-6 && (s[i] - es[i]).abs() < 2e-6, "p=1 pair {i}");
        }
        rope.cos_sin(1000, &mut c, &mut s);
        let (ec, es) =
            ([0.75728482, -0.68685812, -1.23946071, 1.22941065], [1.11345422, -1.15822554, -0.52630568, 0.54937214]);
        for i in 0..4 {
            assert!((c[i] - ec[i]).abs() < 2e-5 && (s[i] - es[i]).abs() < 2e-5, "p=1000 pair {i}");
        }
        assert!((s[31] - 0.000407138).abs() < 1e-8);
    }

    #[test]
    fn half_split_rotation() {
        // spec §6.7: x[j] = j/64 at position 5.
        let rope = gpt_oss();
        let (mut c, mut s) = (vec![0f32; 32], vec![0f32; 32]);
        rope.cos_sin(5, &mut c, &mut s);
        let mut x: Vec<f32> = (0..64).map(|j| j as f32 / 64.0).collect();
        YarnRope::apply(&mut x, &c, &s);
        for (j, e) in
            [(0, 0.6456311), (1, 0.1875155), (31, 0.6522446), (32, 0.190986), (33, -0.6688577), (63, 1.3255343)]
        {
            assert!((x[j] - e).abs() < 2e-6, "y[{j}] = {} expected {e}", x[j]);
        }
    }
}
