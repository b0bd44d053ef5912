//! RMSNorm (spec §4.2): `out = x / sqrt(mean(x²) + eps) · gain`, all in f32, gain applied
//! directly (no `1 + gain`).

use super::dot_f32;

/// x, gain, out: `[D]`.
pub fn rmsnorm_f32(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), gain.len(), "rmsnorm: gain length");
    assert_eq!(x.len(), out.len(), "rmsnorm: out length");
    let mean_sq = dot_f32(x, x) / x.len() as f32;
    let inv_rms = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(gain) {
        *o = (v * inv_rms) * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vector() {
        // spec §6.8
        let mut out = [0f32; 4];
        rmsnorm_f32(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.5, 2.0, -1.0], 1e-5, &mut out);
        let expect = [0.36514813, 0.36514813, 2.19088888, -1.46059251];
        for (o, e) in out.iter().zip(expect) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }
}
