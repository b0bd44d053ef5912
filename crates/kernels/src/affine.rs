//! Affine-quantized weights as mlx writes them (the MLX checkpoints' `mode: "affine"`): per
//! group of `group` consecutive inputs of a row, `w = scale·q + bias` with q an unsigned
//! `bits`-wide code (bits 1–8 but 7; group 32, 64 or 128). A row is one little-endian bit
//! stream: code j sits at bits `j·bits .. (j+1)·bits`, bit 0 the least significant of byte 0.
//! Scales may be negative; both scales and biases are widened to f32 at load, and `w` is
//! computed in f32 as `scale·q + bias` (a multiply, then an add: every kernel decodes the same
//! bits), which is how the fixtures' references dequantize.

/// Widths mlx packs.
pub const BITS: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];
/// Group sizes mlx packs.
pub const GROUPS: [usize; 3] = [32, 64, 128];

/// Affine rows `[R, K]`: codes `[R, K·bits/8]` bytes, scales and biases `[R, K/group]`.
#[derive(Clone, Copy, Debug)]
pub struct AffineRows<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub biases: &'a [f32],
    pub bits: u32,
    pub group: usize,
}

impl<'a> AffineRows<'a> {
    /// Code bytes per row of K inputs (mlx rows are whole u32 words: K·bits is a multiple of 32).
    pub fn row_bytes(k: usize, bits: u32) -> usize {
        k * bits as usize / 8
    }

    /// Rows, after checking that the parts agree with K (a caller bug otherwise).
    pub fn rows(&self, k: usize) -> usize {
        assert!(
            BITS.contains(&self.bits) && GROUPS.contains(&self.group),
            "affine: {} bits, group {}",
            self.bits,
            self.group
        );
        assert!(k > 0 && k.is_multiple_of(self.group) && (k * self.bits as usize).is_multiple_of(32), "affine: K={k}");
        let rows = self.scales.len() / (k / self.group);
        assert_eq!(self.scales.len(), rows * (k / self.group), "affine: scales are not [R, K/group]");
        assert_eq!(self.biases.len(), self.scales.len(), "affine: biases are not [R, K/group]");
        assert_eq!(self.codes.len(), rows * Self::row_bytes(k, self.bits), "affine: codes are not [R, K·bits/8]");
        rows
    }

    /// Rows `r0..r1` as their own matrix.
    pub fn row_block(&self, k: usize, r0: usize, r1: usize) -> AffineRows<'a> {
        let (rb, gpr) = (Self::row_bytes(k, self.bits), k / self.group);
        AffineRows {
            codes: &self.codes[r0 * rb..r1 * rb],
            scales: &self.scales[r0 * gpr..r1 * gpr],
            biases: &self.biases[r0 * gpr..r1 * gpr],
            ..*self
        }
    }

    /// Row r of `[R, K]`: (codes, scales, biases).
    pub fn row(&self, k: usize, r: usize) -> (&'a [u8], &'a [f32], &'a [f32]) {
        let (rb, gpr) = (Self::row_bytes(k, self.bits), k / self.group);
        (&self.codes[r * rb..(r + 1) * rb], &self.scales[r * gpr..(r + 1) * gpr], &self.biases[r * gpr..(r + 1) * gpr])
    }
}

/// Code j of a bit-stream row (a code spans at most two bytes for bits ≤ 8).
#[inline(always)]
pub fn code(row: &[u8], j: usize, bits: u32) -> u32 {
    let bit = j * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = row[byte] as u32;
    let hi = if shift + bits as usize > 8 { (row[byte + 1] as u32) << 8 } else { 0 };
    ((lo | hi) >> shift) & ((1 << bits) - 1)
}

/// One row `[K]` as f32: `out[j] = scales[j/g]·q[j] + biases[j/g]`.
pub fn decode_row(codes: &[u8], scales: &[f32], biases: &[f32], bits: u32, group: usize, out: &mut [f32]) {
    for (g, (o, (&s, &b))) in out.chunks_exact_mut(group).zip(scales.iter().zip(biases)).enumerate() {
        for (i, w) in o.iter_mut().enumerate() {
            *w = s * code(codes, g * group + i, bits) as f32 + b;
        }
    }
}

/// Codes `[K]` (one per input, any of [`BITS`]) into the bit-stream row (the inverse of
/// [`code`], for tests and `synth`).
pub fn pack_row(q: &[u32], bits: u32, row: &mut [u8]) {
    row.fill(0);
    for (j, &v) in q.iter().enumerate() {
        assert!(v < 1 << bits, "affine::pack_row: code {v} does not fit {bits} bits");
        let bit = j * bits as usize;
        let word = (v as u16) << (bit % 8);
        row[bit / 8] |= word as u8;
        if bit % 8 + bits as usize > 8 {
            row[bit / 8 + 1] |= (word >> 8) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_at_every_width() {
        for bits in BITS {
            let k = 128;
            let q: Vec<u32> = (0..k).map(|j| ((j * 37 + 11) % (1 << bits)) as u32).collect();
            let mut row = vec![0u8; AffineRows::row_bytes(k, bits)];
            pack_row(&q, bits, &mut row);
            let back: Vec<u32> = (0..k).map(|j| code(&row, j, bits)).collect();
            assert_eq!(back, q, "{bits} bits");
        }
    }

    #[test]
    fn four_bit_codes_are_nibbles_low_first() {
        // The spec's example word 0x97654321: codes 1, 2, 3, 4, 5, 6, 7, 9.
        let row = 0x9765_4321u32.to_le_bytes();
        let got: Vec<u32> = (0..8).map(|j| code(&row, j, 4)).collect();
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 9]);
        let mut out = [0f32; 32];
        let mut codes = [0u8; 16];
        codes[..4].copy_from_slice(&row);
        decode_row(&codes, &[-1.0], &[15.0], 4, 32, &mut out);
        assert_eq!(&out[..8], &[14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 6.0]);
        assert_eq!(out[31], 15.0);
    }
}
