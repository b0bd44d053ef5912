//! Kernel timings of a decoded token, for the device check: each kernel alone between two
//! events, with the bytes it reads.

use gptoss_engine::{EngineError, SeqChunk};

use super::CudaRunner;
use crate::CudaError;

impl CudaRunner {
    /// Time and GB/s of each kernel of a decoded token (layer totals over all layers), at a
    /// context of 1024, against `bw` bytes/s: lines for a table.
    pub fn time_kernels(&mut self, bw: f64) -> Result<Vec<String>, CudaError> {
        let toks: Vec<u32> = (0..1024u32).map(|i| (i * 7919) % 1000).collect();
        let ee = |e: EngineError| CudaError::Driver(e.to_string());
        let s = self.book.add().map_err(ee)?;
        self.forward_all(&[SeqChunk { seq: s, tokens: &toks, logits: gptoss_engine::LogitsRequest::None }], None)
            .map_err(ee)?;
        self.prof = Some(Default::default());
        let steps = 8;
        let mut r = Ok(());
        for &tok in &toks[..steps] {
            let t = [tok];
            r = r.and(
                self.forward_all(&[SeqChunk { seq: s, tokens: &t, logits: gptoss_engine::LogitsRequest::Last }], None)
                    .map_err(ee),
            );
        }
        let prof = self.prof.take().unwrap_or_default();
        self.book.remove(s);
        r?;
        let mut rows: Vec<_> = prof.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let total: f64 = rows.iter().map(|r| r.1 .0).sum::<f64>() / steps as f64;
        let mut out =
            vec![format!("sum of kernel times per token: {:.1} us (kernels run one at a time here)", total * 1e3)];
        for (label, (ms, calls, bytes)) in rows {
            let per_step = ms / steps as f64;
            let rate = if bytes > 0 { bytes as f64 / (ms / 1e3) } else { 0.0 };
            out.push(format!(
                "{label}: {:.1} us per token ({} calls), {}",
                per_step * 1e3,
                calls / steps,
                if bytes > 0 {
                    format!("{:.0} GB/s = {:.0}% of the read bandwidth", rate / 1e9, 100.0 * rate / bw)
                } else {
                    "-".into()
                }
            ));
        }
        Ok(out)
    }
}
