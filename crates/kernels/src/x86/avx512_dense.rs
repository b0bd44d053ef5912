//! AVX-512F prompt matmuls over bf16 weights with f32 activations, for the `avx512` and
//! `avx512vnni` sets, whose one token goes through [`super::avx2`]'s: the tiles of
//! [`super::dense_tiles`] in 16 lanes. A group's 16 weights widen in column order, so lane
//! 2l + h of a 512-bit vector of sums is the order's `even[l]` (h = 0) or `odd[l]` (h = 1), and
//! a token gets the same bits alone or in a prompt.
//!
//! Why: with 32 registers a tile of 4 rows × 6 tokens keeps 24 vectors of sums, each widening
//! of 16 weights feeds 6 FMAs of 16 lanes. Intel cores with two 512-bit FMA units issue twice
//! as many multiply-adds per cycle as with 256 bits; Zen 4 splits them.

use std::arch::x86_64::*;

use super::dense_tiles::{self, Lanes};

/// 16 lanes: one vector per (row, token). 4 rows × 6 tokens = 24 vectors of sums, 4 widened
/// weight vectors and an activation vector take 29 of the 32 registers.
struct Lanes16;

impl Lanes for Lanes16 {
    type V = __m512;
    const WIDTH: usize = 16;
    /// 6 tokens × 512 columns of activations: 12 KB of L1.
    const K_CHUNK: usize = 512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load_w(p: *const u16, _h: usize) -> __m512 {
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
    /// Lanes 2l and 2l + 1 added, then the even lanes.
    #[inline(always)]
    unsafe fn pair_sums<const P: usize>(acc: &[__m512; P]) -> __m256 {
        let v = acc[0];
        let sums = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(even, sums))
    }
    fn packed_column(i: usize) -> usize {
        i
    }
}

/// x `[n_tok, K]` in the layout [`matmul_rows_f32_bf16w_packed`] reads (nothing for one
/// token, which reads x as it is).
pub fn pack_f32_for_bf16w(x: &[f32], n_tok: usize, k: usize, xp: &mut Vec<f32>) {
    dense_tiles::pack::<Lanes16>(x, n_tok, k, xp)
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn matmul_impl(x: &[f32], xp: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    dense_tiles::run::<Lanes16, 1, 4, 6>(x, xp, n_tok, w, bias, out, k)
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
    assert_eq!(xp.len(), dense_tiles::packed_len(n_tok, k), "linear: packed activations do not match [T, K]");
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
    dense_tiles::with_packed::<Lanes16, _>(x, n_tok, k, |xp| {
        matmul_rows_f32_bf16w_packed(x, xp, n_tok, k, w, bias, out)
    })
}
