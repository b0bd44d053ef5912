//! The device layouts of the weight matrices (described in kernels/common.cuh) and their
//! host twins: the relayout kernels and these functions must agree bit for bit, and each
//! has an inverse, so the layouts are tested on machines without a GPU.
//!
//! Both layouts put one tensor-core A fragment per lane in 16 contiguous bytes, so a warp
//! reads 512 contiguous bytes per 16x16 (bf16) or 16x64 (MXFP4) tile.

/// A matrix `[rows, cols]` cut into 16-row tiles and 64-wide super-steps (zero padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileShape {
    pub rows: usize,
    pub cols: usize,
    /// 16-row tiles.
    pub mt: usize,
    /// 64-column super-steps.
    pub kb: usize,
}

impl TileShape {
    pub fn new(rows: usize, cols: usize) -> Self {
        TileShape { rows, cols, mt: rows.div_ceil(16), kb: cols.div_ceil(64) }
    }

    /// u32 words of a frag16 (bf16) matrix.
    pub fn frag16_words(&self) -> usize {
        self.mt * self.kb * 4 * 32 * 4
    }

    /// u32 words of frag4 (MXFP4) codes.
    pub fn frag4_code_words(&self) -> usize {
        self.mt * self.kb * 32 * 4
    }

    /// u32 words of frag4 scales.
    pub fn frag4_scale_words(&self) -> usize {
        self.mt * self.kb * 8
    }
}

/// Where element (r, k) of a frag16 matrix lives: (u32 word, high half?).
pub fn frag16_index(s: &TileShape, r: usize, k: usize) -> (usize, bool) {
    let (mt, rr, ks, kk) = (r / 16, r % 16, k / 16, k % 16);
    let (g, hi_row, t, hi_k) = (rr % 8, rr / 8, (kk % 8) / 2, kk / 8);
    let (lane, reg) = (g * 4 + t, hi_row + 2 * hi_k);
    (((mt * s.kb * 4 + ks) * 32 + lane) * 4 + reg, kk % 2 == 1)
}

/// bf16 rows `[rows, cols]` -> frag16 words.
pub fn pack_frag16(src: &[u16], s: &TileShape) -> Vec<u32> {
    assert_eq!(src.len(), s.rows * s.cols, "pack_frag16: source is not [rows, cols]");
    let mut dst = vec![0u32; s.frag16_words()];
    for r in 0..s.rows {
        for k in 0..s.cols {
            let (w, hi) = frag16_index(s, r, k);
            dst[w] |= (src[r * s.cols + k] as u32) << if hi { 16 } else { 0 };
        }
    }
    dst
}

/// The inverse of [`pack_frag16`].
pub fn unpack_frag16(words: &[u32], s: &TileShape) -> Vec<u16> {
    assert_eq!(words.len(), s.frag16_words(), "unpack_frag16: wrong length");
    let mut out = vec![0u16; s.rows * s.cols];
    for r in 0..s.rows {
        for k in 0..s.cols {
            let (w, hi) = frag16_index(s, r, k);
            out[r * s.cols + k] = (words[w] >> if hi { 16 } else { 0 }) as u16;
        }
    }
    out
}

/// Where the 4-bit code of element (r, k) of frag4 codes lives: (u32 word, magnitude bit,
/// sign bit).
pub fn frag4_code_index(s: &TileShape, r: usize, k: usize) -> (usize, u32, u32) {
    let (mt, rr, kb, kk) = (r / 16, r % 16, k / 64, k % 64);
    let (j, k16) = (kk / 16, kk % 16);
    let (g, hi_row, t, hi_k, half) = (rr % 8, rr / 8, (k16 % 8) / 2, k16 / 8, (k16 % 2) as u32);
    let (lane, reg) = (g * 4 + t, (hi_row + 2 * hi_k) as u32);
    (((mt * s.kb + kb) * 32 + lane) * 4 + j, 16 * half + 3 * reg, 16 * half + 12 + reg)
}

/// Where the scale of row r, 32-block b lives in frag4 scales: (u32 word, byte).
pub fn frag4_scale_index(s: &TileShape, r: usize, b: usize) -> (usize, u32) {
    let (mt, rr, kb, blk) = (r / 16, r % 16, b / 2, b % 2);
    let (g, hi_row) = (rr % 8, rr / 8);
    ((mt * s.kb + kb) * 8 + g, (blk + 2 * hi_row) as u32)
}

/// MXFP4 codes `[rows, cols/2]` and scales `[rows, cols/32]` -> frag4 (codes, scales).
/// Padding codes are 0 and padding scales 127, so padded weights are exactly zero.
pub fn pack_frag4(codes: &[u8], scales: &[u8], s: &TileShape) -> (Vec<u32>, Vec<u32>) {
    assert!(s.cols.is_multiple_of(32), "pack_frag4: cols must be whole 32-blocks");
    assert_eq!(codes.len(), s.rows * s.cols / 2, "pack_frag4: codes are not [rows, cols/2]");
    assert_eq!(scales.len(), s.rows * s.cols / 32, "pack_frag4: scales are not [rows, cols/32]");
    let mut dc = vec![0u32; s.frag4_code_words()];
    for r in 0..s.rows {
        for k in 0..s.cols {
            let nib = (codes[r * s.cols / 2 + k / 2] >> (4 * (k % 2))) as u32 & 15;
            let (w, mag, sign) = frag4_code_index(s, r, k);
            dc[w] |= ((nib & 7) << mag) | ((nib >> 3) << sign);
        }
    }
    let mut ds = vec![0x7f7f_7f7fu32; s.frag4_scale_words()];
    let nb = s.cols / 32;
    for r in 0..s.rows {
        for b in 0..nb {
            let (w, byte) = frag4_scale_index(s, r, b);
            ds[w] = (ds[w] & !(0xff << (8 * byte))) | ((scales[r * nb + b] as u32) << (8 * byte));
        }
    }
    (dc, ds)
}

/// The inverse of [`pack_frag4`].
pub fn unpack_frag4(dc: &[u32], ds: &[u32], s: &TileShape) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(dc.len(), s.frag4_code_words(), "unpack_frag4: wrong code length");
    assert_eq!(ds.len(), s.frag4_scale_words(), "unpack_frag4: wrong scale length");
    let mut codes = vec![0u8; s.rows * s.cols / 2];
    for r in 0..s.rows {
        for k in 0..s.cols {
            let (w, mag, sign) = frag4_code_index(s, r, k);
            let nib = ((dc[w] >> mag) & 7) | (((dc[w] >> sign) & 1) << 3);
            codes[r * s.cols / 2 + k / 2] |= (nib as u8) << (4 * (k % 2));
        }
    }
    let nb = s.cols / 32;
    let mut scales = vec![0u8; s.rows * nb];
    for r in 0..s.rows {
        for b in 0..nb {
            let (w, byte) = frag4_scale_index(s, r, b);
            scales[r * nb + b] = (ds[w] >> (8 * byte)) as u8;
        }
    }
    (codes, scales)
}

/// The value the kernels decode for element (r, k) of frag4 weights, by the route they take
/// (bit placement into bf16, times 2^126, times the scale), computed on the host: equals
/// the MXFP4 value (`gptoss_kernels::mxfp4::decode_row`) for every code and scale.
pub fn frag4_value_by_bits(dc: &[u32], ds: &[u32], s: &TileShape, r: usize, k: usize) -> f32 {
    let (w, mag, sign) = frag4_code_index(s, r, k);
    let (m, sg) = ((dc[w] >> mag) & 7, (dc[w] >> sign) & 1);
    // bf16 bits: magnitude at 6..8, sign at 15.
    let coded = f32::from_bits(((m << 6) | (sg << 15)) << 16);
    let (sw, byte) = frag4_scale_index(s, r, k / 32);
    let e = (ds[sw] >> (8 * byte)) & 0xff;
    let scale = match e {
        0 => f32::from_bits(0x0040_0000),
        255 => f32::INFINITY,
        e => f32::from_bits(e << 23),
    };
    coded * 2f32.powi(126) * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_engine::rng::Rng;
    use gptoss_kernels::mxfp4;

    fn shapes() -> Vec<(usize, usize)> {
        // Whole tiles, ragged rows and columns (padding), one tile, the tiny model's K = 96.
        vec![(16, 64), (32, 128), (17, 64), (40, 96), (5, 32), (48, 160), (64, 2880 / 10)]
    }

    #[test]
    fn frag16_round_trips_and_pads_with_zeros() {
        let mut rng = Rng::new(1);
        for (r, c) in shapes() {
            let s = TileShape::new(r, c);
            let src: Vec<u16> = (0..r * c).map(|_| (rng.next_u64() as u16) | 1).collect();
            let packed = pack_frag16(&src, &s);
            assert_eq!(unpack_frag16(&packed, &s), src, "{r}x{c}");
            // Every source element lands in a distinct place: the nonzero halves count them.
            let nonzero: usize = packed.iter().map(|w| ((w & 0xffff) != 0) as usize + ((w >> 16) != 0) as usize).sum();
            assert_eq!(nonzero, r * c, "{r}x{c}: padding must stay zero and nothing may collide");
        }
    }

    #[test]
    fn frag16_matches_the_mma_fragment_of_ptx() {
        // PTX ISA, mma.m16n8k16 .bf16 A: a0,a1 (row g, cols 2t, 2t+1), a2,a3 (row g+8),
        // a4,a5 (row g, cols 2t+8, 2t+9), a6,a7 (row g+8, cols 2t+8, 2t+9).
        let s = TileShape::new(16, 64);
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            let want = [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)];
            for (reg, &(r, k)) in want.iter().enumerate() {
                assert_eq!(frag16_index(&s, r, k), (lane * 4 + reg, false));
                assert_eq!(frag16_index(&s, r, k + 1), (lane * 4 + reg, true));
            }
        }
    }

    #[test]
    fn frag4_round_trips() {
        let mut rng = Rng::new(2);
        for (r, c) in shapes() {
            let s = TileShape::new(r, c);
            let codes: Vec<u8> = (0..r * c / 2).map(|_| rng.next_u64() as u8).collect();
            let scales: Vec<u8> = (0..r * c / 32).map(|_| rng.next_u64() as u8).collect();
            let (dc, ds) = pack_frag4(&codes, &scales, &s);
            assert_eq!(unpack_frag4(&dc, &ds, &s), (codes, scales), "{r}x{c}");
        }
    }

    #[test]
    fn frag4_bit_placement_decodes_every_code_and_scale_exactly() {
        // One row of 32 columns per scale byte: all 16 codes twice, every scale 0..=255.
        let s = TileShape::new(1, 32);
        let codes: Vec<u8> = (0..16).map(|i| ((2 * i as u8) & 15) | (((2 * i as u8 + 1) & 15) << 4)).collect();
        for e in 0..=255u8 {
            let (dc, ds) = pack_frag4(&codes, &[e], &s);
            let mut want = [0f32; 32];
            mxfp4::decode_row(&codes, &[e], &mut want);
            for (k, &w) in want.iter().enumerate() {
                let got = frag4_value_by_bits(&dc, &ds, &s, 0, k);
                assert!(got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()), "scale {e} k {k}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn frag4_padding_decodes_to_zero() {
        let s = TileShape::new(20, 96);
        let (dc, ds) = pack_frag4(&[0x77; 20 * 48], &[200; 20 * 3], &s);
        for r in 20..32 {
            for k in 0..128 {
                assert_eq!(frag4_value_by_bits(&dc, &ds, &s, r, k), 0.0);
            }
        }
        for k in 96..128 {
            assert_eq!(frag4_value_by_bits(&dc, &ds, &s, 0, k), 0.0);
        }
    }
}
