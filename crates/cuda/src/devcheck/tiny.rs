//! The tiny fixture end to end: layer by layer against the CPU, parity with OpenAI's
//! reference, greedy tokens, chunking and batch invariance, device picks.

use std::fmt::Write as _;
use std::path::Path;

use gptoss_engine::runner::{CpuRunner, Runner};
use gptoss_engine::{LogitsRequest, Model, SeqChunk};
use gptoss_kernels::Kernels;

use super::{Report, Target};
use crate::model::{CudaRunner, KernelSet};
use crate::CudaOptions;

struct RefOut {
    tokens: Vec<u32>,
    next_token_nll: Vec<f64>,
    top1: Vec<u32>,
    greedy_prompt_len: usize,
    greedy_tokens: Vec<u32>,
}

fn reference(fixtures: &Path) -> Result<RefOut, String> {
    use gptoss_engine::safetensors::{DType, SafeTensors};
    let st = SafeTensors::open(&fixtures.join("tiny/reference.safetensors")).map_err(|e| e.to_string())?;
    let raw = |name: &str, dtype: DType| -> Result<Vec<u8>, String> {
        let info = st.get(name).ok_or(format!("reference has no {name}"))?;
        if info.dtype != dtype {
            return Err(format!("{name}: dtype"));
        }
        Ok(st.bytes(info).as_slice().to_vec())
    };
    let i64s = |name: &str| -> Result<Vec<i64>, String> {
        Ok(raw(name, DType::I64)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    };
    let f64s = |name: &str| -> Result<Vec<f64>, String> {
        Ok(raw(name, DType::F64)?.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    };
    let ids = |v: Vec<i64>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
    Ok(RefOut {
        tokens: ids(i64s("tokens")?),
        next_token_nll: f64s("next_token_nll")?,
        top1: ids(i64s("top8_ids")?).chunks(8).map(|c| c[0]).collect(),
        greedy_prompt_len: i64s("greedy_prompt_len")?[0] as usize,
        greedy_tokens: ids(i64s("greedy_tokens")?),
    })
}

fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
    let lse = max + logits.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
    logits[i] as f64 - lse
}

fn all_logits(r: &mut dyn Runner, chunks: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
    let seq = r.add_sequence().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for c in chunks {
        let l = r.forward(&[SeqChunk { seq, tokens: c, logits: LogitsRequest::All }]).map_err(|e| e.to_string())?;
        out.extend((0..l.rows.len()).map(|i| l.row(i).to_vec()));
    }
    r.remove_sequence(seq);
    Ok(out)
}

fn greedy(r: &mut dyn Runner, prompt: &[u32], n: usize) -> Result<Vec<u32>, String> {
    let seq = r.add_sequence().map_err(|e| e.to_string())?;
    let mut next = r
        .forward_greedy(&[SeqChunk { seq, tokens: prompt, logits: LogitsRequest::Last }])
        .map_err(|e| e.to_string())?[0];
    let mut out = vec![next];
    while out.len() < n {
        next = r
            .forward_greedy(&[SeqChunk { seq, tokens: &[next], logits: LogitsRequest::Last }])
            .map_err(|e| e.to_string())?[0];
        out.push(next);
    }
    r.remove_sequence(seq);
    Ok(out)
}

fn bits_equal(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len() && a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| x.to_bits() == y.to_bits())
}

pub(super) fn run(rep: &mut Report, fixtures: &Path, target: Target) {
    let path = fixtures.join("tiny/hf");
    let r = match reference(fixtures) {
        Ok(r) => r,
        Err(e) => return rep.record("tiny: reference", Err(e)),
    };
    let opts = CudaOptions { ordinal: 0, max_context: 4096, max_sequences: 4 };
    let mut gpu_run = match target.runner(&path, &opts) {
        Ok(g) => g,
        Err(e) => return rep.record("tiny: load on cuda:0", Err(e.to_string())),
    };
    let mut cpu = match Model::load(&path) {
        Ok(mut m) => {
            m.set_kernels(Kernels::scalar());
            CpuRunner::new(m, 4096)
        }
        Err(e) => return rep.record("tiny: load on the cpu", Err(e.to_string())),
    };
    for kernels in [KernelSet::Fast, KernelSet::Simple] {
        gpu_run.set_kernels(kernels);
        let k = format!("{kernels:?}").to_lowercase();
        rep.check(&format!("tiny {k}: layer by layer vs the CPU reference (300 tokens)"), || {
            trace_check(&mut gpu_run, &mut cpu, &r.tokens)
        });
        rep.check(&format!("tiny {k}: parity with OpenAI's reference"), || {
            let logits = all_logits(&mut gpu_run, &[&r.tokens])?;
            let (mut max_nll, mut sum, mut agree) = (0f64, 0f64, 0usize);
            for (i, &want) in r.next_token_nll.iter().enumerate() {
                let d = (-log_softmax_at(&logits[i], r.tokens[i + 1] as usize) - want).abs();
                max_nll = max_nll.max(d);
                sum += d;
            }
            for (pos, &id) in r.top1.iter().enumerate() {
                agree += usize::from(gptoss_engine::sampler::argmax(&logits[pos]) == id);
            }
            let frac = agree as f64 / r.top1.len() as f64;
            let line = format!(
                "max |Δnll| {max_nll:.3e}, mean {:.3e} over {} tokens, top-1 {agree}/{} ({:.2}%)",
                sum / r.next_token_nll.len() as f64,
                r.next_token_nll.len(),
                r.top1.len(),
                100.0 * frac
            );
            if max_nll <= 0.01 && frac >= 0.99 {
                Ok(line)
            } else {
                Err(line)
            }
        });
        rep.check(&format!("tiny {k}: 40 greedy tokens with the cache"), || {
            let got = greedy(&mut gpu_run, &r.tokens[..r.greedy_prompt_len], r.greedy_tokens.len())?;
            if got == r.greedy_tokens {
                Ok("identical to OpenAI's".into())
            } else {
                let first = got.iter().zip(&r.greedy_tokens).position(|(a, b)| a != b).unwrap_or(0);
                Err(format!("first difference at token {first}: {got:?}"))
            }
        });
        rep.check(&format!("tiny {k}: chunked = one pass (bitwise)"), || {
            let one = all_logits(&mut gpu_run, &[&r.tokens])?;
            let t = &r.tokens;
            let chunked = all_logits(&mut gpu_run, &[&t[..7], &t[7..135], &t[135..136], &t[136..236], &t[236..]])?;
            if bits_equal(&one, &chunked) {
                Ok("300 tokens as 7+128+1+100+64".into())
            } else {
                let d =
                    one.iter().flatten().zip(chunked.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                Err(format!("max |Δlogit| {d:.3e}"))
            }
        });
        rep.check(&format!("tiny {k}: batch invariance (alone = batched with decodes and a prompt)"), || {
            batch_check(&mut gpu_run, &r.tokens)
        });
        rep.check(&format!("tiny {k}: generate with picks on the device (greedy = OpenAI's; a seed repeats)"), || {
            source_check(&mut gpu_run, &r.tokens[..r.greedy_prompt_len], &r.greedy_tokens)
        });
    }
}

fn trace_check(gpu: &mut CudaRunner, cpu: &mut CpuRunner, tokens: &[u32]) -> Result<String, String> {
    let mut want: Vec<(String, Option<usize>, Vec<f32>)> = Vec::new();
    let s = cpu.add_sequence().map_err(|e| e.to_string())?;
    cpu.forward_traced(&[SeqChunk { seq: s, tokens, logits: LogitsRequest::All }], &mut |n, l, d| {
        want.push((n.into(), l, d.to_vec()))
    })
    .map_err(|e| e.to_string())?;
    cpu.remove_sequence(s);
    // The GPU may run the batch as several passes (logits of 128 rows at most per pass):
    // each name's rows are concatenated in order.
    let mut got: Vec<(String, Option<usize>, Vec<f32>)> = Vec::new();
    let s = gpu.add_sequence().map_err(|e| e.to_string())?;
    gpu.forward_traced(&[SeqChunk { seq: s, tokens, logits: LogitsRequest::All }], &mut |n, l, d| match got
        .iter_mut()
        .find(|(gn, gl, _)| gn == n && *gl == l)
    {
        Some(e) => e.2.extend_from_slice(d),
        None => got.push((n.into(), l, d.to_vec())),
    })
    .map_err(|e| e.to_string())?;
    gpu.remove_sequence(s);
    if want.len() != got.len() {
        return Err(format!("{} traced tensors on the CPU, {} on the GPU", want.len(), got.len()));
    }
    let mut worst = (0f64, String::new());
    let mut summary = String::new();
    for ((wn, wl, wd), (gn, gl, gd)) in want.iter().zip(&got) {
        if wn != gn || wl != gl || wd.len() != gd.len() {
            return Err(format!(
                "order or shape differs: CPU {wn}@{wl:?} [{}], GPU {gn}@{gl:?} [{}]",
                wd.len(),
                gd.len()
            ));
        }
        // Relative L2 difference of the whole tensor.
        let (num, den) = wd
            .iter()
            .zip(gd)
            .fold((0f64, 0f64), |(n, d), (&a, &b)| (n + ((a - b) as f64).powi(2), d + (a as f64).powi(2)));
        let rel = (num / den.max(1e-30)).sqrt();
        if rel > worst.0 || rel.is_nan() {
            worst = (rel, format!("{wn}@{wl:?}"));
        }
        if wl.is_none() || *wl == Some(3) {
            let _ = write!(summary, "{wn}{} {rel:.1e}; ", wl.map_or(String::new(), |l| format!("@{l}")));
        }
    }
    let line = format!("{} tensors, worst rel-L2 {:.2e} ({}); {summary}", want.len(), worst.0, worst.1);
    if worst.0 <= 1e-3 {
        Ok(line)
    } else {
        Err(line)
    }
}

fn source_check(r: &mut CudaRunner, prompt: &[u32], want: &[u32]) -> Result<String, String> {
    use gptoss_engine::generator::{GenerateOptions, ModelSource, TokenSource};
    use gptoss_engine::{Sampler, SamplingParams};
    let mut run = |temperature: f32, seed: u64| -> Result<Vec<u32>, String> {
        let sampler = Sampler::new(SamplingParams { temperature, top_p: 0.95, seed: Some(seed), ..Default::default() })
            .map_err(|e| e.to_string())?;
        let mut src = ModelSource::new(r, sampler).map_err(|e| e.to_string())?;
        let opts = GenerateOptions { max_tokens: want.len(), stop_tokens: vec![], top_logprobs: 3 };
        let mut out = Vec::new();
        src.generate(prompt, &opts, &mut |s| {
            out.push(s.token);
            s.top_logprobs.len() == 3 && s.logprob <= 0.0
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    };
    let greedy = run(0.0, 1)?;
    if greedy != want {
        return Err(format!("greedy differs: {greedy:?}"));
    }
    let (a, b) = (run(1.0, 7)?, run(1.0, 7)?);
    if a != b || a.len() != want.len() {
        return Err(format!("seed 7 gave {a:?} then {b:?}"));
    }
    Ok(format!(
        "{} greedy tokens identical; temperature 1, top-p 0.95, seed 7 twice: the same {} tokens",
        want.len(),
        a.len()
    ))
}

fn batch_check(r: &mut CudaRunner, tokens: &[u32]) -> Result<String, String> {
    let e = |x: gptoss_engine::EngineError| x.to_string();
    // Three sequences with different prompts, decoded 6 steps each: alone.
    let prompts: [&[u32]; 3] = [&tokens[..50], &tokens[50..180], &tokens[180..190]];
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for p in prompts {
        let s = r.add_sequence().map_err(e)?;
        r.forward(&[SeqChunk { seq: s, tokens: p, logits: LogitsRequest::None }]).map_err(e)?;
        let mut rows = Vec::new();
        for step in 0..6 {
            let tok = [tokens[200 + step]];
            let l = r.forward(&[SeqChunk { seq: s, tokens: &tok, logits: LogitsRequest::Last }]).map_err(e)?;
            rows.push(l.row(0).to_vec());
        }
        r.remove_sequence(s);
        alone.push(rows);
    }
    // Together, and with a fourth sequence's prompt chunk in the same passes.
    let seqs: Vec<_> = (0..3).map(|_| r.add_sequence()).collect::<Result<_, _>>().map_err(e)?;
    let batch: Vec<SeqChunk> =
        seqs.iter().zip(prompts).map(|(&seq, p)| SeqChunk { seq, tokens: p, logits: LogitsRequest::None }).collect();
    r.forward(&batch).map_err(e)?;
    let extra = r.add_sequence().map_err(e)?;
    for step in 0..6 {
        let tok = [tokens[200 + step]];
        let mut b: Vec<SeqChunk> =
            seqs.iter().map(|&seq| SeqChunk { seq, tokens: &tok, logits: LogitsRequest::Last }).collect();
        if step % 2 == 0 {
            b.insert(
                1,
                SeqChunk { seq: extra, tokens: &tokens[step * 20..step * 20 + 20], logits: LogitsRequest::Last },
            );
        }
        let l = r.forward(&b).map_err(e)?;
        for (i, &seq) in seqs.iter().enumerate() {
            let item = b.iter().position(|c| c.seq == seq).unwrap_or(0);
            let got = l.last_for(item).ok_or("missing logits")?;
            if got.iter().zip(&alone[i][step]).any(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(format!("sequence {i} step {step} differs batched"));
            }
        }
    }
    for s in seqs {
        r.remove_sequence(s);
    }
    r.remove_sequence(extra);
    Ok("3 sequences x 6 steps bitwise equal alone and batched (with a 20-token prompt in every other pass)".into())
}
