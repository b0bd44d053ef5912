//! The float32 path against OpenAI's PyTorch reference on the tiny fixture, in both layouts.
//! Prints the max differences (run with --nocapture to see them).

mod common;

use common::{log_softmax, reference, tiny};
use gptoss_engine::weights::DenseFormat;
use gptoss_engine::{KvCache, LogitsRequest, Model, SeqChunk};
use gptoss_kernels::{Isa, Kernels};

/// Logits `[300, 1024]` for every position of the reference tokens, in one forward call.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&model.config, 4096);
    let seq = cache.add_sequence();
    let logits = model.forward(&mut cache, &[SeqChunk { seq, tokens, logits: LogitsRequest::All }]).unwrap();
    assert_eq!(logits.rows.len(), tokens.len());
    (0..tokens.len()).map(|i| logits.row(i).to_vec()).collect()
}

fn check_against_reference(layout: &str, kernels: &'static Kernels) -> Vec<Vec<f32>> {
    let r = reference();
    let mut model = Model::load(&tiny(layout)).unwrap();
    model.set_kernels(kernels);
    let logits = all_logits(&model, &r.tokens);

    let mut max_nll = 0f64;
    for (i, &want) in r.next_token_nll.iter().enumerate() {
        let got = -log_softmax(&logits[i])[r.tokens[i + 1] as usize];
        max_nll = max_nll.max((got - want).abs());
    }
    let mut max_logit = 0f32;
    for (&pos, want) in r.full_logits_positions.iter().zip(&r.full_logits) {
        for (a, b) in logits[pos].iter().zip(want) {
            max_logit = max_logit.max((a - b).abs());
        }
    }
    let mut top8_checked = 0;
    for (pos, (ids, lps)) in r.top8_ids.iter().zip(&r.top8_logprobs).enumerate() {
        let lp = log_softmax(&logits[pos]);
        let mut ours: Vec<u32> = (0..lp.len() as u32).collect();
        ours.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
        for j in 0..8 {
            let prev_gap = if j > 0 { lps[j - 1] - lps[j] } else { f64::INFINITY };
            // Rank 8 is not in the reference; our own 9th logprob stands in for it.
            let next_gap = if j < 7 { lps[j] - lps[j + 1] } else { lps[7] - lp[ours[8] as usize] };
            if prev_gap > 1e-3 && next_gap > 1e-3 {
                assert_eq!(ours[j], ids[j], "{layout}: rank {j} at position {pos}");
                top8_checked += 1;
            }
        }
    }
    eprintln!("{layout} ({kernels:?} kernels): max |Δnll| = {max_nll:.3e} over {} tokens, max |Δlogit| = {max_logit:.3e} at {:?}, {top8_checked} top-8 ranks compared",
        r.next_token_nll.len(), r.full_logits_positions);
    assert!(max_nll <= 1e-4, "{layout}: max NLL difference {max_nll}");
    assert!(max_logit <= 1e-3, "{layout}: max logit difference {max_logit}");
    assert!(top8_checked > 300 * 6, "too few ranks were separable: {top8_checked}");
    logits
}

#[test]
fn hf_layout_matches_reference() {
    check_against_reference("hf", Kernels::scalar());
}

#[test]
fn original_layout_matches_reference() {
    check_against_reference("original", Kernels::scalar());
}

/// The SIMD kernels that keep f32 activations hold the reference's 1e-4 too (`neon`; the
/// x86 sets all run the experts on int16 activations, measured below).
#[test]
fn f32_simd_kernels_match_reference() {
    for kern in [Isa::Neon].into_iter().filter_map(Kernels::for_isa) {
        check_against_reference("hf", kern);
    }
}

/// The fast path with bf16 dot products (activations as two bf16 terms): every next-token
/// NLL within 0.01 of the reference and the same top-1 token at 99% of positions or more.
/// The one-term variant (activations rounded to bf16) is measured and printed, not held to
/// the bar, which it misses; it is never picked unless asked for.
#[test]
fn bf16_dot_product_kernels_are_accurate_enough() {
    let fast: Vec<_> =
        [Isa::Avx512Bf16, Isa::Avx512Bf16Round, Isa::NeonBf16].into_iter().filter_map(Kernels::for_isa).collect();
    if fast.is_empty() {
        eprintln!("no bf16-activation kernels on this CPU; nothing to measure");
    }
    for kern in fast {
        let mut model = Model::load(&tiny("hf")).unwrap();
        model.set_kernels(kern);
        let (max_nll, _, agree) = accuracy(&model, &format!("{kern:?}"));
        if kern.isa == Isa::Avx512Bf16Round {
            continue;
        }
        assert!(max_nll <= 0.01, "{kern:?}: NLL differs by {max_nll} from the reference");
        assert!(agree >= 0.99, "{kern:?}: top-1 agreement {agree}");
    }
}

/// AVX2, AVX-512 without BF16 and NEON with dotprod run the experts through int16
/// activations (as the VNNI path does): the fast-path bar, every next-token NLL within 0.01 of the reference and top-1 at
/// 99% or more.
#[test]
fn integer_expert_sets_are_accurate_enough() {
    let sets: Vec<_> =
        [Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Avx512Vnni, Isa::NeonDotprod, Isa::NeonI8mm, Isa::NeonBf16]
            .into_iter()
            .filter_map(Kernels::for_isa)
            .collect();
    if sets.is_empty() {
        eprintln!("neither AVX2 nor NEON dotprod on this CPU; nothing to measure");
    }
    for kern in sets {
        let mut model = Model::load(&tiny("hf")).unwrap();
        model.set_kernels(kern);
        let name = kern.isa.name();
        let (max_nll, _, agree) = accuracy(&model, name);
        assert!(max_nll <= 0.01, "{name}: NLL differs by {max_nll} from the reference");
        assert!(agree >= 0.99, "{name}: top-1 agreement {agree}");
    }
}

/// The `-int8` sets quantize the experts' activations to int8 range (256 times coarser than
/// int16): measured here and in the README, where it misses the 0.01 bar, and held to a loose
/// bar that still catches a broken kernel.
#[test]
fn int8_expert_sets_cost_is_measured() {
    let sets: Vec<_> = [Isa::Avx2Int8, Isa::AvxVnniInt8].into_iter().filter_map(Kernels::for_isa).collect();
    if sets.is_empty() {
        eprintln!("no int8-activation expert kernels on this CPU; nothing to measure");
    }
    for kern in sets {
        let mut model = Model::load(&tiny("hf")).unwrap();
        model.set_kernels(kern);
        let name = kern.isa.name();
        let (_, mean, agree) = accuracy(&model, name);
        assert!(mean <= 0.2 && agree >= 0.9, "{name}: mean |Δnll| {mean}, top-1 {agree}");
    }
}

/// (max |Δnll|, mean |Δnll|, top-1 agreement) against the reference, printed.
fn accuracy(model: &Model, what: &str) -> (f64, f64, f64) {
    let r = reference();
    let logits = all_logits(model, &r.tokens);
    let (mut max_nll, mut sum_nll, mut top1_same) = (0f64, 0f64, 0usize);
    for (i, &want) in r.next_token_nll.iter().enumerate() {
        let d = (-log_softmax(&logits[i])[r.tokens[i + 1] as usize] - want).abs();
        max_nll = max_nll.max(d);
        sum_nll += d;
    }
    for (pos, ids) in r.top8_ids.iter().enumerate() {
        top1_same += usize::from(gptoss_engine::sampler::argmax(&logits[pos]) == ids[0]);
    }
    let n = r.next_token_nll.len();
    let agree = top1_same as f64 / r.top8_ids.len() as f64;
    eprintln!(
        "{what}: max |Δnll| = {max_nll:.3e}, mean |Δnll| = {:.3e} over {n} tokens; top-1 agreement {top1_same}/{} = {:.2}%",
        sum_nll / n as f64,
        r.top8_ids.len(),
        100.0 * agree
    );
    (max_nll, sum_nll / n as f64, agree)
}

/// `--dense q8` trades accuracy for bytes: measured here (and in the README), held to a
/// loose bar that still catches a broken quantizer or kernel.
#[test]
fn q8_dense_weights_cost_is_measured() {
    for kern in [Some(Kernels::scalar()), Kernels::for_isa(Isa::Avx512Bf16), Kernels::for_isa(Isa::NeonBf16)]
        .into_iter()
        .flatten()
    {
        let mut model = Model::load_with(&tiny("hf"), DenseFormat::Q8).unwrap();
        model.set_kernels(kern);
        let (_, mean, agree) = accuracy(&model, &format!("q8 dense, {kern:?}"));
        assert!(mean <= 0.2 && agree >= 0.9, "q8 with {kern:?}: mean |Δnll| {mean}, top-1 {agree}");
    }
}

#[test]
fn both_layouts_give_bit_identical_logits() {
    let r = reference();
    let hf = all_logits(&Model::load(&tiny("hf")).unwrap(), &r.tokens);
    let orig = all_logits(&Model::load(&tiny("original")).unwrap(), &r.tokens);
    for (pos, (a, b)) in hf.iter().zip(&orig).enumerate() {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "position {pos} differs");
    }
}

/// The bf16-activation kernels read the attention and unembedding matrices in 8-row tiles;
/// the tiles give the bits of the same matrices in rows, and other kernels get rows back.
#[test]
fn tiled_dense_weights_give_the_bits_of_rows() {
    use gptoss_engine::weights::{Bf16Layout, Dense};
    let Some(kern) = Kernels::for_isa(Isa::Avx512Bf16).or(Kernels::for_isa(Isa::NeonBf16)) else {
        eprintln!("no bf16-activation kernels on this CPU; nothing to compare");
        return;
    };
    let layout = |m: &Model| match &m.weights.unembedding {
        Dense::Bf16(w) => w.layout,
        _ => panic!("the tiny model loads bf16"),
    };
    let r = reference();
    let mut tiled = Model::load(&tiny("hf")).unwrap();
    tiled.set_kernels(kern);
    assert_eq!(layout(&tiled), Bf16Layout::Tiles8);
    let mut rows = Model::load(&tiny("hf")).unwrap();
    rows.set_kernels(kern);
    rows.weights.set_dense_layout(Bf16Layout::Rows);
    assert_eq!(layout(&rows), Bf16Layout::Rows);
    let (a, b) = (all_logits(&tiled, &r.tokens), all_logits(&rows, &r.tokens));
    for (pos, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "position {pos} differs");
    }
    // Untiled for kernels that read rows: the same logits as a model that never was tiled.
    tiled.set_kernels(Kernels::scalar());
    rows.set_kernels(Kernels::scalar());
    assert_eq!(layout(&tiled), Bf16Layout::Rows);
    let (a, b) = (all_logits(&tiled, &r.tokens), all_logits(&rows, &r.tokens));
    assert!(a.iter().flatten().zip(b.iter().flatten()).all(|(p, q)| p.to_bits() == q.to_bits()), "scalar differs");
}

#[test]
fn greedy_continuation_with_the_kv_cache() {
    let r = reference();
    for layout in ["hf", "original"] {
        let mut model = Model::load(&tiny(layout)).unwrap();
        model.set_kernels(Kernels::scalar());
        let mut cache = KvCache::new(&model.config, 4096);
        let seq = cache.add_sequence();
        let prompt = &r.tokens[..r.greedy_prompt_len];
        let mut logits =
            model.forward(&mut cache, &[SeqChunk { seq, tokens: prompt, logits: LogitsRequest::Last }]).unwrap();
        let mut out = Vec::new();
        for _ in 0..r.greedy_tokens.len() {
            let next = gptoss_engine::sampler::argmax(logits.last_for(0).unwrap());
            out.push(next);
            logits =
                model.forward(&mut cache, &[SeqChunk { seq, tokens: &[next], logits: LogitsRequest::Last }]).unwrap();
        }
        assert_eq!(out, r.greedy_tokens, "{layout}");
        assert_eq!(cache.len(seq), Some(r.greedy_prompt_len + r.greedy_tokens.len()));
    }
}
