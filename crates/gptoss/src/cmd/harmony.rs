//! `gptoss render`, `tokenize` and `parse`: the harmony format and the tokenizer, for
//! writing and debugging prompts.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gptoss_engine::harmony::{Conversation, RenderOptions, Renderer, Role, StreamParser};
use gptoss_engine::Tokenizer;

#[derive(clap::Args)]
pub struct RenderArgs {
    /// A conversation in openai-harmony's JSON form (`{"messages": [...]}`); `-` reads stdin.
    file: PathBuf,
    /// End with `<|start|>ROLE`, the prompt for that role's next message.
    #[arg(long, value_name = "ROLE")]
    next_role: Option<String>,
    /// Keep the analysis of finished turns (by default it is dropped, as openai-harmony does).
    #[arg(long)]
    keep_analysis: bool,
    /// Print the token ids as a JSON array instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Text to encode as ordinary text; `-` reads stdin.
    text: String,
    /// Print the ids as a JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ParseArgs {
    /// Completion token ids (after the prompt's `<|start|>assistant`), separated by
    /// whitespace or commas.
    #[arg(long, value_name = "F")]
    tokens_file: PathBuf,
    /// The tokens begin with `<|start|>` rather than inside an assistant header.
    #[arg(long)]
    from_start: bool,
    /// Print the messages in openai-harmony's JSON form.
    #[arg(long)]
    json: bool,
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

pub fn render(args: RenderArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let text = read_input(&args.file)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", args.file.display()))?;
    let conv = Conversation::from_json(&json).with_context(|| format!("{}", args.file.display()))?;
    let opts = RenderOptions { auto_drop_analysis: !args.keep_analysis };
    let renderer = Renderer::new(&tok);
    let ids = match args.next_role.as_deref() {
        None => renderer.render_conversation(&conv.messages, opts)?,
        Some(r) => {
            let Some(role) = Role::parse(r) else {
                bail!("--next-role: unknown role `{r}` (system, developer, user, assistant, tool)")
            };
            renderer.render_for_completion(&conv.messages, role, opts)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        println!("{}", tok.decode_lossy(&ids)?);
    }
    Ok(())
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let text = if args.text == "-" { read_input(Path::new("-"))? } else { args.text };
    let ids = tok.encode(&text);
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
        return Ok(());
    }
    println!("{} tokens", ids.len());
    for id in ids {
        let piece = String::from_utf8_lossy(&tok.token_bytes(id)?).into_owned();
        println!("{id:>7}  {piece:?}");
    }
    Ok(())
}

pub fn parse(args: ParseArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let ids = super::read_tokens_file(&args.tokens_file)?;
    let mut parser = StreamParser::new(&tok, if args.from_start { None } else { Some(Role::Assistant) });
    let mut events = Vec::new();
    for id in ids {
        parser.push(id, &mut events);
    }
    parser.finish(&mut events);
    for p in parser.problems() {
        eprintln!("warning: {p}");
    }
    let messages = parser.into_messages();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Conversation::new(messages).to_json()["messages"])?);
        return Ok(());
    }
    for m in &messages {
        let mut head = m.author.name.clone().unwrap_or_else(|| m.author.role.as_str().to_string());
        for (label, v) in [("channel", &m.channel), ("to", &m.recipient), ("type", &m.content_type)] {
            if let Some(v) = v {
                head += &format!(" {label}={v}");
            }
        }
        println!("[{head}]\n{}\n", m.text_content());
    }
    Ok(())
}
