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
    for (i, want) in wb.iter().enumerate() {
        assert_eq!((l.rows[1 + i].item, l.rows[1 + i].position), (1, i));
        assert!(same_bits(l.row(1 + i), want));
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

    type Case<'a> = (Vec<SeqChunk<'a>>, fn(&EngineError) -> bool);
    let cases: Vec<Case> = vec![
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
        let err = m.forward(&mut cache, &batch).expect_err("must fail");
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
    use gptoss_engine::{CpuRunner, Sampler, SamplingParams};
    // Two runners: `fresh` answers the same prompts from an empty cache each time.
    let mut runner = CpuRunner::new(model(), 1024);
    let mut fresh_runner = CpuRunner::new(model(), 1024);
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
    let mut fresh = |prompt: &[u32]| run(&mut ModelSource::new(&mut fresh_runner, greedy()).unwrap(), prompt);
    let prompt: Vec<u32> = reference().tokens[..50].to_vec();
    let mut src = ModelSource::new(&mut runner, greedy()).unwrap();
    let (g1, out1) = run(&mut src, &prompt);
    assert_eq!((g1.reused_tokens, g1.generated, g1.stop), (0, 5, StopReason::Length));

    // The next prompt extends the last one: everything but the unfed last token is reused.
    let mut next = prompt.clone();
    next.extend_from_slice(&out1);
    next.extend_from_slice(&[7, 8, 9]);
    let (g2, out2) = run(&mut src, &next);
    assert_eq!(g2.reused_tokens, prompt.len() + 4);
    // Same tokens as a fresh source on the same prompt.
    let (_, fresh2) = fresh(&next);
    assert_eq!(out2, fresh2);

    // A prompt that leaves out what was generated after the last prompt (a chat dropping a
    // finished turn's reasoning) resumes from the end of that prompt.
    let mut chat_like = next.clone();
    chat_like.extend_from_slice(&[11, 12, 13]);
    let (_, _) = run(&mut src, &chat_like);
    let mut diverging = chat_like.clone();
    diverging.extend_from_slice(&[21, 22]);
    let (g5, out5) = run(&mut src, &diverging);
    assert_eq!(g5.reused_tokens, chat_like.len());
    let (_, fresh5) = fresh(&diverging);
    assert_eq!(out5, fresh5);
    // Regenerating an answer to the same prompt rewinds to its end as well.
    let (g6, out6) = run(&mut src, &diverging);
    assert_eq!((g6.reused_tokens, out6), (diverging.len(), out5));
    // A prompt that diverges before the last prompt's end starts over.
    let (g3, _) = run(&mut src, &prompt[..20]);
    assert_eq!(g3.reused_tokens, 0);
    // Asking again for exactly the cached tokens needs no forward pass at all.
    drop(src);
    let mut src = ModelSource::new(&mut runner, greedy()).unwrap();
    let (_, a) = run(&mut src, &prompt);
    let mut again = prompt.clone();
    again.extend_from_slice(&a[..4]);
    let (g4, b) = run(&mut src, &again);
    assert_eq!((g4.reused_tokens, b[0]), (again.len(), a[4]));
}

/// A runner with one sequence slot whose next forward pass can be made to fail as a device
/// fault would: after the cache took the tokens ([`AFTER`]), or with the length unchanged but
/// the contents unknown ([`BEFORE`]).
const AFTER: u8 = 1;
const BEFORE: u8 = 2;

struct Flaky {
    inner: gptoss_engine::CpuRunner,
    /// Shared, so a test can arm it while a source borrows the runner.
    fail_next: std::sync::Arc<std::sync::atomic::AtomicU8>,
    live: usize,
}

impl gptoss_engine::Runner for Flaky {
    fn config(&self) -> &gptoss_engine::ModelConfig {
        self.inner.config()
    }
    fn device(&self) -> String {
        "flaky".into()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn max_sequences(&self) -> usize {
        1
    }
    fn add_sequence(&mut self) -> Result<gptoss_engine::SeqId, EngineError> {
        if self.live == 1 {
            return Err(EngineError::NoSequenceSlot { limit: 1 });
        }
        self.live += 1;
        self.inner.add_sequence()
    }
    fn remove_sequence(&mut self, seq: gptoss_engine::SeqId) -> bool {
        let removed = self.inner.remove_sequence(seq);
        self.live -= usize::from(removed);
        removed
    }
    fn seq_len(&self, seq: gptoss_engine::SeqId) -> Option<usize> {
        self.inner.seq_len(seq)
    }
    fn snapshot(&self, seq: gptoss_engine::SeqId) -> Option<gptoss_engine::Snapshot> {
        self.inner.snapshot(seq)
    }
    fn restore(&mut self, seq: gptoss_engine::SeqId, snap: &gptoss_engine::Snapshot) -> bool {
        self.inner.restore(seq, snap)
    }
    fn forward(&mut self, batch: &[SeqChunk]) -> Result<&gptoss_engine::Logits, EngineError> {
        let fail = self.fail_next.swap(0, std::sync::atomic::Ordering::SeqCst);
        if fail != 0 {
            if fail == AFTER {
                self.inner.forward(batch)?;
            }
            return Err(EngineError::Device("injected fault".into()));
        }
        self.inner.forward(batch)
    }
    fn forward_traced(
        &mut self,
        batch: &[SeqChunk],
        trace: gptoss_engine::Trace,
    ) -> Result<&gptoss_engine::Logits, EngineError> {
        self.inner.forward_traced(batch, trace)
    }
    fn take_logits(&mut self) -> gptoss_engine::Logits {
        self.inner.take_logits()
    }
    fn restore_logits(&mut self, logits: gptoss_engine::Logits) {
        self.inner.restore_logits(logits)
    }
    fn cache_bytes(&self) -> usize {
        self.inner.cache_bytes()
    }
    fn bytes_per_token(&self) -> u64 {
        self.inner.bytes_per_token()
    }
}

#[test]
fn model_source_starts_over_after_a_device_fault_and_frees_its_slot() {
    use gptoss_engine::generator::{GenerateOptions, ModelSource, TokenSource};
    use gptoss_engine::{CpuRunner, Runner, Sampler, SamplingParams};
    let greedy = || Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 4, stop_tokens: vec![], top_logprobs: 0 };
    let run = |src: &mut ModelSource, prompt: &[u32]| {
        let mut out = Vec::new();
        let g = src.generate(prompt, &opts, &mut |s| {
            out.push(s.token);
            true
        });
        g.map(|g| (g, out))
    };
    let prompt: Vec<u32> = reference().tokens[..40].to_vec();
    let (_, expected) =
        run(&mut ModelSource::new(&mut CpuRunner::new(model(), 256), greedy()).unwrap(), &prompt).unwrap();

    let fail = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let mut runner = Flaky { inner: CpuRunner::new(model(), 256), fail_next: fail.clone(), live: 0 };
    {
        let mut src = ModelSource::new(&mut runner, greedy()).unwrap();
        for when in [AFTER, BEFORE] {
            run(&mut src, &prompt[..30]).unwrap();
            // The fault hits the prompt's new tokens.
            fail.store(when, std::sync::atomic::Ordering::SeqCst);
            assert!(matches!(run(&mut src, &prompt), Err(EngineError::Device(_))));
            // Nothing cached is trusted after it: the source starts over (in the runner's only
            // slot) and answers as a fresh source does.
            let (g, out) = run(&mut src, &prompt).unwrap();
            assert_eq!((g.reused_tokens, out), (0, expected.clone()));
        }
    }
    // Dropping the source gave its slot back.
    assert_eq!(runner.live, 0);
    assert!(runner.add_sequence().is_ok());
}

/// A CPU runner that says it picks tokens on its device: ModelSource then decodes through
/// `forward_pick` (the default, the host twin of the GPU's pick) and never sees the logits
/// after a generated token.
struct Picking(gptoss_engine::CpuRunner);

impl gptoss_engine::Runner for Picking {
    fn config(&self) -> &gptoss_engine::ModelConfig {
        self.0.config()
    }
    fn device(&self) -> String {
        "picking cpu".into()
    }
    fn max_context(&self) -> usize {
        self.0.max_context()
    }
    fn max_sequences(&self) -> usize {
        self.0.max_sequences()
    }
    fn add_sequence(&mut self) -> Result<gptoss_engine::SeqId, EngineError> {
        self.0.add_sequence()
    }
    fn remove_sequence(&mut self, seq: gptoss_engine::SeqId) -> bool {
        self.0.remove_sequence(seq)
    }
    fn seq_len(&self, seq: gptoss_engine::SeqId) -> Option<usize> {
        self.0.seq_len(seq)
    }
    fn snapshot(&self, seq: gptoss_engine::SeqId) -> Option<gptoss_engine::Snapshot> {
        self.0.snapshot(seq)
    }
    fn restore(&mut self, seq: gptoss_engine::SeqId, snap: &gptoss_engine::Snapshot) -> bool {
        self.0.restore(seq, snap)
    }
    fn forward(&mut self, batch: &[SeqChunk]) -> Result<&gptoss_engine::Logits, EngineError> {
        self.0.forward(batch)
    }
    fn forward_traced(
        &mut self,
        batch: &[SeqChunk],
        trace: gptoss_engine::Trace,
    ) -> Result<&gptoss_engine::Logits, EngineError> {
        self.0.forward_traced(batch, trace)
    }
    fn take_logits(&mut self) -> gptoss_engine::Logits {
        self.0.take_logits()
    }
    fn restore_logits(&mut self, logits: gptoss_engine::Logits) {
        self.0.restore_logits(logits)
    }
    fn cache_bytes(&self) -> usize {
        self.0.cache_bytes()
    }
    fn bytes_per_token(&self) -> u64 {
        self.0.bytes_per_token()
    }
    fn picks_on_device(&self) -> bool {
        true
    }
}

#[test]
fn model_source_on_a_picking_runner_generates_what_the_host_would() {
    use gptoss_engine::generator::{GenerateOptions, ModelSource, TokenSource};
    use gptoss_engine::{CpuRunner, Sampler, SamplingParams};
    let greedy = || Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 6, stop_tokens: vec![], top_logprobs: 2 };
    let mut host = CpuRunner::new(model(), 1024);
    let mut picking = Picking(CpuRunner::new(model(), 1024));
    let mut a = ModelSource::new(&mut host, greedy()).unwrap();
    let mut b = ModelSource::new(&mut picking, greedy()).unwrap();
    let run = |src: &mut ModelSource, prompt: &[u32]| {
        let mut out = Vec::new();
        let g = src
            .generate(prompt, &opts, &mut |s| {
                out.push((s.token, s.top_logprobs.len()));
                true
            })
            .unwrap();
        (g, out)
    };
    // A conversation: each prompt extends the last with what was generated and more, then
    // one leaves the generation out (a rewind), then one repeats exactly the cached tokens.
    let mut prompt: Vec<u32> = reference().tokens[..40].to_vec();
    for turn in 0..4 {
        let (ga, oa) = run(&mut a, &prompt);
        let (gb, ob) = run(&mut b, &prompt);
        assert_eq!(oa, ob, "turn {turn}");
        assert!(ob.iter().all(|&(_, n)| n == 2), "alternatives reported");
        assert_eq!(ga.generated, gb.generated);
        match turn {
            0 => prompt.extend(oa.iter().map(|&(t, _)| t).chain([7, 8])),
            1 => prompt.extend([3, 4, 5]),
            _ => prompt.extend(oa[..5].iter().map(|&(t, _)| t)),
        }
    }
}

#[test]
fn prefix_cached_sequences_give_the_same_bits_as_computing_alone() {
    use gptoss_engine::{CpuRunner, Runner};
    let m = model();
    let base = reference().tokens;
    // 700 tokens: the reference text, then itself again.
    let tokens: Vec<u32> = base.iter().chain(base.iter()).chain(base.iter()).copied().take(700).collect();
    let want = alone(&m, &tokens[..650]);
    let mut runner = CpuRunner::new(m, 4096);
    assert!(runner.set_prefix_cache_bytes(1 << 30));
    // The writer feeds its prompt in chunks that straddle both block boundaries.
    let a = runner.add_sequence().unwrap();
    let mut start = 0;
    for n in [100, 300, 1, 299] {
        let chunk = &tokens[start..start + n];
        runner.forward(&[SeqChunk { seq: a, tokens: chunk, logits: LogitsRequest::None }]).unwrap();
        start += n;
    }
    assert_eq!(runner.prefix_cache_stats().blocks, 2);
    // A reader batched beside another sequence takes both blocks and computes the rest.
    let b = runner.add_sequence().unwrap();
    assert_eq!(runner.attach_prefix(b, &tokens[..650]), 512);
    let c = runner.add_sequence().unwrap();
    let batch = [
        SeqChunk { seq: c, tokens: &tokens[3..40], logits: LogitsRequest::Last },
        SeqChunk { seq: b, tokens: &tokens[512..649], logits: LogitsRequest::All },
    ];
    let l = runner.forward(&batch).unwrap();
    let rows: Vec<usize> = (0..l.rows.len()).filter(|&k| l.rows[k].item == 1).collect();
    assert_eq!(rows.len(), 137);
    for (i, &k) in rows.iter().enumerate() {
        assert_eq!(l.rows[k].position, 512 + i);
        assert!(same_bits(l.row(k), &want[512 + i]), "position {}", 512 + i);
    }
    // And decoding on from there.
    let l = runner.forward(&[SeqChunk { seq: b, tokens: &tokens[649..650], logits: LogitsRequest::Last }]).unwrap();
    assert!(same_bits(l.row(0), &want[649]));
    let s = runner.prefix_cache_stats();
    assert_eq!((s.lookups, s.hit_tokens), (1, 512));
}

#[test]
fn model_source_starts_over_from_the_prefix_cache() {
    use gptoss_engine::generator::{GenerateOptions, ModelSource, TokenSource};
    use gptoss_engine::{CpuRunner, Runner, Sampler, SamplingParams};
    let greedy = || Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 4, stop_tokens: vec![], top_logprobs: 0 };
    let base = reference().tokens;
    let prompt: Vec<u32> = base.iter().chain(base.iter()).copied().take(560).collect();
    // An earlier turn edited: the same first 300 tokens, then different ones.
    let mut edited = prompt[..300].to_vec();
    edited.extend_from_slice(&base[..40]);
    let run = |runner: &mut CpuRunner, prompts: &[&[u32]]| {
        let mut src = ModelSource::new(runner, greedy()).unwrap();
        let mut last = (0, Vec::new());
        for p in prompts {
            let mut out = Vec::new();
            let g = src.generate(p, &opts, &mut |s| {
                out.push(s.token);
                true
            });
            last = (g.unwrap().reused_tokens, out);
        }
        last
    };
    let mut cached = CpuRunner::new(model(), 1024);
    assert!(cached.set_prefix_cache_bytes(1 << 30));
    let (reused, out) = run(&mut cached, &[&prompt, &edited]);
    assert_eq!(reused, 256, "the edited prompt's first block came from the cache");
    let (fresh_reused, fresh) = run(&mut CpuRunner::new(model(), 1024), &[&prompt, &edited]);
    assert_eq!((fresh_reused, fresh), (0, out));
}
