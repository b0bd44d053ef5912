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
