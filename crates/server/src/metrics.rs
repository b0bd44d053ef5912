//! Counters and histograms for `GET /metrics`, in Prometheus' text format. Written by the
//! engine thread and the HTTP handlers; reading never blocks the engine for long.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use gptoss_engine::prefix_cache::PrefixCacheStats;

pub struct Histogram {
    /// Upper bounds, ascending; +Inf is implied.
    bounds: &'static [f64],
    data: Mutex<HistogramData>,
}

struct HistogramData {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, data: Mutex::new(HistogramData { counts: vec![0; bounds.len()], sum: 0.0, count: 0 }) }
    }

    pub fn observe(&self, v: f64) {
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                d.counts[i] += 1;
            }
        }
        d.sum += v;
        d.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&d.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ =
            writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", d.count, d.sum, d.count);
    }
}

const LATENCY_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub struct Metrics {
    /// (endpoint, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub steps: AtomicU64,
    /// Grammar masks computed for constrained decoding, and the time spent on them.
    pub constraint_masks: AtomicU64,
    pub constraint_mask_ns: AtomicU64,
    /// Tokens sampled under a constraint, and the time their sampling took in all.
    pub constraint_samples: AtomicU64,
    pub constraint_sample_ns: AtomicU64,
    /// Requests accepted but not yet admitted to the running batch.
    pub queue_depth: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    pub kv_cache_bytes: AtomicUsize,
    prefix_cache: Mutex<PrefixCacheStats>,
    /// Sequences per forward step.
    pub batch_size: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            constraint_masks: AtomicU64::new(0),
            constraint_mask_ns: AtomicU64::new(0),
            constraint_samples: AtomicU64::new(0),
            constraint_sample_ns: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_cache_bytes: AtomicUsize::new(0),
            prefix_cache: Mutex::new(PrefixCacheStats::default()),
            batch_size: Histogram::new(BATCH_BOUNDS),
            time_to_first_token: Histogram::new(LATENCY_BOUNDS),
            inter_token_latency: Histogram::new(LATENCY_BOUNDS),
            request_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn request_done(&self, endpoint: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn set_prefix_cache(&self, stats: PrefixCacheStats) {
        *self.prefix_cache.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    pub fn prefix_cache(&self) -> PrefixCacheStats {
        *self.prefix_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP gptoss_requests_total HTTP requests by endpoint and status.\n");
        out.push_str("# TYPE gptoss_requests_total counter\n");
        for ((endpoint, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "gptoss_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "gptoss_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gptoss_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gptoss_requests_cancelled_total",
            "Generations ended early: the client went away or a stop string was met.",
            self.cancelled.load(Ordering::Relaxed),
        );
        counter(&mut out, "gptoss_engine_steps_total", "Batched forward steps.", self.steps.load(Ordering::Relaxed));
        counter(
            &mut out,
            "gptoss_constraint_masks_total",
            "Token masks computed from a grammar (constrained decoding).",
            self.constraint_masks.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP gptoss_constraint_mask_seconds_total Time spent computing grammar masks.\n\
             # TYPE gptoss_constraint_mask_seconds_total counter\ngptoss_constraint_mask_seconds_total {}",
            self.constraint_mask_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        counter(
            &mut out,
            "gptoss_constrained_tokens_total",
            "Tokens sampled under a constraint (a response format, a strict tool's arguments).",
            self.constraint_samples.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP gptoss_constrained_sampling_seconds_total Time sampling constrained tokens took in all (logits copy, mask, draw).\n\
             # TYPE gptoss_constrained_sampling_seconds_total counter\ngptoss_constrained_sampling_seconds_total {}",
            self.constraint_sample_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        gauge(
            &mut out,
            "gptoss_queue_depth",
            "Requests waiting for a batch slot.",
            self.queue_depth.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gptoss_running_sequences",
            "Sequences in the running batch.",
            self.running.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gptoss_kv_cache_bytes",
            "Bytes held by the KV cache.",
            self.kv_cache_bytes.load(Ordering::Relaxed),
        );
        let pc = self.prefix_cache();
        gauge(&mut out, "gptoss_prefix_cache_bytes", "Bytes held by the prefix cache.", pc.bytes);
        gauge(&mut out, "gptoss_prefix_cache_capacity_bytes", "The prefix cache's bound (0: off).", pc.capacity_bytes);
        gauge(&mut out, "gptoss_prefix_cache_blocks", "Token blocks held by the prefix cache.", pc.blocks);
        counter(&mut out, "gptoss_prefix_cache_queries_total", "Prompts looked up in the prefix cache.", pc.lookups);
        counter(
            &mut out,
            "gptoss_prefix_cache_query_tokens_total",
            "Prompt tokens looked up in the prefix cache.",
            pc.query_tokens,
        );
        counter(
            &mut out,
            "gptoss_prefix_cache_hit_tokens_total",
            "Prompt tokens served from the prefix cache instead of computed.",
            pc.hit_tokens,
        );
        counter(
            &mut out,
            "gptoss_prefix_cache_evicted_blocks_total",
            "Blocks evicted from the prefix cache to stay within its bound.",
            pc.evicted_blocks,
        );
        let _ = writeln!(
            out,
            "# HELP gptoss_prefix_cache_hit_rate Share of looked-up prompt tokens served from the prefix cache.\n\
             # TYPE gptoss_prefix_cache_hit_rate gauge\ngptoss_prefix_cache_hit_rate {}",
            pc.hit_rate()
        );
        self.batch_size.write(&mut out, "gptoss_batch_size", "Sequences in each forward step.");
        self.time_to_first_token.write(
            &mut out,
            "gptoss_time_to_first_token_seconds",
            "From arrival to the first token.",
        );
        self.inter_token_latency.write(
            &mut out,
            "gptoss_inter_token_latency_seconds",
            "Between consecutive tokens of one sequence.",
        );
        self.request_latency.write(&mut out, "gptoss_request_duration_seconds", "From arrival to the last token.");
        out
    }
}
