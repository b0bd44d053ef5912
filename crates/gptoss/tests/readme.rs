//! The README's first steps, run as written against the tiny model: the commands of "Run",
//! the server started as it says, the `curl` line it prints, and the Python client snippet.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap()
}

/// The fenced blocks of the section `## Run`, with their language.
fn run_section_blocks() -> Vec<(String, String)> {
    let text = readme();
    let start = text.find("\n## Run\n").expect("a Run section");
    let end = text[start + 1..].find("\n## ").map_or(text.len(), |e| start + 1 + e);
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text[start..end].lines() {
        if let Some(lang) = line.strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some((lang.to_string(), String::new())),
            }
        } else if let Some((_, body)) = &mut current {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

fn shell(cwd: &Path, line: &str) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_gptoss");
    let line = line.replace("target/release/gptoss", bin);
    Command::new("bash")
        .args(["-c", &line])
        .current_dir(cwd)
        .env("GPTOSS_DEVICE", "cpu")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"Hello!\n")?;
            child.wait_with_output()
        })
        .unwrap()
}

#[test]
fn the_readme_first_steps_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = run_section_blocks();
    // The first block: make the tiny model and chat with it (one message on stdin).
    let (lang, first) = &blocks[0];
    assert_eq!(lang, "sh");
    assert!(first.contains("synth --shape tiny"), "{first}");
    for line in first.lines().filter(|l| !l.trim().is_empty()) {
        let out = shell(dir.path(), line);
        assert!(out.status.success(), "{line}:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    // The server, as the README starts it; on a machine where its port is busy, port 0.
    let serve = blocks.iter().find(|(l, b)| l == "sh" && b.contains(" serve gpt-oss-tiny")).expect("serve block");
    let serve_line = serve.1.lines().find(|l| l.contains(" serve ")).unwrap().to_string();
    let python = blocks.iter().find(|(l, _)| l == "python").expect("python block").1.clone();
    let (mut child, stderr, port) = start(dir.path(), &serve_line)
        .or_else(|| start(dir.path(), &serve_line.replace("--port 8000", "--port 0")))
        .expect("the server starts");
    let t0 = Instant::now();
    let curl = loop {
        let text = stderr.lock().unwrap().clone();
        if let Some(l) = text.lines().find(|l| l.trim_start().starts_with("curl ")) {
            break l.trim().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no curl line printed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let curl_ok = Command::new("curl").arg("--version").output().is_ok();
    if curl_ok {
        let out = shell(dir.path(), &format!("{curl} --fail -sS"));
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && body.contains("chat.completion"), "{curl}: {body}");
    }
    let has_client = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    let python = python.replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    let py = has_client.then(|| Command::new("python3").args(["-c", &python]).output().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    match py {
        Some(out) => {
            assert!(out.status.success(), "the README's Python snippet:\n{}", String::from_utf8_lossy(&out.stderr))
        }
        None => {
            eprintln!("no openai package: the Python snippet was not run (pip install -r tests/api/requirements.txt)")
        }
    }
}

type Started = (std::process::Child, Arc<Mutex<String>>, u16);

/// Starts `line` and waits for `listening on`; None when it exited first (a busy port).
fn start(cwd: &Path, line: &str) -> Option<Started> {
    let bin = env!("CARGO_BIN_EXE_gptoss");
    let line = line.replace("target/release/gptoss", bin);
    let line = line.split(" #").next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut child = Command::new(words[0])
        .args(&words[1..])
        .current_dir(cwd)
        .env("GPTOSS_DEVICE", "cpu")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while pipe.read_line(&mut line).is_ok_and(|n| n > 0) {
            sink.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    if stdout.read_line(&mut first).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let Some(port) = first.trim().rsplit(':').next().and_then(|p| p.parse().ok()) else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    Some((child, stderr, port))
}
