//! f32-weight matmuls (f16 layers widened at load) of every kernel set against the scalar
//! twin on random ragged shapes, and batch invariance.

use gptoss_kernels::{scalar, Isa, Kernels};

fn rng(seed: &mut u64) -> f32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

#[test]
fn every_set_matches_the_twin_and_is_batch_invariant() {
    let mut s = 42u64;
    let sets: Vec<_> = Isa::FAST.into_iter().filter_map(Kernels::for_isa).collect();
    for case in 0..30 {
        let (rows, k, n_tok) = (1 + case % 7, 1 + (case * 37) % 300, 1 + case % 5);
        let x: Vec<f32> = (0..n_tok * k).map(|_| rng(&mut s)).collect();
        let w: Vec<f32> = (0..rows * k).map(|_| rng(&mut s)).collect();
        let bias: Option<Vec<f32>> = (case % 2 == 0).then(|| (0..rows).map(|_| rng(&mut s)).collect());
        let run = |f: gptoss_kernels::dispatch::MatmulF32, x: &[f32], n: usize| {
            let mut out = vec![f32::NAN; rows * n];
            f(x, n, &w, bias.as_deref(), &mut out, &mut vec![0f32; k]);
            out
        };
        let want = run(scalar::matmul_rows_f32_f32w, &x, n_tok);
        for kern in &sets {
            let got = run(kern.matmul_rows_f32_f32w, &x, n_tok);
            for (g, e) in got.iter().zip(&want) {
                let tol = 4.0 * f32::EPSILON * (k as f32).sqrt() * (1.0 + e.abs()) + 1e-6;
                assert!((g - e).abs() <= tol, "{}: [{rows}x{k}] T={n_tok}: {g} vs {e}", kern.isa.name());
            }
            let last = run(kern.matmul_rows_f32_f32w, &x[(n_tok - 1) * k..], 1);
            for r in 0..rows {
                assert_eq!(last[r].to_bits(), got[r * n_tok + n_tok - 1].to_bits(), "{} row {r}", kern.isa.name());
            }
        }
    }
}
