//! `gptoss chat` and `gptoss run`: harmony conversations with the model.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gptoss_engine::chat::{today_utc, ChatError, ChatSession, Turn};
use gptoss_engine::generator::{ModelSource, ScriptedSource, StopReason, TokenSource};
use gptoss_engine::harmony::{Conversation, ParseEvent, ReasoningEffort, SystemContent};
use gptoss_engine::tokenizer::CALL;
use gptoss_engine::{EngineError, Tokenizer};

use super::{SamplingArgs, DEFAULT_MODEL};
use crate::interrupt;

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
    /// Context size in tokens: the conversation and the answer must fit.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    ctx: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Replay these completions instead of running a model (for tests): a JSON array of
    /// strings with special tokens written out.
    #[arg(long, hide = true, value_name = "FILE")]
    script: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Checkpoint folder, llama.cpp .gguf file, or Hugging Face Hub id (org/name).
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
pub struct RunArgs {
    /// [MODEL] PROMPT: the checkpoint (folder, .gguf file or Hub id) is optional.
    #[arg(num_args = 1..=2, required = true, value_names = ["MODEL", "PROMPT"])]
    args: Vec<String>,
    /// Print the reasoning on stderr.
    #[arg(long)]
    show_reasoning: bool,
    #[command(flatten)]
    conv: ConversationArgs,
}

fn effort(e: Effort) -> ReasoningEffort {
    match e {
        Effort::Low => ReasoningEffort::Low,
        Effort::Medium => ReasoningEffort::Medium,
        Effort::High => ReasoningEffort::High,
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
        // Kept here for the whole session: the source borrows it, and each turn reuses the
        // cache of the one before.
        let mut runner = super::open_runner(&super::resolve_model(model_arg)?, self.ctx, 1)?;
        let mut source = ModelSource::new(runner.as_mut(), sampler)?;
        body(&mut source)
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens.unwrap_or(self.ctx)
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
    /// Dim the reasoning (a terminal).
    dim: bool,
    /// Commentary without a recipient (a preamble to the user) counts as answer text.
    preamble_is_answer: bool,
    /// Is the message being printed part of the answer?
    in_answer: bool,
    /// Has answer text been printed (so a later answer message starts on a new line)?
    answered: bool,
}

impl Printer {
    fn new(show_reasoning: bool, reasoning_to_stderr: bool, dim: bool, preamble_is_answer: bool) -> Self {
        Printer { show_reasoning, reasoning_to_stderr, dim, preamble_is_answer, in_answer: false, answered: false }
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
                if let Some(r) = &h.recipient {
                    self.reasoning(&format!("[calling {r}] "));
                }
            }
            ParseEvent::Text(t) if self.in_answer => {
                self.answer(t);
                self.answered = true;
            }
            ParseEvent::Text(t) => self.reasoning(t),
            ParseEvent::End { .. } if !self.in_answer => self.reasoning("\n"),
            ParseEvent::End { .. } | ParseEvent::Problem(_) => {}
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
        let styled = if self.dim { format!("\x1b[2m{text}\x1b[0m") } else { text.to_string() };
        if self.reasoning_to_stderr {
            let _ = std::io::stderr().write_all(styled.as_bytes());
        } else {
            self.answer(&styled);
        }
    }
}

/// One line about a finished turn: speed, and anything the user should know.
fn summary(turn: &Turn) -> String {
    let g = &turn.generation;
    let mut s = format!(
        "[{} tokens in {:.1} s, {}; prompt {} tokens, {} cached]",
        g.generated,
        g.gen_secs,
        super::rate(g.generated, g.gen_secs),
        g.prompt_tokens,
        g.reused_tokens
    );
    if g.stop == StopReason::Cancelled {
        s += " (stopped)";
    }
    if let Some(call) = turn.messages.iter().rev().find_map(|m| m.recipient.clone()) {
        if g.stop == StopReason::Stop(CALL) {
            s += &format!(" (the model called `{call}`; no tools are available here)");
        }
    }
    if !turn.problems.is_empty() {
        s += &format!(" ({} formatting problem(s) in the model output)", turn.problems.len());
    }
    s
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let mut session = args.conv.session();
    session.keep_analysis = args.keep_analysis;
    let interactive = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let max_tokens = args.conv.max_tokens();
    args.conv.with_source(&args.model, &tok, |source| {
        // Only now: while the model downloads or loads, one Ctrl-C should simply stop.
        interrupt::install();
        if interactive {
            eprintln!("Chat with gpt-oss. /help for commands; Ctrl-C stops an answer; Ctrl-D or /quit leaves.");
        }
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            if interactive {
                // On stderr, so a piped stdout holds only answers.
                eprint!("\n> ");
            }
            buf.clear();
            if stdin.read_until(b'\n', &mut buf).context("reading stdin")? == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf);
            let input = line.trim();
            if input.is_empty() {
                continue;
            }
            if let Some(cmd) = input.strip_prefix('/') {
                match command(cmd, &mut session, &tok) {
                    Ok(Flow::Quit) => break,
                    Ok(Flow::Continue(msg)) => eprintln!("{msg}"),
                    Err(e) => eprintln!("error: {e:#}"),
                }
                continue;
            }
            let mut printer = Printer::new(!args.hide_reasoning, !stdout_tty, stdout_tty, true);
            interrupt::set_generating(true);
            let result = session.turn(input, &tok, source, max_tokens, &mut |e| {
                printer.event(e);
                !interrupt::interrupted()
            });
            interrupt::set_generating(false);
            match result {
                Ok(turn) => {
                    println!();
                    let line = summary(&turn);
                    if stdout_tty {
                        println!("\x1b[2m{line}\x1b[0m");
                    } else {
                        eprintln!("{line}");
                    }
                }
                Err(e) => {
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
        Ok(())
    })
}

enum Flow {
    Continue(String),
    Quit,
}

fn command(cmd: &str, session: &mut ChatSession, tok: &Tokenizer) -> Result<Flow> {
    let (name, arg) = cmd.split_once(' ').map_or((cmd, ""), |(n, a)| (n, a.trim()));
    Ok(Flow::Continue(match name {
        "quit" | "exit" => return Ok(Flow::Quit),
        "help" => "/reset                      start over (keeps system and developer instructions)\n\
                   /effort [low|medium|high]   show or change the reasoning effort\n\
                   /save FILE                  save the conversation (openai-harmony JSON)\n\
                   /load FILE                  load a saved conversation\n\
                   /quit                       leave"
            .to_string(),
        "reset" => {
            session.history.clear();
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
            std::fs::write(arg, serde_json::to_string_pretty(&session.to_json())? + "\n")
                .with_context(|| format!("writing {arg}"))?;
            format!("saved {} messages to {arg}", session.messages().len())
        }
        "load" if !arg.is_empty() => {
            let text = std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{arg}: not valid JSON"))?;
            session
                .load(Conversation::from_json(&json).with_context(|| arg.to_string())?, tok)
                .with_context(|| arg.to_string())?;
            format!("loaded {} messages from {arg}", session.messages().len())
        }
        "save" | "load" => bail!("/{name} needs a file name"),
        _ => bail!("unknown command /{name}; /help lists them"),
    }))
}

pub fn run(args: RunArgs) -> Result<()> {
    let (model, prompt) = match args.args.as_slice() {
        [prompt] => (DEFAULT_MODEL, prompt.as_str()),
        [model, prompt] => (model.as_str(), prompt.as_str()),
        _ => bail!("usage: gptoss run [MODEL] PROMPT"),
    };
    let tok = Tokenizer::o200k_harmony()?;
    let mut session = args.conv.session();
    let stderr_tty = std::io::stderr().is_terminal();
    let max_tokens = args.conv.max_tokens();
    args.conv.with_source(model, &tok, |source| {
        let mut printer = Printer::new(args.show_reasoning, true, stderr_tty, false);
        let turn = session.turn(prompt, &tok, source, max_tokens, &mut |e| {
            printer.event(e);
            true
        })?;
        if turn.answer().is_none() {
            let why = match turn.generation.stop {
                StopReason::Length => {
                    format!("it used all {} tokens it was allowed (raise --max-tokens)", turn.generation.generated)
                }
                StopReason::Stop(CALL) => {
                    let tool = turn.messages.iter().rev().find_map(|m| m.recipient.clone()).unwrap_or_default();
                    format!("it called the tool `{tool}`, which is not available")
                }
                _ => "it ended its turn without one".into(),
            };
            bail!("the model stopped before giving a final answer: {why}");
        }
        println!();
        if turn.generation.stop == StopReason::Length && turn.messages.last().is_some_and(|m| m.is_channel("final")) {
            bail!("the answer was cut off after {} tokens (raise --max-tokens)", turn.generation.generated);
        }
        eprintln!("{}", summary(&turn));
        Ok(())
    })
}
