//! One model in one GGUF file, or in the parts `llama-gguf-split` makes of it
//! (`NAME-00001-of-00003.gguf` …): the first part holds the metadata, every part a share of
//! the tensors and the keys `split.no` (0-based) and `split.count`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::convert::Rounding;
use super::{GgmlType, GgufFile, GgufTensor};
use crate::error::LoadError;

/// Parts beyond this are not looked for (the file names have five digits).
const MAX_PARTS: u64 = 99_999;

pub struct GgufModel {
    /// The parts in order; the first holds the metadata. One for an unsplit file.
    pub files: Vec<GgufFile>,
    /// tensor name -> index into `files`.
    names: HashMap<String, usize>,
    /// Tensors whose values had to be rounded to reach the engine's bf16 form, with how
    /// many values changed (filled in as weights are converted; see [`super::convert`]).
    pub(crate) rounded: Mutex<BTreeMap<String, Rounding>>,
}

impl GgufModel {
    /// Opens `path`; if it is one part of a split model, every part (any part may be given).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let given = GgufFile::open(path)?;
        let split = |f: &GgufFile, key: &str| f.get(key).and_then(|v| v.as_u64());
        let count = split(&given, "split.count").unwrap_or(1);
        if count <= 1 {
            return Self::from_parts(vec![given]);
        }
        let bad = |reason: String| LoadError::BadCheckpoint { path: path.into(), reason };
        let no = split(&given, "split.no").unwrap_or(0);
        if count > MAX_PARTS || no >= count {
            return Err(bad(format!("split.no {no} / split.count {count} do not describe a part of a split GGUF")));
        }
        // llama.cpp names part i (1-based) PREFIX-0000i-of-0000n.gguf.
        let suffix = format!("-{:05}-of-{count:05}.gguf", no + 1);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(prefix) = name.strip_suffix(&suffix) else {
            return Err(bad(format!(
                "part {} of a GGUF split in {count}, but not named *{suffix} as llama-gguf-split names parts, so the others cannot be found; merge them (llama-gguf-split --merge) or restore the names",
                no + 1
            )));
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut given = Some(given);
        let mut files = Vec::with_capacity(count as usize);
        for i in 0..count {
            let part_path: PathBuf = dir.join(format!("{prefix}-{:05}-of-{count:05}.gguf", i + 1));
            let part = match given.take_if(|_| i == no) {
                Some(f) => f,
                None if !part_path.is_file() => {
                    return Err(bad(format!("part {} of {count}, {}, is missing", i + 1, part_path.display())))
                }
                None => GgufFile::open(&part_path)?,
            };
            if (split(&part, "split.no"), split(&part, "split.count")) != (Some(i), Some(count)) {
                return Err(LoadError::BadCheckpoint {
                    path: part_path,
                    reason: format!(
                        "should be part {} of {count} (split.no {i}, split.count {count}) but says otherwise",
                        i + 1
                    ),
                });
            }
            files.push(part);
        }
        Self::from_parts(files)
    }

    /// A model of these parts, in order (the first with the metadata), checked for tensors
    /// defined twice.
    pub fn from_parts(files: Vec<GgufFile>) -> Result<Self, LoadError> {
        let mut names = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in &f.tensors {
                if let Some(other) = names.insert(t.name.clone(), i) {
                    return Err(LoadError::DuplicateTensor {
                        path: f.path.clone(),
                        tensor: t.name.clone(),
                        other: files[other].path.clone(),
                    });
                }
            }
        }
        Ok(GgufModel { files, names, rounded: Mutex::default() })
    }

    /// The part holding the metadata (the only one of an unsplit file).
    pub fn meta(&self) -> &GgufFile {
        &self.files[0]
    }

    /// The path that names the model: the file, or the first part.
    pub fn path(&self) -> &Path {
        &self.files[0].path
    }

    /// A tensor and the part holding it.
    pub fn tensor(&self, name: &str) -> Option<(&GgufFile, &GgufTensor)> {
        let f = &self.files[*self.names.get(name)?];
        Some((f, f.tensor(name)?))
    }

    pub fn tensor_count(&self) -> usize {
        self.names.len()
    }

    /// How many tensors of each ggml type the parts hold.
    pub fn type_counts(&self) -> BTreeMap<GgmlType, usize> {
        let mut counts = BTreeMap::new();
        for (t, n) in self.files.iter().flat_map(|f| f.type_counts()) {
            *counts.entry(t).or_insert(0) += n;
        }
        counts
    }

    /// Bytes of tensor data.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.tensor_data_bytes()).sum()
    }

    /// Bytes of the files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.files.iter().map(|f| f.file_bytes().len() as u64).sum()
    }

    /// Tensors whose values were rounded to bf16 while loading, by name.
    pub fn rounded_tensors(&self) -> BTreeMap<String, Rounding> {
        self.rounded.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
