//! The llama.cpp GGUF container, versions 2 and 3 (little-endian): the magic `GGUF`, a
//! version, tensor and metadata counts, the metadata key/values, one info record per tensor
//! (name, ggml dims, type, offset), then the tensor data from the first multiple of
//! `general.alignment` (default 32) after the infos.
//!
//! The file is memory-mapped. Every count, length and offset is checked against the file
//! size before anything is allocated or read, so a hostile file gives a [`LoadError`] that
//! says what is wrong, never a panic or an unbounded allocation. Big metadata arrays (the
//! tokenizer's hundreds of thousands of strings) are walked to validate them but not decoded.
//!
//! A model is one file or the parts of one split by `llama-gguf-split` ([`GgufModel`]). Its
//! config comes from the metadata ([`GgufModel::config`], spec §1.5); turning the tensors
//! into the engine's in-memory forms is [`convert`].

mod config;
pub mod convert;
mod model;

pub use model::GgufModel;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::safetensors::Bytes;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The only architecture this engine runs (llama.cpp's `LLM_ARCH_OPENAI_MOE`).
pub const ARCHITECTURE: &str = "gpt-oss";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays nest at most this deep: each level costs only 12 bytes of file, so
/// without a limit a small file could recurse deep enough to overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;
/// Entries reserved ahead from a count the file claims (gpt-oss files have about 40 keys and
/// 460 tensors).
const PREALLOCATE: u64 = 1024;

/// Whether the file at `path` starts with the GGUF magic (false if it cannot be read).
pub fn has_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == MAGIC
}

/// A ggml tensor type id, as stored in the tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);
    pub const MXFP4: GgmlType = GgmlType(39);

    /// (name, elements per block, bytes per block) of every type ggml defines a size for
    /// (`GGML_QUANT_SIZES` of gguf-py). Ids 4, 5, 31–33 and 36–38 were removed from ggml.
    fn traits(self) -> Option<(&'static str, u64, u64)> {
        const QK_K: u64 = 256;
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 2 + 16),
            3 => ("Q4_1", 32, 2 + 2 + 16),
            6 => ("Q5_0", 32, 2 + 4 + 16),
            7 => ("Q5_1", 32, 2 + 2 + 4 + 16),
            8 => ("Q8_0", 32, 2 + 32),
            9 => ("Q8_1", 32, 4 + 4 + 32),
            10 => ("Q2_K", 256, 2 + 2 + QK_K / 16 + QK_K / 4),
            11 => ("Q3_K", 256, 2 + QK_K / 4 + QK_K / 8 + 12),
            12 => ("Q4_K", 256, 2 + 2 + QK_K / 2 + 12),
            13 => ("Q5_K", 256, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
            14 => ("Q6_K", 256, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
            15 => ("Q8_K", 256, 4 + QK_K + QK_K / 8),
            16 => ("IQ2_XXS", 256, 2 + QK_K / 4),
            17 => ("IQ2_XS", 256, 2 + QK_K / 4 + QK_K / 32),
            18 => ("IQ3_XXS", 256, 2 + QK_K / 4 + QK_K / 8),
            19 => ("IQ1_S", 256, 2 + QK_K / 8 + QK_K / 16),
            20 => ("IQ4_NL", 32, 2 + 16),
            21 => ("IQ3_S", 256, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
            22 => ("IQ2_S", 256, 2 + QK_K / 4 + QK_K / 16),
            23 => ("IQ4_XS", 256, 2 + 2 + QK_K / 2 + QK_K / 64),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, QK_K / 8 + QK_K / 16 + QK_K / 32),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 2 + 4 * 13),
            35 => ("TQ2_0", 256, 2 + 64),
            39 => ("MXFP4", 32, 1 + 16),
            40 => ("NVFP4", 64, 4 + 32),
            _ => return None,
        })
    }

    pub fn name(self) -> Option<&'static str> {
        self.traits().map(|t| t.0)
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> Option<(u64, u64)> {
        self.traits().map(|t| (t.1, t.2))
    }
}

impl std::fmt::Display for GgmlType {
    /// `Q4_K (type 12)`, or `unknown (type 77)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (type {})", self.name().unwrap_or("unknown"), self.0)
    }
}

/// One metadata value. GGUF value type ids: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32,
/// 7 bool, 8 string, 9 array, 10 u64, 11 i64, 12 f64.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// Decoded lossily: GGUF strings should be UTF-8 but nothing enforces it.
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Elements are not decoded at open; `bytes` is where they lie in the file (validated),
    /// read with [`GgufFile::array`].
    Array {
        elem: u32,
        len: u64,
        bytes: Range<usize>,
    },
}

impl MetaValue {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any finite number, integers included.
    pub fn as_f64(&self) -> Option<f64> {
        let v = match *self {
            MetaValue::F32(v) => v.into(),
            MetaValue::F64(v) => v,
            MetaValue::I8(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::I64(v) => v as f64,
            _ => self.as_u64()? as f64,
        };
        v.is_finite().then_some(v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Short description for messages: `u32 4`, `string "yarn"`, `array of 1024 string`.
    pub fn describe(&self) -> String {
        match self {
            MetaValue::Str(s) => format!("string {:?}", s.chars().take(60).collect::<String>()),
            MetaValue::Array { elem, len, .. } => format!("array of {len} {}", value_type_name(*elem)),
            MetaValue::F32(v) => format!("f32 {v}"),
            MetaValue::F64(v) => format!("f64 {v}"),
            MetaValue::Bool(v) => format!("bool {v}"),
            other => format!("integer {}", other.as_u64().map_or_else(|| format!("{other:?}"), |v| v.to_string())),
        }
    }
}

fn value_type_name(t: u32) -> &'static str {
    match t {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// Bytes of one element of a fixed-size value type.
fn fixed_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// One metadata key/value.
#[derive(Clone, Debug)]
pub struct MetaEntry {
    pub key: String,
    /// GGUF value type id (see [`MetaValue`]).
    pub type_id: u32,
    pub value: MetaValue,
    /// The value's bytes in the file, type id excluded (to copy an entry verbatim).
    pub raw: Range<usize>,
}

/// One tensor info record, validated against the file.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) varies fastest. The row-major shape is the reverse.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte range in the file.
    pub range: Range<usize>,
}

impl GgufTensor {
    /// Row-major shape (outermost first), as the safetensors layouts and the engine use.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim was bounded by the file size at open, so it fits a usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// One memory-mapped GGUF file with a validated header.
pub struct GgufFile {
    pub path: PathBuf,
    map: Bytes,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub metadata: Vec<MetaEntry>,
    pub tensors: Vec<GgufTensor>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Self::from_bytes(path, Bytes::map_file(path)?)
    }

    /// Parses and validates the header of a whole file held in `map`.
    pub fn from_bytes(path: &Path, map: Bytes) -> Result<Self, LoadError> {
        let bytes = map.as_slice();
        let file_len = bytes.len() as u64;
        let bad = |reason: String| LoadError::BadGguf { path: path.into(), reason };
        if bytes.len() < 4 {
            return Err(bad(format!("file is {file_len} bytes, too short for the 4-byte magic `GGUF`")));
        }
        if bytes[..4] != MAGIC {
            return Err(bad(format!(
                "starts with bytes {:02x?} ({:?}), not the magic `GGUF`",
                &bytes[..4],
                String::from_utf8_lossy(&bytes[..4])
            )));
        }
        let mut c = Cursor { path, bytes, pos: 4 };
        let version = c.u32(&|| "the header (version)".into())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(LoadError::UnsupportedGgufVersion {
                    path: path.into(),
                    version,
                    hint: "; version 1 files (2023) must be converted again with a current llama.cpp",
                })
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(bad(format!(
                    "big-endian GGUF (version {} byte-swapped); only little-endian files are read",
                    v.swap_bytes()
                )))
            }
            _ => return Err(LoadError::UnsupportedGgufVersion { path: path.into(), version, hint: "" }),
        }
        let n_tensors = c.u64(&|| "the header (tensor count)".into())?;
        let n_kv = c.u64(&|| "the header (metadata count)".into())?;
        // The smallest metadata entry is 13 bytes (key length, type, one-byte value) and the
        // smallest tensor info 24 (name length, dim count, type, offset).
        if n_kv > c.remaining() / 13 {
            return Err(bad(format!(
                "header claims {n_kv} metadata entries, more than the {} bytes after it can hold (truncated or corrupt)",
                c.remaining()
            )));
        }
        if n_tensors > c.remaining() / 24 {
            return Err(bad(format!(
                "header claims {n_tensors} tensors, more than the {} bytes after it can hold (truncated or corrupt)",
                c.remaining()
            )));
        }

        // Capacity from the claimed counts only up to a small bound: the lists then grow with
        // what is actually parsed, which each entry pays for in bytes of the file.
        let mut metadata = Vec::with_capacity(n_kv.min(PREALLOCATE) as usize);
        let mut meta_index = HashMap::with_capacity(n_kv.min(PREALLOCATE) as usize);
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata entry {i} (its key)"))?;
            let type_id = c.u32(&|| format!("metadata `{key}` (its type)"))?;
            let start = c.pos;
            let value = c.value(type_id, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(bad(format!("metadata key `{key}` appears twice")));
            }
            metadata.push(MetaEntry { key, type_id, value, raw: start..c.pos });
        }

        let alignment = match metadata.iter().find(|e| e.key == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(e) => match e.value.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(bad(format!(
                        "general.alignment is {}; it must be a power of two up to 1 MiB",
                        e.value.describe()
                    )))
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors.min(PREALLOCATE) as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info {i} (its name)"))?;
            let n_dims = c.u32(&|| format!("tensor info `{name}` (dimension count)"))?;
            if n_dims > MAX_DIMS {
                return Err(bad(format!("tensor `{name}` has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| format!("tensor info `{name}` (dimension {d})"))?);
            }
            let ty = GgmlType(c.u32(&|| format!("tensor info `{name}` (type)"))?);
            let offset = c.u64(&|| format!("tensor info `{name}` (offset)"))?;
            infos.push((name, dims, ty, offset));
        }

        // The data section starts at the next multiple of the alignment.
        let data_offset = (c.pos as u64).next_multiple_of(alignment);
        if !infos.is_empty() && data_offset > file_len {
            return Err(bad(format!(
                "file is truncated: tensor data should start at byte {data_offset} but the file has {file_len}"
            )));
        }
        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::with_capacity(infos.len());
        for (name, dims, ty, offset) in infos {
            let size = tensor_size(&name, &dims, ty).map_err(bad)?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "tensor `{name}` has data offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            let past_end = |start: u64, end: u64| LoadError::TensorPastEnd {
                path: path.into(),
                tensor: name.clone(),
                offset,
                size,
                start,
                end,
                file_len,
            };
            let start = data_offset.checked_add(offset).ok_or_else(|| past_end(u64::MAX, u64::MAX))?;
            let end = start.checked_add(size).ok_or_else(|| past_end(start, u64::MAX))?;
            if end > file_len {
                return Err(past_end(start, end));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad(format!("tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensor { name, dims, ty, offset, range: start as usize..end as usize });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            meta_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].value)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The data of a tensor of this file.
    pub fn bytes(&self, t: &GgufTensor) -> Bytes {
        self.map.slice(t.range.clone())
    }

    /// The whole file as mapped.
    pub fn file_bytes(&self) -> &[u8] {
        self.map.as_slice()
    }

    /// The elements of an array value (validated at open), or None for other values.
    pub fn array(&self, value: &MetaValue) -> Option<Vec<MetaValue>> {
        let MetaValue::Array { elem, len, bytes } = value else { return None };
        let mut c = Cursor { path: &self.path, bytes: &self.map.as_slice()[..bytes.end], pos: bytes.start };
        (0..*len).map(|_| c.value(*elem, "", 0).ok()).collect()
    }

    /// How many tensors of each ggml type the file holds.
    pub fn type_counts(&self) -> BTreeMap<GgmlType, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.ty).or_insert(0) += 1;
        }
        counts
    }

    /// Bytes of tensor data.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.range.len() as u64).sum()
    }
}

/// The size in bytes of a tensor of `dims` and `ty`, with every product checked.
fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, String> {
    let (block, block_bytes) = ty
        .block()
        .ok_or_else(|| format!("tensor `{name}` has ggml type id {}, which is not a known ggml type", ty.0))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % block != 0 {
        return Err(format!(
            "tensor `{name}` of type {ty} has {ne0} elements per row, not a multiple of its block size {block}"
        ));
    }
    let overflow = || format!("tensor `{name}` dims {dims:?} overflow");
    let row_bytes = (ne0 / block).checked_mul(block_bytes).ok_or_else(overflow)?;
    dims.iter().skip(1).try_fold(row_bytes, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)
}

/// Reads little-endian values, every read checked against the end of the file.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

type What<'a> = &'a dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: What) -> Result<&'a [u8], LoadError> {
        if n > self.remaining() {
            return Err(LoadError::BadGguf {
                path: self.path.into(),
                reason: format!(
                    "file is truncated in {}: {n} bytes needed at offset {} but the file has {}",
                    what(),
                    self.pos,
                    self.bytes.len()
                ),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N], LoadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: What) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: What) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 length then that many bytes; the length is bounded by the file, not trusted.
    fn string(&mut self, what: What) -> Result<String, LoadError> {
        let n = self.u64(what)?;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }

    /// A value of type `t` for metadata key `key` (arrays nested `depth` deep).
    fn value(&mut self, t: u32, key: &str, depth: usize) -> Result<MetaValue, LoadError> {
        let what = || format!("metadata `{key}`");
        let what: What = &what;
        Ok(match t {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(LoadError::BadGguf {
                        path: self.path.into(),
                        reason: format!("metadata `{key}` nests arrays more than {MAX_ARRAY_DEPTH} deep"),
                    });
                }
                let elem = self.u32(what)?;
                let len = self.u64(what)?;
                let start = self.pos;
                self.skip_elements(elem, len, key, depth + 1)?;
                MetaValue::Array { elem, len, bytes: start..self.pos }
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(LoadError::BadGguf {
                    path: self.path.into(),
                    reason: format!("metadata `{key}` has value type {t}, which GGUF does not define"),
                })
            }
        })
    }

    /// Walks `len` array elements of type `elem` without keeping them. Each element costs
    /// at least one byte of file, so a huge `len` fails at the end of the file.
    fn skip_elements(&mut self, elem: u32, len: u64, key: &str, depth: usize) -> Result<(), LoadError> {
        let what = || format!("array metadata `{key}`");
        if let Some(size) = fixed_size(elem) {
            let n = len.saturating_mul(size);
            self.take(n, &what)?;
            return Ok(());
        }
        match elem {
            8 => {
                for _ in 0..len {
                    let n = self.u64(&what)?;
                    self.take(n, &what)?;
                }
            }
            9 => {
                for _ in 0..len {
                    self.value(9, key, depth)?;
                }
            }
            _ => {
                return Err(LoadError::BadGguf {
                    path: self.path.into(),
                    reason: format!("array metadata `{key}` has element type {elem}, which GGUF does not define"),
                })
            }
        }
        Ok(())
    }
}
