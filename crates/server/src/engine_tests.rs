use super::*;

fn p(prompt_len: usize, fed: usize) -> Progress {
    Progress { prompt_len, fed, max_chunk: usize::MAX }
}

#[test]
fn decodes_everyone_then_fills_budget_with_prompts_in_order() {
    let seqs = [p(10, 10), p(1000, 0), p(5, 0), p(3, 3)];
    let w = schedule(&seqs, 64);
    assert_eq!(w, vec![Work::Decode(0), Work::Decode(3), Work::Prefill { index: 1, start: 0, end: 62 }]);
}

#[test]
fn later_prompts_get_what_earlier_ones_leave() {
    let seqs = [p(20, 15), p(100, 0), p(4, 0)];
    let w = schedule(&seqs, 30);
    assert_eq!(w, vec![Work::Prefill { index: 0, start: 15, end: 20 }, Work::Prefill { index: 1, start: 0, end: 25 },]);
}

#[test]
fn a_capped_prompt_leaves_the_budget_to_the_next() {
    let seqs = [Progress { prompt_len: 100, fed: 0, max_chunk: 32 }, p(50, 0)];
    assert_eq!(
        schedule(&seqs, 64),
        vec![Work::Prefill { index: 0, start: 0, end: 32 }, Work::Prefill { index: 1, start: 0, end: 32 }]
    );
}

#[test]
fn every_token_is_scheduled_exactly_once_until_done() {
    // Simulate: prompts of ragged lengths finish prefill in order, never exceeding the budget.
    let mut seqs = vec![p(700, 0), p(3, 0), p(129, 0), p(1, 0)];
    let mut fed_total = 0;
    for _ in 0..10 {
        let w = schedule(&seqs, 256);
        let tokens: usize = w
            .iter()
            .map(|w| match w {
                Work::Decode(_) => 1,
                Work::Prefill { start, end, .. } => end - start,
            })
            .sum();
        assert!(tokens <= 256);
        for w in &w {
            if let Work::Prefill { index, start, end } = *w {
                assert_eq!(start, seqs[index].fed);
                seqs[index].fed = end;
                fed_total += end - start;
            }
        }
    }
    assert_eq!(fed_total, 700 + 3 + 129 + 1);
    assert!(seqs.iter().all(|s| s.fed == s.prompt_len));
}

use std::collections::HashSet;
use std::sync::Mutex;

use gptoss_engine::model::LogitsRow;
use gptoss_engine::{EngineError, Logits};

/// What a [`Fake`] executor did, shared with the test that drives the engine thread.
#[derive(Default)]
struct FakeState {
    live: HashSet<SeqId>,
    most_live: usize,
    /// add_sequence calls refused for want of a slot.
    refused: usize,
    /// Forward passes still to fail with a device error.
    failures: usize,
    /// Steps that had their tokens picked by the executor (`forward_pick`).
    picked_steps: usize,
}

/// Held by a test to keep the engine inside a forward pass.
type Hold = Arc<Mutex<()>>;

/// Every sequence's next token is 3. It has `slots` sequence slots, and says it has
/// `claimed` (more, to test an executor that is wrong about it).
struct Fake {
    state: Arc<Mutex<FakeState>>,
    slots: usize,
    claimed: usize,
    next_id: u64,
    lens: HashMap<SeqId, usize>,
    /// Says it picks tokens on its device.
    picks: bool,
    /// Locked at the start of every forward pass.
    hold: Hold,
    /// Tokens a sequence may hold; past it, the pass is refused before it changes anything.
    max_context: usize,
}

const VOCAB: usize = 8;

fn fake(slots: usize, claimed: usize, failures: usize) -> (Fake, Arc<Mutex<FakeState>>) {
    let state = Arc::new(Mutex::new(FakeState { failures, ..FakeState::default() }));
    let fake = Fake {
        state: state.clone(),
        slots,
        claimed,
        next_id: 0,
        lens: HashMap::new(),
        picks: false,
        hold: Hold::default(),
        max_context: 1024,
    };
    (fake, state)
}

impl Executor for Fake {
    fn vocab(&self) -> usize {
        VOCAB
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn max_sequences(&self) -> usize {
        self.claimed
    }
    fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
        let mut st = self.state.lock().unwrap();
        if st.live.len() >= self.slots {
            st.refused += 1;
            return Err(EngineError::NoSequenceSlot { limit: self.slots });
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        st.live.insert(id);
        st.most_live = st.most_live.max(st.live.len());
        self.lens.insert(id, 0);
        Ok(id)
    }
    fn remove_sequence(&mut self, seq: SeqId) {
        self.state.lock().unwrap().live.remove(&seq);
        self.lens.remove(&seq);
    }
    fn forward(&mut self, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
        drop(self.hold.lock().unwrap_or_else(|e| e.into_inner()));
        gptoss_engine::model::check_batch(batch, VOCAB, self.max_context, |s| self.lens.get(&s).copied())?;
        {
            let mut st = self.state.lock().unwrap();
            if st.failures > 0 {
                st.failures -= 1;
                return Err(EngineError::Device("the GPU fell off the bus".into()));
            }
        }
        let mut out = Logits { vocab: VOCAB, data: Vec::new(), rows: Vec::new() };
        for (item, chunk) in batch.iter().enumerate() {
            let len = self.lens.get_mut(&chunk.seq).ok_or(EngineError::UnknownSequence(chunk.seq.0))?;
            *len += chunk.tokens.len();
            if chunk.logits != LogitsRequest::None {
                let mut row = [f32::NEG_INFINITY; VOCAB];
                row[3] = 0.0;
                out.data.extend_from_slice(&row);
                out.rows.push(LogitsRow { item, position: *len - 1 });
            }
        }
        Ok(out)
    }
    fn cache_bytes(&self) -> usize {
        0
    }
    fn picks_on_device(&self) -> bool {
        self.picks
    }
    fn forward_pick(
        &mut self,
        batch: &[SeqChunk],
        picks: &[gptoss_engine::sampler::PickSpec],
    ) -> Result<Vec<Sampled>, EngineError> {
        self.state.lock().unwrap().picked_steps += 1;
        let logits = self.forward(batch)?;
        assert_eq!(logits.rows.len(), picks.len(), "one pick per row of logits");
        Ok(picks.iter().enumerate().map(|(i, p)| gptoss_engine::sampler::pick_on_host(logits.row(i), p)).collect())
    }
}

#[test]
fn a_device_that_picks_gets_plain_steps_and_the_host_keeps_the_rest() {
    let (mut exec, state) = fake(16, 16, 0);
    exec.picks = true;
    let (handle, thread) = engine(exec, 16);
    let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
    assert_eq!((tokens, reason), (vec![3; 4], Some(FinishReason::Length)));
    let picked = state.lock().unwrap().picked_steps;
    assert_eq!(picked, 4, "the prompt's last chunk and three decodes");
    // A penalty needs the logits on the host: no picks on the device for that request.
    let mut spec = JobSpec::new(vec![1, 2, 3], 4);
    spec.presence_penalty = 0.5;
    let (tokens, _) = wait(handle.submit(spec).unwrap());
    assert_eq!(tokens, vec![3; 4]);
    assert_eq!(state.lock().unwrap().picked_steps, picked);
    drop(handle);
    thread.join().unwrap();
}

fn engine(exec: Fake, max_batch: usize) -> (EngineHandle, std::thread::JoinHandle<()>) {
    engine_queue(exec, max_batch, 64)
}

fn engine_queue(exec: Fake, max_batch: usize, max_queue: usize) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let cfg = EngineConfig { max_batch, max_queue, step_tokens: 64 };
    start(exec, cfg, Arc::new(Metrics::default())).unwrap()
}

fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !pred() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn requests_that_find_a_free_slot_do_not_count_against_the_queue() {
    let (exec, _) = fake(64, 64, 0);
    let hold = exec.hold.clone();
    let (handle, thread) = engine_queue(exec, 16, 4);
    // The engine is held inside a step with one sequence running: 15 slots are free.
    let gate = hold.lock().unwrap();
    let first = handle.submit(JobSpec::new(vec![1, 2], 2)).unwrap();
    wait_until("the first job to run", || handle.running() == 1);
    // 15 take the free slots and 4 the waiting room, all at once, none picked up yet.
    let taken: Vec<_> = (0..19).map(|i| handle.submit(JobSpec::new(vec![1, 2], 2)).map_err(|e| (i, e))).collect();
    let refused: Vec<_> = taken.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused with free slots or waiting room: {refused:?}");
    // Now slots and waiting room are full.
    assert_eq!(handle.submit(JobSpec::new(vec![1, 2], 2)).err(), Some(SubmitError::QueueFull(4)));
    drop(gate);
    for rx in std::iter::once(first).chain(taken.into_iter().map(Result::unwrap)) {
        assert_eq!(wait(rx), (vec![3; 2], Some(FinishReason::Length)));
    }
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn no_waiting_room_still_serves_while_slots_are_free() {
    let (exec, _) = fake(64, 64, 0);
    let (handle, thread) = engine_queue(exec, 2, 0);
    for _ in 0..3 {
        let a = handle.submit(JobSpec::new(vec![1, 2], 2)).expect("a free slot takes the request");
        assert_eq!(wait(a), (vec![3; 2], Some(FinishReason::Length)));
    }
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn a_prompt_outside_the_vocabulary_is_refused_before_it_joins_a_batch() {
    let (exec, state) = fake(16, 16, 0);
    let (handle, thread) = engine(exec, 16);
    let err = handle.submit(JobSpec::new(vec![1, VOCAB as u32, 2], 2)).err();
    assert_eq!(err, Some(SubmitError::OutOfVocabulary { index: 1, id: VOCAB as u32, vocab: VOCAB }));
    assert_eq!(wait(handle.submit(JobSpec::new(vec![1, 2], 2)).unwrap()), (vec![3; 2], Some(FinishReason::Length)));
    drop(handle);
    thread.join().unwrap();
    assert_eq!(state.lock().unwrap().live.len(), 0);
}

#[test]
fn a_sequence_the_executor_refuses_fails_alone_and_its_batch_goes_on() {
    let (mut exec, state) = fake(16, 16, 0);
    exec.max_context = 40;
    let (handle, thread) = engine(exec, 16);
    // Its prompt is longer than the executor takes (the HTTP side refuses such prompts; here
    // the executor's own check is what stops it): it fails when that chunk is fed.
    let innocent = handle.submit(JobSpec::new(vec![1; 4], 30)).unwrap();
    let culprit = handle.submit(JobSpec::new(vec![1; 200], 2)).unwrap();
    match wait(culprit) {
        (tokens, Some(FinishReason::Error(m))) => {
            assert!(tokens.is_empty());
            assert!(m.contains("context overflow"), "{m}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let (tokens, reason) = wait(innocent);
    assert_eq!(reason, Some(FinishReason::Length));
    assert_eq!(tokens.len(), 30);
    drop(handle);
    thread.join().unwrap();
    assert!(state.lock().unwrap().live.is_empty());
}

#[test]
fn abort_ends_every_job_with_its_reason_and_refuses_new_ones() {
    let (exec, state) = fake(16, 16, 0);
    let hold = exec.hold.clone();
    let (handle, thread) = engine_queue(exec, 1, 4);
    let gate = hold.lock().unwrap();
    let running = handle.submit(JobSpec::new(vec![1, 2], 1000)).unwrap();
    wait_until("the job to run", || handle.running() == 1);
    let waiting = handle.submit(JobSpec::new(vec![1, 2], 1000)).unwrap();
    assert_eq!(handle.readiness(), Ok(()));
    handle.abort("the server is shutting down");
    assert_eq!(handle.readiness(), Err(NotReady::ShuttingDown));
    drop(gate);
    for rx in [running, waiting] {
        match wait(rx) {
            (_, Some(FinishReason::Aborted(m))) => assert_eq!(m, "the server is shutting down"),
            other => panic!("expected the abort, got {other:?}"),
        }
    }
    assert_eq!(handle.submit(JobSpec::new(vec![1, 2], 2)).err(), Some(SubmitError::Stopped));
    assert_eq!(handle.waiting(), 0);
    drop(handle);
    thread.join().unwrap();
    assert!(state.lock().unwrap().live.is_empty());
}

#[test]
fn readiness_says_when_the_engine_thread_is_gone() {
    let (exec, _) = fake(16, 16, 0);
    let (handle, thread) = engine(exec, 16);
    assert_eq!(handle.readiness(), Ok(()));
    let shared = handle.shared.clone();
    let probe = EngineHandle { tx: mpsc::channel().0, ..handle.clone() };
    drop(handle);
    thread.join().unwrap();
    assert!(!shared.alive.load(Ordering::SeqCst));
    assert_eq!(probe.readiness(), Err(NotReady::Stopped));
}

/// The tokens a job got, and how it finished.
fn wait(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, Option<FinishReason>) {
    let mut tokens = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token(s) => tokens.push(s.token),
            Event::Finished(f) => return (tokens, Some(f.reason)),
            Event::PromptLogprobs(_) => {}
        }
    }
    (tokens, None)
}

#[test]
fn a_device_error_fails_its_batch_and_the_server_goes_on() {
    let (exec, state) = fake(16, 16, 1);
    let (handle, thread) = engine(exec, 16);
    let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
    assert!(tokens.is_empty());
    match reason {
        Some(FinishReason::Error(m)) => assert!(m.contains("the GPU fell off the bus"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Its sequence was freed, and the next request runs as if nothing happened.
    let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
    assert_eq!((tokens, reason), (vec![3; 4], Some(FinishReason::Length)));
    drop(handle);
    thread.join().unwrap();
    assert!(state.lock().unwrap().live.is_empty());
}

#[test]
fn never_runs_more_sequences_than_the_executor_has_slots() {
    let (exec, state) = fake(2, 2, 0);
    let (handle, thread) = engine(exec, 8);
    let jobs: Vec<_> = (0..5).map(|_| handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()).collect();
    for rx in jobs {
        assert_eq!(wait(rx), (vec![3; 3], Some(FinishReason::Length)));
    }
    drop(handle);
    thread.join().unwrap();
    // Held to the executor's slots by the batch limit, not by refusals.
    let st = state.lock().unwrap();
    assert_eq!((st.most_live, st.refused), (2, 0));
}

#[test]
fn a_job_without_a_slot_waits_for_one_or_fails_when_none_can_free() {
    // The executor claims more slots than it has: jobs past its one slot wait their turn.
    let (exec, state) = fake(1, usize::MAX, 0);
    let (handle, thread) = engine(exec, 8);
    let jobs: Vec<_> = (0..3).map(|_| handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()).collect();
    for rx in jobs {
        assert_eq!(wait(rx), (vec![3; 3], Some(FinishReason::Length)));
    }
    drop(handle);
    thread.join().unwrap();
    assert_eq!(state.lock().unwrap().most_live, 1);

    // No slot at all: nothing running will ever free one, so the job fails at once.
    let (exec, _) = fake(0, usize::MAX, 0);
    let (handle, thread) = engine(exec, 8);
    match wait(handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()) {
        (tokens, Some(FinishReason::Error(m))) => {
            assert!(tokens.is_empty());
            assert!(m.contains("sequence slots"), "{m}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    drop(handle);
    thread.join().unwrap();
}

/// The tiny fixture model on the CPU, with a prefix cache of `prefix_bytes` (0: none).
fn tiny_model(prefix_bytes: usize) -> crate::executor::ModelExecutor {
    use gptoss_engine::{CpuRunner, Model, Runner};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/hf");
    let mut runner = CpuRunner::new(Model::load(&path).unwrap(), 2048);
    assert!(runner.set_prefix_cache_bytes(prefix_bytes));
    crate::executor::ModelExecutor::new(Box::new(runner))
}

/// The tokens a job got, and its finish.
fn wait_finish(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, Finish) {
    let mut tokens = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token(s) => tokens.push(s.token),
            Event::Finished(f) => return (tokens, f),
            Event::PromptLogprobs(_) => {}
        }
    }
    panic!("the job ended without finishing");
}

#[test]
fn a_shared_prefix_is_served_from_the_cache_with_the_same_result() {
    let prompt: Vec<u32> = (0..700u32).map(|i| i * 37 % 1000).collect();
    let job = |prompt: &[u32], seed: u64| {
        let mut spec = JobSpec::new(prompt.to_vec(), 12);
        spec.sampling = SamplingParams { seed: Some(seed), ..Default::default() };
        spec
    };
    let metrics = Arc::new(Metrics::default());
    let cfg = EngineConfig { max_batch: 4, max_queue: 8, step_tokens: 200 };
    let (handle, thread) = start(tiny_model(64 << 20), cfg, metrics.clone()).unwrap();
    let (first, f1) = wait_finish(handle.submit(job(&prompt, 7)).unwrap());
    assert_eq!(f1.cached_tokens, 0);
    // The same prompt again: two 256-token blocks come from the cache, the rest is computed.
    let (again, f2) = wait_finish(handle.submit(job(&prompt, 7)).unwrap());
    assert_eq!((f2.cached_tokens, again.clone()), (512, first.clone()));
    // A longer prompt sharing the first 600 tokens, beside one that shares nothing.
    let mut longer = prompt[..600].to_vec();
    longer.extend((0..300u32).map(|i| i * 11 % 900));
    let other: Vec<u32> = (0..300u32).map(|i| i * 13 % 700).collect();
    let (a, b) = (handle.submit(job(&longer, 3)).unwrap(), handle.submit(job(&other, 5)).unwrap());
    let ((longer_tokens, f3), (other_tokens, f4)) = (wait_finish(a), wait_finish(b));
    assert_eq!((f3.cached_tokens, f4.cached_tokens), (512, 0));
    // Every prompt position's log-probabilities are computed, never cached.
    let mut echo = job(&prompt, 7);
    echo.prompt_logprobs = true;
    let (_, f5) = wait_finish(handle.submit(echo).unwrap());
    assert_eq!(f5.cached_tokens, 0);
    wait_until("the stats to be published", || metrics.prefix_cache().hit_tokens == 1024);
    let stats = metrics.prefix_cache();
    assert!(stats.bytes > 0 && stats.bytes <= 64 << 20, "{stats:?}");
    assert!(metrics.render().contains("gptoss_prefix_cache_hit_tokens_total 1024"));
    drop(handle);
    thread.join().unwrap();

    // Without a cache: the same tokens for the same requests.
    let (handle, thread) = start(tiny_model(0), cfg, Arc::new(Metrics::default())).unwrap();
    for (p, seed, want) in [(&prompt, 7, &first), (&longer, 3, &longer_tokens), (&other, 5, &other_tokens)] {
        let (got, f) = wait_finish(handle.submit(job(p, seed)).unwrap());
        assert_eq!((&got, f.cached_tokens), (want, 0));
    }
    drop(handle);
    thread.join().unwrap();
}
