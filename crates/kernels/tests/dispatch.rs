//! Every fast kernel against its scalar twin, on random shapes with ragged tails.

use gptoss_kernels::bf16::{f32_to_bf16, split_slice_to_bf16};
use gptoss_kernels::dispatch::Bf16Act;
use gptoss_kernels::scalar;
use gptoss_kernels::{Isa, KernelError, Kernels};

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
    Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar).filter_map(Kernels::for_isa).collect()
}

/// The kernel tables with bf16-activation matmuls.
fn bf16_act_kernels() -> Vec<&'static Kernels> {
    fast_kernels().into_iter().filter(|k| k.bf16_act.is_some()).collect()
}

/// Shapes that cross the fast kernels' blocks: 4×4 register tiles, 32-row panels and
/// 64-token tiles, with ragged ends on every axis.
fn blocked_shape(rng: &mut Rng, case: usize) -> (usize, usize) {
    match case % 4 {
        0 => (1 + rng.below(4), 1 + rng.below(6)),
        1 => (1 + rng.below(12), 1 + rng.below(40)),
        2 => (60 + rng.below(10), 1 + rng.below(9)),
        _ => (1, 30 + rng.below(40)),
    }
}

/// `x` as the kernels read it: `[terms, n]` bf16, by the scalar reference split.
fn split(ba: &Bf16Act, x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; ba.terms * x.len()];
    let (hi, lo) = out.split_at_mut(x.len());
    split_slice_to_bf16(x, hi, (ba.terms == 2).then_some(lo));
    out
}

/// How many times the f32 tolerance a bf16-activation set gets: `neon-bf16`'s `bfmmla` rounds
/// its sums to odd, off by up to one unit in the last place where nearest-even is off by half
/// (its kernels give the bits of their own twin: tests/bfmmla.rs).
fn rounding_slack(kern: &Kernels) -> f32 {
    if kern.isa == Isa::NeonBf16 {
        2.0
    } else {
        1.0
    }
}

fn scalar_bf16w(terms: usize) -> gptoss_kernels::dispatch::MatmulBf16aBf16w {
    if terms == 2 {
        scalar::matmul_rows_bf16a_bf16w::<2>
    } else {
        scalar::matmul_rows_bf16a_bf16w::<1>
    }
}

fn scalar_mxfp4w(terms: usize) -> gptoss_kernels::dispatch::MatmulBf16aMxfp4w {
    if terms == 2 {
        scalar::matmul_rows_bf16a_mxfp4w::<2>
    } else {
        scalar::matmul_rows_bf16a_mxfp4w::<1>
    }
}

#[test]
fn bf16_split_matches_scalar_bit_for_bit() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut x: Vec<f32> = (0..1000).map(|_| rng.f32() * 1e3).collect();
    // Ties both ways, specials, subnormals, the largest finite value.
    x.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::NAN, -f32::NAN, f32::INFINITY, -0.0, 1e-40, f32::MAX]);
    x.push(f32::from_bits(0x7f80_0001)); // signalling NaN
    for kern in bf16_act_kernels() {
        let ba = kern.bf16_act.as_ref().expect("filtered");
        for n in [0, 1, 15, 16, 17, x.len()] {
            let want = split(ba, &x[..n]);
            let mut got = vec![0u16; ba.terms * n];
            (ba.split)(&x[..n], &mut got);
            assert_eq!(got, want, "{:?} n={n}", kern.isa);
        }
    }
}

#[test]
fn two_bf16_terms_carry_sixteen_bits() {
    let mut rng = Rng(0x3C6E_F372_FE94_F82B);
    for _ in 0..10_000 {
        let x = rng.f32() * 100.0;
        let (mut hi, mut lo) = ([0u16], [0u16]);
        split_slice_to_bf16(&[x], &mut hi, Some(&mut lo));
        let back = gptoss_kernels::bf16::bf16_to_f32(hi[0]) + gptoss_kernels::bf16::bf16_to_f32(lo[0]);
        assert!((back - x).abs() <= x.abs() * 2f32.powi(-16), "{x} -> {back}");
    }
}

#[test]
fn bf16_activation_matmuls_match_scalar_on_random_ragged_shapes() {
    let fast = bf16_act_kernels();
    if fast.is_empty() {
        eprintln!("no bf16-activation kernels on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0x6A09_E667_F3BC_C908);
    for case in 0..240 {
        let (n_tok, rows) = blocked_shape(&mut rng, case);
        // Now and then K spans several of the GEMM's K passes (1024) and ends ragged.
        let k = match case {
            0 => 2880,
            _ if case % 16 == 5 => 1000 + rng.below(1200),
            _ => 1 + rng.below(200),
        };
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        for kern in &fast {
            let ba = kern.bf16_act.as_ref().expect("filtered");
            let x = split(ba, &xf);
            let mut want = vec![0f32; rows * n_tok];
            scalar_bf16w(ba.terms)(&x, n_tok, &w, b, &mut want);
            let mut got = vec![f32::NAN; rows * n_tok];
            (ba.matmul_rows_bf16a_bf16w)(&x, n_tok, &w, b, &mut got);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let tol = rounding_slack(kern) * 4.0 * f32::EPSILON * (k as f32).sqrt() * (1.0 + e.abs()) + 1e-6;
                assert!((g - e).abs() <= tol, "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
            }
        }
    }
}

/// Weights in the 8-row tiled layout give the bits of the same weights row after row, alone
/// and in any batch, and the scalar twin of the layout agrees.
#[test]
fn tiled_bf16_matmuls_give_the_bits_of_rows() {
    let fast = bf16_act_kernels();
    if fast.is_empty() {
        eprintln!("no bf16-activation kernels on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0x3C6E_F372_FE94_F82B);
    for case in 0..60 {
        let rows = 8 * (1 + rng.below(if case % 5 == 0 { 40 } else { 6 }));
        let k = 32 * (1 + rng.below(if case % 4 == 0 { 100 } else { 8 }));
        let n_tok = [1, 1, 2, 5, 7, 70][case % 6];
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let mut tiled = vec![0u16; w.len()];
        gptoss_kernels::bf16_t8::pack(&w, k, &mut tiled);
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        for kern in &fast {
            let ba = kern.bf16_act.as_ref().expect("filtered");
            let x = split(ba, &xf);
            let mut want = vec![0f32; rows * n_tok];
            (ba.matmul_rows_bf16a_bf16w)(&x, n_tok, &w, b, &mut want);
            let mut got = vec![f32::NAN; rows * n_tok];
            (ba.matmul_rows_bf16a_bf16t8w)(&x, n_tok, &tiled, b, &mut got);
            let mut twin = vec![f32::NAN; rows * n_tok];
            let scalar_t8 = if ba.terms == 2 {
                scalar::matmul_rows_bf16a_bf16t8w::<2>
            } else {
                scalar::matmul_rows_bf16a_bf16t8w::<1>
            };
            scalar_t8(&x, n_tok, &tiled, b, &mut twin);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
                let tol = rounding_slack(kern) * 4.0 * f32::EPSILON * (k as f32).sqrt() * (1.0 + e.abs()) + 1e-6;
                assert!((twin[i] - e).abs() <= tol, "{:?} twin k={k} T={n_tok} [{i}]: {} vs {e}", kern.isa, twin[i]);
            }
            // Each token alone: the single-token path reads the tiles as one stream.
            for t in [0, n_tok - 1] {
                let xt = split(ba, &xf[t * k..(t + 1) * k]);
                let mut one = vec![f32::NAN; rows];
                (ba.matmul_rows_bf16a_bf16t8w)(&xt, 1, &tiled, b, &mut one);
                for r in 0..rows {
                    assert_eq!(one[r].to_bits(), want[r * n_tok + t].to_bits(), "{:?} alone k={k} R={rows}", kern.isa);
                }
            }
        }
    }
}

#[test]
fn bf16_activation_mxfp4_matmul_matches_scalar_on_random_ragged_shapes() {
    let fast = bf16_act_kernels();
    if fast.is_empty() {
        eprintln!("no bf16-activation kernels on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0xBB67_AE85_84CA_A73B);
    for case in 0..240 {
        let (n_tok, rows) = blocked_shape(&mut rng, case);
        let k = match case {
            0 => 2880,
            _ if case % 16 == 5 => 32 * (30 + rng.below(40)),
            _ => 32 * (1 + rng.below(8)),
        };
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.next() as u8).collect();
        // Ordinary scales and now and then the tiny ones and NaN (255).
        let scales: Vec<u8> = (0..rows * k / 32)
            .map(|_| match rng.below(40) {
                0 => [0, 1, 2][rng.below(3)],
                1 if case % 7 == 0 => 255,
                _ => 118 + rng.below(12) as u8,
            })
            .collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        for kern in &fast {
            let ba = kern.bf16_act.as_ref().expect("filtered");
            let x = split(ba, &xf);
            let mut want = vec![0f32; rows * n_tok];
            scalar_mxfp4w(ba.terms)(&x, n_tok, &codes, &scales, b, &mut want, &mut Vec::new());
            let mut got = vec![f32::NAN; rows * n_tok];
            (ba.matmul_rows_bf16a_mxfp4w)(&x, n_tok, &codes, &scales, b, &mut got, &mut Vec::new());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                // Largest ordinary |w| is 6·2^2; scale 252 makes 6·2^125 ≈ 2e38.
                let tol = rounding_slack(kern) * 4.0 * f32::EPSILON * (k as f32).sqrt() * (24.0 + e.abs()) + 1e-6;
                assert!(close(*g, *e, tol), "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
            }
        }
    }
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
        // Up to 40 rows: past the 16 one-token sums `avx2` stores together, with a rest.
        let (n_tok, rows) = (1 + rng.below(5), 1 + rng.below(40));
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

#[test]
fn packed_bf16_matmuls_give_the_bits_of_unpacked_ones() {
    let packed: Vec<_> = fast_kernels().into_iter().filter(|k| k.packed_f32_bf16w.is_some()).collect();
    if packed.is_empty() {
        eprintln!("no kernels with packed activations on this CPU; nothing to compare");
        return;
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for case in 0..120 {
        // K with and without a ragged tail past the 32-wide groups, and the model's 2880;
        // T and R across the 6-token tiles and 16-row blocks.
        let k = if case == 0 { 2880 } else { 1 + rng.below(200) };
        let (n_tok, rows) =
            if case % 3 == 0 { (1 + rng.below(14), 1 + rng.below(40)) } else { blocked_shape(&mut rng, case) };
        let x: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let bias = (case % 2 == 0).then_some(&bias[..]);
        for kern in &packed {
            let p = kern.packed_f32_bf16w.as_ref().unwrap();
            let (mut want, mut got) = (vec![0f32; rows * n_tok], vec![f32::NAN; rows * n_tok]);
            (kern.matmul_rows_f32_bf16w)(&x, n_tok, &w, bias, &mut want, &mut vec![0f32; k]);
            let mut xp = Vec::new();
            (p.pack)(&x, n_tok, k, &mut xp);
            // Any split of the rows, as the engine's tasks take them.
            let split = 1 + rng.below(rows);
            let (w_a, w_b) = w.split_at(split * k);
            let (out_a, out_b) = got.split_at_mut(split * n_tok);
            (p.matmul_rows_f32_bf16w_packed)(&x, &xp, n_tok, k, w_a, bias.map(|b| &b[..split]), out_a);
            (p.matmul_rows_f32_bf16w_packed)(&x, &xp, n_tok, k, w_b, bias.map(|b| &b[split..]), out_b);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{:?} k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
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

/// One-hot tokens read single weights back, so every code under every one of the 256
/// scales can be checked exactly, without sums that overflow.
#[test]
fn bf16_activation_mxfp4_decodes_every_code_and_scale_exactly() {
    let k = 64;
    let xf: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
    // Row r: scales r·2 and r·2+1, up to 252, the largest whose weights are all finite (an
    // infinite weight times a zero activation would make the whole row NaN); bytes cycle
    // through every code pair.
    let rows = 127;
    let codes: Vec<u8> = (0..rows * k / 2).map(|i| (i * 7 % 256) as u8).collect();
    let scales: Vec<u8> = (0..rows * 2).map(|i| i.min(252) as u8).collect();
    let mut decoded = vec![0f32; k];
    for kern in bf16_act_kernels() {
        let ba = kern.bf16_act.as_ref().expect("filtered");
        let mut got = vec![0f32; rows * k];
        (ba.matmul_rows_bf16a_mxfp4w)(&split(ba, &xf), k, &codes, &scales, None, &mut got, &mut Vec::new());
        for r in 0..rows {
            gptoss_kernels::mxfp4::decode_row(&codes[r * 32..(r + 1) * 32], &scales[r * 2..r * 2 + 2], &mut decoded);
            for (t, &want) in decoded.iter().enumerate() {
                let g = got[r * k + t];
                // bf16 holds every normal weight exactly; subnormal weights (scales 0 and 1)
                // may flush to zero in the dot product.
                let ok = if want.is_nan() {
                    g.is_nan()
                } else if want != 0.0 && want.abs() < f32::MIN_POSITIVE {
                    g == 0.0 || g == want
                } else {
                    g == want
                };
                assert!(ok, "{:?} row {r} scale {} element {t}: {g} vs {want}", kern.isa, scales[r * 2 + t / 32]);
            }
        }
    }
}

/// The same through the f32 matmuls, batched and one token at a time (the fast kernels
/// decode in registers for one token and into `row_buf` for several): every weight exact,
/// subnormal ones included, as f32 FMAs keep them.
#[test]
fn f32_mxfp4_decodes_every_code_and_scale_exactly() {
    let k = 64;
    let x: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
    let rows = 127;
    let codes: Vec<u8> = (0..rows * k / 2).map(|i| (i * 7 % 256) as u8).collect();
    let scales: Vec<u8> = (0..rows * 2).map(|i| i.min(252) as u8).collect();
    let mut decoded = vec![0f32; rows * k];
    for r in 0..rows {
        let (c, s) = (&codes[r * 32..(r + 1) * 32], &scales[r * 2..r * 2 + 2]);
        gptoss_kernels::mxfp4::decode_row(c, s, &mut decoded[r * k..(r + 1) * k]);
    }
    for kern in fast_kernels() {
        let mut got = vec![f32::NAN; rows * k];
        (kern.matmul_rows_f32_mxfp4w)(&x, k, &codes, &scales, None, &mut got, &mut vec![0f32; k]);
        for (i, (&g, &want)) in got.iter().zip(&decoded).enumerate() {
            assert!(g == want, "{:?} row {} element {}: {g} vs {want}", kern.isa, i / k, i % k);
        }
        for t in 0..k {
            let mut one = vec![f32::NAN; rows];
            (kern.matmul_rows_f32_mxfp4w)(
                &x[t * k..(t + 1) * k],
                1,
                &codes,
                &scales,
                None,
                &mut one,
                &mut vec![0f32; k],
            );
            for (r, &g) in one.iter().enumerate() {
                let want = decoded[r * k + t];
                assert!(g == want, "{:?} one token: row {r} element {t}: {g} vs {want}", kern.isa);
            }
        }
    }
}

/// q8 weights are `bf16(code · scale)`: one-hot tokens read them back from the f32 matmuls,
/// rounded exactly as the reference rounds (ties to even, subnormal scales, every code), and a
/// NaN scale whose payload would carry into the sign when rounded stays NaN.
#[test]
fn f32_q8_weights_round_like_the_reference() {
    let (k, rows) = (64, 40);
    let x: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
    let mut rng = Rng(0x243F_6A88_85A3_08D3);
    let codes: Vec<i8> = (0..rows * k).map(|i| if i < 256 { i as u8 as i8 } else { rng.next() as i8 }).collect();
    // Finite products only (an infinite weight would make its row NaN through 0·inf): any
    // sign and mantissa, exponents from subnormal to 2^113; now and then a bf16 tie.
    let mut scales: Vec<f32> = (0..rows * k / 32)
        .map(|i| match i % 6 {
            0 => [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -(1.0 + 1.0 / 128.0 + 1.0 / 256.0)][rng.below(3)],
            _ => f32::from_bits((rng.next() as u32 & 0x807f_ffff) | ((rng.below(241) as u32) << 23)),
        })
        .collect();
    let nan_row = rows - 1;
    scales[nan_row * 2] = f32::from_bits(0x7fff_ffff);
    scales[nan_row * 2 + 1] = f32::from_bits(0xffff_ffff);
    let mut want = vec![0f32; rows * k];
    for r in 0..rows {
        let (c, s) = (&codes[r * k..(r + 1) * k], &scales[r * 2..r * 2 + 2]);
        gptoss_kernels::q8::dequantize_row(c, s, &mut want[r * k..(r + 1) * k]);
    }
    let check = |isa: Isa, r: usize, t: usize, g: f32| {
        if r == nan_row {
            assert!(g.is_nan(), "{isa:?} NaN scale: row {r} element {t}: {g}");
        } else {
            let w = want[r * k + t];
            assert!(g == w, "{isa:?} row {r} element {t} (scale {}): {g} vs {w}", scales[r * 2 + t / 32]);
        }
    };
    for kern in fast_kernels() {
        let mut got = vec![0f32; rows * k];
        (kern.matmul_rows_f32_q8w)(&x, k, &codes, &scales, None, &mut got, &mut vec![0f32; k]);
        for (i, &g) in got.iter().enumerate() {
            check(kern.isa, i / k, i % k, g);
        }
        for t in 0..k {
            let mut one = vec![0f32; rows];
            (kern.matmul_rows_f32_q8w)(&x[t * k..(t + 1) * k], 1, &codes, &scales, None, &mut one, &mut vec![0f32; k]);
            for (r, &g) in one.iter().enumerate() {
                check(kern.isa, r, t, g);
            }
        }
    }
}

#[test]
fn q8_matmuls_match_scalar_on_random_ragged_shapes() {
    let mut rng = Rng(0xA54F_F53A_5F1D_36F1);
    for case in 0..160 {
        let (n_tok, rows) = blocked_shape(&mut rng, case);
        let k = if case == 0 { 2880 } else { 32 * (1 + rng.below(8)) };
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32() * 4.0)).collect();
        let (mut codes, mut scales) = (vec![0i8; rows * k], vec![0f32; rows * k / 32]);
        for r in 0..rows {
            gptoss_kernels::q8::quantize_row_bf16(
                &w[r * k..(r + 1) * k],
                &mut codes[r * k..(r + 1) * k],
                &mut scales[r * k / 32..(r + 1) * k / 32],
            );
        }
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_f32_q8w(&xf, n_tok, &codes, &scales, b, &mut want, &mut vec![0f32; k]);
        let tol = |e: f32| 4.0 * f32::EPSILON * (k as f32).sqrt() * (4.0 + e.abs()) + 1e-6;
        for kern in fast_kernels() {
            let mut got = vec![f32::NAN; rows * n_tok];
            (kern.matmul_rows_f32_q8w)(&xf, n_tok, &codes, &scales, b, &mut got, &mut vec![0f32; k]);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= tol(*e), "{:?} f32 k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}", kern.isa);
            }
            // Batch invariance: each token alone gives the same bits.
            for t in 0..n_tok {
                let mut one = vec![0f32; rows];
                let xt = &xf[t * k..(t + 1) * k];
                (kern.matmul_rows_f32_q8w)(xt, 1, &codes, &scales, b, &mut one, &mut vec![0f32; k]);
                for r in 0..rows {
                    assert_eq!(one[r].to_bits(), got[r * n_tok + t].to_bits(), "{:?} f32 q8 batch k={k}", kern.isa);
                }
            }
            let Some(ba) = &kern.bf16_act else { continue };
            let x = split(ba, &xf);
            let mut twin = vec![0f32; rows * n_tok];
            let scalar_q8 =
                if ba.terms == 2 { scalar::matmul_rows_bf16a_q8w::<2> } else { scalar::matmul_rows_bf16a_q8w::<1> };
            scalar_q8(&x, n_tok, &codes, &scales, b, &mut twin, &mut Vec::new());
            let mut got = vec![f32::NAN; rows * n_tok];
            (ba.matmul_rows_bf16a_q8w)(&x, n_tok, &codes, &scales, b, &mut got, &mut Vec::new());
            for (i, (g, e)) in got.iter().zip(&twin).enumerate() {
                assert!(
                    (g - e).abs() <= rounding_slack(kern) * tol(*e),
                    "{:?} bf16a k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}",
                    kern.isa
                );
            }
            // Batch invariance: each token alone gives the same bits.
            for t in 0..n_tok {
                let mut one = vec![0f32; rows];
                let xt = split(ba, &xf[t * k..(t + 1) * k]);
                (ba.matmul_rows_bf16a_q8w)(&xt, 1, &codes, &scales, b, &mut one, &mut Vec::new());
                for r in 0..rows {
                    assert_eq!(one[r].to_bits(), got[r * n_tok + t].to_bits(), "{:?} q8 batch k={k}", kern.isa);
                }
            }
        }
    }
}

#[test]
fn names_select_kernels_and_unknown_names_are_refused() {
    assert_eq!(Kernels::by_name("scalar").map(|k| k.isa), Ok(Isa::Scalar));
    assert!(Kernels::by_name("sse9").is_err());
    assert!(Isa::Scalar.supported());
    assert!(Kernels::detect().isa.supported());
    for isa in Isa::ALL {
        match Kernels::by_name(isa.name()) {
            Ok(k) => assert!(k.isa == isa && isa.supported(), "{isa:?}"),
            Err(e) => assert!(e == KernelError::Unsupported(isa.name()) && !isa.supported(), "{isa:?}: {e}"),
        }
    }
    // NEON is baseline on AArch64 and picked there (with dotprod when the CPU has it);
    // x86-64 refuses both.
    assert_eq!(Isa::Neon.supported(), cfg!(target_arch = "aarch64"));
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        let i8mm = dotprod && std::arch::is_aarch64_feature_detected!("i8mm");
        let bf16 = i8mm && std::arch::is_aarch64_feature_detected!("bf16");
        assert_eq!(Isa::NeonDotprod.supported(), dotprod);
        assert_eq!(Isa::NeonI8mm.supported(), i8mm);
        assert_eq!(Isa::NeonBf16.supported(), bf16);
        let best = if i8mm {
            Isa::NeonI8mm
        } else if dotprod {
            Isa::NeonDotprod
        } else {
            Isa::Neon
        };
        assert_eq!(Kernels::detect().isa, best);
    }
    #[cfg(not(target_arch = "aarch64"))]
    assert!(!Isa::NeonDotprod.supported() && !Isa::NeonI8mm.supported() && !Isa::NeonBf16.supported());
}

/// A token's result must not depend on what it is batched with: batched, chunked and
/// token-by-token runs of the model stay bit-identical.
#[test]
fn results_do_not_depend_on_the_batch() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for kern in Isa::ALL.into_iter().filter_map(Kernels::for_isa) {
        for k in [32, 64, 96, 1000, 1003, 2080, 2880] {
            // Past the 4×4 register tiles, the 32-row panels, the 8-row single-token blocks
            // and the 1024-long K passes; 1000 ends in a partial 32-wide chunk and 1003 in a
            // scalar tail (bf16 only: MXFP4 comes in whole blocks, so its matrices keep K = 32
            // there).
            let k_m = if k % 32 == 0 { k } else { 32 };
            // 7 to 11 tokens: a whole 6-token tile (AVX2 bf16) and every shorter last tile;
            // 37 rows: whole row blocks, then an odd number of rows.
            for n_tok in 7..=11 {
                let rows = 37;
                let x: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
                let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
                let codes: Vec<u8> = (0..rows * k_m / 2).map(|_| rng.next() as u8).collect();
                let scales: Vec<u8> = (0..rows * k_m / 32).map(|_| 120 + rng.below(8) as u8).collect();
                let x_m = &x[..n_tok * k_m];
                let (mut buf, mut buf_m) = (vec![0f32; k], vec![0f32; k_m]);
                let (mut all_b, mut all_m) = (vec![0f32; rows * n_tok], vec![0f32; rows * n_tok]);
                (kern.matmul_rows_f32_bf16w)(&x, n_tok, &w, None, &mut all_b, &mut buf);
                (kern.matmul_rows_f32_mxfp4w)(x_m, n_tok, &codes, &scales, None, &mut all_m, &mut buf_m);
                for t in 0..n_tok {
                    let xt = &x[t * k..(t + 1) * k];
                    let (mut one_b, mut one_m) = (vec![0f32; rows], vec![0f32; rows]);
                    (kern.matmul_rows_f32_bf16w)(xt, 1, &w, None, &mut one_b, &mut buf);
                    let xt_m = &x_m[t * k_m..(t + 1) * k_m];
                    (kern.matmul_rows_f32_mxfp4w)(xt_m, 1, &codes, &scales, None, &mut one_m, &mut buf_m);
                    for r in 0..rows {
                        assert_eq!(one_b[r].to_bits(), all_b[r * n_tok + t].to_bits(), "{:?} bf16 k={k}", kern.isa);
                        assert_eq!(one_m[r].to_bits(), all_m[r * n_tok + t].to_bits(), "{:?} mxfp4 k={k}", kern.isa);
                    }
                }
                if let Some(ba) = &kern.bf16_act {
                    let (xb, xb_m) = (split(ba, &x), split(ba, x_m));
                    let (mut all_b, mut all_m) = (vec![0f32; rows * n_tok], vec![0f32; rows * n_tok]);
                    (ba.matmul_rows_bf16a_bf16w)(&xb, n_tok, &w, None, &mut all_b);
                    (ba.matmul_rows_bf16a_mxfp4w)(&xb_m, n_tok, &codes, &scales, None, &mut all_m, &mut Vec::new());
                    for t in 0..n_tok {
                        let xt = &split(ba, &x[t * k..(t + 1) * k]);
                        let xt_m = &split(ba, &x_m[t * k_m..(t + 1) * k_m]);
                        let (mut one_b, mut one_m) = (vec![0f32; rows], vec![0f32; rows]);
                        (ba.matmul_rows_bf16a_bf16w)(xt, 1, &w, None, &mut one_b);
                        (ba.matmul_rows_bf16a_mxfp4w)(xt_m, 1, &codes, &scales, None, &mut one_m, &mut Vec::new());
                        for r in 0..rows {
                            let (b, m) = (all_b[r * n_tok + t], all_m[r * n_tok + t]);
                            assert_eq!(one_b[r].to_bits(), b.to_bits(), "{:?} bf16a bf16 k={k}", kern.isa);
                            assert_eq!(one_m[r].to_bits(), m.to_bits(), "{:?} bf16a mxfp4 k={k}", kern.isa);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn swiglu_matches_scalar_within_a_few_ulps() {
    let mut rng = Rng(31);
    for n in [1usize, 15, 16, 17, 33, 2880, 2881] {
        let mut u: Vec<f32> = (0..2 * n).map(|i| rng.f32() * [0.5, 4.0, 40.0, 1e-3][i % 4]).collect();
        if n > 20 {
            u[0] = f32::NAN; // gate: min drops it
            u[3] = f32::NAN; // up: clamp keeps it
            u[4] = f32::NEG_INFINITY;
            u[6] = -200.0;
            u[8] = 7.5; // past the limit
        }
        let mut want = vec![0f32; n];
        scalar::swiglu_interleaved_f32(&u, scalar::SWIGLU_ALPHA, 7.0, &mut want);
        for kern in fast_kernels() {
            let mut got = vec![0f32; n];
            (kern.swiglu_interleaved_f32)(&u, scalar::SWIGLU_ALPHA, 7.0, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 2e-6 * w.abs() + 1e-37;
                assert!(
                    ok,
                    "{} n={n}: out[{i}] = {g:e}, scalar {w:e} (gate {:e}, up {:e})",
                    kern.isa.name(),
                    u[2 * i],
                    u[2 * i + 1]
                );
            }
        }
    }
}

#[test]
fn rmsnorm_and_rope_match_scalar_bit_for_bit() {
    let mut rng = Rng(41);
    for n in [1usize, 7, 8, 9, 16, 17, 63, 64, 2880, 2887] {
        let x: Vec<f32> = (0..n).map(|i| rng.f32() * [1.0, 30.0, 1e-3][i % 3]).collect();
        let gain: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let mut want = vec![0f32; n];
        scalar::rmsnorm_f32(&x, &gain, 1e-5, &mut want);
        for kern in fast_kernels() {
            let mut got = vec![0f32; n];
            (kern.rmsnorm_f32)(&x, &gain, 1e-5, &mut got);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{} n={n}",
                kern.isa.name()
            );
        }
    }
    for (half, heads) in [(1usize, 3usize), (16, 2), (17, 1), (32, 64), (40, 5)] {
        let x: Vec<f32> = (0..2 * half * heads).map(|_| rng.f32() * 5.0).collect();
        let cos: Vec<f32> = (0..half).map(|_| rng.f32()).collect();
        let sin: Vec<f32> = (0..half).map(|_| rng.f32()).collect();
        let mut want = x.clone();
        scalar::YarnRope::apply(&mut want, &cos, &sin);
        for kern in fast_kernels() {
            let mut got = x.clone();
            (kern.rope_apply_f32)(&mut got, &cos, &sin);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{} half={half}",
                kern.isa.name()
            );
        }
    }
}
