//! Which device memory holds which sequence's keys and values: pure bookkeeping, tested
//! without a GPU. The storage itself lives in `model.rs`:
//!
//! - full-attention layers: a pool of pages of [`PAGE_TOKENS`] positions per layer, and one
//!   page table `[slots][max_pages]` shared by those layers (a sequence's page i holds its
//!   positions 64i.. in every full layer);
//! - sliding-window layers: a ring of `window` positions per sequence slot, whatever the
//!   context, as on the CPU.
//!
//! The pool holds `max_sequences × max_pages` pages, reserved when the runner is made, so
//! a sequence that fits the context never waits for memory; pages return to the pool when a
//! sequence is removed or rewound.

use std::collections::HashMap;

use gptoss_engine::{EngineError, SeqId};

/// Positions per page in full-attention layers.
pub const PAGE_TOKENS: usize = 64;

#[derive(Clone, Debug)]
pub struct SeqKv {
    /// Its ring slot and row of the page table.
    pub slot: u32,
    /// Positions held.
    pub len: usize,
    /// Page of each 64 positions.
    pub pages: Vec<u32>,
}

/// A range of a page table row to copy to the device after it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableUpdate {
    pub slot: u32,
    pub first: usize,
    pub pages: Vec<u32>,
}

pub struct KvBook {
    max_context: usize,
    max_sequences: usize,
    free_slots: Vec<u32>,
    free_pages: Vec<u32>,
    seqs: HashMap<SeqId, SeqKv>,
    next_id: u64,
}

impl KvBook {
    pub fn new(max_sequences: usize, max_context: usize) -> Self {
        let pages = max_sequences * Self::pages_for(max_context);
        KvBook {
            max_context,
            max_sequences,
            // Popped from the end: lowest slot and page first.
            free_slots: (0..max_sequences as u32).rev().collect(),
            free_pages: (0..pages as u32).rev().collect(),
            seqs: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn pages_for(positions: usize) -> usize {
        positions.div_ceil(PAGE_TOKENS)
    }

    pub fn max_pages(&self) -> usize {
        Self::pages_for(self.max_context)
    }

    pub fn total_pages(&self) -> usize {
        self.max_sequences * self.max_pages()
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    pub fn max_sequences(&self) -> usize {
        self.max_sequences
    }

    pub fn add(&mut self) -> Result<SeqId, EngineError> {
        let slot = self.free_slots.pop().ok_or(EngineError::NoSequenceSlot { limit: self.max_sequences })?;
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, SeqKv { slot, len: 0, pages: Vec::new() });
        Ok(id)
    }

    pub fn remove(&mut self, id: SeqId) -> bool {
        match self.seqs.remove(&id) {
            Some(s) => {
                self.free_pages.extend(s.pages.iter().rev());
                self.free_slots.push(s.slot);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, id: SeqId) -> Option<&SeqKv> {
        self.seqs.get(&id)
    }

    pub fn len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.len)
    }

    /// Sequences held.
    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Pages in use, over all sequences.
    pub fn pages_in_use(&self) -> usize {
        self.seqs.values().map(|s| s.pages.len()).sum()
    }

    /// Maps pages for positions up to `new_len` of the sequence; what changed in its page
    /// table row. Fails only if the pool is exhausted, which `new_len <= max_context` for
    /// every sequence rules out.
    pub fn reserve(&mut self, id: SeqId, new_len: usize) -> Result<Option<TableUpdate>, EngineError> {
        let limit = self.max_context;
        let s = self.seqs.get_mut(&id).ok_or(EngineError::UnknownSequence(id.0))?;
        if new_len > limit {
            return Err(EngineError::ContextOverflow { seq: id.0, needed: new_len, limit });
        }
        let want = Self::pages_for(new_len);
        if want <= s.pages.len() {
            return Ok(None);
        }
        let first = s.pages.len();
        while s.pages.len() < want {
            let p = self.free_pages.pop().ok_or_else(|| EngineError::Device("KV page pool exhausted".into()))?;
            s.pages.push(p);
        }
        Ok(Some(TableUpdate { slot: s.slot, first, pages: s.pages[first..].to_vec() }))
    }

    pub fn advance(&mut self, id: SeqId, n: usize) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.len += n;
        }
    }

    /// Rewinds the sequence to `len` positions, returning the pages past them to the pool.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> bool {
        let Some(s) = self.seqs.get_mut(&id) else { return false };
        if len > s.len {
            return false;
        }
        let keep = Self::pages_for(len);
        while s.pages.len() > keep {
            if let Some(p) = s.pages.pop() {
                self.free_pages.push(p);
            }
        }
        s.len = len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_reused() {
        let mut b = KvBook::new(2, 256);
        let (x, y) = (b.add().unwrap(), b.add().unwrap());
        assert!(matches!(b.add(), Err(EngineError::NoSequenceSlot { limit: 2 })));
        let sx = b.get(x).unwrap().slot;
        assert_ne!(sx, b.get(y).unwrap().slot);
        assert!(b.remove(x));
        assert!(!b.remove(x));
        let z = b.add().unwrap();
        assert_eq!(b.get(z).unwrap().slot, sx, "a freed slot is reused");
        assert_ne!(z, x, "handles are never reused");
    }

    #[test]
    fn pages_follow_the_length_and_return_to_the_pool() {
        let mut b = KvBook::new(2, 300);
        assert_eq!(b.max_pages(), 5);
        let s = b.add().unwrap();
        assert_eq!(b.reserve(s, 1).unwrap().unwrap().pages.len(), 1);
        assert_eq!(b.reserve(s, 64).unwrap(), None, "64 positions fit one page");
        let u = b.reserve(s, 129).unwrap().unwrap();
        assert_eq!((u.first, u.pages.len()), (1, 2));
        b.advance(s, 129);
        assert_eq!(b.pages_in_use(), 3);
        assert!(b.truncate(s, 64));
        assert_eq!(b.pages_in_use(), 1);
        assert!(!b.truncate(s, 65), "cannot rewind forward");
        let t = b.add().unwrap();
        b.reserve(t, 300).unwrap();
        assert!(matches!(b.reserve(t, 301), Err(EngineError::ContextOverflow { needed: 301, limit: 300, .. })));
        // Every page is used by at most one sequence.
        let mut all: Vec<u32> = [s, t].iter().flat_map(|&q| b.get(q).unwrap().pages.clone()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), b.pages_in_use());
        b.remove(s);
        b.remove(t);
        assert_eq!(b.pages_in_use(), 0);
        assert_eq!(b.free_pages.len(), b.total_pages());
    }

    #[test]
    fn a_full_pool_serves_every_sequence_to_its_limit() {
        let mut b = KvBook::new(3, 200);
        let ids: Vec<SeqId> = (0..3).map(|_| b.add().unwrap()).collect();
        for &id in &ids {
            b.reserve(id, 200).unwrap();
        }
        assert_eq!(b.pages_in_use(), b.total_pages());
    }
}
