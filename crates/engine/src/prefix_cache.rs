//! Automatic prefix caching: the key/value state of token blocks already processed, kept after
//! their sequence ends, so a later prompt that starts with the same tokens (a conversation's
//! next turn, a system prompt and tool list shared across users) skips recomputing them.
//!
//! Block-granular, as vLLM's automatic prefix caching: a block of [`PREFIX_BLOCK_TOKENS`]
//! tokens is identified by a hash chained over every token before it, so a block is only ever
//! reused after exactly the same prefix. Entries form a tree (each block's parent is the block
//! before it); eviction takes the least recently used leaf, so every cached block stays
//! reachable from the root. The bytes held are bounded by the capacity.
//!
//! This file is pure bookkeeping over an opaque payload (`P`): what a block holds on a device
//! (a CPU runner's shared blocks, a GPU's pages) is the runner's business.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

/// Tokens per cached block: the KV cache's own block size, so a cached block is shared by
/// reference, never copied.
pub const PREFIX_BLOCK_TOKENS: usize = crate::kv_cache::BLOCK_TOKENS;

/// Capacity when none is configured: room for about 27k tokens of a 20b conversation.
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 2 << 30;

/// A block's identity: a hash of its tokens and of its parent's key.
pub type BlockKey = u64;

/// The key of the block holding `tokens` after the block `parent` (None: the first block).
pub fn block_key(parent: Option<BlockKey>, tokens: &[u32]) -> BlockKey {
    // SipHash with fixed keys: the same key in every process, for every run.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// What the cache did, for `usage` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    pub capacity_bytes: usize,
    /// Bytes of the blocks the cache holds (a block also used by a running sequence is
    /// counted here and not again there).
    pub bytes: usize,
    pub blocks: usize,
    /// Prompts looked up.
    pub lookups: u64,
    /// Prompt tokens looked up, and how many of them were found cached.
    pub query_tokens: u64,
    pub hit_tokens: u64,
    pub inserted_blocks: u64,
    pub evicted_blocks: u64,
}

impl PrefixCacheStats {
    /// Share of looked-up prompt tokens that were served from the cache.
    pub fn hit_rate(&self) -> f64 {
        if self.query_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.query_tokens as f64
        }
    }
}

struct Entry<P> {
    parent: Option<BlockKey>,
    /// The block's tokens, compared on lookup: a hash collision can never alias two prefixes.
    tokens: Box<[u32]>,
    payload: P,
    bytes: usize,
    children: usize,
    last_used: u64,
}

pub struct PrefixCache<P> {
    capacity: usize,
    entries: HashMap<BlockKey, Entry<P>>,
    /// Entries without children, by last use: the eviction order.
    leaves: BTreeSet<(u64, BlockKey)>,
    clock: u64,
    stats: PrefixCacheStats,
}

impl<P: Clone> PrefixCache<P> {
    pub fn new(capacity_bytes: usize) -> Self {
        PrefixCache {
            capacity: capacity_bytes,
            entries: HashMap::new(),
            leaves: BTreeSet::new(),
            clock: 0,
            stats: PrefixCacheStats { capacity_bytes, ..Default::default() },
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the bound, evicting what no longer fits.
    pub fn set_capacity(&mut self, bytes: usize) {
        self.capacity = bytes;
        self.stats.capacity_bytes = bytes;
        self.evict_to(bytes);
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats { blocks: self.entries.len(), ..self.stats }
    }

    pub fn contains(&self, key: BlockKey) -> bool {
        self.entries.contains_key(&key)
    }

    /// The cached blocks that start `tokens`, at most `max_blocks` of them, in order, with
    /// their keys. Counts as a use of each.
    pub fn lookup(&mut self, tokens: &[u32], max_blocks: usize) -> Vec<(BlockKey, P)> {
        self.stats.lookups += 1;
        self.stats.query_tokens += tokens.len() as u64;
        let mut out = Vec::new();
        let mut parent = None;
        for block in tokens.chunks_exact(PREFIX_BLOCK_TOKENS).take(max_blocks) {
            let key = block_key(parent, block);
            let Some(e) = self.entries.get(&key) else { break };
            if e.parent != parent || *e.tokens != *block {
                break;
            }
            out.push((key, e.payload.clone()));
            parent = Some(key);
        }
        for (key, _) in &out {
            self.touch(*key);
        }
        self.stats.hit_tokens += (out.len() * PREFIX_BLOCK_TOKENS) as u64;
        out
    }

    /// Keeps `payload` as the block holding `tokens` after `parent`, evicting least recently
    /// used blocks to make room. Nothing is kept when the parent is no longer cached (the
    /// block could never be found), when the block alone exceeds the capacity, or when it is
    /// already cached (then it only counts as used). True when it was kept or already there.
    pub fn insert(&mut self, parent: Option<BlockKey>, tokens: &[u32], payload: P, bytes: usize) -> bool {
        debug_assert_eq!(tokens.len(), PREFIX_BLOCK_TOKENS);
        let key = block_key(parent, tokens);
        if let Some(e) = self.entries.get(&key) {
            let same = e.parent == parent && *e.tokens == *tokens;
            if same {
                self.touch(key);
            }
            return same;
        }
        if bytes > self.capacity || parent.is_some_and(|p| !self.entries.contains_key(&p)) {
            return false;
        }
        // The parent is pinned while room is made: it must outlive the insertion.
        if let Some(p) = parent {
            self.add_child(p);
        }
        self.evict_to(self.capacity - bytes);
        if self.stats.bytes + bytes > self.capacity {
            // Only this block's own ancestors are left: keeping it would break the bound.
            if let Some(p) = parent {
                self.remove_child(p);
            }
            return false;
        }
        self.clock += 1;
        let e = Entry { parent, tokens: tokens.into(), payload, bytes, children: 0, last_used: self.clock };
        self.leaves.insert((self.clock, key));
        self.entries.insert(key, e);
        self.stats.bytes += bytes;
        self.stats.inserted_blocks += 1;
        true
    }

    fn add_child(&mut self, key: BlockKey) {
        if let Some(e) = self.entries.get_mut(&key) {
            if e.children == 0 {
                self.leaves.remove(&(e.last_used, key));
            }
            e.children += 1;
        }
    }

    fn touch(&mut self, key: BlockKey) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(&key) {
            if e.children == 0 {
                self.leaves.remove(&(e.last_used, key));
                self.leaves.insert((clock, key));
            }
            e.last_used = clock;
        }
    }

    /// Evicts least recently used leaves until at most `bytes` are held.
    fn evict_to(&mut self, bytes: usize) {
        while self.stats.bytes > bytes {
            let Some((_, key)) = self.leaves.pop_first() else { break };
            let Some(e) = self.entries.remove(&key) else { continue };
            self.stats.bytes -= e.bytes;
            self.stats.evicted_blocks += 1;
            if let Some(p) = e.parent {
                self.remove_child(p);
            }
        }
    }

    fn remove_child(&mut self, key: BlockKey) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.children -= 1;
            if e.children == 0 {
                self.leaves.insert((e.last_used, key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = PREFIX_BLOCK_TOKENS;

    fn blocks(seed: u32, n: usize) -> Vec<u32> {
        (0..(n * B) as u32).map(|i| i.wrapping_mul(2654435761).wrapping_add(seed) % 1000).collect()
    }

    /// Inserts every block of `tokens`; the payload is the block's index.
    fn insert_all(c: &mut PrefixCache<usize>, tokens: &[u32], bytes: usize) -> usize {
        let mut parent = None;
        let mut kept = 0;
        for (i, b) in tokens.chunks_exact(B).enumerate() {
            kept += c.insert(parent, b, i, bytes) as usize;
            parent = Some(block_key(parent, b));
        }
        kept
    }

    #[test]
    fn finds_the_longest_cached_prefix_and_only_after_the_same_tokens() {
        let mut c = PrefixCache::new(1 << 20);
        let a = blocks(1, 3);
        assert_eq!(insert_all(&mut c, &a, 10), 3);
        let mut q = a[..2 * B].to_vec();
        q.extend_from_slice(&blocks(9, 1));
        let hit = c.lookup(&q, 8);
        assert_eq!(hit.iter().map(|h| h.1).collect::<Vec<_>>(), [0, 1]);
        // The same second block after a different first block is not a hit.
        let mut other = blocks(2, 1);
        other.extend_from_slice(&a[B..2 * B]);
        assert!(c.lookup(&other, 8).is_empty());
        // The bound on blocks is kept (a prompt must leave a token to compute).
        assert_eq!(c.lookup(&a, 1).len(), 1);
        let s = c.stats();
        assert_eq!((s.lookups, s.hit_tokens, s.blocks, s.bytes), (3, 3 * B as u64, 3, 30));
        assert_eq!(s.query_tokens, (3 * B + 2 * B + 3 * B) as u64);
    }

    #[test]
    fn evicts_least_recently_used_leaves_within_the_bound() {
        let mut c = PrefixCache::new(50);
        let (a, b) = (blocks(1, 3), blocks(2, 2));
        insert_all(&mut c, &a, 10);
        insert_all(&mut c, &b, 10);
        assert_eq!(c.stats().bytes, 50);
        // Using `a` makes `b`'s leaf the oldest: the next insertion evicts it.
        assert_eq!(c.lookup(&a, 8).len(), 3);
        let d = blocks(3, 1);
        assert_eq!(insert_all(&mut c, &d, 10), 1);
        assert_eq!(c.stats().bytes, 50);
        assert_eq!(c.lookup(&b, 8).len(), 1, "b's second block was evicted, its first kept");
        assert_eq!(c.lookup(&a, 8).len(), 3);
        // A parent is never evicted before its children: a shrinking bound takes leaves first.
        c.set_capacity(20);
        let s = c.stats();
        assert!(s.bytes <= 20 && s.evicted_blocks >= 4, "{s:?}");
        for (q, _) in [(&a, 0), (&b, 0), (&d, 0)] {
            let hit = c.lookup(q, 8);
            assert_eq!(hit.iter().map(|h| h.1).collect::<Vec<_>>(), (0..hit.len()).collect::<Vec<_>>());
        }
        c.set_capacity(0);
        assert_eq!((c.stats().bytes, c.stats().blocks), (0, 0));
    }

    #[test]
    fn refuses_orphans_oversized_blocks_and_duplicates() {
        let mut c = PrefixCache::new(100);
        let a = blocks(1, 2);
        let k0 = block_key(None, &a[..B]);
        assert!(!c.insert(Some(k0), &a[B..], 1, 10), "parent not cached");
        assert!(!c.insert(None, &a[..B], 0, 101), "larger than the cache");
        assert!(c.insert(None, &a[..B], 0, 10));
        assert!(c.insert(None, &a[..B], 7, 10), "already cached");
        assert_eq!(c.lookup(&a, 8)[0].1, 0, "the first copy is kept");
        assert_eq!(c.stats().bytes, 10);
        // The parent of the block being inserted is not evicted to make room for it.
        let mut small = PrefixCache::new(20);
        assert_eq!(insert_all(&mut small, &blocks(4, 3), 10), 2);
        assert_eq!(small.lookup(&blocks(4, 3), 8).len(), 2);
        assert_eq!(small.stats().bytes, 20);
        // Its ancestors are evictable again afterwards.
        assert_eq!(insert_all(&mut small, &blocks(5, 1), 10), 1);
        assert_eq!(small.lookup(&blocks(4, 3), 8).len(), 1);
    }
}
