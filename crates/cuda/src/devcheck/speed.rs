//! Speed at the real shapes: random weights made on the device, per-kernel time and GB/s,
//! decode and prompt rates.

use std::fmt::Write as _;
use std::time::Instant;

use gptoss_engine::runner::Runner;
use gptoss_engine::{LogitsRequest, ModelConfig, SeqChunk};

use super::{e2s, Report};
use crate::CudaOptions;

pub(super) fn run(rep: &mut Report, shape: &str, cfg: &ModelConfig) {
    let t0 = Instant::now();
    let opts = CudaOptions { ordinal: 0, max_context: 4096, max_sequences: 64 };
    let mut r = match crate::synth_runner(cfg, 7, &opts) {
        Ok(r) => r,
        Err(e) => return rep.record(&format!("speed {shape}: random weights on the device"), Err(e.to_string())),
    };
    rep.record(
        &format!("speed {shape}: random weights on the device"),
        Ok(format!("{:.1} s", t0.elapsed().as_secs_f64())),
    );
    let bw = match crate::probe::read_bandwidth(r.gpu_mut(), 10) {
        Ok(b) => b,
        Err(e) => return rep.record("read bandwidth", Err(e.to_string())),
    };
    rep.record(&format!("speed {shape}: read bandwidth (4 GiB, best of 10)"), Ok(format!("{:.0} GB/s", bw / 1e9)));
    rep.check(&format!("speed {shape}: kernels of one decoded token (layer 0)"), || {
        let lines = r.time_kernels(bw).map_err(e2s)?;
        for l in &lines {
            println!("|   {l} | | |");
        }
        Ok(format!("{} kernels timed", lines.len()))
    });
    rep.check(&format!("speed {shape}: decode and prompt"), || {
        let mut out = String::new();
        let bpt = r.bytes_per_token() as f64;
        for b in [1usize, 16, 64] {
            let (tps, steps) = decode_rate(&mut r, b, 64).map_err(|e| e.to_string())?;
            let frac = steps * bpt / bw;
            let _ = write!(out, "B={b}: {tps:.0} tok/s ({:.1}% of the limit per step); ", 100.0 * frac);
        }
        let pp = prompt_rate(&mut r, 2048).map_err(|e| e.to_string())?;
        let _ = write!(out, "pp2048: {pp:.0} tok/s");
        Ok(out)
    });
}

/// (generated tokens/s over `b` sequences, steps/s), after a warm-up.
pub fn decode_rate(r: &mut dyn Runner, b: usize, n: usize) -> Result<(f64, f64), gptoss_engine::EngineError> {
    let seqs: Vec<_> = (0..b).map(|_| r.add_sequence()).collect::<Result<_, _>>()?;
    let mut toks: Vec<[u32; 1]> = (0..b as u32).map(|i| [i * 7 + 1]).collect();
    let step = |r: &mut dyn Runner, toks: &mut Vec<[u32; 1]>| -> Result<(), gptoss_engine::EngineError> {
        let chunks: Vec<SeqChunk> = seqs
            .iter()
            .zip(toks.iter())
            .map(|(&seq, t)| SeqChunk { seq, tokens: t, logits: LogitsRequest::Last })
            .collect();
        let next = r.forward_greedy(&chunks)?;
        for (t, n) in toks.iter_mut().zip(next) {
            *t = [n];
        }
        Ok(())
    };
    for _ in 0..4 {
        step(r, &mut toks)?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        step(r, &mut toks)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for s in seqs {
        r.remove_sequence(s);
    }
    Ok(((n * b) as f64 / secs, n as f64 / secs))
}

pub fn prompt_rate(r: &mut dyn Runner, n: usize) -> Result<f64, gptoss_engine::EngineError> {
    let toks: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 1000).collect();
    let run = |r: &mut dyn Runner| -> Result<f64, gptoss_engine::EngineError> {
        let s = r.add_sequence()?;
        let t0 = Instant::now();
        r.forward_greedy(&[SeqChunk { seq: s, tokens: &toks, logits: LogitsRequest::Last }])?;
        let secs = t0.elapsed().as_secs_f64();
        r.remove_sequence(s);
        Ok(n as f64 / secs)
    };
    run(r)?;
    run(r)
}
