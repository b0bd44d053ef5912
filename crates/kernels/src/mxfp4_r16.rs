//! MXFP4 experts repacked at load for integer dot products with rows in vector lanes, and
//! activations quantized to 16-bit integers per block of 32 ("i16a"). The same numbers as the
//! checkpoint, in another order, so a 16-lane vector holds one weight pair of 16 rows.
//!
//! Why: a `vpdpwssd` multiplies 32 int16 pairs per instruction, twice the multiply-adds of the
//! two-term bf16 path (activations as hi + lo), and integer block sums are exact, so the only
//! rounding is one fused multiply-add per block. With rows in lanes, a block's integer sum
//! never needs a horizontal reduction, and one token (decode) and many (prompt) run the same
//! float operations per block, so results stay batch-invariant.
//!
//! Layout, for a matrix `[R, K]` with R a multiple of 16 and K of 32, per group g of 16 rows
//! and block b of 32 columns, one 256-byte tile at `(g·K/32 + b)·256` (the same bytes as the
//! checkpoint's rows 16g..16g+16, so row ranges that are multiples of 16 slice alike):
//! - the tile is 4 quads of 64 bytes, quad q holding column pairs 4q..4q+4;
//! - in a quad, the qword j holds rows 2j and 2j+1: byte `8j + 2(p % 4) + (r % 2)` is the
//!   checkpoint code byte of row r for pair p (two E2M1 codes, low nibble first).
//!
//! Scales: per group and block, 16 bytes, one per row, at `(g·K/32 + b)·16 + r`.
//!
//! The arithmetic, per row r, token t and block b (every kernel does exactly this):
//! - `q[t, k]`: `x[t, k]` quantized with the block's scale `xs[t, b] = amax / 32767`;
//! - `isum = Σ_k w2[r, k]·q[t, k]` exactly, `w2` = 2 × the E2M1 value (an integer in ±12);
//! - `comb = (f32::from_bits(s << 23) · 0.5) · xs[t, b]`, two f32 multiplies;
//! - `acc = fma(isum as f32, comb, acc)`, blocks in order from 0, then `out = acc + bias`.

use crate::mxfp4::{BLOCK, BLOCK_BYTES};

/// Rows per group: one 512-bit vector of i32 lanes.
pub const GROUP: usize = 16;
/// Bytes of codes per (group, block) tile.
pub const TILE_BYTES: usize = GROUP * BLOCK_BYTES;
/// The largest activation code: symmetric, so negation never overflows.
pub const Q_MAX: f32 = 32767.0;
/// The largest code of int8-range activations ([`quantize_codes`] with it): what the AVX2
/// prompt kernels multiply as bytes (`vpmaddubsw`, `vpdpbusd`).
pub const Q_MAX_I8: f32 = 127.0;

/// 2 × E2M1 value of a code: exact small integers.
pub const FP4_X2: [i16; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Offset in a tile of the code byte of row `r` (0..16), column pair `p` (0..16).
#[inline(always)]
pub fn tile_offset(r: usize, p: usize) -> usize {
    (p / 4) * 64 + (r / 2) * 8 + (p % 4) * 2 + (r % 2)
}

/// Whether a matrix `[rows, k]` with these scales can be repacked: whole groups and blocks,
/// and every scale in 1..=254, where `from_bits(s << 23)` is the E8M0 value (0 and 255 are
/// not, and trained weights use neither).
pub fn can_pack(rows: usize, k: usize, scales: &[u8]) -> bool {
    rows.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK) && k > 0 && scales.iter().all(|&s| (1..=254).contains(&s))
}

/// Checkpoint rows (codes `[R, K/2]`, scales `[R, K/32]`) → this layout, in place of `dst_*`.
/// A quad's qword j interleaves 4 code bytes of row 2j with the same 4 of row 2j+1, built
/// 8 bytes at a time (the model's 10 GB of experts are repacked at every load).
pub fn pack(codes: &[u8], scales: &[u8], k: usize, dst_codes: &mut [u8], dst_scales: &mut [u8]) {
    let blocks = k / BLOCK;
    let rows = scales.len() / blocks;
    assert!(rows.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK), "mxfp4_r16::pack: [{rows}, {k}] is not whole tiles");
    assert_eq!((codes.len(), dst_codes.len(), dst_scales.len()), (rows * k / 2, rows * k / 2, scales.len()));
    pack_codes(codes, k, dst_codes);
    for g in 0..rows / GROUP {
        for b in 0..blocks {
            for r in 0..GROUP {
                dst_scales[(g * blocks + b) * GROUP + r] = scales[(g * GROUP + r) * blocks + b];
            }
        }
    }
}

/// The code bytes of [`pack`] alone: rows `[R, K/2]` (two 4-bit codes per byte) into tiles.
pub fn pack_codes(codes: &[u8], k: usize, dst_codes: &mut [u8]) {
    let blocks = k / BLOCK;
    let rows = codes.len() / (k / 2);
    assert!(rows.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK), "mxfp4_r16::pack_codes: [{rows}, {k}]");
    assert_eq!(dst_codes.len(), codes.len());
    // Byte i of x to byte 2i.
    let spread = |x: u32| {
        let x = x as u64;
        let x = (x | x << 16) & 0x0000_ffff_0000_ffff;
        (x | x << 8) & 0x00ff_00ff_00ff_00ff
    };
    let row_bytes = k / 2;
    for g in 0..rows / GROUP {
        let group = &codes[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
        for b in 0..blocks {
            let tile = &mut dst_codes[(g * blocks + b) * TILE_BYTES..][..TILE_BYTES];
            for j in 0..GROUP / 2 {
                let even = &group[2 * j * row_bytes + b * BLOCK_BYTES..][..BLOCK_BYTES];
                let odd = &group[(2 * j + 1) * row_bytes + b * BLOCK_BYTES..][..BLOCK_BYTES];
                for q in 0..4 {
                    let word = |r: &[u8]| u32::from_le_bytes([r[4 * q], r[4 * q + 1], r[4 * q + 2], r[4 * q + 3]]);
                    let qword = spread(word(even)) | spread(word(odd)) << 8;
                    tile[q * 64 + j * 8..][..8].copy_from_slice(&qword.to_le_bytes());
                }
            }
        }
    }
}

/// The inverse of [`pack`].
pub fn unpack(codes: &[u8], scales: &[u8], k: usize, dst_codes: &mut [u8], dst_scales: &mut [u8]) {
    let blocks = k / BLOCK;
    let rows = scales.len() / blocks;
    assert!(
        rows.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK),
        "mxfp4_r16::unpack: [{rows}, {k}] is not whole tiles"
    );
    assert_eq!((codes.len(), dst_codes.len(), dst_scales.len()), (rows * k / 2, rows * k / 2, scales.len()));
    for g in 0..rows / GROUP {
        for b in 0..blocks {
            let tile = (g * blocks + b) * TILE_BYTES;
            for r in 0..GROUP {
                let row = g * GROUP + r;
                for p in 0..BLOCK_BYTES {
                    dst_codes[row * k / 2 + b * BLOCK_BYTES + p] = codes[tile + tile_offset(r, p)];
                }
                dst_scales[row * blocks + b] = scales[(g * blocks + b) * GROUP + r];
            }
        }
    }
}

/// The weight scale of one block for 2×E2M1 integers: 2^(s − 128), as the kernels compute it.
#[inline(always)]
pub fn weight_scale(s: u8) -> f32 {
    f32::from_bits((s as u32) << 23) * 0.5
}

/// Panics (a caller bug) unless `x` is whole blocks, `q`, `xs` are `[T, K]`, `[T, K/32]` and
/// `q_max` is a whole number in 1..=32767.
pub(crate) fn check_quantize_shapes(x: &[f32], q_max: f32, q: &[i16], xs: &[f32]) {
    assert!((1.0..=Q_MAX).contains(&q_max) && q_max.fract() == 0.0, "quantize: code range {q_max} is not 1..=32767");
    assert!(x.len().is_multiple_of(BLOCK), "quantize: {} values are not whole blocks of {BLOCK}", x.len());
    assert_eq!((q.len(), xs.len()), (x.len(), x.len() / BLOCK), "quantize: outputs are not [T, K] and [T, K/32]");
}

/// [`quantize_codes`] to the full int16 range ([`Q_MAX`]).
pub fn quantize_i16(x: &[f32], q: &mut [i16], xs: &mut [f32]) {
    quantize_codes(x, Q_MAX, q, xs)
}

/// `x [T, K]` → codes `q [T, K]` and scales `xs [T, K/32]` with codes up to `q_max`
/// ([`Q_MAX`] or [`Q_MAX_I8`]): per block, `xs = amax / q_max` and
/// `q = round_ties_even(x · (q_max / amax))`, so |q| ≤ q_max. A block of zeros, or of
/// values below the smallest normal f32 (whose inverse scale would overflow; they are 1e-38
/// of any other block), gets codes and scale 0; a block holding inf or NaN gets scale NaN
/// (and codes 0), so it poisons the sums as it would in f32.
pub fn quantize_codes(x: &[f32], q_max: f32, q: &mut [i16], xs: &mut [f32]) {
    check_quantize_shapes(x, q_max, q, xs);
    for ((xb, qb), s) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(xs.iter_mut()) {
        let mut amax = 0f32;
        let mut finite = true;
        for &v in xb {
            finite &= v.is_finite();
            amax = amax.max(v.abs());
        }
        if !finite {
            qb.fill(0);
            *s = f32::NAN;
        } else if amax < f32::MIN_POSITIVE {
            qb.fill(0);
            *s = 0.0;
        } else {
            let inv = q_max / amax;
            for (qv, &v) in qb.iter_mut().zip(xb) {
                *qv = (v * inv).round_ties_even().clamp(-q_max, q_max) as i16;
            }
            *s = amax / q_max;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip_and_offsets_are_a_permutation() {
        let mut seen = [false; TILE_BYTES];
        for r in 0..GROUP {
            for p in 0..BLOCK_BYTES {
                assert!(!std::mem::replace(&mut seen[tile_offset(r, p)], true));
            }
        }
        let (rows, k) = (48, 96);
        let codes: Vec<u8> = (0..rows * k / 2).map(|i| (i * 151 % 256) as u8).collect();
        let scales: Vec<u8> = (0..rows * k / 32).map(|i| (100 + i % 50) as u8).collect();
        let (mut pc, mut ps) = (vec![0u8; codes.len()], vec![0u8; scales.len()]);
        pack(&codes, &scales, k, &mut pc, &mut ps);
        assert_ne!(pc, codes);
        // Row 17, pair 5 of block 2 is in group 1's tile for block 2.
        assert_eq!(pc[(3 + 2) * TILE_BYTES + tile_offset(1, 5)], codes[17 * 48 + 2 * 16 + 5]);
        assert_eq!(ps[(3 + 2) * GROUP + 1], scales[17 * 3 + 2]);
        let (mut uc, mut us) = (vec![0u8; codes.len()], vec![0u8; scales.len()]);
        unpack(&pc, &ps, k, &mut uc, &mut us);
        assert_eq!((uc, us), (codes, scales));
    }

    #[test]
    fn quantize_bounds_and_special_blocks() {
        let mut x: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        x[32..64].fill(0.0);
        x[70] = f32::INFINITY;
        let (mut q, mut xs) = (vec![0i16; 96], vec![0f32; 3]);
        quantize_i16(&x, &mut q, &mut xs);
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(xs[0], amax / Q_MAX);
        assert_eq!(q[..32].iter().map(|v| v.unsigned_abs()).max(), Some(32767));
        for (v, c) in x[..32].iter().zip(&q[..32]) {
            assert!((*c as f32 * xs[0] - v).abs() <= 0.5 * xs[0] * 1.0001);
        }
        assert_eq!((xs[1], &q[32..64]), (0.0, &[0i16; 32][..]));
        assert!(xs[2].is_nan() && q[64..].iter().all(|&c| c == 0));
        assert_eq!(weight_scale(127), 0.5);
        assert_eq!(weight_scale(1), 2f32.powi(-127));
        assert_eq!(weight_scale(254), 2f32.powi(126));
    }
}
