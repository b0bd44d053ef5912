//! Every fast kernel against its scalar twin, on random shapes with ragged tails.

use gptoss_kernels::bf16::f32_to_bf16;
use gptoss_kernels::{Isa, Kernels};

/// xorshift, so the test needs no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fast_kernels() -> Vec<&'static Kernels> {
    [Isa::Avx2, Isa::Avx512].into_iter().filter_map(Kernels::for_isa).collect()
}

#[test]
fn bf16_matmul_matches_scalar_on_random_ragged_shapes() {
    let fast = fast_kernels();
    if fast.is_empty() {
        eprintln!("no SIMD kernels on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..200 {
        // K covers below, at and past every vector width and unroll, plus the model's 2880.
        let k = if case == 0 { 2880 } else { 1 + rng.below(300) };
        let (n_tok, rows) = (1 + rng.below(5), 1 + rng.below(9));
        let x: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let with_bias = case % 2 == 0;
        let mut want = vec![0f32; rows * n_tok];
        let mut buf = vec![0f32; k];
        (Kernels::scalar().matmul_rows_f32_bf16w)(&x, n_tok, &w, with_bias.then_some(&bias[..]), &mut want, &mut buf);
        for kern in &fast {
            let mut got = vec![0f32; rows * n_tok];
            (kern.matmul_rows_f32_bf16w)(&x, n_tok, &w, with_bias.then_some(&bias[..]), &mut got, &mut buf);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                // Both sum K products of |x|,|w| <= 1 in f32, in different orders.
                let tol = 4.0 * f32::EPSILON * (k as f32).sqrt() * (1.0 + e.abs()) + 1e-6;
                assert!((g - e).abs() <= tol, "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
            }
        }
    }
}

/// Equal as numbers: the same special value, or finite and within `tol`.
fn close(g: f32, e: f32, tol: f32) -> bool {
    if e.is_nan() || g.is_nan() {
        return e.is_nan() && g.is_nan();
    }
    if e.is_infinite() || g.is_infinite() {
        return e == g;
    }
    (g - e).abs() <= tol
}

#[test]
fn mxfp4_matmul_matches_scalar_on_random_ragged_shapes() {
    let fast = fast_kernels();
    if fast.is_empty() {
        eprintln!("no SIMD kernels on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for case in 0..200 {
        let k = if case == 0 { 2880 } else { 32 * (1 + rng.below(12)) };
        let (n_tok, rows) = (1 + rng.below(5), 1 + rng.below(9));
        let x: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.next() as u8).collect();
        // Ordinary scales, and now and then the extremes: 2^-127 and 2^128 (= inf).
        let scales: Vec<u8> = (0..rows * k / 32)
            .map(|_| match rng.below(40) {
                0 => 0,
                1 if case % 7 == 0 => 255,
                _ => 118 + rng.below(12) as u8,
            })
            .collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        let mut want = vec![0f32; rows * n_tok];
        let mut buf = vec![0f32; k];
        (Kernels::scalar().matmul_rows_f32_mxfp4w)(&x, n_tok, &codes, &scales, b, &mut want, &mut buf);
        for kern in &fast {
            let mut got = vec![0f32; rows * n_tok];
            (kern.matmul_rows_f32_mxfp4w)(&x, n_tok, &codes, &scales, b, &mut got, &mut buf);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                // |w| <= 6·2^2 here, so products are at most 24.
                let tol = 4.0 * f32::EPSILON * (k as f32).sqrt() * (24.0 + e.abs()) + 1e-6;
                assert!(close(*g, *e, tol), "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
            }
        }
    }
}

#[test]
fn names_select_kernels_and_unknown_names_are_refused() {
    assert_eq!(Kernels::by_name("scalar").map(|k| k.isa), Ok(Isa::Scalar));
    assert!(Kernels::by_name("sse9").is_err());
    assert!(Kernels::by_name("neon").is_err());
    assert!(Isa::Scalar.supported());
    assert!(Kernels::detect().isa.supported());
}

/// A token's result must not depend on what it is batched with: batched, chunked and
/// token-by-token runs of the model stay bit-identical.
#[test]
fn results_do_not_depend_on_the_batch() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for kern in [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter_map(Kernels::for_isa) {
        for k in [32, 64, 96, 2880] {
            let (n_tok, rows) = (3, 4);
            let x: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
            let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
            let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.next() as u8).collect();
            let scales: Vec<u8> = (0..rows * k / 32).map(|_| 120 + rng.below(8) as u8).collect();
            let mut buf = vec![0f32; k];
            let (mut all_b, mut all_m) = (vec![0f32; rows * n_tok], vec![0f32; rows * n_tok]);
            (kern.matmul_rows_f32_bf16w)(&x, n_tok, &w, None, &mut all_b, &mut buf);
            (kern.matmul_rows_f32_mxfp4w)(&x, n_tok, &codes, &scales, None, &mut all_m, &mut buf);
            for t in 0..n_tok {
                let xt = &x[t * k..(t + 1) * k];
                let (mut one_b, mut one_m) = (vec![0f32; rows], vec![0f32; rows]);
                (kern.matmul_rows_f32_bf16w)(xt, 1, &w, None, &mut one_b, &mut buf);
                (kern.matmul_rows_f32_mxfp4w)(xt, 1, &codes, &scales, None, &mut one_m, &mut buf);
                for r in 0..rows {
                    assert_eq!(one_b[r].to_bits(), all_b[r * n_tok + t].to_bits(), "{:?} bf16 k={k}", kern.isa);
                    assert_eq!(one_m[r].to_bits(), all_m[r * n_tok + t].to_bits(), "{:?} mxfp4 k={k}", kern.isa);
                }
            }
        }
    }
}
