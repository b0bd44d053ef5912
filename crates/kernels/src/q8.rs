//! 8-bit dense weights (`--dense q8`): each row in blocks of 32 int8 codes with one f32 scale,
//! the scale chosen so the block's largest |w| maps to 127. A weight's value is defined as
//! `bf16(code · scale)`, the same in every kernel, so the fast kernels can widen it exactly.

use crate::bf16::{bf16_to_f32, f32_to_bf16};

pub const BLOCK: usize = 32;

/// Quantizes one row of bf16 weights (`len` a multiple of 32) into codes and scales.
pub fn quantize_row_bf16(w: &[u16], codes: &mut [i8], scales: &mut [f32]) {
    assert!(w.len().is_multiple_of(BLOCK), "q8: row length is not a multiple of {BLOCK}");
    assert_eq!(codes.len(), w.len(), "q8: codes length");
    assert_eq!(scales.len(), w.len() / BLOCK, "q8: scales length");
    for ((block, c), d) in w.chunks_exact(BLOCK).zip(codes.chunks_exact_mut(BLOCK)).zip(scales.iter_mut()) {
        let max = block.iter().map(|&b| bf16_to_f32(b).abs()).fold(0f32, f32::max);
        let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 0.0 };
        *d = scale;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        for (q, &b) in c.iter_mut().zip(block) {
            // Half away from zero by truncation (`round` is a libm call on baseline x86-64).
            let v = (bf16_to_f32(b) * inv).clamp(-127.0, 127.0);
            *q = (v + 0.5f32.copysign(v)) as i8;
        }
    }
}

/// The bf16 value of one weight.
#[inline]
pub fn weight_bf16(code: i8, scale: f32) -> u16 {
    f32_to_bf16(code as f32 * scale)
}

/// One row's bf16 weights: `dst[i] = bf16(code · scale)`.
pub fn dequantize_row_bf16(codes: &[i8], scales: &[f32], dst: &mut [u16]) {
    assert_eq!(codes.len(), dst.len(), "q8: dst length");
    for ((c, &d), out) in codes.chunks(BLOCK).zip(scales).zip(dst.chunks_mut(BLOCK)) {
        for (o, &q) in out.iter_mut().zip(c) {
            *o = weight_bf16(q, d);
        }
    }
}

/// One row back to f32 weights: `dst[i] = bf16(code · scale)` widened.
pub fn dequantize_row(codes: &[i8], scales: &[f32], dst: &mut [f32]) {
    assert_eq!(codes.len(), dst.len(), "q8: dst length");
    for ((c, &d), out) in codes.chunks(BLOCK).zip(scales).zip(dst.chunks_mut(BLOCK)) {
        for (o, &q) in out.iter_mut().zip(c) {
            *o = bf16_to_f32(weight_bf16(q, d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let w: Vec<u16> = (0..96).map(|i| f32_to_bf16(((i * 37 % 101) as f32 - 50.0) / 7.0)).collect();
        let (mut c, mut s, mut back) = (vec![0i8; 96], vec![0f32; 3], vec![0f32; 96]);
        quantize_row_bf16(&w, &mut c, &mut s);
        dequantize_row(&c, &s, &mut back);
        for (i, (&orig, &b)) in w.iter().zip(&back).enumerate() {
            let step = s[i / 32];
            // Half a step of quantization plus the bf16 rounding of the result.
            let tol = step / 2.0 + b.abs() / 256.0;
            assert!((bf16_to_f32(orig) - b).abs() <= tol, "[{i}] {} vs {b}", bf16_to_f32(orig));
        }
        assert!(c.iter().any(|&q| q.abs() == 127), "the largest weight maps to ±127");
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let (mut c, mut s) = (vec![1i8; 32], vec![1f32; 1]);
        quantize_row_bf16(&[0u16; 32], &mut c, &mut s);
        assert!(c.iter().all(|&q| q == 0) && s[0] == 0.0);
    }
}
