//! AVX-512F prompt matmuls over bf16 weights with f32 activations, for the `avx512` and
//! `avx512vnni` sets, whose one token goes through [`super::avx2`]'s dot product: the tiles
//! of [`super::dense_tiles`] in 16 lanes. A 512-bit accumulator holds two of that dot
//! product's 8-lane accumulators side by side (lanes 0..8 accumulator 2h, lanes 8..16
//! accumulator 2h + 1, over columns `32g + 16h .. 32g + 16h + 16`), so a token gets the same
//! bits alone or in a prompt.
//!
//! Why: with 32 registers a tile of 4 rows × 6 tokens keeps 24 accumulators, each widening of
//! 16 weights feeds 6 FMAs of 16 lanes, and a pass over a 512-column chunk does four times the
//! work of an AVX2 pass. The start and drain of those short passes held the AVX2 tile to 10 of
//! the 16 multiply-adds per cycle that Zen 4 issues (a C twin of its bare inner loop: 13.4);
//! this one runs 12–12.5. Intel cores with two 512-bit FMA units issue twice as many.

use std::arch::x86_64::*;

use super::dense_tiles::{self, Lanes};

/// 16 lanes: two passes per 32-column group. 4 rows × 6 tokens = 24 accumulators, 4 widened
/// weight vectors and an activation vector take 29 of the 32 registers.
struct Lanes16;

impl Lanes for Lanes16 {
    type V = __m512;
    const WIDTH: usize = 16;
    const TILE_ROWS: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)), 16))
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn fma(x: __m512, w: __m512, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(x, w, acc)
    }
    /// Each 512-bit accumulator back into the two 8-lane ones it holds.
    #[inline(always)]
    unsafe fn as_acc8<const P: usize>(acc: &[__m512; P]) -> [__m256; 4] {
        let upper = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        std::array::from_fn(|j| if j % 2 == 0 { _mm512_castps512_ps256(acc[j / 2]) } else { upper(acc[j / 2]) })
    }
}

/// x `[n_tok, K]` in the layout [`matmul_rows_f32_bf16w_packed`] reads (nothing for one
/// token, which reads x as it is).
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    dense_tiles::pack::<2>(x, n_tok, k, xp)
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    dense_tiles::run::<Lanes16, 2, 4>(x, xp, n_tok, w, bias, out, k)
}

/// [`crate::scalar::matmul_rows_f32_bf16w`] with the activations packed by
/// [`pack_f32_for_bf16w`]: one token through [`super::avx2`]'s dot product, several through
/// the 512-bit tiles, the same bits either way.
pub fn matmul_rows_f32_bf16w_packed(
    x: &[f32],
    xp: &[f32],
    n_tok: usize,
    k: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    if n_tok < 2 {
        return super::avx2::matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out);
    }
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    assert_eq!(xp.len(), dense_tiles::packed_len::<2>(n_tok, k), "linear: packed activations do not match [T, K]");
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F (and so AVX2 and FMA);
    // every access is within the slices, whose lengths were checked above.
    unsafe { matmul_impl(x, xp, n_tok, w, bias, out, k) }
}

/// See [`crate::scalar::matmul_rows_f32_bf16w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_bf16w(
    x: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    dense_tiles::with_packed::<2, _>(x, n_tok, k, |xp| matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out))
}
