//! bfloat16 <-> f32. bf16 is the top half of an f32, so widening is exact.

#[inline(always)]
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// Round to nearest even, as PyTorch does; NaN stays NaN (quiet).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let rounding_bias = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding_bias) >> 16) as u16
}

/// `dst[i] = widen(src[i])`.
pub fn bf16_slice_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_slice_to_f32: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(s);
    }
}

/// x ≈ hi + lo in two bf16s: hi = round(x), lo = round(x - hi) (exact in f32). The pair
/// carries 16 significant bits, so products with bf16 weights summed in f32 stay within
/// about 1e-5 of the f32 result. Without `lo`, only hi (8 bits) is written.
pub fn split_slice_to_bf16(src: &[f32], hi: &mut [u16], mut lo: Option<&mut [u16]>) {
    assert_eq!(src.len(), hi.len(), "split_slice_to_bf16: length mismatch");
    for (i, (&x, h)) in src.iter().zip(hi.iter_mut()).enumerate() {
        *h = f32_to_bf16(x);
        if let Some(lo) = lo.as_deref_mut() {
            lo[i] = f32_to_bf16(x - bf16_to_f32(*h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rounding() {
        for v in [0.0f32, -0.0, 1.0, -2.5, 1.34375, 65536.0, f32::INFINITY] {
            assert_eq!(bf16_to_f32(f32_to_bf16(v)), v);
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        // spec §6.5: the concentration 1.3465736 rounds to 1.34375 in bf16.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.346_573_6)), 1.34375);
    }
}
