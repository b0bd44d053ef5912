//! The batched forward interface: sequences batched together, prompts split into chunks and
//! tokens decoded one by one all give bit-identical logits to running alone in one piece.

mod common;

use common::{reference, tiny};
use gptoss_engine::{EngineError, KvCache, LogitsRequest, Model, SeqChunk};

fn model() -> Model {
    Model::load(&tiny("hf")).unwrap()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// All logits of `tokens` run alone in one call.
fn alone(m: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&m.config, 4096);
    let seq = cache.add_sequence();
    let l = m.forward(&mut cache, &[SeqChunk { seq, tokens, logits: LogitsRequest::All }]).unwrap();
    (0..tokens.len()).map(|i| l.row(i).to_vec()).collect()
}

#[test]
fn chunked_prefill_and_decode_match_one_pass() {
    let m = model();
    let tokens = reference().tokens;
    let want = alone(&m, &tokens);
    let mut cache = KvCache::new(&m.config, 4096);
    let seq = cache.add_sequence();
    // A chunk longer than the window after a cached prefix, then single tokens.
    let mut start = 0;
    for len in [100, 150, 1, 1, 48] {
        let chunk = &tokens[start..start + len];
        let l = m.forward(&mut cache, &[SeqChunk { seq, tokens: chunk, logits: LogitsRequest::All }]).unwrap();
        for (i, row) in l.rows.iter().enumerate() {
            assert_eq!(row.position, start + i);
            assert!(same_bits(l.row(i), &want[start + i]), "position {}", start + i);
        }
        start += len;
    }
    assert_eq!(start, 300);
}

#[test]
fn batched_sequences_are_independent() {
    let m = model();
    let tokens = reference().tokens;
    let (a, b, c) = (&tokens[..170], &tokens[40..90], &tokens[200..201]);
    let (wa, wb) = (alone(&m, a), alone(&m, b));

    let mut cache = KvCache::new(&m.config, 4096);
    let (sa, sb, sc) = (cache.add_sequence(), cache.add_sequence(), cache.add_sequence());
    // Step 1: three prompts at once, with different logits requests.
    let batch = [
        SeqChunk { seq: sa, tokens: &a[..160], logits: LogitsRequest::Last },
        SeqChunk { seq: sb, tokens: b, logits: LogitsRequest::All },
        SeqChunk { seq: sc, tokens: c, logits: LogitsRequest::None },
    ];
    let l = m.forward(&mut cache, &batch).unwrap();
    assert_eq!(l.rows.len(), 1 + b.len());
    assert!(same_bits(l.last_for(0).unwrap(), &wa[159]));
    for i in 0..b.len() {
        assert_eq!((l.rows[1 + i].item, l.rows[1 + i].position), (1, i));
        assert!(same_bits(l.row(1 + i), &wb[i]));
    }
    assert!(l.last_for(2).is_none());
    // Step 2: sequence a decodes the rest of its tokens while c, already cached, is dropped.
    assert!(cache.remove_sequence(sc));
    for (i, t) in a[160..].iter().enumerate() {
        let l = m
            .forward(&mut cache, &[SeqChunk { seq: sa, tokens: std::slice::from_ref(t), logits: LogitsRequest::Last }])
            .unwrap();
        assert!(same_bits(l.row(0), &wa[160 + i]));
    }
    assert_eq!(cache.len(sa), Some(170));
    assert_eq!(cache.len(sb), Some(50));
}

#[test]
fn bad_batches_are_refused_without_touching_the_cache() {
    let m = model();
    let mut cache = KvCache::new(&m.config, 64);
    let s = cache.add_sequence();
    let ok = [1u32, 2, 3];
    m.forward(&mut cache, &[SeqChunk { seq: s, tokens: &ok, logits: LogitsRequest::None }]).unwrap();
    let bytes = cache.allocated_bytes();
    let ghost = gptoss_engine::SeqId(999);

    let cases: Vec<(Vec<SeqChunk>, fn(&EngineError) -> bool)> = vec![
        (vec![SeqChunk { seq: ghost, tokens: &ok, logits: LogitsRequest::Last }], |e| {
            matches!(e, EngineError::UnknownSequence(_))
        }),
        (
            vec![
                SeqChunk { seq: s, tokens: &ok, logits: LogitsRequest::Last },
                SeqChunk { seq: s, tokens: &ok, logits: LogitsRequest::Last },
            ],
            |e| matches!(e, EngineError::DuplicateSequence(_)),
        ),
        (vec![SeqChunk { seq: s, tokens: &[], logits: LogitsRequest::Last }], |e| {
            matches!(e, EngineError::EmptyChunk(_))
        }),
        (vec![SeqChunk { seq: s, tokens: &[5, 1024], logits: LogitsRequest::Last }], |e| {
            matches!(e, EngineError::TokenOutOfVocab { id: 1024, vocab: 1024 })
        }),
        (vec![SeqChunk { seq: s, tokens: &[7; 62], logits: LogitsRequest::Last }], |e| {
            matches!(e, EngineError::ContextOverflow { needed: 65, limit: 64, .. })
        }),
    ];
    for (batch, check) in cases {
        let err = m.forward(&mut cache, &batch).err().expect("must fail");
        assert!(check(&err), "unexpected error: {err}");
        assert_eq!(cache.len(s), Some(3), "failed batch changed the sequence");
        assert_eq!(cache.allocated_bytes(), bytes);
    }
    // An empty batch is a no-op.
    assert!(m.forward(&mut cache, &[]).unwrap().rows.is_empty());
    assert_eq!(cache.len(s), Some(3));
    // The context limit is inclusive.
    m.forward(&mut cache, &[SeqChunk { seq: s, tokens: &[7; 61], logits: LogitsRequest::Last }]).unwrap();
    assert_eq!(cache.len(s), Some(64));
}

#[test]
fn model_source_reuses_the_cached_prefix() {
    use gptoss_engine::generator::{GenerateOptions, ModelSource, StopReason, TokenSource};
    use gptoss_engine::{Sampler, SamplingParams};
    let m = model();
    let greedy = || Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 5, stop_tokens: vec![], top_logprobs: 0 };
    let run = |src: &mut ModelSource, prompt: &[u32]| {
        let mut out = Vec::new();
        let g = src.generate(prompt, &opts, &mut |s| {
            out.push(s.token);
            true
        });
        (g.unwrap(), out)
    };
    let prompt: Vec<u32> = reference().tokens[..50].to_vec();
    let mut src = ModelSource::new(&m, 1024, greedy());
    let (g1, out1) = run(&mut src, &prompt);
    assert_eq!((g1.reused_tokens, g1.generated, g1.stop), (0, 5, StopReason::Length));

    // The next prompt extends the last one: everything but the unfed last token is reused.
    let mut next = prompt.clone();
    next.extend_from_slice(&out1);
    next.extend_from_slice(&[7, 8, 9]);
    let (g2, out2) = run(&mut src, &next);
    assert_eq!(g2.reused_tokens, prompt.len() + 4);
    // Same tokens as a fresh source on the same prompt.
    let (_, fresh) = run(&mut ModelSource::new(&m, 1024, greedy()), &next);
    assert_eq!(out2, fresh);

    // A prompt that leaves out what was generated after the last prompt (a chat dropping a
    // finished turn's reasoning) resumes from the end of that prompt.
    let mut chat_like = next.clone();
    chat_like.extend_from_slice(&[11, 12, 13]);
    let (_, _) = run(&mut src, &chat_like);
    let mut diverging = chat_like.clone();
    diverging.extend_from_slice(&[21, 22]);
    let (g5, out5) = run(&mut src, &diverging);
    assert_eq!(g5.reused_tokens, chat_like.len());
    let (_, fresh5) = run(&mut ModelSource::new(&m, 1024, greedy()), &diverging);
    assert_eq!(out5, fresh5);
    // Regenerating an answer to the same prompt rewinds to its end as well.
    let (g6, out6) = run(&mut src, &diverging);
    assert_eq!((g6.reused_tokens, out6), (diverging.len(), out5));
    // A prompt that diverges before the last prompt's end starts over.
    let (g3, _) = run(&mut src, &prompt[..20]);
    assert_eq!(g3.reused_tokens, 0);
    // Asking again for exactly the cached tokens needs no forward pass at all.
    let mut src = ModelSource::new(&m, 1024, greedy());
    let (_, a) = run(&mut src, &prompt);
    let mut again = prompt.clone();
    again.extend_from_slice(&a[..4]);
    let (g4, b) = run(&mut src, &again);
    assert_eq!((g4.reused_tokens, b[0]), (again.len(), a[4]));
}
