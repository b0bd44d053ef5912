//! MXFP4 as stored in the Hugging Face and OpenAI `original/` checkpoints (spec §3.1–3.4).
//!
//! A row of K weights is K/2 bytes of 4-bit E2M1 codes, LOW nibble first (element 2b is
//! `byte & 0xF`, element 2b+1 is `byte >> 4`), plus K/32 E8M0 scale bytes, one per block of 32.
//! Every decoded value is exact in f32.

/// Elements sharing one scale byte.
pub const BLOCK: usize = 32;
/// Bytes of codes per block.
pub const BLOCK_BYTES: usize = BLOCK / 2;

/// E2M1 code -> value (bit 3 sign, bits 2..1 exponent with bias 1, bit 0 mantissa).
pub const FP4_VALUES: [f32; 16] =
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// E8M0 scale byte -> 2^(s-127). 0 gives the subnormal 2^-127; 255 (NaN in OCP, an ordinary
/// exponent to every reference) gives 2^128 = +inf in f32, as torch's bf16 `ldexp` does.
#[inline(always)]
pub fn e8m0_to_f32(s: u8) -> f32 {
    match s {
        0 => f32::from_bits(0x0040_0000),
        255 => f32::INFINITY,
        _ => f32::from_bits((s as u32) << 23),
    }
}

/// Decode one row: codes `[K/2]` bytes and scales `[K/32]` into `out [K]`.
pub fn decode_row(codes: &[u8], scales: &[u8], out: &mut [f32]) {
    let k = out.len();
    assert!(k.is_multiple_of(BLOCK), "MXFP4 row length {k} is not a multiple of {BLOCK}");
    assert_eq!(codes.len(), k / 2, "MXFP4 row: code bytes do not match the row length");
    assert_eq!(scales.len(), k / BLOCK, "MXFP4 row: scale bytes do not match the row length");
    for ((block_out, block_codes), &s) in out.chunks_exact_mut(BLOCK).zip(codes.chunks_exact(BLOCK_BYTES)).zip(scales) {
        let scale = e8m0_to_f32(s);
        for (pair, &byte) in block_out.chunks_exact_mut(2).zip(block_codes) {
            pair[0] = FP4_VALUES[(byte & 0x0f) as usize] * scale;
            pair[1] = FP4_VALUES[(byte >> 4) as usize] * scale;
        }
    }
}

/// [`decode_row`] as bf16 bits: exact, since every E2M1 value times a power of two has at
/// most two significant bits and bf16 has f32's exponent range (the bits are the f32's top
/// half). `out [K]`.
pub fn decode_row_bf16(codes: &[u8], scales: &[u8], out: &mut [u16]) {
    let mut block = [0f32; BLOCK];
    for ((block_out, block_codes), s) in
        out.chunks_exact_mut(BLOCK).zip(codes.chunks_exact(BLOCK_BYTES)).zip(scales.chunks(1))
    {
        decode_row(block_codes, s, &mut block);
        for (o, v) in block_out.iter_mut().zip(&block) {
            *o = (v.to_bits() >> 16) as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // spec §6.2: block bytes 10 32 54 76 98 BA DC FE 00 11 22 33 44 55 66 77.
    const BLOCK_6_2: [u8; 16] =
        [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];

    #[test]
    fn spec_block_decodes_low_nibble_first() {
        let mut out = [0f32; 32];
        decode_row(&BLOCK_6_2, &[127], &mut out);
        let expect = [
            0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, 0.0, 0.0, 0.5, 0.5,
            1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0,
        ];
        assert_eq!(out, expect);
        decode_row(&BLOCK_6_2, &[128], &mut out);
        assert_eq!(out[15], -12.0);
        assert_eq!(out[31], 12.0);
        decode_row(&BLOCK_6_2, &[120], &mut out);
        assert_eq!((out[1], out[7], out[15]), (0.00390625, 0.046875, -0.046875));
        decode_row(&BLOCK_6_2, &[118], &mut out);
        assert_eq!(out[7], 0.01171875);
    }

    #[test]
    fn single_byte_nibble_order() {
        let mut codes = [0u8; 16];
        codes[0] = 0x7F;
        let mut out = [0f32; 32];
        decode_row(&codes, &[127], &mut out);
        assert_eq!((out[0], out[1]), (-6.0, 6.0));
    }

    #[test]
    fn e8m0_table() {
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(128), 2.0);
        assert_eq!(e8m0_to_f32(130), 8.0);
        assert_eq!(e8m0_to_f32(120), 0.0078125);
        assert_eq!(e8m0_to_f32(100), 2f32.powi(-27));
        assert_eq!(e8m0_to_f32(1), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32(0), 2f64.powi(-127) as f32);
        assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
        assert_eq!(e8m0_to_f32(255), f32::INFINITY);
    }
}
