//! The integer MXFP4 kernels (weights in the `mxfp4_r16` layout, int16 activations) against
//! their scalar twin, bit for bit, and the twin against the float32 reference. Every kernel
//! runs with full int16 codes and with int8-range ones (|q| ≤ 127, what the AVX2 sets'
//! prompt kernels multiply as bytes).

use gptoss_kernels::mxfp4_r16::{self, GROUP};
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
    rows: usize,
    k: usize,
    n_tok: usize,
    x: Vec<f32>,
    codes: Vec<u8>,
    scales: Vec<u8>,
    packed_codes: Vec<u8>,
    packed_scales: Vec<u8>,
    bias: Option<Vec<f32>>,
}

fn case(rng: &mut Rng, rows: usize, k: usize, n_tok: usize, scale_range: (u8, u8)) -> Case {
    // Activations with a spread of magnitudes, so blocks get different scales.
    let x: Vec<f32> = (0..n_tok * k).map(|i| rng.f32() * [1.0, 1e-3, 30.0, 0.07][(i / 32 + i / 7) % 4]).collect();
    let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.next() as u8).collect();
    let span = (scale_range.1 - scale_range.0) as usize + 1;
    let scales: Vec<u8> = (0..rows * k / 32).map(|_| scale_range.0 + rng.below(span) as u8).collect();
    let (mut packed_codes, mut packed_scales) = (vec![0u8; codes.len()], vec![0u8; scales.len()]);
    mxfp4_r16::pack(&codes, &scales, k, &mut packed_codes, &mut packed_scales);
    let bias = (rng.below(2) == 0).then(|| (0..rows).map(|_| rng.f32()).collect());
    Case { rows, k, n_tok, x, codes, scales, packed_codes, packed_scales, bias }
}

fn quantize(c: &Case) -> (Vec<i16>, Vec<f32>) {
    quantize_to(c, mxfp4_r16::Q_MAX)
}

fn quantize_to(c: &Case, q_max: f32) -> (Vec<i16>, Vec<f32>) {
    let (mut q, mut s) = (vec![0i16; c.x.len()], vec![0f32; c.x.len() / 32]);
    mxfp4_r16::quantize_codes(&c.x, q_max, &mut q, &mut s);
    (q, s)
}

/// The code ranges every kernel is checked with.
const Q_MAXES: [f32; 2] = [mxfp4_r16::Q_MAX, mxfp4_r16::Q_MAX_I8];

fn run(f: gptoss_kernels::dispatch::MatmulI16aMxfp4r16w, c: &Case, q: &[i16], s: &[f32]) -> Vec<f32> {
    let mut out = vec![f32::NAN; c.rows * c.n_tok];
    let mut scratch = Vec::new();
    f(q, s, c.n_tok, &c.packed_codes, &c.packed_scales, c.bias.as_deref(), &mut out, &mut scratch);
    out
}

fn int_kernels() -> Vec<&'static Kernels> {
    [
        Isa::Avx512Bf16,
        Isa::Avx512Vnni,
        Isa::Avx512,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx2Int8,
        Isa::AvxVnniInt8,
        Isa::NeonDotprod,
        Isa::NeonI8mm,
        Isa::NeonBf16,
    ]
    .into_iter()
    .filter_map(Kernels::for_isa)
    .filter(|k| k.i16_act.is_some())
    .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
}

#[test]
fn vector_kernels_match_the_twin_bit_for_bit_on_random_shapes() {
    let kernels = int_kernels();
    if kernels.is_empty() {
        eprintln!("no integer MXFP4 kernels on this CPU; the twin is still checked below");
        return;
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..120 {
        let rows = GROUP * (1 + rng.below(9));
        let k = 32 * (1 + rng.below(if i % 10 == 0 { 100 } else { 12 }));
        let n_tok = [1, 1, 2, 3, 5, 6, 7, 12, 13, 19][i % 10] + if i % 17 == 0 { 64 } else { 0 };
        // Mostly realistic scales, now and then the edges (1 and 254 give subnormal and huge
        // weight scales, and infinities, which must still agree).
        let range = if i % 13 == 0 { (1, 254) } else { (110, 135) };
        let c = case(&mut rng, rows, k, n_tok, range);
        for q_max in Q_MAXES {
            let (q, s) = quantize_to(&c, q_max);
            let want = run(scalar::matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
            for kern in &kernels {
                let got = run(kern.i16_act.as_ref().unwrap().matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
                if let Some(at) = same_bits(&got, &want) {
                    panic!(
                        "{}: [{rows}x{k}] T={n_tok} codes ≤ {q_max}: out[{at}] = {} but the twin gives {}",
                        kern.isa.name(),
                        got[at],
                        want[at]
                    );
                }
            }
        }
    }
}

/// Block scales at the bottom of the f32 range, as tiny activations give them: one token's
/// kernels may fold the weight scales' halving into `xs`, which is exact for every normal
/// `xs` but drops the last bit of an odd subnormal one; the result must not change.
#[test]
fn one_token_matches_the_twin_with_subnormal_block_scales() {
    let mut rng = Rng(0x0dd5_ca1e_5eed_0001);
    let (rows, k) = (32, 128);
    // Weight scales near 2^8, so products with a subnormal `xs` are normal numbers; no bias
    // and the other blocks' scales 0, so nothing larger absorbs them.
    let mut c = case(&mut rng, rows, k, 1, (133, 135));
    c.bias = None;
    let (q, _) = quantize(&c);
    // Odd subnormals (halving rounds), even ones (halving is exact) and a normal one.
    for first in [f32::from_bits(1), f32::from_bits(0x0000_4001), f32::from_bits(0x0000_4002), 1e-3] {
        let mut s = vec![0.0; k / 32];
        s[0] = first;
        let want = run(scalar::matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
        for kern in int_kernels() {
            let got = run(kern.i16_act.as_ref().unwrap().matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
            assert_eq!(same_bits(&got, &want), None, "{} xs[0] = {first:e}: {got:?} vs {want:?}", kern.isa.name());
        }
    }
}

/// The largest integer sums a block can make: every code ±6.0 (2×E2M1 = ±12) against
/// activations at ±32767 with the signs aligned, so each row's block sum is ±32·12·32767.
/// Kernels that scale or split their integer accumulators must still be exact here.
#[test]
fn vector_kernels_are_exact_at_the_largest_block_sums() {
    let (rows, k) = (32, 96);
    for n_tok in [1, 2, 5] {
        // Row r: all codes 0x77 (+12) or 0xff (-12); token t: all +1 or -1 per block.
        let codes: Vec<u8> = (0..rows * k / 2).map(|i| if (i / (k / 2)) % 3 == 0 { 0xff } else { 0x77 }).collect();
        let scales = vec![127u8; rows * k / 32];
        let x: Vec<f32> = (0..n_tok * k).map(|i| if (i / 32 + i / k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let (mut packed_codes, mut packed_scales) = (vec![0u8; codes.len()], vec![0u8; scales.len()]);
        mxfp4_r16::pack(&codes, &scales, k, &mut packed_codes, &mut packed_scales);
        let c = Case { rows, k, n_tok, x, codes, scales, packed_codes, packed_scales, bias: None };
        for q_max in Q_MAXES {
            let (q, s) = quantize_to(&c, q_max);
            assert!(q.iter().all(|v| v.unsigned_abs() as f32 == q_max));
            let want = run(scalar::matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
            // Weight scale 2^-1 · 2 × E2M1 12 = 6; three blocks of 32 · 6 · (±1).
            assert!(want.iter().all(|v| v.abs() == 576.0 || v.abs() == 192.0), "{want:?}");
            for kern in int_kernels() {
                let got = run(kern.i16_act.as_ref().unwrap().matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
                assert_eq!(same_bits(&got, &want), None, "{} T={n_tok} ≤ {q_max}: {got:?}", kern.isa.name());
            }
        }
    }
}

#[test]
fn vector_quantize_matches_the_twin_bit_for_bit() {
    let mut rng = Rng(5);
    let mut x: Vec<f32> = (0..32 * 400).map(|i| rng.f32() * [1.0, 1e-30, 3e5, 0.07, 1e-41][i / 32 % 5]).collect();
    x[32 * 7..32 * 8].fill(0.0);
    x[32 * 9 + 3] = f32::INFINITY;
    x[32 * 11 + 31] = f32::NAN;
    x[32 * 12 + 5] = -0.0;
    x[32 * 13..32 * 14].fill(-1.0);
    for q_max in [mxfp4_r16::Q_MAX, mxfp4_r16::Q_MAX_I8, 1000.0, 1.0] {
        let (mut q0, mut s0) = (vec![0i16; x.len()], vec![0f32; x.len() / 32]);
        mxfp4_r16::quantize_codes(&x, q_max, &mut q0, &mut s0);
        assert_eq!(q0.iter().map(|v| v.unsigned_abs()).max(), Some(q_max as u16));
        for kern in int_kernels() {
            let (mut q, mut s) = (vec![7i16; x.len()], vec![7f32; x.len() / 32]);
            (kern.i16_act.as_ref().unwrap().quantize)(&x, q_max, &mut q, &mut s);
            if let Some(at) = q.iter().zip(&q0).position(|(a, b)| a != b) {
                panic!(
                    "{} ≤ {q_max}: q[{at}] = {} but the twin gives {} (x = {:e})",
                    kern.isa.name(),
                    q[at],
                    q0[at],
                    x[at]
                );
            }
            assert!(same_bits(&s, &s0).is_none(), "{} ≤ {q_max}", kern.isa.name());
        }
    }
}

#[test]
fn a_token_gets_the_same_bits_alone_or_in_any_batch() {
    for kern in int_kernels() {
        let f = kern.i16_act.as_ref().unwrap().matmul_rows_i16a_mxfp4r16w;
        let mut rng = Rng(77);
        let c = case(&mut rng, 80, 2880, 23, (118, 128));
        let (q, s) = quantize_to(&c, kern.i16_act.as_ref().unwrap().expert_q_max);
        let all = run(f, &c, &q, &s);
        for t in [0, 5, 6, 17, 22] {
            let one =
                Case { n_tok: 1, x: c.x[t * c.k..(t + 1) * c.k].to_vec(), ..case(&mut rng, 16, 32, 1, (127, 127)) };
            let one = Case {
                rows: c.rows,
                k: c.k,
                packed_codes: c.packed_codes.clone(),
                packed_scales: c.packed_scales.clone(),
                bias: c.bias.clone(),
                ..one
            };
            let alone = run(f, &one, &q[t * c.k..(t + 1) * c.k], &s[t * c.k / 32..(t + 1) * c.k / 32]);
            for r in 0..c.rows {
                assert_eq!(alone[r].to_bits(), all[r * c.n_tok + t].to_bits(), "token {t}, row {r}");
            }
        }
    }
}

#[test]
fn twin_is_close_to_the_float32_reference() {
    let mut rng = Rng(99);
    for (rows, k, n_tok) in [(16, 32, 1), (32, 2880, 3), (48, 96, 7), (16, 5760, 2)] {
        let c = case(&mut rng, rows, k, n_tok, (115, 130));
        let (q, s) = quantize(&c);
        let got = run(scalar::matmul_rows_i16a_mxfp4r16w, &c, &q, &s);
        let mut want = vec![0f32; rows * n_tok];
        let mut row_buf = vec![0f32; k];
        scalar::matmul_rows_f32_mxfp4w(&c.x, n_tok, &c.codes, &c.scales, c.bias.as_deref(), &mut want, &mut row_buf);
        for r in 0..rows {
            let mut w = vec![0f32; k];
            gptoss_kernels::mxfp4::decode_row(
                &c.codes[r * k / 2..(r + 1) * k / 2],
                &c.scales[r * k / 32..(r + 1) * k / 32],
                &mut w,
            );
            for t in 0..n_tok {
                let x = &c.x[t * k..(t + 1) * k];
                // Each activation is off by at most half its block's step: bound the sum.
                let bound: f32 = (0..k / 32)
                    .map(|b| {
                        let wsum: f32 = w[b * 32..(b + 1) * 32].iter().map(|v| v.abs()).sum();
                        wsum * s[t * k / 32 + b] * 0.5
                    })
                    .sum::<f32>()
                    * 1.01
                    + 1e-6 * x.iter().zip(&w).map(|(a, b)| (a * b).abs()).sum::<f32>();
                let (g, e) = (got[r * n_tok + t], want[r * n_tok + t]);
                assert!((g - e).abs() <= bound, "[{rows}x{k}] r={r} t={t}: {g} vs {e} (bound {bound})");
            }
        }
    }
}
