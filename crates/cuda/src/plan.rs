//! One forward call on the host: the batch checked (with the CPU's errors, before anything
//! changes), cut into passes that fit the device buffers, and each pass's per-row metadata
//! laid out for one copy to the device.

use gptoss_engine::model::LogitsRow;
use gptoss_engine::{EngineError, LogitsRequest, SeqChunk, SeqId};

use crate::kv::KvBook;

/// Query rows attention handles together (they share each key/value tile).
pub const QUERY_BLOCK: usize = 8;
/// Keys per attention range: fixed, so a row's result never depends on the batch.
pub const SPLIT_KEYS: usize = 1024;

/// Checks a batch as the CPU does, with the same errors, before anything changes.
pub fn validate(book: &KvBook, batch: &[SeqChunk], vocab: usize) -> Result<(), EngineError> {
    gptoss_engine::model::check_batch(batch, vocab, book.max_context(), |s| book.len(s))
}

/// A piece of one batch item run in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the item in the caller's batch.
    pub item: usize,
    pub seq: SeqId,
    /// Tokens `first..first + len` of the item's chunk.
    pub first: usize,
    pub len: usize,
    pub logits: LogitsRequest,
}

/// What bounds one pass.
#[derive(Clone, Copy, Debug)]
pub struct PassLimits {
    pub tokens: usize,
    pub logit_rows: usize,
    /// rows × key ranges of the attention partial sums.
    pub row_splits: usize,
}

/// Cuts a validated batch into passes within `lim`, keeping items in order (so the logits
/// rows come out in the order one pass would give). `lens[i]` is item i's cached length.
/// Attention keeps partial sums for every row of a pass over the longest row's key ranges,
/// so a pass's rows × its most key ranges must fit `lim.row_splits`.
pub fn passes(batch: &[SeqChunk], lens: &[usize], lim: PassLimits) -> Vec<Vec<Piece>> {
    #[derive(Clone, Copy, Default)]
    struct Load {
        toks: usize,
        lrows: usize,
        max_splits: usize,
    }
    let mut out: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut load = Load::default();
    for (i, c) in batch.iter().enumerate() {
        let mut first = 0;
        while first < c.tokens.len() {
            // The pass's load with rows first..first+n of this item added, if it fits.
            let with = |n: usize, load: Load| -> Option<Load> {
                let end = first + n;
                let lr = match c.logits {
                    LogitsRequest::All => n,
                    LogitsRequest::Last => usize::from(end == c.tokens.len()),
                    LogitsRequest::None => 0,
                };
                let next = Load {
                    toks: load.toks + n,
                    lrows: load.lrows + lr,
                    max_splits: load.max_splits.max((lens[i] + end).div_ceil(SPLIT_KEYS)),
                };
                (next.toks <= lim.tokens
                    && next.lrows <= lim.logit_rows
                    && next.toks * next.max_splits <= lim.row_splits)
                    .then_some(next)
            };
            // The most rows that fit (the load grows with n): doubling, then bisection.
            let rest = c.tokens.len() - first;
            let (mut lo, mut hi) = (0usize, 1usize);
            while hi <= rest && with(hi, load).is_some() {
                lo = hi;
                hi *= 2;
            }
            let mut hi = hi.min(rest + 1);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if with(mid, load).is_some() {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let mut n = lo;
            if n == 0 {
                if out.last().is_some_and(|p| !p.is_empty()) {
                    out.push(Vec::new());
                    load = Load::default();
                    continue;
                }
                // A single row that exceeds an empty pass: take it anyway (the limits are
                // sized so this cannot happen; better slow than stuck).
                n = 1;
            }
            let end = first + n;
            load = with(n, load).unwrap_or(Load {
                toks: load.toks + n,
                lrows: load.lrows + 1,
                max_splits: load.max_splits,
            });
            let logits = match c.logits {
                LogitsRequest::All => LogitsRequest::All,
                LogitsRequest::Last if end == c.tokens.len() => LogitsRequest::Last,
                _ => LogitsRequest::None,
            };
            out.last_mut().expect("a pass").push(Piece { item: i, seq: c.seq, first, len: n, logits });
            first = end;
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The device metadata of one pass, as i32 arrays packed into one buffer.
#[derive(Default, Debug)]
pub struct PassMeta {
    pub tokens: Vec<i32>,
    pub positions: Vec<i32>,
    pub row_item: Vec<i32>,
    pub item_slot: Vec<i32>,
    pub item_start: Vec<i32>,
    pub item_row0: Vec<i32>,
    pub item_len: Vec<i32>,
    /// (first row, rows) of each attention query block.
    pub qblocks: Vec<i32>,
    /// Rows that want logits, in row order, and what to report for each.
    pub logit_rows: Vec<i32>,
    pub logit_meta: Vec<LogitsRow>,
    /// Key ranges attention needs (the longest row's).
    pub splits: usize,
}

impl PassMeta {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    pub fn build(&mut self, pieces: &[Piece], batch: &[SeqChunk], book: &KvBook) {
        *self = PassMeta::default();
        let mut max_end = 0;
        for (pi, p) in pieces.iter().enumerate() {
            let s = book.get(p.seq).expect("validated");
            let toks = &batch[p.item].tokens[p.first..p.first + p.len];
            let row0 = self.tokens.len();
            self.tokens.extend(toks.iter().map(|&t| t as i32));
            self.positions.extend((s.len..s.len + p.len).map(|x| x as i32));
            self.row_item.extend(std::iter::repeat_n(pi as i32, p.len));
            self.item_slot.push(s.slot as i32);
            self.item_start.push(s.len as i32);
            self.item_row0.push(row0 as i32);
            self.item_len.push(p.len as i32);
            for b in (0..p.len).step_by(QUERY_BLOCK) {
                self.qblocks.push((row0 + b) as i32);
                self.qblocks.push(QUERY_BLOCK.min(p.len - b) as i32);
            }
            let rows: Vec<usize> = match p.logits {
                LogitsRequest::None => vec![],
                LogitsRequest::Last => vec![p.len - 1],
                LogitsRequest::All => (0..p.len).collect(),
            };
            for r in rows {
                self.logit_rows.push((row0 + r) as i32);
                self.logit_meta.push(LogitsRow { item: p.item, position: s.len + r });
            }
            max_end = max_end.max(s.len + p.len);
        }
        self.splits = max_end.div_ceil(SPLIT_KEYS).max(1);
    }
}

/// K slices of a matrix with `mt` 16-row tiles and `kb` 64-wide steps, `items` matrices
/// used per decoded token: enough warps to keep the memory busy for one token. A property of
/// the matrix alone, so every batch sums in the same order.
pub fn k_slices(mt: usize, kb: usize, items: usize) -> usize {
    let ctas = mt.div_ceil(2) * items.max(1);
    2048usize.div_ceil(ctas).clamp(1, 8).min(kb.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, tokens: &[u32], logits: LogitsRequest) -> SeqChunk<'_> {
        SeqChunk { seq: SeqId(seq), tokens, logits }
    }

    const BIG: PassLimits = PassLimits { tokens: 1 << 20, logit_rows: 1 << 20, row_splits: 1 << 30 };

    #[test]
    fn one_pass_when_it_fits() {
        let (a, b) = ([1u32; 5], [2u32; 3]);
        let batch = [chunk(0, &a, LogitsRequest::Last), chunk(1, &b, LogitsRequest::All)];
        let p = passes(&batch, &[0, 10], BIG);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].iter().map(|x| x.len).collect::<Vec<_>>(), [5, 3]);
    }

    #[test]
    fn long_chunks_are_cut_and_only_the_last_piece_asks_for_last() {
        let a = [1u32; 10];
        let batch = [chunk(0, &a, LogitsRequest::Last)];
        let lim = PassLimits { tokens: 4, ..BIG };
        let p = passes(&batch, &[0], lim);
        let lens: Vec<_> = p.iter().map(|x| (x[0].first, x[0].len, x[0].logits)).collect();
        assert_eq!(lens, [(0, 4, LogitsRequest::None), (4, 4, LogitsRequest::None), (8, 2, LogitsRequest::Last)]);
    }

    #[test]
    fn every_token_is_covered_once_in_order_under_any_limits() {
        let (a, b, c) = ([1u32; 37], [2u32; 1], [3u32; 100]);
        let batch =
            [chunk(0, &a, LogitsRequest::All), chunk(1, &b, LogitsRequest::Last), chunk(2, &c, LogitsRequest::None)];
        for (tokens, logit_rows, row_splits) in [(1, 1, 1), (7, 3, 50), (64, 64, 64), (200, 5, 1000), (13, 100, 20)] {
            let lim = PassLimits { tokens, logit_rows, row_splits };
            let lens = [0, 5, 3000];
            let p = passes(&batch, &lens, lim);
            let mut next = [0usize; 3];
            let mut logit_rows_seen = 0;
            for pass in &p {
                let t: usize = pass.iter().map(|x| x.len).sum();
                assert!(t <= tokens.max(1), "{lim:?}: a pass of {t} tokens");
                let splits =
                    pass.iter().map(|x| (lens[x.item] + x.first + x.len).div_ceil(SPLIT_KEYS)).max().unwrap_or(1);
                assert!(t * splits <= row_splits.max(splits), "{lim:?}: {t} rows x {splits} key ranges");
                for piece in pass {
                    assert_eq!(piece.first, next[piece.item], "{lim:?}: pieces in order");
                    next[piece.item] += piece.len;
                    logit_rows_seen += match piece.logits {
                        LogitsRequest::All => piece.len,
                        LogitsRequest::Last => 1,
                        LogitsRequest::None => 0,
                    };
                }
            }
            assert_eq!(next, [37, 1, 100], "{lim:?}");
            assert_eq!(logit_rows_seen, 37 + 1, "{lim:?}");
        }
    }

    #[test]
    fn slices_depend_on_the_matrix_only() {
        assert_eq!(k_slices(12568, 45, 1), 1); // the unembedding: plenty of rows
        assert_eq!(k_slices(320, 45, 1), 8); // qkv of one token
        assert_eq!(k_slices(4, 1, 1), 1); // never more slices than steps
        assert!(k_slices(360, 45, 4) >= 2);
    }
}
