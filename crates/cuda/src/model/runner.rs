//! [`CudaRunner`] as a [`Runner`]: sequences, snapshots and the output modes of a forward
//! pass (logits, greedy picks, picks by spec).

use gptoss_engine::model::Trace;
use gptoss_engine::runner::{Runner, Snapshot};
use gptoss_engine::sampler::{PickSpec, Sampled};
use gptoss_engine::{EngineError, Logits, ModelConfig, SeqChunk, SeqId};

use super::{CudaRunner, KernelSet, OutMode, RingSnapshot};
use crate::kv::PAGE_TOKENS;

impl Drop for CudaRunner {
    fn drop(&mut self) {
        // Graphs use the module's kernels: destroyed before the Gpu unloads it.
        self.graphs.clear();
    }
}

impl Runner for CudaRunner {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn device(&self) -> String {
        let k = match self.kernels {
            KernelSet::Fast => "",
            KernelSet::Simple => ", simple kernels",
        };
        format!("cuda:{} ({}{k})", self.gpu.ordinal, self.gpu.facts.name)
    }

    fn max_context(&self) -> usize {
        self.book.max_context()
    }

    fn max_sequences(&self) -> usize {
        self.book.max_sequences()
    }

    fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
        self.book.add()
    }

    fn remove_sequence(&mut self, seq: SeqId) -> bool {
        self.book.remove(seq)
    }

    fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.book.len(seq)
    }

    fn snapshot(&self, seq: SeqId) -> Option<Snapshot> {
        let s = self.book.get(seq)?;
        let kvd = self.cfg.kv_dim();
        let mut rings = Vec::new();
        for kv in &self.kv {
            if let Some(w) = kv.window {
                let at = 4 * (s.slot as usize * w * kvd) as u64;
                let (mut k, mut v) = (vec![0f32; w * kvd], vec![0f32; w * kvd]);
                self.gpu.bind().ok()?;
                self.gpu.download(&mut k, kv.k.ptr + at).ok()?;
                self.gpu.download(&mut v, kv.v.ptr + at).ok()?;
                rings.push(k);
                rings.push(v);
            }
        }
        Some(Snapshot { len: s.len, data: Box::new(RingSnapshot { rings }) })
    }

    fn restore(&mut self, seq: SeqId, snap: &Snapshot) -> bool {
        let Some(r) = snap.data.downcast_ref::<RingSnapshot>() else { return false };
        let Some(s) = self.book.get(seq) else { return false };
        let sliding = self.kv.iter().filter(|k| k.window.is_some()).count();
        if snap.len > s.len || r.rings.len() != 2 * sliding {
            return false;
        }
        let (slot, kvd) = (s.slot as usize, self.cfg.kv_dim());
        if self.gpu.bind().is_err() {
            return false;
        }
        let mut i = 0;
        for kv in &self.kv {
            if let Some(w) = kv.window {
                let at = 4 * (slot * w * kvd) as u64;
                if self.gpu.upload(kv.k.ptr + at, &r.rings[i]).is_err()
                    || self.gpu.upload(kv.v.ptr + at, &r.rings[i + 1]).is_err()
                {
                    return false;
                }
                i += 2;
            }
        }
        self.book.truncate(seq, snap.len)
    }

    fn forward(&mut self, batch: &[SeqChunk]) -> Result<&Logits, EngineError> {
        self.forward_all(batch, None)?;
        Ok(&self.logits)
    }

    fn forward_traced(&mut self, batch: &[SeqChunk], trace: Trace) -> Result<&Logits, EngineError> {
        self.forward_all(batch, Some(trace))?;
        Ok(&self.logits)
    }

    fn take_logits(&mut self) -> Logits {
        let vocab = self.logits.vocab;
        std::mem::replace(&mut self.logits, Logits { vocab, data: Vec::new(), rows: Vec::new() })
    }

    fn restore_logits(&mut self, logits: Logits) {
        self.logits = logits;
    }

    fn cache_bytes(&self) -> usize {
        let kvd = self.cfg.kv_dim();
        let full = self.kv.iter().filter(|k| k.window.is_none()).count();
        let ring_cells: usize = self.kv.iter().filter_map(|k| k.window).sum();
        8 * kvd * (full * self.book.pages_in_use() * PAGE_TOKENS + ring_cells * self.book.sequences())
    }

    fn bytes_per_token(&self) -> u64 {
        self.bytes_per_token
    }

    fn forward_greedy(&mut self, batch: &[SeqChunk]) -> Result<Vec<u32>, EngineError> {
        self.out = OutMode::Greedy;
        self.picked.clear();
        let r = self.forward_all(batch, None);
        self.out = OutMode::Logits;
        r?;
        Ok(std::mem::take(&mut self.picked))
    }

    fn forward_pick(&mut self, batch: &[SeqChunk], picks: &[PickSpec]) -> Result<Vec<Sampled>, EngineError> {
        let rows: usize = batch
            .iter()
            .map(|c| match c.logits {
                gptoss_engine::LogitsRequest::All => c.tokens.len(),
                gptoss_engine::LogitsRequest::Last => 1,
                gptoss_engine::LogitsRequest::None => 0,
            })
            .sum();
        if rows != picks.len() {
            return Err(EngineError::PickCount { rows, picks: picks.len() });
        }
        self.out = OutMode::Pick;
        self.picks.clear();
        self.picks.extend_from_slice(picks);
        self.pick_cursor = 0;
        self.sampled.clear();
        let r = self.forward_all(batch, None);
        self.out = OutMode::Logits;
        r?;
        Ok(std::mem::take(&mut self.sampled))
    }

    fn picks_on_device(&self) -> bool {
        true
    }

    fn read_bandwidth(&mut self) -> Option<f64> {
        crate::probe::read_bandwidth(&mut self.gpu, 10).ok()
    }
}
