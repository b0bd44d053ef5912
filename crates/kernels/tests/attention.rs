//! The fast attention kernels against the scalar reference, on random head groups, key
//! ranges and span splits.

use gptoss_kernels::scalar::{self, KvSpan};
use gptoss_kernels::{Isa, Kernels};

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
    Isa::FAST.into_iter().filter_map(Kernels::for_isa).collect()
}

/// Splits `[n, kv_dim]` rows starting at `first` into 1 to 3 spans at random points.
fn spans<'a>(rng: &mut Rng, first: usize, k: &'a [f32], v: &'a [f32], kv_dim: usize) -> Vec<KvSpan<'a>> {
    let n = k.len() / kv_dim;
    let mut cuts = vec![0, n];
    for _ in 0..rng.below(3) {
        cuts.push(rng.below(n + 1));
    }
    cuts.sort_unstable();
    cuts.windows(2)
        .map(|c| KvSpan {
            first_pos: first + c[0],
            k: &k[c[0] * kv_dim..c[1] * kv_dim],
            v: &v[c[0] * kv_dim..c[1] * kv_dim],
        })
        .collect()
}

#[test]
fn grouped_attention_matches_scalar_and_ignores_span_splits() {
    let fast = fast_kernels();
    let mut rng = Rng(0x510E_527F_ADE6_82D1);
    for case in 0..300 {
        // Mostly gpt-oss heads (64); now and then another size, which takes the twin.
        let hd = if case % 10 == 9 { 32 } else { 64 };
        let g = [1, 2, 3, 4, 5, 8][rng.below(6)];
        let kv_heads = 1 + rng.below(3);
        let kv_dim = kv_heads * hd;
        let kv_off = rng.below(kv_heads) * hd;
        let n = 1 + rng.below(if case % 3 == 0 { 40 } else { 300 });
        let first = rng.below(50);
        // Score magnitudes up to about 30, as trained models reach.
        let amp = [0.1, 1.0, 4.0][rng.below(3)];
        let k: Vec<f32> = (0..n * kv_dim).map(|_| rng.f32() * amp).collect();
        let v: Vec<f32> = (0..n * kv_dim).map(|_| rng.f32()).collect();
        let q: Vec<f32> = (0..g * hd).map(|_| rng.f32() * amp).collect();
        let sinks: Vec<f32> = (0..g).map(|_| rng.f32() * 8.0).collect();
        let (lo, hi) = {
            let a = first + rng.below(n);
            let b = first + rng.below(n);
            (a.min(b), a.max(b))
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let sp = spans(&mut rng, first, &k, &v, kv_dim);
        let mut want = vec![0f32; g * hd];
        scalar::attend_heads_f32(&q, &sp, kv_dim, kv_off, lo, hi, scale, &sinks, &mut Vec::new(), &mut want);
        for kern in &fast {
            let mut got = vec![f32::NAN; g * hd];
            (kern.attend_heads_f32)(&q, &sp, kv_dim, kv_off, lo, hi, scale, &sinks, &mut Vec::new(), &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-6 * (1.0 + b.abs()),
                    "{:?} case {case} g={g} n={n} [{i}]: {a} vs {b}",
                    kern.isa
                );
            }
            // The same keys cut into other spans give the same bits.
            let sp2 = spans(&mut rng, first, &k, &v, kv_dim);
            let mut again = vec![f32::NAN; g * hd];
            (kern.attend_heads_f32)(&q, &sp2, kv_dim, kv_off, lo, hi, scale, &sinks, &mut vec![7.0; 3], &mut again);
            assert!(got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} case {case}", kern.isa);
        }
    }
}
