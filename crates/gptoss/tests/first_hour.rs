//! The command line as a new user meets it (issue 21): exit codes, messages that name the
//! flag and the limit, the prompt from words or stdin, completions, help, serve's name and
//! port, list and rm, quiet and colour.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The binary with `stdin` written to it, on the CPU, with a Hub cache of its own and a Hub
/// that cannot be reached (so nothing here can download).
fn gptoss_in(cache: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gptoss"));
    cmd.args(args)
        .env("GPTOSS_DEVICE", "cpu")
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("hf-home"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "2")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("runs");
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn gptoss(args: &[&str], stdin: &str) -> Run {
    gptoss_env(args, stdin, &[])
}

fn gptoss_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let cache = tempfile::tempdir().unwrap();
    let out = gptoss_in(cache.path(), args, stdin, env);
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run
}

fn script(dir: &Path, name: &str, turns: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(turns).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

const PARIS: &str =
    "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>";

#[test]
fn bad_flags_exit_2_naming_the_flag_and_limit_before_any_model_loads() {
    // A model that does not exist: had it been looked at, the error would say so instead.
    let missing = "/no/such/model";
    let r = gptoss(&["chat", missing, "--top-p", "2"], "");
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--top-p") && r.stderr.contains("at most 1"), "{}", r.stderr);
    for (flag, value) in [("--temperature", "-1"), ("--min-p", "1.5"), ("--ctx", "0")] {
        let r = gptoss(&["run", missing, flag, value, "hi"], "");
        assert_eq!(r.code, Some(2), "{flag} {value}: {}", r.stderr);
        assert!(r.stderr.contains(flag), "{}", r.stderr);
    }
    let r = gptoss(&["chat", missing, "--ctx", "1000000"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--ctx") && r.stderr.contains("131072"), "{}", r.stderr);
    let r = gptoss(&["serve", missing, "--ctx", "200000"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("131072"), "{}", r.stderr);
    // Too small for what the request needs: the flag, the need, and a value that works.
    let r = gptoss(&["run", missing, "--ctx", "10", "What is 2+2?"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--ctx 10 is too small") && r.stderr.contains("try --ctx"), "{}", r.stderr);
    assert!(!r.stderr.contains("no such checkpoint"), "checked before the model: {}", r.stderr);
    let r = gptoss(&["chat", missing, "--ctx", "10"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--ctx 10 is too small"), "{}", r.stderr);
    let r = gptoss(&["run", missing, "--max-tokens", "0", "hi"], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--max-tokens"), "{}", r.stderr);
    // Unknown flags and missing commands are usage errors too; -v is --verbose.
    assert_eq!(gptoss(&["chat", "--no-such-flag"], "").code, Some(2));
    let r = gptoss(&["--verbose"], "");
    assert_eq!(r.code, Some(2));
    assert!(!r.stderr.contains("--version"), "{}", r.stderr);
    // A runtime error is 1.
    let r = gptoss(&["run", missing, "hi"], "");
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no such checkpoint folder"), "{}", r.stderr);
}

#[test]
fn run_takes_its_words_or_stdin_and_never_mistakes_a_path_for_a_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "s.json", &[PARIS]);
    // Unquoted words are one prompt.
    let r = gptoss(&["run", "--script", &s, "What", "is", "the", "capital?"], "");
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "Paris.\n"), "{}", r.stderr);
    // No words: stdin.
    let r = gptoss(&["run", "--script", &s], "What is the capital of France?\n");
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "Paris.\n"), "{}", r.stderr);
    // A model path and no prompt: stdin is read, and an empty one is a usage error; the
    // default model is never fetched.
    let r = gptoss(&["run", "./no-such-model"], "");
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("no prompt"), "{}", r.stderr);
    assert!(!r.stderr.contains("gpt-oss-20b") && !r.stderr.contains("download"), "{}", r.stderr);
    let r = gptoss(&["run", "./no-such-model"], "a question on stdin\n");
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("./no-such-model: no such checkpoint folder"), "{}", r.stderr);
    // The prompt on stdin decides what --ctx must hold: a long one does not fit 200.
    let long = "word ".repeat(300);
    let r = gptoss(&["run", "--script", &s, "--ctx", "200"], &long);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--ctx 200 is too small"), "{}", r.stderr);
}

#[test]
fn a_cut_off_answer_names_the_flag_that_cut_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gpt-oss-tiny");
    let m = model.to_str().unwrap();
    let r = gptoss(&["synth", "--shape", "tiny", "--out", m, "--seed", "2"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // The prompt takes 68 tokens: four are left for the answer.
    let r = gptoss(&["run", m, "--ctx", "72", "--temperature", "0", "hi"], "");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("raise --ctx") && !r.stderr.contains("raise --max-tokens"), "{}", r.stderr);
    let r = gptoss(&["run", m, "--max-tokens", "3", "--temperature", "0", "hi"], "");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("--max-tokens 3 reached"), "{}", r.stderr);
    // -q: the error alone (no device, load or timing notes).
    let r = gptoss(&["run", "-q", m, "--max-tokens", "3", "--temperature", "0", "hi"], "");
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.starts_with("error: ") && r.stderr.lines().count() == 1, "{}", r.stderr);
    let r = gptoss(&["generate", "-q", m, "--prompt", "hi", "--max-tokens", "2"], "");
    assert_eq!((r.code, r.stderr.as_str()), (Some(0), ""));

    // Token ids as tokenize --json prints them, through a pipe.
    let ids = gptoss(&["tokenize", "--json", "Hello world"], "");
    assert_eq!(ids.code, Some(0));
    assert!(ids.stdout.trim_start().starts_with('['), "{}", ids.stdout);
    let r = gptoss(&["generate", m, "--tokens-file", "-", "--max-tokens", "2", "--ignore-eos", "--json"], &ids.stdout);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    // And generate --json's own output, from a file.
    let f = dir.path().join("out.json");
    std::fs::write(&f, &r.stdout).unwrap();
    let r = gptoss(&["generate", m, "--tokens-file", f.to_str().unwrap(), "--max-tokens", "1"], "");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn chat_says_how_an_answer_ended_and_what_formatting_problems_are() {
    let dir = tempfile::tempdir().unwrap();
    let long = script(dir.path(), "long.json", &["<|channel|>final<|message|>one two three four five six<|return|>"]);
    let r = gptoss(&["chat", "--script", &long, "--max-tokens", "3"], "count\n");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("(cut off: --max-tokens 3 reached"), "{}", r.stderr);
    let bad = script(dir.path(), "bad.json", &["Plain text with no header<|end|>"]);
    let r = gptoss(&["chat", "--script", &bad], "hi\n");
    assert!(r.stderr.contains("formatting problem") && r.stderr.contains("-v lists them"), "{}", r.stderr);
    let r = gptoss(&["-v", "chat", "--script", &bad], "hi\n");
    assert!(r.stderr.contains("\n  formatting problem: "), "{}", r.stderr);
}

#[test]
fn quiet_color_and_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "s.json", &[PARIS]);
    let r = gptoss(&["run", "-q", "--script", &s, "hi"], "");
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (Some(0), "Paris.\n", ""));
    // Reasoning is labelled, whatever the colour.
    let r = gptoss(&["chat", "--script", &s, "--color", "never"], "hi\n");
    assert!(r.stderr.contains("[reasoning] Think.") && !r.stderr.contains('\x1b'), "{}", r.stderr);
    let r = gptoss(&["chat", "--script", &s, "--color", "always"], "hi\n");
    assert!(r.stderr.contains("\x1b[2m"), "{}", r.stderr);
    // NO_COLOR turns auto off; --color always still wins.
    let r = gptoss_env(&["run", "--show-reasoning", "--script", &s, "hi"], "", &[("NO_COLOR", "1")]);
    assert!(!r.stderr.contains('\x1b'), "{}", r.stderr);
    let r =
        gptoss_env(&["run", "--color", "always", "--show-reasoning", "--script", &s, "hi"], "", &[("NO_COLOR", "1")]);
    assert!(r.stderr.contains("\x1b[2m"), "{}", r.stderr);
}

#[test]
fn completions_for_each_shell() {
    for (shell, mark) in [("bash", "_gptoss()"), ("zsh", "#compdef gptoss"), ("fish", "complete -c gptoss")] {
        let r = gptoss(&["completions", shell], "");
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert!(
            r.stdout.contains(mark) && r.stdout.contains("serve"),
            "{shell}: {}",
            &r.stdout[..200.min(r.stdout.len())]
        );
    }
    assert_eq!(gptoss(&["completions", "tcsh"], "").code, Some(2));
}

#[test]
fn help_puts_first_things_first() {
    let top = gptoss(&["--help"], "").stdout;
    let at = |s: &str| top.find(&format!("\n  {s} ")).unwrap_or_else(|| panic!("{s} in {top}"));
    assert!(at("chat") < at("run") && at("run") < at("serve") && at("serve") < at("pull"), "{top}");
    assert!(at("pull") < at("list") && at("list") < at("generate"), "{top}");
    assert!(top.contains("Exit status: 0 success, 1 runtime error, 2 usage error"), "{top}");
    // Model-loading flags belong to the commands that load a model.
    assert!(!top.contains("--threads") && !top.contains("--dense"), "{top}");
    let pull = gptoss(&["pull", "--help"], "").stdout;
    assert!(!pull.contains("--threads") && !pull.contains("--dense") && pull.contains("--offline"), "{pull}");
    let serve = gptoss(&["serve", "--help"], "").stdout;
    assert!(serve.contains("--threads") && serve.contains("--device"), "{serve}");
    let chat = gptoss(&["chat", "--help"], "").stdout;
    assert!(chat.contains("/save FILE") && chat.contains("/effort"), "{chat}");
    let synth = gptoss(&["synth", "--help"], "").stdout;
    assert!(synth.contains("13 GB"), "{synth}");
    // The old place still works.
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "s.json", &[PARIS]);
    assert_eq!(gptoss(&["--threads", "1", "run", "--script", &s, "hi"], "").code, Some(0));
}

#[test]
fn serve_finds_a_taken_port_before_loading_the_model() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let r = gptoss(&["serve", "/no/such/model", "--port", &port], "");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("cannot listen") && r.stderr.contains("--port"), "{}", r.stderr);
    assert!(!r.stderr.contains("no such checkpoint"), "the port comes first: {}", r.stderr);
}

/// One HTTP/1.1 request; the status code and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn serve_prints_the_name_to_send_and_accepts_the_folder_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gpt-oss-tiny");
    let m = model.to_str().unwrap();
    assert_eq!(gptoss(&["synth", "--shape", "tiny", "--out", m], "").code, Some(0));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(["serve", m, "--port", "0", "--threads", "1"])
        .env("GPTOSS_DEVICE", "cpu")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    let (models, body) = http(port, "GET", "/v1/models", "");
    let (wrong, _) = http(port, "GET", "/v1/models/gpt-oss-20b", "");
    let req = r#"{"model": "gpt-oss-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}"#;
    let (chat, reply) = http(port, "POST", "/v1/chat/completions", req);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model name: gpt-oss-tiny"), "{stderr}");
    assert!(stderr.contains(&format!("curl http://127.0.0.1:{port}/v1/chat/completions")), "{stderr}");
    assert_eq!(models, 200);
    assert!(body.contains(r#""id":"gpt-oss-tiny""#), "{body}");
    assert_eq!(wrong, 404, "the tiny model is not the 20b");
    assert_eq!(chat, 200, "{reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let message = v["choices"][0]["message"].as_object().unwrap();
    // Present, even when null: OpenAI's SDK reads message.reasoning.
    assert!(message.contains_key("reasoning") && message.contains_key("refusal"), "{reply}");
}

#[test]
fn list_and_rm_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    let blobs = c.join("models--someorg--some-model/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join("abc"), vec![0u8; 1500]).unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let out = gptoss_in(c, &["list"], "", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("someorg/some-model") && stdout.contains("1.50 kB") && stdout.contains("LAST USED"),
        "{stdout}"
    );
    let out = gptoss_in(c, &["list", "--json"], "", &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["model"], "someorg/some-model");
    assert_eq!(v[0]["bytes"], 1500);
    // Piped, rm wants --yes; then it deletes; a second time there is nothing to delete.
    let out = gptoss_in(c, &["rm", "someorg/some-model"], "", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--yes"));
    let out = gptoss_in(c, &["rm", "someorg/some-model", "--yes"], "", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!c.join("models--someorg--some-model").exists());
    let out = gptoss_in(c, &["rm", "someorg/some-model", "--yes"], "", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("gptoss list"), "{}", text(&out));
    assert_eq!(gptoss_in(c, &["rm", "not a repo", "--yes"], "", &[]).status.code(), Some(2));
    let out = gptoss_in(c, &["list"], "", &[]);
    assert!(text(&out).contains("no models"), "{}", text(&out));
}

#[test]
fn without_the_network_the_first_run_says_what_it_wanted_and_what_else_works() {
    let r = gptoss(&["run", "What is 2+2?"], "");
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    // Before: the model, its size, where it would go; after: what to do instead.
    for want in
        ["openai/gpt-oss-20b", "13.8 GB", "models--openai--gpt-oss-20b", "could not download", "gptoss synth", ".gguf"]
    {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    let r = gptoss(&["pull", "https://example.com/openai/gpt-oss-20b"], "");
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = gptoss(&["pull", "https://huggingface.co/openai/gpt-oss-120b"], "");
    assert!(r.stderr.contains("65 GB"), "{}", r.stderr);
}

#[test]
fn fixture_tokens_from_stdin() {
    let model = fixtures().join("tiny/hf");
    let r = gptoss(
        &["generate", model.to_str().unwrap(), "--tokens-file", "-", "--max-tokens", "2", "--json"],
        "[1, 2, 3]",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = gptoss(&["generate", model.to_str().unwrap(), "--tokens-file", "-"], "[1, \"x\"]");
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("stdin: entry 2"), "{}", r.stderr);
}
