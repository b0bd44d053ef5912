//! bf16 matrices repacked at load so that one token's pass over 8 rows reads one stream.
//!
//! Why: a single token (decode) reads each dense weight once, and its speed is the speed of
//! that read. Row after row, a pass over 8 rows at a time keeps 8 streams going per thread,
//! and the hardware prefetcher falls behind: 8 rows of [201088, 2880] read 44-46 GB/s with
//! two threads where the probe read 47. Here the 8 rows' next 32 columns are the next 512
//! bytes, and the same pass read 48-50 GB/s (the one-term kernel, which needs half the
//! arithmetic, 51). The numbers and their order of summation are unchanged: kernels give the
//! same bits from either layout.
//!
//! Layout, for a matrix `[R, K]` with R a multiple of 8 and K of 32: group g of rows
//! 8g..8g+8 is `8·K` elements at `8g·K` (so row ranges that are multiples of 8 slice alike),
//! and within it chunk c of columns 32c..32c+32 is 256 elements at `256·c`, row by row:
//! element (r, k) is at `8·K·(r/8) + 256·(k/32) + 32·(r%8) + k%32`.

/// Rows per group.
pub const ROWS: usize = 8;
/// Columns per chunk: one 64-byte line of one row.
pub const CHUNK: usize = 32;

/// Whether `[rows, k]` can be held in this layout.
pub fn can_tile(rows: usize, k: usize) -> bool {
    rows.is_multiple_of(ROWS) && k.is_multiple_of(CHUNK) && k > 0
}

/// Index of element (r, k) of a `[_, cols]` matrix in this layout.
#[inline(always)]
pub fn offset(r: usize, k: usize, cols: usize) -> usize {
    ROWS * cols * (r / ROWS) + ROWS * CHUNK * (k / CHUNK) + CHUNK * (r % ROWS) + k % CHUNK
}

fn check(src: &[u16], k: usize, dst: &[u16]) {
    assert!(k > 0 && k.is_multiple_of(CHUNK), "bf16_t8: K = {k} is not a positive multiple of {CHUNK}");
    assert!(src.len().is_multiple_of(ROWS * k), "bf16_t8: {} elements are not whole groups of {ROWS} rows", src.len());
    assert_eq!(src.len(), dst.len(), "bf16_t8: source and destination differ in length");
}

/// Rows `[R, K]` → this layout. Whole groups in, whole groups out, so a matrix can be
/// converted in parallel pieces of groups.
pub fn pack(src: &[u16], k: usize, dst: &mut [u16]) {
    check(src, k, dst);
    for (s, d) in src.chunks_exact(ROWS * k).zip(dst.chunks_exact_mut(ROWS * k)) {
        for (r, row) in s.chunks_exact(k).enumerate() {
            for (c, part) in row.chunks_exact(CHUNK).enumerate() {
                d[ROWS * CHUNK * c + CHUNK * r..][..CHUNK].copy_from_slice(part);
            }
        }
    }
}

/// This layout → rows: the inverse of [`pack`].
pub fn unpack(src: &[u16], k: usize, dst: &mut [u16]) {
    check(src, k, dst);
    for (s, d) in src.chunks_exact(ROWS * k).zip(dst.chunks_exact_mut(ROWS * k)) {
        for (r, row) in d.chunks_exact_mut(k).enumerate() {
            for (c, part) in row.chunks_exact_mut(CHUNK).enumerate() {
                part.copy_from_slice(&s[ROWS * CHUNK * c + CHUNK * r..][..CHUNK]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_places_every_element_where_offset_says_and_unpack_inverts_it() {
        for (rows, k) in [(8, 32), (16, 96), (24, 2880)] {
            let src: Vec<u16> = (0..rows * k).map(|i| (i * 7 + 3) as u16).collect();
            let mut packed = vec![0u16; src.len()];
            pack(&src, k, &mut packed);
            for r in 0..rows {
                for c in 0..k {
                    assert_eq!(packed[offset(r, c, k)], src[r * k + c], "[{rows}x{k}] ({r}, {c})");
                }
            }
            let mut back = vec![0u16; src.len()];
            unpack(&packed, k, &mut back);
            assert_eq!(back, src);
        }
        assert!(can_tile(8, 32) && !can_tile(12, 32) && !can_tile(8, 40) && !can_tile(8, 0));
    }
}
