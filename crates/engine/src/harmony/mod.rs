//! The harmony chat format: conversations, their rendering to tokens, and the streaming
//! parser of model output (spec harmony-and-api.md §2–3).

mod conversation;
mod parser;
mod render;
mod schema_ts;

pub use conversation::{
    Author, ChannelConfig, Content, Conversation, DeveloperContent, Message, ReasoningEffort, ResponseFormat, Role,
    SystemContent, ToolDescription, ToolNamespace, Tools,
};
pub use parser::{Header, ParseEvent, StreamParser};
pub use render::{RenderOptions, Renderer};
pub use schema_ts::schema_to_typescript;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HarmonyError {
    /// A conversation in JSON form that does not fit; `path` is like `messages[2].role`.
    #[error("{path}: {problem}")]
    Json { path: String, problem: String },
    #[error("cannot render: {0}")]
    Render(String),
}
