//! Plain loads against the one-token matmuls over memory like the model's: whether a stage
//! of decoding streams as fast as the memory gives, apart from the rest of the model.
//!
//! `[ROWS=201088] [REPS=8] [GPTOSS_KERNELS=K] [RAYON_NUM_THREADS=2] cargo run --release -p
//! gptoss-engine --example stream`: ROWS × 2880 bf16 weights (the default is the
//! unembedding, 1.16 GB) and, where the kernels have integer MXFP4 experts, 2·ROWS rows of
//! random MXFP4 in their 16-row tiles (about the same bytes), in memory of the kind loaded
//! weights live in (anonymous, 2 MiB pages where the kernel allows), split over the threads
//! as the model splits a matmul. Each rep prints GB/s of a plain sum (`profile::sum_words`,
//! the bench's bandwidth probe), of the bf16 matmul and of the experts, one after the other;
//! memory on shared machines drifts, so only neighbouring figures compare. Small ROWS time
//! the pool waking up as much as the kernels.

use std::hint::black_box;
use std::time::Instant;

use gptoss_engine::safetensors::Bytes;
use rayon::prelude::*;

const K: usize = 2880;

thread_local! {
    /// Kernel scratch kept per thread, as the engine keeps it.
    static SCRATCH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rows, reps) = (env("ROWS", 201_088), env("REPS", 8));
    let kern = gptoss_kernels::Kernels::from_env()?;
    // Weights near ±1 (bf16 0x3f80 with low mantissa bits varied), so the sums stay finite.
    let bytes = Bytes::build(rows * K * 2, |b| {
        for (i, h) in b.chunks_exact_mut(2).enumerate() {
            h.copy_from_slice(&(0x3f80u16 ^ (i as u16 & 0x7f)).to_le_bytes());
        }
    });
    let raw = bytes.as_slice();
    // SAFETY: the buffer is page-aligned or u64-aligned (`Bytes::build`), its length a
    // multiple of 8, and every bit pattern is a valid u16 and u64.
    let (w, words): (&[u16], &[u64]) = unsafe {
        (
            std::slice::from_raw_parts(raw.as_ptr().cast(), raw.len() / 2),
            std::slice::from_raw_parts(raw.as_ptr().cast(), raw.len() / 8),
        )
    };
    let x: Vec<f32> = (0..K).map(|i| (i as f32 * 0.001).sin()).collect();
    let mut y = vec![0f32; rows];
    let gb = raw.len() as f64 / 1e9;
    let threads = rayon::current_num_threads();
    // As the model's matmuls: 8 tasks per thread.
    let chunk = rows.div_ceil(threads * 8);
    println!("{rows} x {K} bf16 ({gb:.2} GB), {threads} threads, {:?} kernels", kern.isa);
    // MXFP4 rows in the integer kernels' 16-row tiles (random codes, scales near 1): 2·rows
    // rows, codes and scales as separate arrays, as loaded experts.
    let mx_rows = (2 * rows) / 16 * 16;
    let mx_chunk = (mx_rows / 16).div_ceil(threads * 8) * 16;
    let mx_gb = (mx_rows * K / 2 + mx_rows * K / 32) as f64 / 1e9;
    y.resize(mx_rows.max(rows), 0.0);
    let experts = kern.i16_act.as_ref().map(|ia| {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        };
        let codes = Bytes::build(mx_rows * K / 2, |b| b.iter_mut().for_each(|v| *v = byte()));
        let scales = Bytes::build(mx_rows * K / 32, |b| b.iter_mut().for_each(|v| *v = 124 + byte() % 6));
        let (mut xq, mut xs) = (vec![0i16; K], vec![0f32; K / 32]);
        (ia.quantize)(&x, ia.expert_q_max, &mut xq, &mut xs);
        (ia, codes, scales, xq, xs)
    });
    for rep in 0..reps {
        let t = Instant::now();
        let per = words.len().div_ceil(threads);
        black_box(rayon::broadcast(|c| {
            gptoss_engine::profile::sum_words(words.chunks(per).nth(c.index()).unwrap_or(&[]))
        }));
        let sum = gb / t.elapsed().as_secs_f64();
        let t = Instant::now();
        y[..rows].par_chunks_mut(chunk).enumerate().for_each(|(i, out)| {
            let r0 = i * chunk;
            let mut row_buf = vec![0f32; K];
            (kern.matmul_rows_f32_bf16w)(&x, 1, &w[r0 * K..(r0 + out.len()) * K], None, out, &mut row_buf)
        });
        black_box(&y);
        let dense = gb / t.elapsed().as_secs_f64();
        let experts = match &experts {
            Some((ia, codes, scales, xq, xs)) => {
                let t = Instant::now();
                // Tasks of whole 16-row groups, as the model's expert matmul.
                y[..mx_rows].par_chunks_mut(mx_chunk).enumerate().for_each(|(i, out)| {
                    let (r0, n) = (i * mx_chunk, out.len());
                    SCRATCH.with_borrow_mut(|scratch| {
                        (ia.matmul_rows_i16a_mxfp4r16w)(
                            xq,
                            xs,
                            1,
                            &codes.as_slice()[r0 * K / 2..(r0 + n) * K / 2],
                            &scales.as_slice()[r0 * K / 32..(r0 + n) * K / 32],
                            None,
                            out,
                            scratch,
                        )
                    })
                });
                black_box(&y);
                format!(", MXFP4 experts {:.1} GB/s", mx_gb / t.elapsed().as_secs_f64())
            }
            None => String::new(),
        };
        println!("rep {rep}: plain sum {sum:.1} GB/s, one-token bf16 matmul {dense:.1} GB/s{experts}");
    }
    Ok(())
}
