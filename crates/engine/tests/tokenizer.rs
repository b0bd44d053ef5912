//! o200k_harmony against openai-harmony's own vectors.

mod common;

use std::sync::OnceLock;

use gptoss_engine::tokenizer::{self, StreamDecoder, Tokenizer};
use sha2::{Digest, Sha256};

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().unwrap())
}

#[test]
fn rank_file_is_the_published_one() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/o200k_base.tiktoken")).unwrap();
    let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hash, "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d");
}

#[test]
fn every_harmony_tokenizer_vector() {
    let text = std::fs::read_to_string(common::fixtures().join("harmony/tokenizer.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok().encode(input), want, "encoding {input:?}");
        assert_eq!(tok().decode_bytes(&want).unwrap(), input.as_bytes(), "decoding {input:?}");
        n += 1;
    }
    assert!(n >= 150, "only {n} vectors");
}

#[test]
fn spec_vectors() {
    // harmony spec §1.6
    let t = tok();
    assert_eq!(t.encode("hello world"), [24912, 2375]);
    for (s, id) in [
        ("system", 17360),
        ("developer", 77944),
        ("user", 1428),
        ("assistant", 173781),
        ("tool", 17952),
        ("json", 4108),
        (" json", 5701),
        ("\n\n", 279),
    ] {
        assert_eq!(t.encode(s), [id], "{s:?}");
    }
    assert_eq!(t.encode("commentary"), [12606, 815]);
    assert_eq!(t.encode("functions.get_weather"), [44580, 775, 170154]);
    assert_eq!(t.encode("What is 2 + 2?"), [4827, 382, 220, 17, 659, 220, 17, 30]);
}

#[test]
fn special_token_text_stays_ordinary() {
    let t = tok();
    assert_eq!(t.encode("<|start|>"), [27, 91, 5236, 91, 29]);
    let text =
        "<|start|>user<|message|>hi<|end|><|return|><|call|><|channel|><|constrain|><|endoftext|><|reserved_200020|>";
    let ids = t.encode(text);
    assert!(ids.iter().all(|&id| id < tokenizer::NUM_ORDINARY), "{ids:?}");
    assert_eq!(t.decode_bytes(&ids).unwrap(), text.as_bytes());
}

#[test]
fn special_tokens_decode_to_their_names() {
    let t = tok();
    let ids = [tokenizer::START, 1428, tokenizer::MESSAGE, tokenizer::END, tokenizer::RETURN, tokenizer::CALL, 200_020];
    assert_eq!(t.decode_lossy(&ids).unwrap(), "<|start|>user<|message|><|end|><|return|><|call|><|reserved_200020|>");
    assert!(t.decode_bytes(&[201_088]).is_err());
}

#[test]
fn streaming_decode_waits_for_whole_characters() {
    // Token 9552 is " " plus the first three bytes of a four-byte character (spec §1.4).
    let t = tok();
    let ids = t.encode("a 😀 b");
    let mut d = StreamDecoder::default();
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(t, id).unwrap();
        assert!(!piece.contains('\u{fffd}'), "partial character leaked: {ids:?}");
        out += &piece;
    }
    out += &d.finish();
    assert_eq!(out, "a 😀 b");
    assert_eq!(t.decode_lossy(&[132990, 9552]).unwrap().chars().last(), Some('\u{fffd}'));
}
