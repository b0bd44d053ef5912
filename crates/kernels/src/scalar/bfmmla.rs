//! The twin of the `neon-bf16` matmuls ([`crate::arm::neon_bf16`] on AArch64): Arm's `bfmmla`
//! arithmetic in plain f32, so that the kernel can be checked bit for bit (under qemu) and
//! its accuracy measured on any machine.
//!
//! `bfmmla` ignores the FPCR: per output lane and 4 columns it does `BFDotAdd` twice, on
//! columns (0, 1) then (2, 3), where `BFDotAdd(sum, a0, a1, b0, b1)` is
//! `sum + (a0·b0 + a1·b1)`: bf16 inputs (subnormals flushed to zero), exact f32 products,
//! each of the two additions rounded to odd with subnormal results flushed to zero (the
//! Arm ARM's pseudocode without FEAT_EBF16; qemu's `bfdotadd`). Round to odd truncates toward
//! zero and sets the last bit when the sum is inexact: at most one unit in the last place off,
//! where nearest-even is half of one.
//!
//! The kernel's order, which this twin follows: per (row, token) one f32 sum per bf16 term,
//! over K in chunks of 8 columns (a ragged end padded with zeros, which add nothing), each
//! chunk's columns 0..4 then 4..8; then `hi + lo`, then the bias (nearest even).

use super::linear::{check_bf16a_shapes, check_mxfp4_bf16a_shapes, check_q8_shapes};
use crate::bf16::bf16_to_f32;

/// `v`, or zero of its sign when it is subnormal.
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// `a + b` rounded to odd, subnormal inputs and results flushed to zero.
fn add_round_to_odd(a: f32, b: f32) -> f32 {
    let (a, b) = (flush(a), flush(b));
    let s = a + b;
    if s.is_nan() {
        return f32::NAN;
    }
    if s.is_infinite() && a.is_finite() && b.is_finite() {
        // Round to odd overflows to infinity only from 2^128 up (as qemu's
        // float_round_to_odd_inf); below it, truncation gives the largest finite value. Both
        // inputs are near the top of the range here, so their f64 sum is exact.
        let exact = a as f64 + b as f64;
        return if exact.abs() >= 2f64.powi(128) { s } else { f32::MAX.copysign(s) };
    }
    if s.is_infinite() {
        return s;
    }
    // Knuth's two-sum: the exact a + b is s + e.
    let bv = s - a;
    let e = (a - (s - bv)) + (b - bv);
    if e == 0.0 {
        return flush(s);
    }
    // Nearest gave s; toward zero is s, or one step below it in magnitude when |s| went past
    // the exact sum; then the last bit set.
    let mut bits = s.to_bits();
    if (e < 0.0) != (s < 0.0) {
        bits -= 1;
    }
    flush(f32::from_bits(bits | 1))
}

/// Arm's `BFDotAdd`: `sum + (a0·b0 + a1·b1)` on bf16 bits, as above.
pub fn bf16_dot_add(sum: f32, a0: u16, a1: u16, b0: u16, b1: u16) -> f32 {
    let v = |h: u16| flush(bf16_to_f32(h));
    // Products of two bf16 (8 significant bits each) are exact in f32 short of the range.
    let p = add_round_to_odd(flush(v(a0) * v(b0)), flush(v(a1) * v(b1)));
    add_round_to_odd(sum, p)
}

/// One (row, token) sum of one term over K: w and x `[K]` bf16.
fn dot_bfmmla(w: &[u16], x: &[u16]) -> f32 {
    let mut sum = 0.0f32;
    for (wc, xc) in w.chunks(8).zip(x.chunks(8)) {
        let pad = |c: &[u16]| -> [u16; 8] { std::array::from_fn(|i| c.get(i).copied().unwrap_or(0)) };
        let (wc, xc) = (pad(wc), pad(xc));
        for p in 0..4 {
            sum = bf16_dot_add(sum, wc[2 * p], wc[2 * p + 1], xc[2 * p], xc[2 * p + 1]);
        }
    }
    sum
}

/// `out[r, t] = Σ_k x[t, k]·w[r, k] + bias[r]` in `bfmmla`'s arithmetic: the twin of the
/// `neon-bf16` kernels, with `x: [TERMS, n_tok, K]` bf16 terms, `w: [R, K]` bf16. out:
/// `[R, n_tok]`.
pub fn matmul_rows_bf16a_bf16w_bfmmla<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    for (r, (w_row, out_row)) in w.chunks_exact(k).zip(out.chunks_exact_mut(n_tok)).enumerate() {
        let b = bias.map_or(0.0, |b| b[r]);
        for (t, y) in out_row.iter_mut().enumerate() {
            let term = |i: usize| dot_bfmmla(w_row, &x[(i * n_tok + t) * k..][..k]);
            *y = (1..TERMS).fold(term(0), |s, i| s + term(i)) + b;
        }
    }
}

/// The same with MXFP4 weights (codes `[R, K/2]`, scales `[R, K/32]`), decoded to bf16
/// exactly ([`crate::mxfp4::decode_row_bf16`]).
pub fn matmul_rows_bf16a_mxfp4w_bfmmla<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_mxfp4_bf16a_shapes(x, TERMS, n_tok, k, codes.len(), scales.len(), bias, out);
    let spr = k / crate::mxfp4::BLOCK;
    let mut w = vec![0u16; scales.len() / spr * k];
    for (r, d) in w.chunks_exact_mut(k).enumerate() {
        crate::mxfp4::decode_row_bf16(&codes[r * k / 2..(r + 1) * k / 2], &scales[r * spr..(r + 1) * spr], d);
    }
    matmul_rows_bf16a_bf16w_bfmmla::<TERMS>(x, n_tok, &w, bias, out)
}

/// The same with q8 weights (codes `[R, K]`, scales `[R, K/32]`) at their defined bf16
/// values ([`crate::q8::dequantize_row_bf16`]).
pub fn matmul_rows_bf16a_q8w_bfmmla<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    assert!(n_tok > 0 && k > 0 && x.len() == TERMS * n_tok * k, "linear: x is not [terms, n_tok, K]");
    check_q8_shapes(n_tok, k, codes.len(), scales.len(), bias, out);
    let mut w = vec![0u16; codes.len()];
    crate::q8::dequantize_row_bf16(codes, scales, &mut w);
    matmul_rows_bf16a_bf16w_bfmmla::<TERMS>(x, n_tok, &w, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to odd against the exact sum in f64 (exact for these operands).
    #[test]
    fn sums_round_to_odd() {
        let cases = [
            (1.0f32, f32::EPSILON / 4.0),                  // inexact just above 1: 1 + ulp (odd)
            (1.0, -f32::EPSILON / 8.0),                    // inexact just below 1: the odd value below
            (3.0, 5.0),                                    // exact
            (1.5, -1.5),                                   // exact zero
            (-1.0, -f32::EPSILON / 4.0),                   // the same, negative
            (16777216.0, 1.0),                             // 2^24 + 1: inexact, truncates to 2^24, made odd
            (f32::MIN_POSITIVE * 1.5, -f32::MIN_POSITIVE), // subnormal result: flushed
        ];
        for (a, b) in cases {
            let got = add_round_to_odd(a, b);
            let exact = a as f64 + b as f64;
            let t = exact as f32; // nearest, then adjusted to the truncation below
            let trunc = if (t as f64).abs() > exact.abs() { f32::from_bits(t.to_bits() - 1) } else { t };
            let want = if trunc as f64 == exact { trunc } else { f32::from_bits(trunc.to_bits() | 1) };
            let want = flush(want);
            assert_eq!(got.to_bits(), want.to_bits(), "{a} + {b}: {got:e} vs {want:e}");
        }
        // Inexact sums are odd and never rounded away from zero.
        assert_eq!(add_round_to_odd(1.0, f32::EPSILON / 4.0).to_bits(), 1.0f32.to_bits() | 1);
        assert_eq!(add_round_to_odd(1.0, -f32::EPSILON / 8.0).to_bits(), (1.0f32.to_bits() - 1) | 1);
        // Far apart (beyond f64's exact sums): one step toward zero, made odd.
        assert_eq!(add_round_to_odd(1e30, -1e-30).to_bits(), (1e30f32.to_bits() - 1) | 1);
        // Overflow: infinity from 2^128 up, the largest finite value below it (nearest-even
        // would round MAX + 2^103, a tie, up to infinity).
        assert_eq!(add_round_to_odd(f32::MAX, f32::MAX), f32::INFINITY);
        assert_eq!(add_round_to_odd(-f32::MAX, -f32::MAX), f32::NEG_INFINITY);
        assert_eq!(add_round_to_odd(f32::MAX, 2f32.powi(103)), f32::MAX);
        assert_eq!(add_round_to_odd(f32::MAX, 2f32.powi(104)), f32::INFINITY);
        assert!(add_round_to_odd(f32::NAN, 1.0).is_nan());
        assert_eq!(add_round_to_odd(f32::INFINITY, 1.0), f32::INFINITY);
    }

    #[test]
    fn subnormal_inputs_are_flushed() {
        let tiny = f32::MIN_POSITIVE / 2.0;
        assert_eq!(add_round_to_odd(tiny, 1.0), 1.0);
        // bf16 subnormal weight times 1: zero.
        let sub = (tiny.to_bits() >> 16) as u16;
        let one = crate::bf16::f32_to_bf16(1.0);
        assert_eq!(bf16_dot_add(0.0, sub, 0, one, 0), 0.0);
        assert_eq!(bf16_dot_add(0.0, one, one, one, one), 2.0);
    }
}
