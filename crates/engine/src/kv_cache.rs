//! Per-sequence keys and values (post-RoPE, f32), per layer.
//!
//! Full-attention layers keep every position in fixed-size blocks, so a long context never
//! reallocates or copies what it already holds. Sliding-window layers keep a ring of exactly
//! `window` positions, so their memory does not grow with the context. Removing a sequence
//! frees everything it held.

use std::collections::HashMap;

use gptoss_kernels::scalar::KvSpan;

use crate::config::ModelConfig;

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
}

struct SeqKv {
    len: usize,
    layers: Vec<LayerKv>,
}

/// A sequence's sliding-window state at some length; see [`KvCache::snapshot`].
#[derive(Clone)]
pub struct KvSnapshot {
    pub len: usize,
    /// Per layer: the ring's keys and values, or None for a full-attention layer.
    rings: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

/// `[BLOCK_TOKENS, kv_dim]` keys and values.
struct KvBlock {
    k: Box<[f32]>,
    v: Box<[f32]>,
}

enum LayerKv {
    /// Block b holds positions b·BLOCK_TOKENS.. .
    Blocks(Vec<KvBlock>),
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
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
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
        self.seqs.insert(id, SeqKv { len: 0, layers });
        id
    }

    /// Frees the sequence's memory. False if it did not exist.
    pub fn remove_sequence(&mut self, id: SeqId) -> bool {
        self.seqs.remove(&id).is_some()
    }

    /// Tokens held by the sequence (the position of its next token).
    pub fn len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    /// Bytes of K/V storage currently allocated, over all sequences.
    pub fn allocated_bytes(&self) -> usize {
        self.seqs.keys().map(|&id| self.sequence_bytes(id)).sum()
    }

    pub fn sequence_bytes(&self, id: SeqId) -> usize {
        let Some(seq) = self.seqs.get(&id) else {
            return 0;
        };
        let floats: usize = seq
            .layers
            .iter()
            .map(|l| match l {
                LayerKv::Blocks(b) => b.iter().map(|b| b.k.len() + b.v.len()).sum(),
                LayerKv::Ring { k, v, .. } => k.capacity() + v.capacity(),
            })
            .sum();
        floats * 4
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
        for (layer, ring) in seq.layers.iter_mut().zip(&snap.rings) {
            match (layer, ring) {
                (LayerKv::Ring { k, v, .. }, Some((sk, sv))) => {
                    k.clone_from(sk);
                    v.clone_from(sv);
                }
                (LayerKv::Blocks(blocks), None) => blocks.truncate(snap.len.div_ceil(BLOCK_TOKENS)),
                _ => return false,
            }
        }
        seq.len = snap.len;
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
                for (b, KvBlock { k, v }) in blocks.iter().enumerate() {
                    let first = b * BLOCK_TOKENS;
                    let n = len.saturating_sub(first).min(BLOCK_TOKENS);
                    if n > 0 {
                        out.push(KvSpan { first_pos: first, k: &k[..n * kvd], v: &v[..n * kvd] });
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
        match &mut seq.layers[layer] {
            LayerKv::Blocks(blocks) => {
                for i in 0..n {
                    let (b, off) = ((first_pos + i) / BLOCK_TOKENS, (first_pos + i) % BLOCK_TOKENS);
                    while blocks.len() <= b {
                        let empty = || vec![0f32; BLOCK_TOKENS * kvd].into_boxed_slice();
                        blocks.push(KvBlock { k: empty(), v: empty() });
                    }
                    blocks[b].k[off * kvd..(off + 1) * kvd].copy_from_slice(&k[i * kvd..(i + 1) * kvd]);
                    blocks[b].v[off * kvd..(off + 1) * kvd].copy_from_slice(&v[i * kvd..(i + 1) * kvd]);
                }
            }
            LayerKv::Ring { window, k: rk, v: rv } => {
                if rk.is_empty() {
                    *rk = vec![0f32; *window * kvd];
                    *rv = vec![0f32; *window * kvd];
                }
                // Only the last `window` positions of the chunk can ever be read again.
                for i in n.saturating_sub(*window)..n {
                    let slot = (first_pos + i) % *window;
                    rk[slot * kvd..(slot + 1) * kvd].copy_from_slice(&k[i * kvd..(i + 1) * kvd]);
                    rv[slot * kvd..(slot + 1) * kvd].copy_from_slice(&v[i * kvd..(i + 1) * kvd]);
                }
            }
        }
    }

    pub(crate) fn advance(&mut self, id: SeqId, n: usize) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.len += n;
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
        c.advance(id, n);
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
}
