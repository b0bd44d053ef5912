//! `gptoss chat` and `gptoss run`: harmony conversations with the model.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gptoss_engine::chat::{today_utc, ChatError, ChatSession, Turn};
use gptoss_engine::generator::{ModelSource, ScriptedSource, StopReason, TokenSource};
use gptoss_engine::harmony::{Conversation, Message, ParseEvent, ReasoningEffort, Role, SystemContent};
use gptoss_engine::tokenizer::CALL;
use gptoss_engine::{EngineError, Tokenizer};

use super::{ui, ModelArgs, SamplingArgs, DEFAULT_MODEL};
use crate::{interrupt, usage};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Effort {
    Low,
    Medium,
    High,
}

/// What both chat and run take.
#[derive(clap::Args)]
pub struct ConversationArgs {
    /// How long the model thinks before answering.
    #[arg(long, value_enum, default_value = "medium")]
    reasoning_effort: Effort,
    /// Replaces the model identity at the top of the system message.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Developer instructions (the `# Instructions` of the developer message).
    #[arg(long, value_name = "TEXT")]
    developer: Option<String>,
    /// Tokens per answer at most, reasoning included (default: until the context is full).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Context size in tokens: the conversation and the answer must fit (at most the model's
    /// 131072).
    #[arg(long, default_value_t = 16_384, value_name = "N", value_parser = super::parse_ctx)]
    ctx: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten, next_help_heading = "Loading the model")]
    load: ModelArgs,
    /// Replay these completions instead of running a model (for tests): a JSON array of
    /// strings with special tokens written out.
    #[arg(long, hide = true, value_name = "FILE")]
    script: Option<PathBuf>,
}

/// The in-chat commands, for `/help` and `chat --help`.
macro_rules! chat_commands {
    () => {
        "/reset                      start over (keeps system and developer instructions)\n\
         /effort [low|medium|high]   show or change the reasoning effort\n\
         /save FILE                  save the conversation, reasoning included (openai-harmony JSON)\n\
         /load FILE                  load a saved conversation\n\
         /help                       this list\n\
         /quit                       leave (also Ctrl-D)"
    };
}

#[derive(clap::Args)]
#[command(after_help = concat!(
    "In the chat:\n",
    chat_commands!(),
    "\n\nUp and down recall earlier lines; a pasted paragraph is one message; Ctrl-C stops an answer, \
     and twice at the prompt leaves.\n\
     Piped (stdin not a terminal), each line is one message, and the exit status is 1 if any failed."
))]
pub struct ChatArgs {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name[@revision]
    /// or its https://huggingface.co/ URL).
    #[arg(default_value = DEFAULT_MODEL)]
    model: String,
    /// Do not show the model's reasoning.
    #[arg(long)]
    hide_reasoning: bool,
    /// Keep the reasoning of finished turns in the history (harmony drops it).
    #[arg(long)]
    keep_analysis: bool,
    #[command(flatten)]
    conv: ConversationArgs,
}

#[derive(clap::Args)]
#[command(after_help = "MODEL is optional: the first word is taken as MODEL when it is an existing path, \
    starts with ./, / or ~, ends in .gguf, or is a Hub id (org/name). The prompt is every word \
    after it (quotes are not needed), or stdin when no words are given and stdin is not a \
    terminal: echo \"What is 2+2?\" | gptoss run MODEL")]
pub struct RunArgs {
    /// [MODEL] PROMPT...: the checkpoint (folder, .gguf file, Hub id or URL; default
    /// openai/gpt-oss-20b), then the prompt.
    #[arg(value_names = ["MODEL", "PROMPT"], num_args = 0..)]
    args: Vec<String>,
    /// Print the reasoning on stderr.
    #[arg(long)]
    show_reasoning: bool,
    #[command(flatten)]
    conv: ConversationArgs,
}

impl ChatArgs {
    pub fn model_args(&self) -> &ModelArgs {
        &self.conv.load
    }
}

impl RunArgs {
    pub fn model_args(&self) -> &ModelArgs {
        &self.conv.load
    }
}

fn effort(e: Effort) -> ReasoningEffort {
    match e {
        Effort::Low => ReasoningEffort::Low,
        Effort::Medium => ReasoningEffort::Medium,
        Effort::High => ReasoningEffort::High,
    }
}

/// Whether a word of `run` is a MODEL rather than the start of the prompt.
fn is_model_word(word: &str) -> bool {
    let path = Path::new(word);
    path.exists()
        || word.starts_with(['.', '/', '~'])
        || word.to_ascii_lowercase().ends_with(".gguf")
        || (!word.contains(char::is_whitespace) && super::pull::parse_hub_ref(word).is_some())
}

/// `run`'s words: (MODEL, the prompt if the words hold one).
fn split_run_words(words: &[String]) -> (String, Option<String>) {
    match words {
        [] => (DEFAULT_MODEL.to_string(), None),
        [first, rest @ ..] if is_model_word(first) => (first.clone(), (!rest.is_empty()).then(|| rest.join(" "))),
        _ => (DEFAULT_MODEL.to_string(), Some(words.join(" "))),
    }
}

impl ConversationArgs {
    fn session(&self) -> ChatSession {
        let mut system = SystemContent::new();
        system.reasoning_effort = Some(effort(self.reasoning_effort));
        system.conversation_start_date = Some(today_utc());
        if let Some(identity) = &self.system {
            system.model_identity = Some(identity.clone());
        }
        ChatSession::new(system, self.developer.clone())
    }

    /// Flags that cannot work together, found before the model loads. `prompt_tokens` is the
    /// rendered prompt (for chat, the system and developer messages alone); `margin` is the
    /// room an answer needs at least.
    fn check(&self, prompt_tokens: usize, what: &str, margin: usize) -> Result<()> {
        if self.max_tokens == Some(0) {
            usage!("--max-tokens must be at least 1");
        }
        if prompt_tokens + margin > self.ctx {
            let suggest = (prompt_tokens + margin).max(4096).div_ceil(1024) * 1024;
            usage!(
                "--ctx {} is too small: {what} takes {prompt_tokens} tokens, and the answer needs room after it; \
                 try --ctx {suggest} (the default is 16384)",
                self.ctx
            );
        }
        Ok(())
    }

    /// Runs `body` with the token source: the model, or the script.
    fn with_source(
        &self,
        model_arg: &str,
        tok: &Tokenizer,
        body: impl FnOnce(&mut dyn TokenSource) -> Result<()>,
    ) -> Result<()> {
        if let Some(script) = &self.script {
            return body(&mut read_script(script, tok)?);
        }
        let sampler = self.sampling.sampler()?;
        let path = super::resolve_model(model_arg)?;
        super::check_ctx_against_model(&path, self.ctx)?;
        if ui::verbose() {
            eprintln!("model {} with --ctx {}, {:?}", path.display(), self.ctx, self.sampling);
        }
        // Kept here for the whole session: the source borrows it, and each turn reuses the
        // cache of the one before.
        let mut runner = super::open_runner(&path, self.ctx, 1)?;
        // Turns the session cannot rewind to (an edited or regenerated earlier turn) still
        // start from the blocks already computed.
        runner.set_prefix_cache_bytes(gptoss_engine::prefix_cache::DEFAULT_PREFIX_CACHE_BYTES);
        let mut source = ModelSource::new(runner.as_mut(), sampler)?;
        body(&mut source)
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens.unwrap_or(self.ctx)
    }

    /// Why a turn that stopped at its length limit stopped: --max-tokens, or the context.
    fn cut_reason(&self, turn: &Turn) -> String {
        let g = &turn.generation;
        if self.max_tokens == Some(g.generated) {
            format!("--max-tokens {} reached; raise --max-tokens", g.generated)
        } else {
            format!(
                "the context is full: {} prompt + {} generated tokens fill --ctx {}; raise --ctx (or /reset in a chat)",
                g.prompt_tokens, g.generated, self.ctx
            )
        }
    }
}

fn read_script(path: &Path, tok: &Tokenizer) -> Result<ScriptedSource> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let turns: Vec<String> =
        serde_json::from_str(&text).with_context(|| format!("{}: expected a JSON array of strings", path.display()))?;
    Ok(ScriptedSource::new(turns.iter().map(|t| tok.encode_with_special_tokens(t))))
}

/// Where the parts of an answer go, and how they look.
struct Printer {
    show_reasoning: bool,
    /// Reasoning on stderr (when stdout must hold only answers).
    reasoning_to_stderr: bool,
    /// Dim the reasoning and its label.
    dim: bool,
    /// Commentary without a recipient (a preamble to the user) counts as answer text.
    preamble_is_answer: bool,
    /// Is the message being printed part of the answer?
    in_answer: bool,
    /// Has answer text been printed (so a later answer message starts on a new line)?
    answered: bool,
    /// Shown while the model thinks unseen, until the answer starts.
    spinner: Option<indicatif::ProgressBar>,
}

impl Printer {
    fn new(show_reasoning: bool, reasoning_to_stderr: bool, dim: bool, preamble_is_answer: bool) -> Self {
        let spinner = (!show_reasoning).then(|| ui::spinner("thinking"));
        Printer {
            show_reasoning,
            reasoning_to_stderr,
            dim,
            preamble_is_answer,
            in_answer: false,
            answered: false,
            spinner,
        }
    }

    fn event(&mut self, e: &ParseEvent) {
        match e {
            ParseEvent::Start(h) => {
                let channel = h.channel.as_deref();
                self.in_answer = h.recipient.is_none()
                    && (channel == Some("final") || (self.preamble_is_answer && channel == Some("commentary")));
                if self.in_answer && self.answered {
                    self.answer("\n");
                }
                if !self.in_answer {
                    // Labelled, not only dimmed: the label survives NO_COLOR and copy-paste.
                    match &h.recipient {
                        Some(r) => self.reasoning(&format!("[calling {r}] ")),
                        None => self.reasoning("[reasoning] "),
                    }
                }
            }
            ParseEvent::Text(t) if self.in_answer => {
                self.stop_spinner();
                self.answer(t);
                self.answered = true;
            }
            ParseEvent::Text(t) => self.reasoning(t),
            ParseEvent::End { .. } if !self.in_answer => self.reasoning("\n"),
            ParseEvent::End { .. } | ParseEvent::Problem(_) => {}
        }
    }

    fn stop_spinner(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }

    fn answer(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    }

    fn reasoning(&self, text: &str) {
        if !self.show_reasoning {
            return;
        }
        let styled = ui::dim(text, self.dim);
        if self.reasoning_to_stderr {
            let _ = std::io::stderr().write_all(styled.as_bytes());
        } else {
            self.answer(&styled);
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.stop_spinner();
    }
}

/// One line about a finished turn: speed, how it ended, and anything the user should know.
fn summary(turn: &Turn, conv: &ConversationArgs) -> String {
    let g = &turn.generation;
    let mut s = format!(
        "[{} tokens in {:.1} s, {}; prompt {} tokens, {} cached]",
        g.generated,
        g.gen_secs,
        super::rate(g.generated, g.gen_secs),
        g.prompt_tokens,
        g.reused_tokens
    );
    match g.stop {
        StopReason::Cancelled => s += " (stopped)",
        StopReason::Length => s += &format!(" (cut off: {})", conv.cut_reason(turn)),
        StopReason::Stop(_) => {}
    }
    if let Some(call) = turn.messages.iter().rev().find_map(|m| m.recipient.clone()) {
        if g.stop == StopReason::Stop(CALL) {
            s += &format!(" (the model called `{call}`; no tools are available here)");
        }
    }
    if !turn.problems.is_empty() {
        let n = turn.problems.len();
        s += &format!(
            " ({n} formatting problem{}: the model's output broke the harmony format there, and what could be \
             read of it is shown{})",
            if n == 1 { "" } else { "s" },
            if ui::verbose() { "" } else { "; -v lists them" }
        );
        if ui::verbose() {
            for p in &turn.problems {
                s += &format!("\n  formatting problem: {p}");
            }
        }
    }
    s
}

/// Lines typed at the chat's prompt: with line editing and history on a terminal, plain lines
/// otherwise.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Lines { stdin: std::io::StdinLock<'static>, prompt: bool },
}

enum Line {
    Text(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    Eof,
}

impl Input {
    fn new() -> Input {
        let stdin = std::io::stdin();
        if stdin.is_terminal() && std::io::stdout().is_terminal() {
            let config = rustyline::Config::builder()
                .auto_add_history(true)
                .bracketed_paste(true)
                .color_mode(if ui::color(true) {
                    rustyline::ColorMode::Enabled
                } else {
                    rustyline::ColorMode::Disabled
                })
                .build();
            if let Ok(editor) = rustyline::DefaultEditor::with_config(config) {
                return Input::Editor(Box::new(editor));
            }
        }
        Input::Lines { prompt: stdin.is_terminal(), stdin: stdin.lock() }
    }

    fn read(&mut self) -> Result<Line> {
        match self {
            Input::Editor(editor) => match editor.readline("> ") {
                Ok(line) => Ok(Line::Text(line)),
                Err(rustyline::error::ReadlineError::Interrupted) => Ok(Line::Interrupted),
                Err(rustyline::error::ReadlineError::Eof) => Ok(Line::Eof),
                Err(e) => Err(e).context("reading the terminal"),
            },
            Input::Lines { stdin, prompt } => {
                if *prompt {
                    // On stderr, so a piped stdout holds only answers.
                    eprint!("> ");
                }
                let mut buf = Vec::new();
                if stdin.read_until(b'\n', &mut buf).context("reading stdin")? == 0 {
                    return Ok(Line::Eof);
                }
                Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
    }
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let mut session = args.conv.session();
    session.keep_analysis = args.keep_analysis;
    let opening = session.prompt(&tok).context("rendering the system message")?.len();
    args.conv.check(opening, "the system message (and developer instructions)", 64)?;
    let interactive = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let max_tokens = args.conv.max_tokens();
    args.conv.with_source(&args.model, &tok, |source| {
        // Only now: while the model downloads or loads, one Ctrl-C should simply stop.
        interrupt::install();
        if interactive && !ui::quiet() {
            eprintln!("Chat with gpt-oss. /help for commands; Ctrl-C stops an answer; Ctrl-D or /quit leaves.");
        }
        let mut input = Input::new();
        // Everything said, reasoning included, for /save (the session drops finished turns'
        // reasoning, as harmony asks).
        let mut transcript: Vec<Message> = Vec::new();
        let mut errors = 0usize;
        let mut last_interrupt: Option<Instant> = None;
        loop {
            if interactive {
                eprintln!();
            }
            let line = match input.read()? {
                Line::Eof => break,
                Line::Interrupted => {
                    if last_interrupt.is_some_and(|t| t.elapsed().as_secs_f64() < 2.0) {
                        break;
                    }
                    last_interrupt = Some(Instant::now());
                    eprintln!("(Ctrl-C again to quit, or type /quit)");
                    continue;
                }
                Line::Text(line) => line,
            };
            let input_text = line.trim();
            if input_text.is_empty() {
                continue;
            }
            if let Some(cmd) = input_text.strip_prefix('/') {
                match command(cmd, &mut session, &mut transcript, &tok) {
                    Ok(Flow::Quit) => break,
                    Ok(Flow::Continue(msg)) => eprintln!("{msg}"),
                    Err(e) => {
                        errors += 1;
                        eprintln!("error: {e:#}");
                    }
                }
                continue;
            }
            let dim = ui::color(if stdout_tty { stdout_tty } else { std::io::stderr().is_terminal() });
            let mut printer = Printer::new(!args.hide_reasoning, !stdout_tty, dim, true);
            interrupt::set_generating(true);
            let result = session.turn(input_text, &tok, source, max_tokens, &mut |e| {
                printer.event(e);
                !interrupt::interrupted()
            });
            interrupt::set_generating(false);
            drop(printer);
            match result {
                Ok(turn) => {
                    transcript.push(Message::text(Role::User, input_text));
                    transcript.extend(turn.messages.iter().cloned());
                    println!();
                    let line = summary(&turn, &args.conv);
                    if ui::quiet() {
                        // Results only.
                    } else if stdout_tty {
                        println!("{}", ui::dim(&line, ui::color(true)));
                    } else {
                        eprintln!("{line}");
                    }
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("error: {e:#}");
                    if matches!(e, ChatError::Engine(EngineError::ContextOverflow { .. })) {
                        eprintln!(
                            "(the conversation no longer fits in --ctx {}: /reset, or start with a larger --ctx)",
                            args.conv.ctx
                        );
                    }
                }
            }
        }
        if errors > 0 && !interactive {
            bail!("{errors} of the chat's inputs failed (see above)");
        }
        Ok(())
    })
}

enum Flow {
    Continue(String),
    Quit,
}

fn command(cmd: &str, session: &mut ChatSession, transcript: &mut Vec<Message>, tok: &Tokenizer) -> Result<Flow> {
    let (name, arg) = cmd.split_once(' ').map_or((cmd, ""), |(n, a)| (n, a.trim()));
    Ok(Flow::Continue(match name {
        "quit" | "exit" => return Ok(Flow::Quit),
        "help" => chat_commands!().to_string(),
        "reset" => {
            session.history.clear();
            transcript.clear();
            "conversation cleared".into()
        }
        "effort" if arg.is_empty() => {
            format!("reasoning effort: {}", session.system.reasoning_effort.map_or("unset", |e| e.as_str()))
        }
        "effort" => {
            let Some(e) = ReasoningEffort::parse(arg) else { bail!("/effort takes low, medium or high, not `{arg}`") };
            session.system.reasoning_effort = Some(e);
            format!("reasoning effort: {}", e.as_str())
        }
        "save" if !arg.is_empty() => {
            let mut messages = session.messages();
            messages.truncate(messages.len() - session.history.len());
            messages.extend(transcript.iter().cloned());
            let n = messages.len();
            let json = Conversation::new(messages).to_json();
            std::fs::write(arg, serde_json::to_string_pretty(&json)? + "\n")
                .with_context(|| format!("writing {arg}"))?;
            format!("saved {n} messages to {arg} (reasoning included)")
        }
        "load" if !arg.is_empty() => {
            let text = std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{arg}: not valid JSON"))?;
            let conv = Conversation::from_json(&json).with_context(|| arg.to_string())?;
            let history: Vec<Message> = conv
                .messages
                .iter()
                .filter(|m| !matches!(m.author.role, Role::System | Role::Developer))
                .cloned()
                .collect();
            session.load(conv, tok).with_context(|| arg.to_string())?;
            *transcript = history;
            format!("loaded {} messages from {arg}", session.messages().len())
        }
        "save" | "load" => bail!("/{name} needs a file name"),
        _ => bail!("unknown command /{name}; /help lists them"),
    }))
}

pub fn run(args: RunArgs) -> Result<()> {
    let (model, words) = split_run_words(&args.args);
    let prompt = match words {
        Some(p) => p,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the prompt from stdin")?;
            if text.trim().is_empty() {
                usage!("no prompt: give it after MODEL (gptoss run {model} \"What is 2+2?\") or on stdin (it was empty)");
            }
            text
        }
        None => usage!(
            "no prompt: give it after MODEL (gptoss run {model} \"What is 2+2?\") or on stdin (echo \"What is 2+2?\" | gptoss run {model})"
        ),
    };
    let tok = Tokenizer::o200k_harmony()?;
    let mut session = args.conv.session();
    let needed = {
        let mut s = session.clone();
        s.history.push(Message::text(Role::User, prompt.as_str()));
        s.prompt(&tok).context("rendering the prompt")?.len()
    };
    args.conv.check(needed, "the prompt (system message and question)", 1)?;
    let stderr_tty = std::io::stderr().is_terminal();
    let max_tokens = args.conv.max_tokens();
    args.conv.with_source(&model, &tok, |source| {
        let mut printer = Printer::new(args.show_reasoning, true, ui::color(stderr_tty), false);
        let turn = session.turn(&prompt, &tok, source, max_tokens, &mut |e| {
            printer.event(e);
            true
        });
        drop(printer);
        let turn = turn?;
        if turn.answer().is_none() {
            let why = match turn.generation.stop {
                StopReason::Length => args.conv.cut_reason(&turn),
                StopReason::Stop(CALL) => {
                    let tool = turn.messages.iter().rev().find_map(|m| m.recipient.clone()).unwrap_or_default();
                    format!("it called the tool `{tool}`, which is not available")
                }
                _ => "it ended its turn without one".into(),
            };
            bail!("the model stopped before giving a final answer after {} tokens: {why}", turn.generation.generated);
        }
        println!();
        if turn.generation.stop == StopReason::Length && turn.messages.last().is_some_and(|m| m.is_channel("final")) {
            bail!("the answer was cut off after {} tokens: {}", turn.generation.generated, args.conv.cut_reason(&turn));
        }
        if !ui::quiet() {
            eprintln!("{}", summary(&turn, &args.conv));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> (String, Option<String>) {
        split_run_words(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn run_words_split_into_model_and_prompt() {
        let d = DEFAULT_MODEL.to_string();
        assert_eq!(words(&[]), (d.clone(), None));
        assert_eq!(words(&["What", "is", "2+2?"]), (d.clone(), Some("What is 2+2?".into())));
        assert_eq!(words(&["What is 2+2?"]), (d.clone(), Some("What is 2+2?".into())));
        // A path, even one that does not exist, is never a prompt.
        assert_eq!(words(&["./model"]), ("./model".into(), None));
        assert_eq!(words(&["/no/such/model", "hi"]), ("/no/such/model".into(), Some("hi".into())));
        assert_eq!(words(&["~/m.gguf", "hi", "there"]), ("~/m.gguf".into(), Some("hi there".into())));
        assert_eq!(words(&["model.GGUF"]), ("model.GGUF".into(), None));
        assert_eq!(words(&["openai/gpt-oss-120b", "hi"]), ("openai/gpt-oss-120b".into(), Some("hi".into())));
        assert_eq!(words(&["https://huggingface.co/openai/gpt-oss-20b"]).1, None);
    }
}
