//! Per-sequence keys and values (post-RoPE, f32), per layer.
//!
//! Full-attention layers keep every position in fixed-size blocks, so a long context never
//! reallocates or copies what it already holds. Sliding-window layers keep a ring of exactly
//! `window` positions, so their memory does not grow with the context. Removing a sequence
//! frees everything it held.
//!
//! With a prefix cache ([`KvCache::set_prefix_cache_bytes`]), every block a sequence completes
//! is offered to it: the full layers' blocks by reference (blocks are shared and copied on
//! write), and for each sliding layer the block's last `window` positions, which are exactly
//! what its ring holds at the block's end. A new sequence whose prompt starts with cached
//! blocks takes them over ([`KvCache::attach_prefix`]) and holds the same bits it would have
//! computed itself: the forward pass is batch-invariant, so a position's keys and values do
//! not depend on how the prompt was chunked or batched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use gptoss_kernels::scalar::KvSpan;

use crate::config::ModelConfig;
use crate::prefix_cache::{block_key, BlockKey, PrefixCache, PrefixCacheStats};

/// Positions per block in full-attention layers.
pub const BLOCK_TOKENS: usize = 256;

/// A handle to one sequence in a [`KvCache`]. Handles are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

pub struct KvCache {
    kv_dim: usize,
    /// `[layers]`: the window of each sliding layer, None for full layers.
    windows: Vec<Option<usize>>,
    max_context: usize,
    next_id: u64,
    seqs: HashMap<SeqId, SeqKv>,
    /// None when prefix caching is off.
    prefix: Option<PrefixCache<Arc<CachedBlock>>>,
}

struct SeqKv {
    len: usize,
    layers: Vec<LayerKv>,
    /// Whether this sequence offers its blocks to the prefix cache (then the fields below
    /// are kept).
    tracked: bool,
    /// The tokens held: `[len]`.
    tokens: Vec<u32>,
    /// The key of each complete block.
    keys: Vec<BlockKey>,
    /// Sliding layers' last `window` rows of blocks not yet complete, by block index.
    tails: BTreeMap<usize, Vec<Option<Tail>>>,
}

/// A sliding layer's rows at the end of one block, `[window, kv_dim]`.
struct Tail {
    rows: KvBlock,
    /// Rows written in order from the first; None once a gap made the tail unusable.
    filled: Option<usize>,
}

/// A sequence's sliding-window state at some length; see [`KvCache::snapshot`].
#[derive(Clone)]
pub struct KvSnapshot {
    pub len: usize,
    /// Per layer: the ring's keys and values, or None for a full-attention layer.
    rings: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

/// `[rows, kv_dim]` keys and values: BLOCK_TOKENS rows in a full layer's block.
#[derive(Clone)]
struct KvBlock {
    k: Box<[f32]>,
    v: Box<[f32]>,
}

impl KvBlock {
    fn zeroed(rows: usize, kv_dim: usize) -> Self {
        let empty = || vec![0f32; rows * kv_dim].into_boxed_slice();
        KvBlock { k: empty(), v: empty() }
    }

    fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}

/// One block of a prefix as the prefix cache keeps it, per layer: a full layer's block, or a
/// sliding layer's last `window` rows of the block.
pub struct CachedBlock {
    layers: Vec<Arc<KvBlock>>,
}

impl CachedBlock {
    fn bytes(&self) -> usize {
        self.layers.iter().map(|b| b.bytes()).sum()
    }
}

enum LayerKv {
    /// Block b holds positions b·BLOCK_TOKENS.. ; shared with the prefix cache and with
    /// other sequences once complete, copied before any write while shared.
    Blocks(Vec<Arc<KvBlock>>),
    /// `[window, kv_dim]`; position p lives in slot p mod window. Empty until first written.
    Ring { window: usize, k: Vec<f32>, v: Vec<f32> },
}

impl KvCache {
    /// `max_context` is capped by the model's own limit.
    pub fn new(config: &ModelConfig, max_context: usize) -> Self {
        KvCache {
            kv_dim: config.kv_dim(),
            windows: (0..config.num_layers).map(|l| config.window(l)).collect(),
            max_context: max_context.min(config.max_context),
            next_id: 0,
            seqs: HashMap::new(),
            prefix: None,
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Keeps up to `bytes` of completed blocks for later prompts that share a prefix; 0 turns
    /// prefix caching off. Sequences added before it was turned on are not cached. False when
    /// the model cannot be cached at block granularity (a sliding window longer than a block).
    pub fn set_prefix_cache_bytes(&mut self, bytes: usize) -> bool {
        if self.windows.iter().flatten().any(|&w| w > BLOCK_TOKENS) {
            self.prefix = None;
            return bytes == 0;
        }
        match (&mut self.prefix, bytes) {
            (_, 0) => self.prefix = None,
            (Some(p), _) => p.set_capacity(bytes),
            (None, _) => self.prefix = Some(PrefixCache::new(bytes)),
        }
        true
    }

    /// What the prefix cache holds and did; all zero when it is off.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.prefix.as_ref().map(|p| p.stats()).unwrap_or_default()
    }

    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let layers = self
            .windows
            .iter()
            .map(|w| match w {
                Some(window) => LayerKv::Ring { window: *window, k: Vec::new(), v: Vec::new() },
                None => LayerKv::Blocks(Vec::new()),
            })
            .collect();
        let tracked = self.prefix.is_some();
        let seq = SeqKv { len: 0, layers, tracked, tokens: Vec::new(), keys: Vec::new(), tails: BTreeMap::new() };
        self.seqs.insert(id, seq);
        id
    }

    /// Gives an empty sequence the longest cached prefix of `prompt` that leaves at least its
    /// last token to compute (its logits are what the caller wants next). Returns the number
    /// of tokens the sequence now holds: 0 when nothing is cached, caching is off or the
    /// sequence is not empty.
    pub fn attach_prefix(&mut self, id: SeqId, prompt: &[u32]) -> usize {
        let (Some(prefix), Some(seq)) = (self.prefix.as_mut(), self.seqs.get_mut(&id)) else { return 0 };
        if seq.len != 0 || !seq.tracked {
            return 0;
        }
        let limit = prompt.len().min(self.max_context);
        let hits = prefix.lookup(&prompt[..limit], limit.saturating_sub(1) / BLOCK_TOKENS);
        let Some((_, last)) = hits.last() else { return 0 };
        let kvd = self.kv_dim;
        let len = hits.len() * BLOCK_TOKENS;
        for (l, layer) in seq.layers.iter_mut().enumerate() {
            match layer {
                LayerKv::Blocks(blocks) => *blocks = hits.iter().map(|(_, b)| b.layers[l].clone()).collect(),
                LayerKv::Ring { window, k, v } => {
                    // The tail holds positions len - window .. len in order; the ring wants
                    // position p in slot p mod window.
                    let tail = &last.layers[l];
                    *k = vec![0f32; *window * kvd];
                    *v = vec![0f32; *window * kvd];
                    for r in 0..*window {
                        let slot = (len - *window + r) % *window;
                        k[slot * kvd..(slot + 1) * kvd].copy_from_slice(&tail.k[r * kvd..(r + 1) * kvd]);
                        v[slot * kvd..(slot + 1) * kvd].copy_from_slice(&tail.v[r * kvd..(r + 1) * kvd]);
                    }
                }
            }
        }
        seq.len = len;
        seq.tokens = prompt[..len].to_vec();
        seq.keys = hits.iter().map(|(key, _)| *key).collect();
        len
    }

    /// Frees the sequence's memory. False if it did not exist.
    pub fn remove_sequence(&mut self, id: SeqId) -> bool {
        self.seqs.remove(&id).is_some()
    }

    /// Tokens held by the sequence (the position of its next token).
    pub fn len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    /// Bytes of K/V storage held by the sequences, each block counted once however many
    /// sequences share it (the prefix cache's own bytes are in [`KvCache::prefix_cache_stats`]).
    pub fn allocated_bytes(&self) -> usize {
        let mut seen = HashSet::new();
        let mut bytes = 0;
        for seq in self.seqs.values() {
            for layer in &seq.layers {
                match layer {
                    LayerKv::Blocks(blocks) => {
                        bytes += blocks.iter().filter(|b| seen.insert(Arc::as_ptr(b))).map(|b| b.bytes()).sum::<usize>()
                    }
                    LayerKv::Ring { k, v, .. } => bytes += (k.capacity() + v.capacity()) * 4,
                }
            }
            bytes += Self::tail_bytes(seq);
        }
        bytes
    }

    /// Bytes the sequence holds, shared blocks included.
    pub fn sequence_bytes(&self, id: SeqId) -> usize {
        let Some(seq) = self.seqs.get(&id) else {
            return 0;
        };
        let layers: usize = seq
            .layers
            .iter()
            .map(|l| match l {
                LayerKv::Blocks(b) => b.iter().map(|b| b.bytes()).sum(),
                LayerKv::Ring { k, v, .. } => (k.capacity() + v.capacity()) * 4,
            })
            .sum();
        layers + Self::tail_bytes(seq)
    }

    fn tail_bytes(seq: &SeqKv) -> usize {
        seq.tails.values().flatten().flatten().map(|t| t.rows.bytes()).sum()
    }

    /// What it takes to rewind the sequence to its current length later: the sliding-window
    /// rings (full-attention layers only need the length). A few MB for the 20b.
    pub fn snapshot(&self, id: SeqId) -> Option<KvSnapshot> {
        let seq = self.seqs.get(&id)?;
        let rings = seq
            .layers
            .iter()
            .map(|l| match l {
                LayerKv::Ring { k, v, .. } => Some((k.clone(), v.clone())),
                LayerKv::Blocks(_) => None,
            })
            .collect();
        Some(KvSnapshot { len: seq.len, rings })
    }

    /// Rewinds the sequence to a snapshot taken from it when it was at most as long as now
    /// (and not rewound past the snapshot since). False, and nothing changed, otherwise.
    pub fn restore(&mut self, id: SeqId, snap: &KvSnapshot) -> bool {
        let Some(seq) = self.seqs.get_mut(&id) else { return false };
        if snap.len > seq.len || snap.rings.len() != seq.layers.len() {
            return false;
        }
        let consistent =
            seq.layers.iter().zip(&snap.rings).all(|(layer, ring)| {
                matches!((layer, ring), (LayerKv::Ring { .. }, Some(_)) | (LayerKv::Blocks(_), None))
            });
        if !consistent {
            return false;
        }
        for (layer, ring) in seq.layers.iter_mut().zip(&snap.rings) {
            match (layer, ring) {
                (LayerKv::Ring { k, v, .. }, Some((sk, sv))) => {
                    k.clone_from(sk);
                    v.clone_from(sv);
                }
                (LayerKv::Blocks(blocks), None) => blocks.truncate(snap.len.div_ceil(BLOCK_TOKENS)),
                _ => unreachable!("checked above"),
            }
        }
        seq.len = snap.len;
        if seq.tracked {
            seq.tokens.truncate(snap.len);
            seq.keys.truncate(snap.len / BLOCK_TOKENS);
            let block = snap.len / BLOCK_TOKENS;
            seq.tails.retain(|&b, _| b < block);
            // The current block's tail rows up to the new length are in the restored rings
            // (the tail may have gone to the prefix cache already, or hold rows written since).
            let (kvd, offset) = (self.kv_dim, snap.len % BLOCK_TOKENS);
            let tails = seq
                .layers
                .iter()
                .map(|layer| match layer {
                    LayerKv::Ring { window, k, v } if !k.is_empty() => {
                        let tail_start = block * BLOCK_TOKENS + BLOCK_TOKENS - window;
                        let kept = offset.saturating_sub(BLOCK_TOKENS - window);
                        let mut rows = KvBlock::zeroed(*window, kvd);
                        for t in 0..kept {
                            let slot = (tail_start + t) % window;
                            rows.k[t * kvd..(t + 1) * kvd].copy_from_slice(&k[slot * kvd..(slot + 1) * kvd]);
                            rows.v[t * kvd..(t + 1) * kvd].copy_from_slice(&v[slot * kvd..(slot + 1) * kvd]);
                        }
                        Some(Tail { rows, filled: Some(kept) })
                    }
                    _ => None,
                })
                .collect();
            seq.tails.insert(block, tails);
        }
        true
    }

    /// The stored positions of `layer` that any future query can still see, as runs of
    /// consecutive positions: all of them for full layers, the last `window` for sliding ones.
    pub fn spans(&self, id: SeqId, layer: usize) -> Vec<KvSpan<'_>> {
        let mut out = Vec::new();
        self.spans_into(id, layer, &mut out);
        out
    }

    /// [`KvCache::spans`] appended to `out`, so a forward pass can reuse one list.
    pub fn spans_into<'a>(&'a self, id: SeqId, layer: usize, out: &mut Vec<KvSpan<'a>>) {
        let Some(seq) = self.seqs.get(&id) else {
            return;
        };
        let (kvd, len) = (self.kv_dim, seq.len);
        match &seq.layers[layer] {
            LayerKv::Blocks(blocks) => {
                for (b, block) in blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    let n = len.saturating_sub(first).min(BLOCK_TOKENS);
                    if n > 0 {
                        out.push(KvSpan { first_pos: first, k: &block.k[..n * kvd], v: &block.v[..n * kvd] });
                    }
                }
            }
            LayerKv::Ring { window, k, v } => {
                let mut pos = len.saturating_sub(*window);
                while pos < len {
                    let slot = pos % window;
                    let n = (window - slot).min(len - pos);
                    out.push(KvSpan {
                        first_pos: pos,
                        k: &k[slot * kvd..(slot + n) * kvd],
                        v: &v[slot * kvd..(slot + n) * kvd],
                    });
                    pos += n;
                }
            }
        }
    }

    /// Store `k, v: [n, kv_dim]` for positions `first_pos..first_pos + n` of `layer`.
    pub(crate) fn write(&mut self, id: SeqId, layer: usize, first_pos: usize, k: &[f32], v: &[f32]) {
        let kvd = self.kv_dim;
        let seq = self.seqs.get_mut(&id).expect("KvCache::write on a sequence the batch was validated against");
        let n = k.len() / kvd;
        fn row(x: &[f32], i: usize, kvd: usize) -> &[f32] {
            &x[i * kvd..(i + 1) * kvd]
        }
        match &mut seq.layers[layer] {
            LayerKv::Blocks(blocks) => {
                for i in 0..n {
                    let (b, off) = ((first_pos + i) / BLOCK_TOKENS, (first_pos + i) % BLOCK_TOKENS);
                    while blocks.len() <= b {
                        blocks.push(Arc::new(KvBlock::zeroed(BLOCK_TOKENS, kvd)));
                    }
                    // A block shared with the prefix cache or another sequence is copied first.
                    let block = Arc::make_mut(&mut blocks[b]);
                    block.k[off * kvd..(off + 1) * kvd].copy_from_slice(row(k, i, kvd));
                    block.v[off * kvd..(off + 1) * kvd].copy_from_slice(row(v, i, kvd));
                }
            }
            LayerKv::Ring { window, k: rk, v: rv } => {
                let window = *window;
                if rk.is_empty() {
                    *rk = vec![0f32; window * kvd];
                    *rv = vec![0f32; window * kvd];
                }
                // Only the last `window` positions of the chunk can ever be read again.
                for i in n.saturating_sub(window)..n {
                    let slot = (first_pos + i) % window;
                    rk[slot * kvd..(slot + 1) * kvd].copy_from_slice(row(k, i, kvd));
                    rv[slot * kvd..(slot + 1) * kvd].copy_from_slice(row(v, i, kvd));
                }
                if !seq.tracked {
                    return;
                }
                // Every block boundary inside the chunk: the rows its ring would hold there.
                let layers = self.windows.len();
                for i in 0..n {
                    let (b, off) = ((first_pos + i) / BLOCK_TOKENS, (first_pos + i) % BLOCK_TOKENS);
                    let Some(t) = off.checked_sub(BLOCK_TOKENS - window) else { continue };
                    let tails = seq.tails.entry(b).or_insert_with(|| (0..layers).map(|_| None).collect());
                    let tail = tails[layer]
                        .get_or_insert_with(|| Tail { rows: KvBlock::zeroed(window, kvd), filled: Some(0) });
                    match tail.filled {
                        Some(f) if t <= f => {
                            tail.rows.k[t * kvd..(t + 1) * kvd].copy_from_slice(row(k, i, kvd));
                            tail.rows.v[t * kvd..(t + 1) * kvd].copy_from_slice(row(v, i, kvd));
                            tail.filled = Some(f.max(t + 1));
                        }
                        _ => tail.filled = None,
                    }
                }
            }
        }
    }

    /// Records that the sequence now also holds `tokens` (written to every layer), and offers
    /// each block this completes to the prefix cache.
    pub(crate) fn advance(&mut self, id: SeqId, tokens: &[u32]) {
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        seq.len += tokens.len();
        let Some(prefix) = self.prefix.as_mut().filter(|_| seq.tracked) else { return };
        seq.tokens.extend_from_slice(tokens);
        while (seq.keys.len() + 1) * BLOCK_TOKENS <= seq.len {
            let b = seq.keys.len();
            let block_tokens = &seq.tokens[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS];
            let parent = seq.keys.last().copied();
            seq.keys.push(block_key(parent, block_tokens));
            let mut tails = seq.tails.remove(&b).unwrap_or_default().into_iter();
            let mut complete = true;
            let layers: Vec<Arc<KvBlock>> = seq
                .layers
                .iter()
                .zip(&self.windows)
                .map(|(layer, w)| {
                    let tail = tails.next().flatten();
                    match (layer, tail, w) {
                        (LayerKv::Blocks(blocks), _, None) => blocks[b].clone(),
                        (LayerKv::Ring { .. }, Some(t), Some(w)) if t.filled == Some(*w) => Arc::new(t.rows),
                        _ => {
                            complete = false;
                            Arc::new(KvBlock::zeroed(0, 0))
                        }
                    }
                })
                .collect();
            if complete {
                let cached = CachedBlock { layers };
                let bytes = cached.bytes();
                prefix.insert(parent, block_tokens, Arc::new(cached), bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(window: usize) -> KvCache {
        let mut cfg = ModelConfig::tiny();
        cfg.num_layers = 2;
        cfg.sliding_layers = vec![true, false];
        cfg.sliding_window = window;
        KvCache::new(&cfg, 1 << 20)
    }

    fn rows(first: usize, n: usize, kvd: usize) -> Vec<f32> {
        (first..first + n).flat_map(|p| std::iter::repeat_n(p as f32, kvd)).collect()
    }

    fn positions(spans: &[KvSpan], kvd: usize) -> Vec<usize> {
        spans.iter().flat_map(|s| s.k.chunks(kvd).map(|r| r[0] as usize)).collect()
    }

    fn push(c: &mut KvCache, id: SeqId, n: usize) {
        let (kvd, first) = (c.kv_dim, c.len(id).unwrap());
        for layer in 0..2 {
            let data = rows(first, n, kvd);
            c.write(id, layer, first, &data, &data);
        }
        c.advance(id, &vec![0; n]);
    }

    #[test]
    fn ring_keeps_the_last_window_and_does_not_grow() {
        let mut c = cache(4);
        let kvd = c.kv_dim;
        let id = c.add_sequence();
        push(&mut c, id, 3);
        assert_eq!(positions(&c.spans(id, 0), kvd), [0, 1, 2]);
        push(&mut c, id, 6); // a chunk longer than the window
        assert_eq!(positions(&c.spans(id, 0), kvd), [5, 6, 7, 8]);
        let ring_bytes = 2 * 4 * kvd * 4;
        for _ in 0..300 {
            push(&mut c, id, 1);
        }
        assert_eq!(positions(&c.spans(id, 0), kvd), [305, 306, 307, 308]);
        assert_eq!(positions(&c.spans(id, 1), kvd), (0..309).collect::<Vec<_>>());
        let full_bytes = 2 * 2 * BLOCK_TOKENS * kvd * 4; // two blocks hold 309 positions
        assert_eq!(c.sequence_bytes(id), ring_bytes + full_bytes);
    }

    #[test]
    fn snapshots_rewind_rings_and_blocks() {
        let mut c = cache(4);
        let kvd = c.kv_dim;
        let id = c.add_sequence();
        push(&mut c, id, 10);
        let snap = c.snapshot(id).unwrap();
        push(&mut c, id, 300);
        assert!(c.restore(id, &snap));
        assert_eq!(c.len(id), Some(10));
        assert_eq!(positions(&c.spans(id, 0), kvd), [6, 7, 8, 9]);
        assert_eq!(positions(&c.spans(id, 1), kvd), (0..10).collect::<Vec<_>>());
        assert_eq!(c.sequence_bytes(id), 2 * 4 * kvd * 4 + 2 * BLOCK_TOKENS * kvd * 4, "extra blocks freed");
        // A snapshot from the future cannot be restored.
        push(&mut c, id, 5);
        let later = c.snapshot(id).unwrap();
        assert!(c.restore(id, &snap));
        assert!(!c.restore(id, &later));
        assert_eq!(c.len(id), Some(10));
    }

    #[test]
    fn removing_a_sequence_frees_its_memory() {
        let mut c = cache(128);
        let a = c.add_sequence();
        let b = c.add_sequence();
        push(&mut c, a, 1000);
        push(&mut c, b, 10);
        let (bytes_a, bytes_b) = (c.sequence_bytes(a), c.sequence_bytes(b));
        assert!(bytes_a > bytes_b && bytes_b > 0);
        assert_eq!(c.allocated_bytes(), bytes_a + bytes_b);
        assert!(c.remove_sequence(a));
        assert_eq!(c.allocated_bytes(), bytes_b);
        assert_eq!(c.len(a), None);
        assert!(!c.remove_sequence(a));
        assert_ne!(c.add_sequence(), a, "handles are not reused");
    }

    /// Writes `n` positions whose rows encode (position, token), as the model would.
    fn push_tokens(c: &mut KvCache, id: SeqId, tokens: &[u32]) {
        let (kvd, first) = (c.kv_dim, c.len(id).unwrap());
        let data: Vec<f32> = tokens
            .iter()
            .enumerate()
            .flat_map(|(i, &t)| std::iter::repeat_n((first + i) as f32 * 1e4 + t as f32, kvd))
            .collect();
        for layer in 0..2 {
            c.write(id, layer, first, &data, &data);
        }
        c.advance(id, tokens);
    }

    fn all_spans(c: &KvCache, id: SeqId) -> Vec<Vec<f32>> {
        (0..2).map(|l| c.spans(id, l).iter().flat_map(|s| s.k.iter().chain(s.v.iter()).copied()).collect()).collect()
    }

    #[test]
    fn attached_prefixes_hold_what_the_sequence_would_have_computed() {
        let mut c = cache(128);
        assert!(c.set_prefix_cache_bytes(1 << 30));
        let kvd = c.kv_dim;
        let tokens: Vec<u32> = (0..1000).map(|i| (i * 7 % 13) as u32).collect();
        // The writer feeds its prompt in ragged chunks that straddle block boundaries.
        let a = c.add_sequence();
        let mut start = 0;
        for n in [100, 300, 1, 155, 200, 44] {
            push_tokens(&mut c, a, &tokens[start..start + n]);
            start += n;
        }
        assert_eq!(c.prefix_cache_stats().blocks, 3);
        // A reader with the same first 900 tokens gets three blocks: 768 positions.
        let b = c.add_sequence();
        assert_eq!(c.attach_prefix(b, &tokens[..900]), 768);
        // It must leave a token to compute: exactly 768 tokens attach two blocks.
        let d = c.add_sequence();
        assert_eq!(c.attach_prefix(d, &tokens[..768]), 512);
        push_tokens(&mut c, b, &tokens[768..800]);
        let fresh = c.add_sequence();
        push_tokens(&mut c, fresh, &tokens[..800]);
        assert_eq!(all_spans(&c, b), all_spans(&c, fresh));
        let ring: Vec<usize> = positions(&c.spans(b, 0), kvd).iter().map(|p| p / 10_000).collect();
        assert_eq!(ring, (672..800).collect::<Vec<_>>());
        // Writing past the shared blocks never changes them for anyone else.
        assert_eq!(all_spans(&c, d)[1].len(), 2 * 512 * kvd);
        // Blocks shared by a, b and the cache are counted once.
        let s = c.prefix_cache_stats();
        assert!(c.allocated_bytes() < c.sequence_bytes(a) + c.sequence_bytes(b) + c.sequence_bytes(fresh));
        assert_eq!(s.bytes, 3 * (2 * BLOCK_TOKENS + 2 * 128) * kvd * 4);
        // A different token inside the second block: only the first block is reused.
        let mut other = tokens[..900].to_vec();
        other[300] += 1;
        let e = c.add_sequence();
        assert_eq!(c.attach_prefix(e, &other), 256);
        // Not for a non-empty sequence, nor with caching off.
        assert_eq!(c.attach_prefix(b, &tokens), 0);
        assert!(c.set_prefix_cache_bytes(0));
        let f = c.add_sequence();
        assert_eq!(c.attach_prefix(f, &tokens), 0);
    }

    #[test]
    fn rewound_sequences_offer_only_complete_blocks() {
        let mut c = cache(128);
        c.set_prefix_cache_bytes(1 << 30);
        let tokens: Vec<u32> = (0..600).map(|i| (i % 11) as u32).collect();
        let a = c.add_sequence();
        push_tokens(&mut c, a, &tokens[..200]);
        let snap = c.snapshot(a).unwrap();
        // Diverge, rewind to 200, then follow the real tokens over the boundary.
        push_tokens(&mut c, a, &[5; 100]);
        assert_eq!(c.prefix_cache_stats().blocks, 1, "the diverging block was cached under its own key");
        assert!(c.restore(a, &snap));
        push_tokens(&mut c, a, &tokens[200..600]);
        let b = c.add_sequence();
        assert_eq!(c.attach_prefix(b, &tokens), 512);
        push_tokens(&mut c, b, &tokens[512..600]);
        assert_eq!(all_spans(&c, a), all_spans(&c, b));
        // Rewound inside the tail of a block already cached: the block is not offered again
        // from rows it no longer has, and what is cached stays right.
        let snap2 = {
            let s = c.add_sequence();
            push_tokens(&mut c, s, &tokens[..250]);
            let snap = c.snapshot(s).unwrap();
            push_tokens(&mut c, s, &tokens[250..300]);
            assert!(c.restore(s, &snap));
            push_tokens(&mut c, s, &[9; 6]);
            (s, c.prefix_cache_stats().blocks)
        };
        assert!(snap2.1 >= 3);
        let g = c.add_sequence();
        assert_eq!(c.attach_prefix(g, &tokens), 512);
        push_tokens(&mut c, g, &tokens[512..600]);
        assert_eq!(all_spans(&c, g), all_spans(&c, a));
    }

    #[test]
    fn windows_longer_than_a_block_are_not_cached() {
        let mut c = cache(BLOCK_TOKENS + 1);
        assert!(!c.set_prefix_cache_bytes(1 << 20));
        assert!(c.set_prefix_cache_bytes(0));
    }
}
