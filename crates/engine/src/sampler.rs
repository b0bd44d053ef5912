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
    /// The radix sort's second buffer and digit counts ([`sort_by_weight_desc`]).
    scratch: Vec<(u32, f32)>,
    counts: Vec<u32>,
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
        Ok(Sampler { params, rng, cand: Vec::new(), scratch: Vec::new(), counts: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The same pick as [`Sampler::sample`] made elsewhere (on a GPU, beside the logits):
    /// the settings, and the uniform number the draw uses, taken from this sampler's stream
    /// exactly when `sample` would take one.
    pub fn pick_spec(&mut self, top_n: usize) -> PickSpec {
        let p = &self.params;
        let greedy = p.temperature == 0.0 || p.top_k == 1;
        let u = if greedy { 0.0 } else { self.rng.next_f64() };
        PickSpec { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, min_p: p.min_p, u, top_n }
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
            self.cand.sort_unstable_by(by_weight_desc);
        } else {
            // The whole vocabulary (201,088 for gpt-oss): the same order in linear time.
            sort_by_weight_desc(&mut self.cand, &mut self.scratch, &mut self.counts);
        }
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

/// Orders `cand`, in token order on entry, heaviest first and lowest token first among equal
/// weights: exactly the order of a comparison sort by (weight descending, token ascending), so
/// every draw is the same, but in linear time: two stable counting passes over the 16-bit
/// halves of the weights' bits (for weights in [0, 1], the bit patterns order as the values).
/// Sorting 201,088 candidates by comparison took most of a token's sampling time.
fn sort_by_weight_desc(cand: &mut [(u32, f32)], scratch: &mut Vec<(u32, f32)>, counts: &mut Vec<u32>) {
    let by_weight_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if cand.len() < 4096 || cand.iter().any(|c| c.1.is_sign_negative() || c.1.is_nan()) {
        cand.sort_unstable_by(by_weight_desc);
        return;
    }
    // Ascending keys are descending weights; stable passes keep token order among equals.
    let key = |c: &(u32, f32)| !c.1.to_bits();
    counts.clear();
    counts.resize(2 << 16, 0);
    let (low, high) = counts.split_at_mut(1 << 16);
    for c in cand.iter() {
        let k = key(c);
        low[(k & 0xffff) as usize] += 1;
        high[(k >> 16) as usize] += 1;
    }
    for digits in [&mut *low, &mut *high] {
        let mut at = 0u32;
        for n in digits.iter_mut() {
            let here = *n;
            *n = at;
            at += here;
        }
    }
    scratch.clear();
    scratch.resize(cand.len(), (0, 0.0));
    for c in cand.iter() {
        let slot = &mut low[(key(c) & 0xffff) as usize];
        scratch[*slot as usize] = *c;
        *slot += 1;
    }
    for c in scratch.iter() {
        let slot = &mut high[(key(c) >> 16) as usize];
        cand[*slot as usize] = *c;
        *slot += 1;
    }
}

/// A token pick to be made from one logits row where the logits are (see
/// [`crate::runner::Runner::forward_pick`]): [`Sampler`]'s settings and the uniform number of
/// its draw, and how many alternatives to report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PickSpec {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Uniform in [0, 1).
    pub u: f64,
    pub top_n: usize,
}

/// Masses of the pick rule, in 2^-40 units: exact, so sums do not depend on their order.
fn fixed_mass(w: f32) -> u64 {
    (w as f64 * (1u64 << 40) as f64) as u64
}

/// The pick the GPU makes (kernels/sample.cuh), on the host: greedy as [`argmax`]; else the
/// same kept set as [`Sampler::sample`] (top-k, then the smallest top-p prefix by weight,
/// then min-p), drawn by walking the kept tokens in index order with masses in 2^-40 fixed
/// point. The draw is a different order of the same distribution than `Sampler`'s, so a
/// seed gives different tokens here than on the CPU path.
pub fn pick_on_host(logits: &[f32], spec: &PickSpec) -> Sampled {
    let lse = log_sum_exp(logits);
    let sampled = |token: u32| Sampled {
        token,
        logprob: logprob(logits[token as usize], lse),
        top_logprobs: top_logprobs(logits, spec.top_n, lse),
    };
    let best = argmax(logits);
    let max = clean(logits[best as usize]);
    let inv_t = 1.0 / spec.temperature;
    if spec.temperature == 0.0 || spec.top_k == 1 || !max.is_finite() || !inv_t.is_finite() {
        return sampled(best);
    }
    let w: Vec<f32> = logits.iter().map(|&z| ((clean(z) - max) * inv_t).exp()).collect();
    // Tokens by weight, heaviest first, lowest index first among equals.
    let mut order: Vec<u32> = (0..w.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| w[b as usize].total_cmp(&w[a as usize]).then(a.cmp(&b)));
    if spec.top_k > 0 && spec.top_k < order.len() {
        order.truncate(spec.top_k);
    }
    if spec.top_p < 1.0 {
        let total: u64 = order.iter().map(|&i| fixed_mass(w[i as usize])).sum();
        let goal = ((spec.top_p as f64 * total as f64) as u64).max(1);
        let mut cum = 0u64;
        let mut keep = order.len();
        for (j, &i) in order.iter().enumerate() {
            cum += fixed_mass(w[i as usize]);
            if cum >= goal {
                keep = j + 1;
                break;
            }
        }
        order.truncate(keep);
    }
    if spec.min_p > 0.0 {
        order.retain(|&i| w[i as usize] >= spec.min_p);
    }
    order.sort_unstable();
    let all: u64 = order.iter().map(|&i| fixed_mass(w[i as usize])).sum();
    let target = (spec.u * all as f64) as u64;
    let mut cum = 0u64;
    for &i in &order {
        cum += fixed_mass(w[i as usize]);
        if cum > target {
            return sampled(i);
        }
    }
    sampled(best)
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
    fn picks_keep_the_samplers_sets_and_follow_the_weights() {
        let z = logits();
        for (t, k, p, m) in
            [(1.0, 0, 1.0, 0.0), (0.7, 50, 1.0, 0.0), (1.0, 0, 0.3, 0.0), (1.3, 20, 0.9, 0.05), (1.0, 0, 1.0, 0.5)]
        {
            // The tokens Sampler::draw can return, by its own definition.
            let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let w: Vec<f32> = z.iter().map(|&x| ((x - max) / t).exp()).collect();
            let mut by_w: Vec<usize> = (0..z.len()).collect();
            by_w.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
            if k > 0 {
                by_w.truncate(k);
            }
            let total: f64 = by_w.iter().map(|&i| w[i] as f64).sum();
            let mut cum = 0.0;
            let keep = by_w.iter().position(|&i| {
                cum += w[i] as f64 / total;
                p < 1.0 && cum >= p as f64
            });
            by_w.truncate(keep.map_or(by_w.len(), |j| j + 1));
            by_w.retain(|&i| w[i] >= m);
            let can: std::collections::BTreeSet<u32> = by_w.iter().map(|&i| i as u32).collect();
            let mut s = sampler(t, k, p, m, 9);
            let mut seen: std::collections::BTreeMap<u32, usize> = Default::default();
            for _ in 0..6000 {
                let spec = s.pick_spec(2);
                let got = pick_on_host(&z, &spec);
                assert!(can.contains(&got.token), "t {t} k {k} p {p} m {m}: {} outside the sampler's set", got.token);
                assert_eq!(got.top_logprobs.len(), 2);
                *seen.entry(got.token).or_default() += 1;
            }
            // The heavier half of the kept tokens is drawn as often as its share of the mass.
            let heavy = &by_w[..by_w.len().div_ceil(2)];
            let kept_mass: f64 = by_w.iter().map(|&i| w[i] as f64).sum();
            let expected = heavy.iter().map(|&i| w[i] as f64).sum::<f64>() / kept_mass;
            let observed = heavy.iter().map(|&i| *seen.get(&(i as u32)).unwrap_or(&0)).sum::<usize>() as f64 / 6000.0;
            assert!((observed - expected).abs() < 0.03, "t {t} k {k} p {p} m {m}: {observed} vs {expected}");
        }
        // Greedy settings take the argmax and consume no randomness.
        let mut g = sampler(0.0, 0, 1.0, 0.0, 1);
        let spec = g.pick_spec(0);
        assert_eq!((spec.u, pick_on_host(&z, &spec).token), (0.0, argmax(&z)));
        // u near 0 and near 1 pick the first and last kept tokens in index order.
        let spec = PickSpec { temperature: 1.0, top_k: 3, top_p: 1.0, min_p: 0.0, u: 0.0, top_n: 0 };
        let mut best3: Vec<u32> = (0..z.len() as u32).collect();
        best3.sort_by(|&a, &b| z[b as usize].total_cmp(&z[a as usize]).then(a.cmp(&b)));
        best3.truncate(3);
        best3.sort();
        assert_eq!(pick_on_host(&z, &spec).token, best3[0]);
        assert_eq!(pick_on_host(&z, &PickSpec { u: 0.999_999, ..spec }).token, best3[2]);
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

    /// Random logits of the 20b/120b vocabulary (201,088), spread like a model's.
    fn vocab_logits(seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..201_088).map(|_| ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32 * 6.0).collect()
    }

    /// Sampler::draw as it was, sorting every candidate by comparison.
    fn reference(p: &SamplingParams, rng: &mut Rng, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(clean(z)));
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &z)| (i as u32, ((clean(z) - max) * inv_t).exp())).collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut keep = cand.len();
        if p.top_p < 1.0 {
            let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
            let mut cum = 0.0f64;
            for (i, c) in cand.iter().enumerate() {
                cum += c.1 as f64 / total;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            keep = keep.min(cand.iter().take_while(|c| c.1 >= p.min_p).count().max(1));
        }
        cand.truncate(keep);
        let kept: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut u = rng.next_f64() * kept;
        for c in &cand {
            u -= c.1 as f64;
            if u < 0.0 {
                return c.0;
            }
        }
        cand[0].0
    }

    #[test]
    fn the_linear_ordering_draws_exactly_what_the_comparison_sort_drew() {
        let mut rows: Vec<Vec<f32>> = (0..3).map(vocab_logits).collect();
        // Ties, impossible tokens and a flat stretch.
        rows[1][5..5000].iter_mut().for_each(|z| *z = 1.5);
        rows[2][100..90_000].iter_mut().for_each(|z| *z = f32::NEG_INFINITY);
        rows[2][7] = f32::NAN;
        for (t, p, m) in [(1.0, 1.0, 0.0), (0.7, 0.95, 0.0), (1.3, 1.0, 0.01), (2.0, 0.5, 0.0)] {
            let params = SamplingParams { temperature: t, top_k: 0, top_p: p, min_p: m, seed: Some(11) };
            let mut s = Sampler::new(params.clone()).unwrap();
            let mut rng = Rng::new(11);
            for i in 0..60 {
                let z = &rows[i % rows.len()];
                assert_eq!(s.sample(z, 0).token, reference(&params, &mut rng, z), "t {t} p {p} m {m} draw {i}");
            }
        }
    }

    /// The cost of one token's pick on the 20b shape's vocabulary (201,088 logits), by
    /// setting. `cargo test --release -p gptoss-engine sampling_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run with --release"]
    fn sampling_cost_per_token_on_the_full_vocabulary() {
        let rows: Vec<Vec<f32>> = (0..8).map(vocab_logits).collect();
        for (name, t, k, p, m) in [
            ("default (T=1)", 1.0, 0, 1.0, 0.0),
            ("top_p 0.9", 1.0, 0, 0.9, 0.0),
            ("top_k 50", 1.0, 50, 1.0, 0.0),
            ("min_p 0.05", 1.0, 0, 1.0, 0.05),
            ("T=0.7 top_p 0.95", 0.7, 0, 0.95, 0.0),
        ] {
            let mut s = sampler(t, k, p, m, 7);
            let n = 200;
            let start = std::time::Instant::now();
            let mut sum = 0u64;
            for i in 0..n {
                sum += s.sample(&rows[i % rows.len()], 0).token as u64;
            }
            let per = start.elapsed().as_secs_f64() / n as f64;
            // The same draws as before this change, which sorted every candidate by comparison.
            let params = s.params().clone();
            let mut rng = Rng::new(7);
            let start = std::time::Instant::now();
            let mut before = 0u64;
            for i in 0..n {
                let z = &rows[i % rows.len()];
                before += if k > 0 {
                    s.sample(z, 0).token as u64
                } else {
                    // What `sample` adds to the draw: the chosen token's log-probability.
                    std::hint::black_box(log_sum_exp(z));
                    reference(&params, &mut rng, z) as u64
                };
            }
            let was = start.elapsed().as_secs_f64() / n as f64;
            if k == 0 {
                assert_eq!(sum, before, "the same tokens");
            }
            println!(
                "sampling {name:>18}: {:7.3} ms per token, {:7.3} ms sorting by comparison (checksum {sum})",
                per * 1e3,
                was * 1e3
            );
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let p = |temperature, top_p, min_p| SamplingParams { temperature, top_p, min_p, ..Default::default() };
        assert_eq!(Sampler::new(p(-1.0, 1.0, 0.0)).err(), Some(SamplingError::Temperature(-1.0)));
        assert_eq!(Sampler::new(p(1.0, 0.0, 0.0)).err(), Some(SamplingError::TopP(0.0)));
        assert_eq!(Sampler::new(p(1.0, 1.0, 1.5)).err(), Some(SamplingError::MinP(1.5)));
    }
}
