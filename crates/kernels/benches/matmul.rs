//! Single-thread matmul throughput at the 20b expert and attention shapes, for every kernel
//! set this CPU runs: `[TOKS=1,64] [REPS=N] cargo bench -p gptoss-kernels --bench matmul [-- FILTER]`.
//! Prints GMAC/s (multiply-adds of the model, not of the split terms) and, for one token,
//! the weight bytes streamed per second. Kernel sets with integer MXFP4 kernels add a line
//! for those (weights repacked, activations quantized to int16, or to int8 range where the
//! set's prompt kernels multiply bytes).

use std::time::Instant;

use gptoss_kernels::{Isa, Kernels};

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn byte(&mut self) -> u8 {
        (self.f32().to_bits() >> 3) as u8
    }
}

/// Best of `reps` timings of `f`, in seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // (name, rows, K): experts gate_up and down, attention qkv and output; and a matrix that stays in a
    // 2 MB L2 (0.8 MB as MXFP4), whose figure is the kernel's arithmetic ceiling: a stage well
    // below it in the model is bound by memory.
    let shapes = [
        ("gate_up", 5760, 2880),
        ("down", 2880, 2880),
        ("qkv", 5120, 2880),
        ("attn_out", 2880, 4096),
        ("cached", 512, 2880),
    ];
    for (name, rows, k) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let codes: Vec<u8> = (0..rows * k / 2).map(|_| rng.byte()).collect();
        let scales: Vec<u8> = (0..rows * k / 32).map(|_| 120 + rng.byte() % 8).collect();
        let w: Vec<u16> = (0..rows * k).map(|_| gptoss_kernels::bf16::f32_to_bf16(rng.f32())).collect();
        for n_tok in std::env::var("TOKS")
            .map(|s| s.split(",").map(|v| v.parse().unwrap()).collect())
            .unwrap_or(vec![1usize, 64])
        {
            let xf: Vec<f32> = (0..n_tok * k).map(|_| rng.f32()).collect();
            let mut out = vec![0f32; rows * n_tok];
            let mut row_buf = vec![0f32; k];
            let macs = (rows * k * n_tok) as f64;
            for isa in Isa::ALL.iter().filter(|&&i| i != Isa::Scalar && i.supported()) {
                let Some(kern) = Kernels::for_isa(*isa) else { continue };
                // Best of REPS timings (default 50 for one token, 5 for more): more on a noisy machine.
                let reps =
                    std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(if n_tok == 1 { 50 } else { 5 });
                let (t_fp4, t_bf16) = match &kern.bf16_act {
                    Some(ba) => {
                        let mut x = vec![0u16; ba.terms * n_tok * k];
                        (ba.split)(&xf, &mut x);
                        let mut scratch = Vec::new();
                        let f = best(reps, || {
                            (ba.matmul_rows_bf16a_mxfp4w)(&x, n_tok, &codes, &scales, None, &mut out, &mut scratch)
                        });
                        let b = best(reps, || (ba.matmul_rows_bf16a_bf16w)(&x, n_tok, &w, None, &mut out));
                        (f, b)
                    }
                    None => {
                        let f = best(reps, || {
                            (kern.matmul_rows_f32_mxfp4w)(&xf, n_tok, &codes, &scales, None, &mut out, &mut row_buf)
                        });
                        let b =
                            best(reps, || (kern.matmul_rows_f32_bf16w)(&xf, n_tok, &w, None, &mut out, &mut row_buf));
                        (f, b)
                    }
                };
                let gb = |bytes: f64, t: f64| bytes / t / 1e9;
                println!(
                    "{name:8} T={n_tok:3} {:17} mxfp4 {:7.1} GMAC/s {:5.1} GB/s | bf16 {:7.1} GMAC/s {:5.1} GB/s",
                    isa.name(),
                    macs / t_fp4 / 1e9,
                    gb((codes.len() + scales.len()) as f64, t_fp4),
                    macs / t_bf16 / 1e9,
                    gb(2.0 * w.len() as f64, t_bf16),
                );
                // The bf16 rows in the tiled layout the bf16-activation sets read (repacked at load).
                if let (Some(ba), true) = (&kern.bf16_act, gptoss_kernels::bf16_t8::can_tile(rows, k)) {
                    let mut tiled = vec![0u16; w.len()];
                    gptoss_kernels::bf16_t8::pack(&w, k, &mut tiled);
                    let mut x = vec![0u16; ba.terms * n_tok * k];
                    (ba.split)(&xf, &mut x);
                    let t = best(reps, || (ba.matmul_rows_bf16a_bf16t8w)(&x, n_tok, &tiled, None, &mut out));
                    println!(
                        "{name:8} T={n_tok:3} {:17} bf16 tiles {:7.1} GMAC/s {:5.1} GB/s",
                        isa.name(),
                        macs / t / 1e9,
                        gb(2.0 * w.len() as f64, t),
                    );
                }
                // MLX affine weights (4 and 8 bits, group 64), f32 scales and biases as held.
                for bits in [4u32, 8] {
                    let group = 64;
                    let acodes: Vec<u8> = (0..rows * k * bits as usize / 8).map(|_| rng.byte()).collect();
                    let (s, b): (Vec<f32>, Vec<f32>) =
                        (0..rows * k / group).map(|_| (rng.f32() * 0.01, rng.f32())).unzip();
                    let aw = gptoss_kernels::affine::AffineRows { codes: &acodes, scales: &s, biases: &b, bits, group };
                    let t = best(reps, || (kern.matmul_rows_f32_affinew)(&xf, n_tok, aw, None, &mut out, &mut row_buf));
                    println!(
                        "{name:8} T={n_tok:3} {:17} affine{bits} {:6.1} GMAC/s {:5.1} GB/s",
                        isa.name(),
                        macs / t / 1e9,
                        gb((acodes.len() + 8 * s.len()) as f64, t),
                    );
                    let fast = kern.i16_act.as_ref().and_then(|ia| ia.matmul_rows_i16a_affine4r16w);
                    if let (4, Some(f), true) = (bits, fast, rows % 16 == 0) {
                        use gptoss_kernels::{affine_r16, mxfp4_r16};
                        let (mut pc, mut ps) = (vec![0u8; acodes.len()], vec![0f32; rows * k / 32]);
                        affine_r16::pack(&acodes, &s, k, group, &mut pc, &mut ps);
                        let (mut q, mut xs) = (vec![0i16; xf.len()], vec![0f32; xf.len() / 32]);
                        mxfp4_r16::quantize_i16(&xf, &mut q, &mut xs);
                        let mut scratch = Vec::new();
                        let t = best(reps, || f(&q, &xs, n_tok, &pc, &ps, None, &mut out, &mut scratch));
                        println!(
                            "{name:8} T={n_tok:3} {:17} affine4 {:6.1} GMAC/s {:5.1} GB/s (int16 activations, repacked; f32 scale per 32)",
                            isa.name(),
                            macs / t / 1e9,
                            gb((pc.len() + 4 * ps.len() + 4 * b.len()) as f64, t),
                        );
                    }
                }
                if let (Some(ia), true) = (&kern.i16_act, rows % 16 == 0) {
                    let (mut pc, mut ps) = (vec![0u8; codes.len()], vec![0u8; scales.len()]);
                    gptoss_kernels::mxfp4_r16::pack(&codes, &scales, k, &mut pc, &mut ps);
                    // The set's own code range and, where that is int8, full int16 codes beside it.
                    let mut q_maxes = vec![ia.expert_q_max];
                    if ia.expert_q_max != gptoss_kernels::mxfp4_r16::Q_MAX {
                        q_maxes.push(gptoss_kernels::mxfp4_r16::Q_MAX);
                    }
                    for q_max in q_maxes {
                        let (mut q, mut xs) = (vec![0i16; xf.len()], vec![0f32; xf.len() / 32]);
                        gptoss_kernels::mxfp4_r16::quantize_codes(&xf, q_max, &mut q, &mut xs);
                        let mut scratch = Vec::new();
                        let t = best(reps, || {
                            (ia.matmul_rows_i16a_mxfp4r16w)(&q, &xs, n_tok, &pc, &ps, None, &mut out, &mut scratch)
                        });
                        println!(
                            "{name:8} T={n_tok:3} {:17} mxfp4 {:7.1} GMAC/s {:5.1} GB/s (int{} activations, repacked)",
                            isa.name(),
                            macs / t / 1e9,
                            gb((codes.len() + scales.len()) as f64, t),
                            if q_max <= 127.0 { 8 } else { 16 },
                        );
                    }
                }
            }
        }
    }
}
