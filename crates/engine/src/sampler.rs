//! Logits to a token: greedy, temperature, top-k, top-p, min-p, reproducible for a seed, with
//! the log-probability of the chosen token and of the top-N alternatives.
//!
//! Log-probabilities are those of the model's own distribution (log-softmax of the raw
//! logits), whatever the sampling settings, as OpenAI's API reports them.

use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Same seed, same logits: same tokens.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: None }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// log p(token) under the model.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top_logprobs: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (token, value) candidates, reused between calls.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(SamplingError::Temperature(params.temperature));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(SamplingError::TopP(params.top_p));
        }
        if !(0.0..=1.0).contains(&params.min_p) {
            return Err(SamplingError::MinP(params.min_p));
        }
        let rng = Rng::new(params.seed.unwrap_or_else(Rng::entropy_seed));
        Ok(Sampler { params, rng, cand: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token; `top_n` alternatives are reported with their log-probabilities.
    pub fn sample(&mut self, logits: &[f32], top_n: usize) -> Sampled {
        let token =
            if self.params.temperature == 0.0 || self.params.top_k == 1 { argmax(logits) } else { self.draw(logits) };
        let lse = log_sum_exp(logits);
        Sampled { token, logprob: logprob(logits[token as usize], lse), top_logprobs: top_logprobs(logits, top_n, lse) }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(clean(z)));
        if !max.is_finite() || !inv_t.is_finite() {
            // An infinite logit or a vanishing temperature leaves one possible token.
            return argmax(logits);
        }
        // Weights relative to the most likely token, which has weight exactly 1.
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &z)| (i as u32, ((clean(z) - max) * inv_t).exp())));
        let by_weight_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_weight_desc);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_weight_desc);
        let mut keep = self.cand.len();
        if p.top_p < 1.0 {
            let total: f64 = self.cand.iter().map(|c| c.1 as f64).sum();
            let mut cum = 0.0f64;
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.1 as f64 / total;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            // The best candidate has weight 1, so the threshold is min_p itself.
            keep = keep.min(self.cand.iter().take_while(|c| c.1 >= p.min_p).count().max(1));
        }
        self.cand.truncate(keep);
        let kept: f64 = self.cand.iter().map(|c| c.1 as f64).sum();
        let mut u = self.rng.next_f64() * kept;
        for c in &self.cand {
            u -= c.1 as f64;
            if u < 0.0 {
                return c.0;
            }
        }
        self.cand[0].0
    }
}

/// NaN logits count as impossible.
fn clean(z: f32) -> f32 {
    if z.is_nan() {
        f32::NEG_INFINITY
    } else {
        z
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &z) in logits.iter().enumerate() {
        if clean(z) > clean(logits[best]) {
            best = i;
        }
    }
    best as u32
}

pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(clean(z)));
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&z| ((clean(z) - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// log p(z) given the log-sum-exp of all logits; an infinite logit takes all the mass.
pub fn logprob(z: f32, lse: f32) -> f32 {
    let z = clean(z);
    if lse == f32::INFINITY {
        return if z == f32::INFINITY { 0.0 } else { f32::NEG_INFINITY };
    }
    if lse == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    z - lse
}

/// log p of every token would be `logits - lse`; this returns the n best, best first.
pub fn top_logprobs(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| clean(logits[*b as usize]).total_cmp(&clean(logits[*a as usize])).then(a.cmp(b));
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx.into_iter().map(|i| (i, clean(logits[i as usize]) - lse)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect()
    }

    fn sampler(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams { temperature, top_k, top_p, min_p, seed: Some(seed) }).unwrap()
    }

    #[test]
    fn greedy_takes_the_argmax_with_its_logprob() {
        let z = logits();
        let s = sampler(0.0, 0, 1.0, 0.0, 1).sample(&z, 3);
        assert_eq!(s.token, argmax(&z));
        assert_eq!(z[s.token as usize], 9.99);
        assert_eq!(s.top_logprobs[0].0, s.token);
        assert!((s.top_logprobs[0].1 - s.logprob).abs() < 1e-6);
        assert!(s.top_logprobs[0].1 > s.top_logprobs[1].1 && s.top_logprobs[1].1 > s.top_logprobs[2].1);
        let total: f64 = z.iter().map(|&x| ((x - log_sum_exp(&z)) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_seed_reproduces_a_run() {
        let z = logits();
        let run = |seed| {
            let mut s = sampler(1.0, 0, 1.0, 0.0, seed);
            (0..50).map(|_| s.sample(&z, 0).token).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let z = logits();
        let mut ranked: Vec<u32> = (0..1000).collect();
        ranked.sort_by(|a, b| z[*b as usize].total_cmp(&z[*a as usize]));
        let top5 = &ranked[..5];
        let mut s = sampler(5.0, 5, 1.0, 0.0, 9);
        let seen: std::collections::HashSet<u32> = (0..500).map(|_| s.sample(&z, 0).token).collect();
        assert!(seen.iter().all(|t| top5.contains(t)) && seen.len() == 5, "{seen:?}");

        // Logits step by 0.01 per rank: at T=0.01 the probabilities fall by e per rank, so
        // top_p 0.7 keeps the first two ranks (0.632, then 0.865).
        let mut s = sampler(0.01, 0, 0.7, 0.0, 9);
        let seen: std::collections::HashSet<u32> = (0..500).map(|_| s.sample(&z, 0).token).collect();
        assert_eq!(seen, ranked[..2].iter().copied().collect());

        // min_p 0.3 keeps ranks whose probability is at least 0.3 of the best: e^0, e^-1.
        let mut s = sampler(0.01, 0, 1.0, 0.3, 9);
        let seen: std::collections::HashSet<u32> = (0..500).map(|_| s.sample(&z, 0).token).collect();
        assert_eq!(seen, ranked[..2].iter().copied().collect());
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let z = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut s = sampler(1.0, 0, 1.0, 0.0, 5);
        let ones = (0..20_000).filter(|_| s.sample(&z, 0).token == 1).count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.015, "{ones}");
    }

    #[test]
    fn non_finite_logits_and_tiny_temperatures() {
        let mut s = sampler(1.0, 0, 1.0, 0.0, 1);
        let r = s.sample(&[0.0, f32::INFINITY, 0.0, f32::NAN], 2);
        assert_eq!((r.token, r.logprob), (1, 0.0));
        assert_eq!(r.top_logprobs[1].1, f32::NEG_INFINITY);
        let r = s.sample(&[f32::NEG_INFINITY; 4], 0);
        assert_eq!((r.token, r.logprob), (0, f32::NEG_INFINITY));
        let r = s.sample(&[f32::NAN, 1.0, f32::NAN], 0);
        assert_eq!(r.token, 1);
        let z = logits();
        let mut cold = sampler(1e-39, 0, 1.0, 0.0, 1);
        assert_eq!(cold.sample(&z, 0).token, argmax(&z));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let p = |temperature, top_p, min_p| SamplingParams { temperature, top_p, min_p, ..Default::default() };
        assert_eq!(Sampler::new(p(-1.0, 1.0, 0.0)).err(), Some(SamplingError::Temperature(-1.0)));
        assert_eq!(Sampler::new(p(1.0, 0.0, 0.0)).err(), Some(SamplingError::TopP(0.0)));
        assert_eq!(Sampler::new(p(1.0, 1.0, 1.5)).err(), Some(SamplingError::MinP(1.5)));
    }
}
