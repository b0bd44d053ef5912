//! The `neon-bf16` set's arithmetic (`bfmmla`: sums rounded to odd, subnormals flushed):
//! its scalar twin against the f32 reference on every machine, and on AArch64 CPUs with BF16
//! (qemu-user in CI) the kernels against the twin, bit for bit, on random ragged shapes.

use gptoss_kernels::bf16::{f32_to_bf16, split_slice_to_bf16};
use gptoss_kernels::scalar;
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

/// x `[T, K]` as two bf16 terms `[2, T, K]`.
fn split2(x: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; 2 * x.len()];
    let (hi, lo) = out.split_at_mut(x.len());
    split_slice_to_bf16(x, hi, Some(lo));
    out
}

/// (tokens, rows, K): the kernel's 8-row × 4-token tiles and 32-token tiles crossed, ragged
/// on every axis; K ragged (not a multiple of 8) in most cases.
fn shape(rng: &mut Rng, case: usize) -> (usize, usize, usize) {
    let n_tok = match case % 4 {
        0 => 1,
        1 => 1 + rng.below(6),
        2 => 30 + rng.below(12),
        _ => 1 + rng.below(3),
    };
    let rows = 1 + rng.below(if case.is_multiple_of(3) { 40 } else { 12 });
    let k = match case {
        0 => 2880,
        _ if case % 8 == 5 => 1000 + rng.below(1200),
        _ => 1 + rng.below(120),
    };
    (n_tok, rows, k)
}

/// Round to odd is off by up to one unit in the last place where nearest-even is off by half,
/// so the twin gets twice the tolerance the `avx512bf16` kernels meet against the reference.
#[test]
fn the_bfmmla_twin_is_as_close_to_the_reference_as_round_to_odd_allows() {
    let mut rng = Rng(0x510E_527F_ADE6_82D1);
    let mut worst = 0f32;
    for case in 0..200 {
        let (n_tok, rows, k) = shape(&mut rng, case);
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        let x = split2(&xf);
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_bf16a_bf16w::<2>(&x, n_tok, &w, b, &mut want);
        let mut got = vec![f32::NAN; rows * n_tok];
        scalar::matmul_rows_bf16a_bf16w_bfmmla::<2>(&x, n_tok, &w, b, &mut got);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let tol = 8.0 * f32::EPSILON * (k as f32).sqrt() * (1.0 + e.abs()) + 1e-6;
            worst = worst.max((g - e).abs() / tol);
            assert!((g - e).abs() <= tol, "k={k} T={n_tok} R={rows} [{i}]: {g} vs {e}");
        }
    }
    eprintln!("bfmmla twin: worst error {worst:.2} of the tolerance");
    // A twin that summed in another way (or not at all) would not be this close; one that
    // rounded to nearest would be closer, which the unit tests of the rounding rule out.
    assert!(worst > 0.0, "the twin gave the reference's bits everywhere");
}

/// The set's kernels, where this CPU runs them.
fn neon_bf16() -> Option<&'static Kernels> {
    let k = Kernels::for_isa(Isa::NeonBf16);
    if k.is_none() {
        eprintln!("no AArch64 BF16 on this CPU; the kernels are checked under qemu-aarch64 in CI");
    }
    k
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "{what} [{i}]: {g:e} vs {e:e}");
    }
}

#[test]
fn bf16_kernels_give_the_twins_bits() {
    let Some(kern) = neon_bf16() else { return };
    let ba = kern.bf16_act.as_ref().expect("neon-bf16 has bf16 activations");
    let mut rng = Rng(0x9B05_688C_2B3E_6C1F);
    for case in 0..160 {
        let (n_tok, rows, k) = shape(&mut rng, case);
        // Now and then weights and activations far apart in size, so sums cancel and round.
        let spread = |rng: &mut Rng| if case % 5 == 0 { 2f32.powi(rng.below(40) as i32 - 20) } else { 1.0 };
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32() * spread(&mut rng)).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32() * spread(&mut rng))).collect();
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        let x = split2(&xf);
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_bf16a_bf16w_bfmmla::<2>(&x, n_tok, &w, b, &mut want);
        let mut got = vec![f32::NAN; rows * n_tok];
        (ba.matmul_rows_bf16a_bf16w)(&x, n_tok, &w, b, &mut got);
        assert_bits(&got, &want, &format!("rows k={k} T={n_tok} R={rows}"));
        // The tiled layout (whole tiles only): the same bits.
        if gptoss_kernels::bf16_t8::can_tile(rows, k) {
            let mut tiled = vec![0u16; w.len()];
            gptoss_kernels::bf16_t8::pack(&w, k, &mut tiled);
            let mut got = vec![f32::NAN; rows * n_tok];
            (ba.matmul_rows_bf16a_bf16t8w)(&x, n_tok, &tiled, b, &mut got);
            assert_bits(&got, &want, &format!("tiles k={k} T={n_tok} R={rows}"));
        }
    }
    // Tiled shapes on purpose (the random ones rarely are).
    for (rows, k, n_tok) in [(8, 32, 1), (16, 64, 3), (24, 2880, 1), (40, 96, 37)] {
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32())).collect();
        let x = split2(&xf);
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_bf16a_bf16w_bfmmla::<2>(&x, n_tok, &w, None, &mut want);
        let mut tiled = vec![0u16; w.len()];
        gptoss_kernels::bf16_t8::pack(&w, k, &mut tiled);
        let mut got = vec![f32::NAN; rows * n_tok];
        (ba.matmul_rows_bf16a_bf16t8w)(&x, n_tok, &tiled, None, &mut got);
        assert_bits(&got, &want, &format!("tiles k={k} T={n_tok} R={rows}"));
    }
}

#[test]
fn mxfp4_and_q8_kernels_give_the_twins_bits() {
    let Some(kern) = neon_bf16() else { return };
    let ba = kern.bf16_act.as_ref().expect("neon-bf16 has bf16 activations");
    let mut rng = Rng(0x1F83_D9AB_FB41_BD6B);
    for case in 0..80 {
        let n_tok = [1, 2, 5, 33, 70][case % 5];
        // Rows past one decoded panel (64) now and then.
        let rows = 1 + rng.below(if case % 4 == 0 { 150 } else { 20 });
        let k = 32 * (1 + rng.below(if case % 6 == 0 { 90 } else { 6 }));
        let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
        let x = split2(&xf);
        let bias: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
        let b = (case % 2 == 0).then_some(&bias[..]);
        let what = format!("k={k} T={n_tok} R={rows}");

        let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.next() as u8).collect();
        // Ordinary scales and now and then the tiny ones, whose subnormal weights flush.
        let scales: Vec<u8> = (0..rows * k / 32)
            .map(|_| if rng.below(30) == 0 { rng.below(3) as u8 } else { 118 + rng.below(12) as u8 })
            .collect();
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_bf16a_mxfp4w_bfmmla::<2>(&x, n_tok, &codes, &scales, b, &mut want);
        let mut got = vec![f32::NAN; rows * n_tok];
        (ba.matmul_rows_bf16a_mxfp4w)(&x, n_tok, &codes, &scales, b, &mut got, &mut Vec::new());
        assert_bits(&got, &want, &format!("mxfp4 {what}"));

        let w: Vec<u16> = (0..rows * k).map(|_| f32_to_bf16(rng.f32() * 4.0)).collect();
        let (mut q, mut s) = (vec![0i8; rows * k], vec![0f32; rows * k / 32]);
        for r in 0..rows {
            gptoss_kernels::q8::quantize_row_bf16(
                &w[r * k..(r + 1) * k],
                &mut q[r * k..(r + 1) * k],
                &mut s[r * k / 32..(r + 1) * k / 32],
            );
        }
        let mut want = vec![0f32; rows * n_tok];
        scalar::matmul_rows_bf16a_q8w_bfmmla::<2>(&x, n_tok, &q, &s, b, &mut want);
        let mut got = vec![f32::NAN; rows * n_tok];
        (ba.matmul_rows_bf16a_q8w)(&x, n_tok, &q, &s, b, &mut got, &mut Vec::new());
        assert_bits(&got, &want, &format!("q8 {what}"));
    }
}

/// The rounding rule itself, on the instruction: single products and pair sums chosen to
/// round (far apart, cancelling, near the subnormal edge), through a one-row, one-token,
/// 4-column matmul whose only arithmetic is one `bfmmla` lane.
#[test]
fn one_bfmmla_lane_rounds_like_bf16_dot_add() {
    let Some(kern) = neon_bf16() else { return };
    let ba = kern.bf16_act.as_ref().expect("neon-bf16 has bf16 activations");
    let lane_matches = |w: [u16; 4], xh: [u16; 4]| {
        // x as [2 terms, 1 token, 4]: hi, then lo zero.
        let x: Vec<u16> = xh.iter().copied().chain([0; 4]).collect();
        let mut got = [f32::NAN];
        (ba.matmul_rows_bf16a_bf16w)(&x, 1, &w, None, &mut got);
        let lane = |x: [u16; 4]| {
            let pair = scalar::bf16_dot_add(0.0, w[0], w[1], x[0], x[1]);
            scalar::bf16_dot_add(pair, w[2], w[3], x[2], x[3])
        };
        // The lo term's zeros still multiply (an infinite weight makes it NaN).
        let want = (lane(xh) + lane([0; 4])) + 0.0;
        assert!(
            got[0].to_bits() == want.to_bits() || (got[0].is_nan() && want.is_nan()),
            "w {w:04x?} x {xh:04x?}: {:e} vs {want:e}",
            got[0]
        );
        want
    };
    let b = |v: f32| f32_to_bf16(v);
    let (big, tiny) = (2f32.powi(64), 2f32.powi(-63));
    // Finite products whose sum reaches 2^128 (infinity, where nearest-even and round to odd
    // agree but a saturating rule would not), in the pair and in the accumulator; products
    // that cancel to a subnormal (flushed); far apart (truncated and made odd).
    let cases: [([f32; 4], [f32; 4], f32); 5] = [
        ([big, big, 0.0, 0.0], [0.75 * big, 0.75 * big, 0.0, 0.0], f32::INFINITY),
        ([big, 0.0, big, 0.0], [0.75 * big, 0.0, 0.75 * big, 0.0], f32::INFINITY),
        ([2.0 * tiny, -tiny * (255.0 / 128.0), 0.0, 0.0], [tiny, tiny, 0.0, 0.0], 0.0),
        ([2.0 * tiny, 0.0, -tiny * (255.0 / 128.0), 0.0], [tiny, 0.0, tiny, 0.0], 0.0),
        ([1.0, 2f32.powi(-30), 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], f32::from_bits(1.0f32.to_bits() | 1)),
    ];
    for (w, x, want) in cases {
        let got = lane_matches(w.map(b), x.map(b));
        assert_eq!(got.to_bits(), want.to_bits(), "w {w:?} x {x:?}");
    }
    let mut rng = Rng(0x5BE0_CD19_137E_2179);
    for case in 0..2000usize {
        // bf16 values with exponents over the whole range now and then (products and sums
        // that overflow, underflow to subnormals, cancel), else near 1; a zero now and then.
        let val = |rng: &mut Rng| -> u16 {
            let e = if case.is_multiple_of(3) { rng.below(254) as i32 - 126 } else { rng.below(40) as i32 - 20 };
            let v = if rng.below(20) == 0 { 0.0 } else { rng.f32() * 2f32.powi(e) };
            f32_to_bf16(v)
        };
        lane_matches(std::array::from_fn(|_| val(&mut rng)), std::array::from_fn(|_| val(&mut rng)));
    }
}
