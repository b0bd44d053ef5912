//! Errors that name what is wrong: the file, the tensor or field, and the limit.

use std::path::PathBuf;

/// Anything that can go wrong turning files on disk into a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("{path}: file is truncated: tensor `{tensor}` needs bytes up to {needed} but the file has {available}")]
    Truncated { path: PathBuf, tensor: String, needed: u64, available: u64 },
    #[error("{path}: tensor `{tensor}` has unknown dtype `{dtype}`")]
    UnknownDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{path}: tensor `{tensor}` has dtype {found}, expected {expected}")]
    WrongDtype { path: PathBuf, tensor: String, found: String, expected: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    WrongShape { path: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{dir}: tensor `{tensor}` is missing from the checkpoint ({layout} layout)")]
    MissingTensor { dir: PathBuf, tensor: String, layout: &'static str },
    #[error("{path}: tensor `{tensor}` is also defined in {other}")]
    DuplicateTensor { path: PathBuf, tensor: String, other: PathBuf },
    #[error("{path}: missing config field `{field}`")]
    MissingField { path: PathBuf, field: String },
    #[error("{path}: config field `{field}` {problem}")]
    BadField { path: PathBuf, field: String, problem: String },
    #[error("{path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("{path}: not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("{path}: GGUF version {version} is not supported (versions 2 and 3 are){hint}")]
    UnsupportedGgufVersion { path: PathBuf, version: u32, hint: &'static str },
    #[error("{path}: file is truncated: tensor `{tensor}` occupies bytes {start}..{end} ({size} bytes at data offset {offset}) but the file has {file_len}")]
    TensorPastEnd { path: PathBuf, tensor: String, offset: u64, size: u64, start: u64, end: u64, file_len: u64 },
    #[error("{path}: general.architecture is `{found}`; this engine runs `gpt-oss` models only")]
    WrongArchitecture { path: PathBuf, found: String },
    #[error("{path}: tensor `{tensor}` has ggml type {ggml_type}; {supported}")]
    UnsupportedTensorType { path: PathBuf, tensor: String, ggml_type: String, supported: &'static str },
    #[error(transparent)]
    Kernels(#[from] gptoss_kernels::KernelError),
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io { path: path.into(), source }
    }
}

/// Errors from running the model on a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown sequence {0}")]
    UnknownSequence(u64),
    #[error("sequence {0} appears twice in one batch")]
    DuplicateSequence(u64),
    #[error("empty token chunk for sequence {0}")]
    EmptyChunk(u64),
    #[error("token id {id} is outside the model's vocabulary of {vocab} tokens")]
    TokenOutOfVocab { id: u32, vocab: usize },
    #[error("context overflow: sequence {seq} would hold {needed} tokens, the limit is {limit}")]
    ContextOverflow { seq: u64, needed: usize, limit: usize },
    #[error("all {limit} sequence slots are in use (the device's cache was sized for {limit} sequences)")]
    NoSequenceSlot { limit: usize },
    /// The device failed mid-run (a GPU fault, a lost context): the request fails, the process
    /// does not.
    #[error("device error: {0}")]
    Device(String),
    #[error("{picks} token picks given for {rows} rows of logits")]
    PickCount { rows: usize, picks: usize },
}
