//! Affine-weight matmuls (MLX checkpoints) of every kernel set against the scalar twin, on
//! random shapes with ragged row and token counts, every width and group size; and the twin
//! against a plain f64 sum of the dequantized weights.

use gptoss_kernels::affine::{self, AffineRows, BITS, GROUPS};
use gptoss_kernels::{scalar, Isa, Kernels};

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

struct Case {
    k: usize,
    rows: usize,
    n_tok: usize,
    bits: u32,
    group: usize,
    x: Vec<f32>,
    codes: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Case {
    fn random(rng: &mut Rng, bits: u32, group: usize) -> Case {
        let k = group * (1 + rng.below(6));
        let (rows, n_tok) = (1 + rng.below(13), 1 + rng.below(9));
        let q: Vec<u32> = (0..rows * k).map(|_| rng.below(1 << bits) as u32).collect();
        let rb = AffineRows::row_bytes(k, bits);
        let mut codes = vec![0u8; rows * rb];
        for (r, row) in codes.chunks_exact_mut(rb).enumerate() {
            affine::pack_row(&q[r * k..(r + 1) * k], bits, row);
        }
        // Scales of both signs, as mlx writes them.
        let scales = (0..rows * k / group).map(|_| rng.f32() * 0.1).collect();
        let biases = (0..rows * k / group).map(|_| rng.f32()).collect();
        let x = (0..n_tok * k).map(|_| rng.f32()).collect();
        let bias = (rng.below(2) == 0).then(|| (0..rows).map(|_| rng.f32()).collect());
        Case { k, rows, n_tok, bits, group, x, codes, scales, biases, bias }
    }

    fn w(&self) -> AffineRows<'_> {
        AffineRows {
            codes: &self.codes,
            scales: &self.scales,
            biases: &self.biases,
            bits: self.bits,
            group: self.group,
        }
    }

    fn run(&self, f: gptoss_kernels::dispatch::MatmulAffine) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.rows * self.n_tok];
        f(&self.x, self.n_tok, self.w(), self.bias.as_deref(), &mut out, &mut vec![0f32; self.k]);
        out
    }
}

fn fast_kernels() -> Vec<&'static Kernels> {
    [Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Neon, Isa::NeonDotprod]
        .into_iter()
        .filter_map(Kernels::for_isa)
        .collect()
}

#[test]
fn every_set_matches_the_twin_on_random_shapes() {
    let mut rng = Rng(0x5eed_affe);
    for bits in BITS {
        for group in GROUPS {
            for _ in 0..4 {
                let c = Case::random(&mut rng, bits, group);
                let want = c.run(scalar::matmul_rows_f32_affinew);
                for kern in fast_kernels() {
                    let got = c.run(kern.matmul_rows_f32_affinew);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        // The same decoded weights, summed in another order.
                        let tol = 4.0 * f32::EPSILON * (c.k as f32).sqrt() * (4.0 + e.abs()) + 1e-6;
                        assert!(
                            (g - e).abs() <= tol,
                            "{}: {bits} bits, group {group}, [{}x{}] T={}: out[{i}] = {g}, twin {e}",
                            kern.isa.name(),
                            c.rows,
                            c.k,
                            c.n_tok
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
    let mut rng = Rng(31);
    for kern in std::iter::once(Kernels::scalar()).chain(fast_kernels()) {
        for bits in [3, 4, 8] {
            let mut c = Case::random(&mut rng, bits, 64);
            c.n_tok = 5;
            c.x = (0..5 * c.k).map(|_| rng.f32()).collect();
            let all = c.run(kern.matmul_rows_f32_affinew);
            for t in 0..5 {
                let one = Case {
                    n_tok: 1,
                    x: c.x[t * c.k..(t + 1) * c.k].to_vec(),
                    bias: c.bias.clone(),
                    ..Case::random(&mut rng, bits, 64)
                };
                let one = Case {
                    k: c.k,
                    rows: c.rows,
                    codes: c.codes.clone(),
                    scales: c.scales.clone(),
                    biases: c.biases.clone(),
                    ..one
                };
                let alone = one.run(kern.matmul_rows_f32_affinew);
                for r in 0..c.rows {
                    assert_eq!(
                        alone[r].to_bits(),
                        all[r * 5 + t].to_bits(),
                        "{} bits {bits}: token {t}, row {r}",
                        kern.isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn twin_is_the_dequantized_matmul() {
    let mut rng = Rng(4);
    for bits in BITS {
        let c = Case::random(&mut rng, bits, 32);
        let got = c.run(scalar::matmul_rows_f32_affinew);
        for r in 0..c.rows {
            for t in 0..c.n_tok {
                let mut want = c.bias.as_ref().map_or(0.0, |b| b[r] as f64);
                let mut mag = 0f64;
                for j in 0..c.k {
                    let q = affine::code(&c.codes[r * c.k * bits as usize / 8..], j, bits) as f32;
                    let g = r * c.k / 32 + j / 32;
                    let w = (c.scales[g] * q + c.biases[g]) as f64;
                    want += w * c.x[t * c.k + j] as f64;
                    mag += (w * c.x[t * c.k + j] as f64).abs();
                }
                let e = got[r * c.n_tok + t] as f64;
                assert!((e - want).abs() <= 1e-6 * (1.0 + mag), "{bits} bits: row {r} token {t}: {e} vs {want}");
            }
        }
    }
}
