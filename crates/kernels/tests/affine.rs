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
    Isa::FAST.into_iter().filter_map(Kernels::for_isa).collect()
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

/// 4-bit affine rows repacked for the integer kernels: (codes, scales) packed, activations
/// quantized and deinterleaved, and each group's Σx for the zero points.
struct Packed {
    codes: Vec<u8>,
    scales: Vec<f32>,
    xq: Vec<i16>,
    xs: Vec<f32>,
}

fn packed(c: &Case) -> Packed {
    use gptoss_kernels::{affine_r16, mxfp4_r16};
    let (mut codes, mut scales) = (vec![0u8; c.codes.len()], vec![0f32; c.rows * c.k / 32]);
    affine_r16::pack(&c.codes, &c.scales, c.k, c.group, &mut codes, &mut scales);
    let (mut q, mut xs) = (vec![0i16; c.x.len()], vec![0f32; c.x.len() / 32]);
    mxfp4_r16::quantize_i16(&c.x, &mut q, &mut xs);
    Packed { codes, scales, xq: q, xs }
}

fn run_packed(f: gptoss_kernels::dispatch::MatmulI16aAffine4r16w, c: &Case, p: &Packed) -> Vec<f32> {
    let mut out = vec![f32::NAN; c.rows * c.n_tok];
    f(&p.xq, &p.xs, c.n_tok, &p.codes, &p.scales, c.bias.as_deref(), &mut out, &mut Vec::new());
    out
}

fn affine4_kernels() -> Vec<(&'static str, gptoss_kernels::dispatch::MatmulI16aAffine4r16w)> {
    fast_kernels()
        .into_iter()
        .filter_map(|k| Some((k.isa.name(), k.i16_act.as_ref()?.matmul_rows_i16a_affine4r16w?)))
        .collect()
}

fn case4(rng: &mut Rng, rows: usize, k: usize, n_tok: usize, group: usize) -> Case {
    let mut c = Case::random(rng, 4, group);
    let q: Vec<u32> = (0..rows * k).map(|_| rng.below(16) as u32).collect();
    c.codes = vec![0u8; rows * k / 2];
    for (r, row) in c.codes.chunks_exact_mut(k / 2).enumerate() {
        affine::pack_row(&q[r * k..(r + 1) * k], 4, row);
    }
    c.scales = (0..rows * k / group).map(|_| rng.f32() * 0.1).collect();
    c.biases = (0..rows * k / group).map(|_| rng.f32()).collect();
    c.x = (0..n_tok * k).map(|_| rng.f32() * [1.0, 1e-3, 30.0][rng.below(3)]).collect();
    c.bias = (rng.below(2) == 0).then(|| (0..rows).map(|_| rng.f32()).collect());
    Case { k, rows, n_tok, ..c }
}

#[test]
fn repacked_4bit_kernels_match_their_twin_bit_for_bit() {
    let mut rng = Rng(0xa4);
    for i in 0..40 {
        let group = [32, 64, 128][i % 3];
        let (rows, k, n_tok) = (16 * (1 + rng.below(5)), group * (1 + rng.below(8)), [1, 2, 3, 5, 9][i % 5]);
        let c = case4(&mut rng, rows, k, n_tok, group);
        let p = packed(&c);
        let want = run_packed(scalar::matmul_rows_i16a_affine4r16w, &c, &p);
        for (name, f) in affine4_kernels() {
            let got = run_packed(f, &c, &p);
            let at = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(at, None, "{name}: [{rows}x{k}] g{group} T={n_tok}");
        }
    }
}

/// Codes 0 (centred: −8) against activations ±32767 with the signs aligned: the largest
/// integer block sums of centred codes, which every kernel must keep exact.
#[test]
fn repacked_4bit_kernels_are_exact_at_the_largest_block_sums() {
    let mut rng = Rng(9);
    let (rows, k) = (32, 96);
    let mut c = case4(&mut rng, rows, k, 2, 32);
    c.codes.fill(0x00);
    c.scales.fill(1.0);
    c.x = (0..2 * k).map(|i| if (i / 32) % 2 == 0 { 1.0 } else { -1.0 }).collect();
    c.bias = None;
    let p = packed(&c);
    assert!(p.xq.iter().all(|v| v.unsigned_abs() == 32767));
    let want = run_packed(scalar::matmul_rows_i16a_affine4r16w, &c, &p);
    // 32 codes of −8 per block, blocks ±(+1, −1, +1).
    assert!(want.iter().all(|v| v.abs() == 256.0), "{want:?}");
    for (name, f) in affine4_kernels() {
        assert_eq!(run_packed(f, &c, &p), want, "{name}");
    }
}

/// The twin plus the zero points is the f32 matmul on the dequantized weights, up to the
/// activations' int16 rounding (half a step per block).
#[test]
fn repacked_4bit_twin_is_close_to_the_f32_path() {
    let mut rng = Rng(77);
    for (rows, k, n_tok, group) in [(16, 64, 1, 64), (32, 2880, 3, 64), (48, 256, 2, 32), (16, 512, 4, 128)] {
        let c = case4(&mut rng, rows, k, n_tok, group);
        let p = packed(&c);
        let got = run_packed(scalar::matmul_rows_i16a_affine4r16w, &c, &p);
        let want = c.run(scalar::matmul_rows_f32_affinew);
        for r in 0..rows {
            for t in 0..n_tok {
                let x = &c.x[t * k..(t + 1) * k];
                // With the codes centred, each zero point takes the 8·scale the codes gave up.
                let zero_points: f32 = (0..k / group)
                    .map(|g| {
                        let i = r * k / group + g;
                        (c.biases[i] + 8.0 * c.scales[i]) * x[g * group..(g + 1) * group].iter().sum::<f32>()
                    })
                    .sum();
                let bound: f32 = (0..k / 32)
                    .map(|b| 8.0 * c.scales[r * k / group + b * 32 / group].abs() * 32.0 * p.xs[t * k / 32 + b] * 0.5)
                    .sum::<f32>()
                    * 1.01
                    + 1e-4 * (1.0 + want[r * n_tok + t].abs());
                let (g, w) = (got[r * n_tok + t] + zero_points, want[r * n_tok + t]);
                assert!((g - w).abs() <= bound, "[{rows}x{k}] row {r} token {t}: {g} vs {w} (bound {bound})");
            }
        }
    }
}
