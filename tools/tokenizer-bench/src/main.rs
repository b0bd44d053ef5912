//! Encoding speed of gptoss's o200k_harmony tokenizer beside tiktoken-rs, on a mixed text:
//! this repository's sources, docs and the harmony fixtures' multilingual strings. Both
//! encode the same text on one thread; their outputs are compared token for token.

use std::path::{Path, PathBuf};
use std::time::Instant;

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() && !name.starts_with('.') && name != "target" {
            collect(&p, out);
        } else if ["rs", "md", "jsonl", "toml"].iter().any(|ext| name.ends_with(ext)) {
            out.push(p);
        }
    }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    (best, last.expect("runs > 0"))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut docs: Vec<String> = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    // The jsonl fixtures hold escaped text; decode their strings so the corpus has real
    // non-ASCII (Arabic, Hebrew, CJK, Cyrillic, emoji).
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "jsonl")) {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json_lite(line) {
                docs.push(v);
            }
        }
    }
    let one: String = docs.concat();
    let reps = (8_000_000 / one.len().max(1)).max(1);
    let text = one.repeat(reps);
    let mb = text.len() as f64 / 1e6;
    let non_ascii = text.chars().filter(|c| !c.is_ascii()).count() as f64 / text.chars().count() as f64;
    println!("corpus: {} files, {:.2} MB ({} copies of {:.0} kB), {:.1}% non-ASCII characters", files.len(), mb, reps, one.len() as f64 / 1e3, non_ascii * 100.0);

    let t = Instant::now();
    let ours = gptoss_engine::Tokenizer::o200k_harmony().expect("tokenizer");
    let ours_load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let theirs = tiktoken_rs::o200k_harmony().expect("tiktoken-rs");
    let theirs_load = t.elapsed().as_secs_f64();

    // Same tokens, document by document.
    for d in &docs {
        assert_eq!(ours.encode(d), theirs.encode_ordinary(d), "outputs differ on a document of {} bytes", d.len());
    }
    let (s_ours, ids_ours) = best_of(3, || ours.encode(&text));
    let (s_theirs, ids_theirs) = best_of(3, || theirs.encode_ordinary(&text));
    assert_eq!(ids_ours, ids_theirs, "outputs differ on the whole corpus");
    println!("identical output: {} tokens", ids_ours.len());
    println!("gptoss      : {:7.2} MB/s  (load {:.0} ms)", mb / s_ours, ours_load * 1e3);
    println!("tiktoken-rs : {:7.2} MB/s  (load {:.0} ms)", mb / s_theirs, theirs_load * 1e3);
    println!("ratio       : {:.2}x", s_theirs / s_ours);
}

/// Joins the string values of a JSON line (enough for the fixtures; no dependency).
fn serde_json_lite(line: &str) -> Result<String, ()> {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let mut code = u32::from_str_radix(&hex, 16).map_err(|_| ())?;
                        if (0xD800..0xDC00).contains(&code) && chars.peek() == Some(&'\\') {
                            chars.next();
                            chars.next();
                            let lo: String = chars.by_ref().take(4).collect();
                            let lo = u32::from_str_radix(&lo, 16).map_err(|_| ())?;
                            code = 0x10000 + ((code - 0xD800) << 10) + (lo - 0xDC00);
                        }
                        s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    Some(other) => s.push(other),
                    None => break,
                },
                c => s.push(c),
            }
        }
        out.push_str(&s);
        out.push(' ');
    }
    Ok(out)
}
