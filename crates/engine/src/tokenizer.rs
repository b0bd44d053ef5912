//! o200k_harmony: the o200k_base byte-level BPE (ranks embedded, checked against the
//! published SHA-256 by a test) with harmony's special-token table (spec harmony §1).
//!
//! [`Tokenizer::encode`] only ever produces ordinary tokens: text that looks like
//! `<|start|>` becomes the five ordinary tokens for those characters. Special tokens enter
//! a prompt only by id, through [`Tokenizer::special_id`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use regex::Regex;

/// The o200k_base rank file, as published (`<base64 bytes> <rank>` per line).
const O200K_BASE: &[u8] = include_bytes!("../assets/o200k_base.tiktoken");

/// Ordinary tokens are 0..NUM_ORDINARY; the rest of the vocabulary is special.
pub const NUM_ORDINARY: u32 = 199_998;
/// Rows of the model's embedding and unembedding.
pub const VOCAB_SIZE: u32 = 201_088;

pub const START_OF_TEXT: u32 = 199_998;
pub const END_OF_TEXT: u32 = 199_999;
pub const RETURN: u32 = 200_002;
pub const CONSTRAIN: u32 = 200_003;
pub const CHANNEL: u32 = 200_005;
pub const START: u32 = 200_006;
pub const END: u32 = 200_007;
pub const MESSAGE: u32 = 200_008;
pub const CALL: u32 = 200_012;

/// Pieces longer than this many bytes are merged with a heap instead of rescanning.
const LONG_PIECE: usize = 64;

/// The o200k pre-tokenizer without its one look-ahead branch (`\s+(?!\S)`), which
/// [`Tokenizer::encode`] reproduces by giving back the last whitespace character of a run
/// that is followed by a non-space (spec harmony §1.1, branches 1–5 and 7).
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenizerError {
    #[error("embedded o200k_base rank file is malformed at line {0}")]
    BadRankFile(usize),
    #[error("token id {0} is outside the vocabulary of {VOCAB_SIZE} tokens")]
    UnknownId(u32),
}

pub struct Tokenizer {
    ranks: HashMap<Box<[u8]>, u32, BuildHasherDefault<FxHasher>>,
    /// id -> bytes for ordinary tokens.
    pieces: Vec<Box<[u8]>>,
    pattern: Regex,
}

impl Tokenizer {
    /// The o200k_harmony tokenizer; works offline.
    pub fn o200k_harmony() -> Result<Self, TokenizerError> {
        let mut ranks = HashMap::with_capacity_and_hasher(NUM_ORDINARY as usize, Default::default());
        let mut pieces = vec![Box::<[u8]>::default(); NUM_ORDINARY as usize];
        for (n, line) in O200K_BASE.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let bad = || TokenizerError::BadRankFile(n + 1);
            let sp = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let bytes = base64_decode(&line[..sp]).ok_or_else(bad)?.into_boxed_slice();
            let rank: u32 = std::str::from_utf8(&line[sp + 1..]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            if rank >= NUM_ORDINARY {
                return Err(bad());
            }
            pieces[rank as usize] = bytes.clone();
            ranks.insert(bytes, rank);
        }
        if ranks.len() != NUM_ORDINARY as usize {
            return Err(TokenizerError::BadRankFile(0));
        }
        let pattern = Regex::new(PATTERN).expect("the o200k pattern compiles");
        Ok(Tokenizer { ranks, pieces, pattern })
    }

    /// Ordinary encoding: never yields a special token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_into(text, &mut out);
        out
    }

    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.pattern.find_at(text, pos) else {
                break; // unreachable: every character matches some branch
            };
            let (start, mut end) = (m.start(), m.end());
            if start > pos {
                self.bpe(&text.as_bytes()[pos..start], out);
            }
            let piece = &text[start..end];
            // `\s+(?!\S)`: a run of spaces (no newline) followed by text keeps its last
            // character for the next piece, so " world" stays one token.
            if end < text.len() && piece.chars().all(char::is_whitespace) && !piece.contains(['\r', '\n']) {
                if let Some(last) = piece.chars().next_back().filter(|c| c.len_utf8() < piece.len()) {
                    end -= last.len_utf8();
                }
            }
            self.bpe(&text.as_bytes()[start..end], out);
            pos = end;
        }
    }

    /// Encodes `text` where the names of special tokens (`<|start|>`) stand for the tokens
    /// themselves. Only for trusted text such as test scripts: user and tool text must go
    /// through [`Tokenizer::encode`], which never produces a special token.
    pub fn encode_with_special_tokens(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut plain = 0; // bytes of `rest` known to be ordinary text
        while let Some(open) = rest[plain..].find("<|").map(|i| plain + i) {
            let special = rest[open..]
                .find("|>")
                .and_then(|close| Self::special_id(&rest[open..open + close + 2]).map(|id| (id, close + 2)));
            match special {
                Some((id, len)) => {
                    self.encode_into(&rest[..open], &mut out);
                    out.push(id);
                    rest = &rest[open + len..];
                    plain = 0;
                }
                None => plain = open + 2,
            }
        }
        self.encode_into(rest, &mut out);
        out
    }

    /// Byte-pair merge of one pre-tokenized piece: repeatedly merge the adjacent pair whose
    /// concatenation has the lowest rank, the leftmost on ties (tiktoken's algorithm).
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
        } else if piece.len() > LONG_PIECE {
            self.bpe_heap(piece, out);
        } else {
            self.bpe_scan(piece, out);
        }
    }

    /// Rescans all pairs after each merge: quadratic, but the fastest for short pieces.
    fn bpe_scan(&self, piece: &[u8], out: &mut Vec<u32>) {
        // parts[i] = (start offset, rank of merging part i with part i+1)
        let rank_of = |parts: &[(usize, u32)], i: usize| -> u32 {
            if i + 2 < parts.len() {
                self.ranks.get(&piece[parts[i].0..parts[i + 2].0]).copied().unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        let mut parts: Vec<(usize, u32)> = (0..=piece.len()).map(|i| (i, u32::MAX)).collect();
        for i in 0..parts.len() {
            parts[i].1 = rank_of(&parts, i);
        }
        // The lowest-ranked pair, leftmost on ties (min_by_key keeps the first minimum).
        while let Some((i, _)) =
            parts[..parts.len() - 1].iter().enumerate().filter(|(_, p)| p.1 != u32::MAX).min_by_key(|(_, p)| p.1)
        {
            parts.remove(i + 1);
            parts[i].1 = rank_of(&parts, i);
            if i > 0 {
                parts[i - 1].1 = rank_of(&parts, i - 1);
            }
        }
        for w in parts.windows(2) {
            // Every single byte is a token, so every part left has a rank.
            out.push(self.ranks.get(&piece[w[0].0..w[1].0]).copied().unwrap_or(0));
        }
    }

    /// The same merges with a heap of candidate pairs, so a megabyte-long piece (a run of
    /// letters with no space) costs n·log n, not n².
    fn bpe_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = piece.len();
        let rank = |start: usize, end: usize| self.ranks.get(&piece[start..end]).copied();
        // Parts are a linked list over byte offsets: the part starting at i ends at end[i].
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        // (rank, start of the left part, end of the right part): the rank of piece[start..end].
        let mut heap: BinaryHeap<Reverse<(u32, usize, usize)>> =
            (0..n - 1).filter_map(|i| rank(i, i + 2).map(|r| Reverse((r, i, i + 2)))).collect();
        while let Some(Reverse((_, i, stop))) = heap.pop() {
            // Still two adjacent parts spanning exactly i..stop? Otherwise the entry is stale.
            let j = if alive[i] { end[i] } else { continue };
            if j >= n || end[j] != stop {
                continue;
            }
            alive[j] = false;
            end[i] = stop;
            if stop < n {
                prev[stop] = Some(i);
                if let Some(r) = rank(i, end[stop]) {
                    heap.push(Reverse((r, i, end[stop])));
                }
            }
            if let Some(p) = prev[i] {
                if let Some(r) = rank(p, stop) {
                    heap.push(Reverse((r, p, stop)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(rank(i, end[i]).unwrap_or(0));
            i = end[i];
        }
    }

    /// The bytes of one token (a special token's literal text, like `<|call|>`).
    pub fn token_bytes(&self, id: u32) -> Result<std::borrow::Cow<'_, [u8]>, TokenizerError> {
        if id < NUM_ORDINARY {
            Ok(std::borrow::Cow::Borrowed(&self.pieces[id as usize]))
        } else {
            special_name(id).map(|s| std::borrow::Cow::Owned(s.into_bytes())).ok_or(TokenizerError::UnknownId(id))
        }
    }

    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(&self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Decoded text; invalid UTF-8 becomes U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// The id of a special token given its text, e.g. `<|start|>`.
    pub fn special_id(name: &str) -> Option<u32> {
        let inner = name.strip_prefix("<|")?.strip_suffix("|>")?;
        let id = match inner {
            "startoftext" => START_OF_TEXT,
            "endoftext" => END_OF_TEXT,
            "return" => RETURN,
            "constrain" => CONSTRAIN,
            "channel" => CHANNEL,
            "start" => START,
            "end" => END,
            "message" => MESSAGE,
            "call" => CALL,
            "endofprompt" => 200_018, // o200k_base's name for what harmony calls reserved_200018
            _ => inner.strip_prefix("reserved_")?.parse().ok()?,
        };
        (special_name(id).as_deref() == Some(name) || inner == "endofprompt").then_some(id)
    }

    pub fn is_special(id: u32) -> bool {
        (NUM_ORDINARY..VOCAB_SIZE).contains(&id)
    }
}

/// The literal text of a special token, e.g. `<|reserved_200020|>`.
pub fn special_name(id: u32) -> Option<String> {
    let name = match id {
        START_OF_TEXT => "startoftext",
        END_OF_TEXT => "endoftext",
        RETURN => "return",
        CONSTRAIN => "constrain",
        CHANNEL => "channel",
        START => "start",
        END => "end",
        MESSAGE => "message",
        CALL => "call",
        _ if Tokenizer::is_special(id) => return Some(format!("<|reserved_{id}|>")),
        _ => return None,
    };
    Some(format!("<|{name}|>"))
}

/// Turns a stream of token ids into text, holding back the bytes of an unfinished UTF-8
/// character until the token that completes it arrives. Invalid bytes become U+FFFD.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        Ok(self.push_bytes(&tok.token_bytes(id)?))
    }

    /// The complete characters so far, given more bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.take_complete()
    }

    /// Whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{fffd}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = match s.iter().position(|&c| c == b'=') {
        Some(p) => &s[..p],
        None => s,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// The Fx hash (rustc's): fast for short byte strings, which is all BPE ever looks up.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rem.len()].copy_from_slice(rem);
            self.add(u64::from_le_bytes(buf));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_by_name_only_where_asked() {
        let t = Tokenizer::o200k_harmony().unwrap();
        let ids = t.encode_with_special_tokens("<|start|>user<|message|>a <|not_special|> b<|end|>");
        assert_eq!(ids[0], START);
        assert_eq!(ids[2], MESSAGE);
        assert_eq!(*ids.last().unwrap(), END);
        assert_eq!(t.decode_bytes(&ids).unwrap(), b"<|start|>user<|message|>a <|not_special|> b<|end|>");
        assert!(t.encode("<|start|>").iter().all(|&i| i < NUM_ORDINARY));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode(b"IQ==").unwrap(), b"!");
        assert_eq!(base64_decode(b"YWJj").unwrap(), b"abc");
        assert!(base64_decode(b"a$==").is_none());
    }

    #[test]
    fn heap_merge_matches_scan_merge() {
        let t = Tokenizer::o200k_harmony().unwrap();
        let mut rng = crate::rng::Rng::new(11);
        let alphabet: [&[u8]; 10] =
            [b"a", b"b", b"ab", b"the", b"ing", b"\xc3\xa9", b"0", b" ", b"\xe4\xb8\xad", b"zz"];
        for len in [2usize, 3, 5, 17, 64, 65, 200, 1000] {
            for _ in 0..20 {
                let mut piece = Vec::new();
                while piece.len() < len {
                    piece.extend_from_slice(alphabet[(rng.next_u64() % 10) as usize]);
                }
                let (mut a, mut b) = (Vec::new(), Vec::new());
                t.bpe_scan(&piece, &mut a);
                t.bpe_heap(&piece, &mut b);
                assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&piece));
                assert_eq!(t.decode_bytes(&b).unwrap(), piece);
            }
        }
    }

    #[test]
    fn a_long_run_without_spaces_round_trips() {
        // One 400 kB piece: this goes through the heap merge (the scan would take minutes).
        let t = Tokenizer::o200k_harmony().unwrap();
        let text = "ab".repeat(200_000);
        let ids = t.encode(&text);
        assert!(ids.len() < text.len() / 2);
        assert_eq!(t.decode_bytes(&ids).unwrap(), text.as_bytes());
    }

    #[test]
    fn special_names_round_trip() {
        for id in NUM_ORDINARY..VOCAB_SIZE {
            let name = special_name(id).unwrap();
            assert_eq!(Tokenizer::special_id(&name), Some(id), "{name}");
        }
        assert_eq!(Tokenizer::special_id("<|endofprompt|>"), Some(200_018));
        assert_eq!(Tokenizer::special_id("<|reserved_200006|>"), None, "200006 is <|start|>");
        assert_eq!(Tokenizer::special_id("<|reserved_201088|>"), None);
        assert_eq!(special_name(VOCAB_SIZE), None);
        assert_eq!(special_name(5), None);
    }
}
