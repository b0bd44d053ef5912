//! The float32 reference kernels: the numerical truth every faster kernel is tested against.
//!
//! Reductions use one fixed order everywhere (eight interleaved partial sums, combined
//! pairwise, then the tail), so a result never depends on how work was split over threads
//! or how many tokens were batched together.

mod attention;
mod bfmmla;
mod i16a;
mod linear;
mod moe;
mod norm;
mod rope;

pub use attention::{attend_head_f32, attend_heads_f32, KvSpan};
pub(crate) use attention::{for_each_row, vector_shapes_ok};
pub use bfmmla::{
    bf16_dot_add, matmul_rows_bf16a_bf16w_bfmmla, matmul_rows_bf16a_mxfp4w_bfmmla, matmul_rows_bf16a_q8w_bfmmla,
};
// The int16- and bf16-activation checks serve the x86 and AArch64 kernels.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use i16a::check_i16a_shapes;
pub use i16a::{matmul_rows_i16a_affine4r16w, matmul_rows_i16a_mxfp4r16w};
pub(crate) use linear::{check_affine_shapes, check_matmul_shapes, check_mxfp4_shapes, check_q8_shapes};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use linear::{check_bf16a_shapes, check_mxfp4_bf16a_shapes};
pub use linear::{
    matmul_rows_bf16a_bf16t8w, matmul_rows_bf16a_bf16w, matmul_rows_bf16a_mxfp4w, matmul_rows_bf16a_q8w,
    matmul_rows_f32_affinew, matmul_rows_f32_bf16w, matmul_rows_f32_f32w, matmul_rows_f32_mxfp4w, matmul_rows_f32_q8w,
};
pub use moe::{router_top_k, swiglu_interleaved_f32, SWIGLU_ALPHA};
pub use norm::rmsnorm_f32;
pub use rope::YarnRope;

/// `Σ a[i]·b[i]` in the reference order.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
    let mut acc = [0f32; 8];
    let a8 = a.chunks_exact(8);
    let b8 = b.chunks_exact(8);
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_on_ragged_lengths() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 2880, 2883] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 13.0).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot_f32(&a, &b) as f64;
            assert!((got - exact).abs() <= 1e-5 * (1.0 + exact.abs()), "n={n}: {got} vs {exact}");
        }
    }
}
