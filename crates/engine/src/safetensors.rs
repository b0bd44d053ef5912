//! The safetensors container: an 8-byte little-endian header length, a JSON header naming
//! every tensor's dtype, shape and byte range, then the raw data. Files are memory-mapped and
//! tensors are used in place; every header fact is checked before any byte is touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use serde_json::Value;

use crate::error::LoadError;

/// Largest header we accept, as the reference loader (real ones are tens of kilobytes).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The huge page size of x86-64 and of arm64 with 4 KiB pages.
const HUGE_PAGE: usize = 2 << 20;
/// Alignment of each buffer of [`Bytes::build_parts`]: a cache line.
const PART_ALIGN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "F8_E5M2" => DType::F8E5M2,
            "F8_E4M3" => DType::F8E4M3,
            "I16" => DType::I16,
            "U16" => DType::U16,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I32" => DType::I32,
            "U32" => DType::U32,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U64" => DType::U64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E5M2 | DType::F8E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes that live in a memory map or, when they had to be copied, in an 8-byte aligned
/// buffer. Cheap to clone.
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<Storage>,
    start: usize,
    len: usize,
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u64>),
    /// Built at load (repacked weights): anonymous memory, in huge pages where the kernel
    /// allows, so gigabytes fault in 2 MiB at a time.
    Anon(MmapMut),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Anon(m) => m,
            // SAFETY: any u64 buffer is a valid byte buffer of 8x the length.
            Storage::Owned(v) => unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() * 8) },
        }
    }
}

impl Bytes {
    /// A whole file, memory-mapped read-only (an empty file is an empty buffer: mmap refuses
    /// zero lengths).
    pub fn map_file(path: &Path) -> Result<Bytes, LoadError> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        let len = file.metadata().map_err(|e| LoadError::io(path, e))?.len();
        if len == 0 {
            return Ok(Bytes::from_vec(&[]));
        }
        // SAFETY: the mapping is read-only; like every mmap-based loader we assume the
        // checkpoint is not modified while it is in use.
        let m = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        Ok(Bytes { len: m.len(), owner: Arc::new(Storage::Mapped(m)), start: 0 })
    }

    pub fn from_vec(data: &[u8]) -> Self {
        let mut words = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: the u64 buffer has at least data.len() bytes.
        let dst = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), data.len()) };
        dst.copy_from_slice(data);
        Bytes { owner: Arc::new(Storage::Owned(words)), start: 0, len: data.len() }
    }

    /// `len` owned bytes written by `fill` (given zeros), without an extra copy.
    ///
    /// In anonymous memory where the system allows, starting on a 2 MiB boundary: the kernel
    /// backs with a huge page only a whole aligned 2 MiB of the map, and a map placed where
    /// mmap put it lost up to 2 MiB at its head to 4 KiB pages (on a 20b load, with one map
    /// per matrix, ~180 of the 2.3 GiB of dense matrices). The tail past the last whole
    /// 2 MiB stays in 4 KiB pages rather than round the resident set up.
    pub fn build(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        // Room to move the start to the next boundary; small buffers keep the map as it is.
        let slack = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
        if let Ok(mut m) = memmap2::MmapOptions::new().len(len + slack).map_anon() {
            let start =
                if slack > 0 { (m.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - m.as_ptr() as usize } else { 0 };
            #[cfg(target_os = "linux")]
            let huge = len / HUGE_PAGE * HUGE_PAGE;
            #[cfg(target_os = "linux")]
            if huge > 0 {
                let _ = m.advise_range(memmap2::Advice::HugePage, start, huge);
            }
            fill(&mut m[start..start + len]);
            #[cfg(target_os = "linux")]
            collapse_into_huge_pages(&m[start..start + huge]);
            return Bytes { owner: Arc::new(Storage::Anon(m)), start, len };
        }
        let mut words = vec![0u64; len.div_ceil(8)];
        // SAFETY: the u64 buffer has at least len bytes, and any byte pattern is a valid u64.
        fill(unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) });
        Bytes { owner: Arc::new(Storage::Owned(words)), start: 0, len }
    }

    /// Owned buffers of `lens[i]` bytes, each written by `fill(i, buffer)` (given zeros), in
    /// one [`Bytes::build`] map, each starting on a cache line. Matrices read for every token
    /// go here together: only the ends of the whole run can fall outside 2 MiB pages, where
    /// one map per matrix loses both ends of every matrix.
    pub fn build_parts(lens: &[usize], mut fill: impl FnMut(usize, &mut [u8])) -> Vec<Bytes> {
        let mut end = 0;
        let starts: Vec<usize> = lens
            .iter()
            .map(|&len| {
                let start = end;
                end = (start + len).next_multiple_of(PART_ALIGN);
                start
            })
            .collect();
        let whole = Bytes::build(end, |buf| {
            for (i, (&start, &len)) in starts.iter().zip(lens).enumerate() {
                fill(i, &mut buf[start..start + len]);
            }
        });
        starts.iter().zip(lens).map(|(&start, &len)| whole.slice(start..start + len)).collect()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.owner.as_slice()[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Unmaps these bytes' pages from this process (they stay in the page cache): for
    /// weights that were copied, so they stop counting in the resident set.
    pub fn release(&self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped(m) = &*self.owner {
            // SAFETY: DONTNEED on a read-only file mapping only drops page-table entries; a
            // later read faults the same file contents back in.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.start, self.len) };
        }
    }

    /// Maps these bytes' pages in now (reading them if they are not cached), so the forward
    /// pass never stops on a page fault. Best effort: kernels before Linux 5.14 and owned
    /// buffers have nothing to do.
    pub fn populate(&self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped(m) = &*self.owner {
            let _ = m.advise_range(memmap2::Advice::PopulateRead, self.start, self.len);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether these bytes are read from a file's memory map (the page cache).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.owner, Storage::Mapped(_))
    }

    /// Whether these bytes and `other` are parts of one buffer or map.
    pub fn shares_storage_with(&self, other: &Bytes) -> bool {
        Arc::ptr_eq(&self.owner, &other.owner)
    }

    /// How many `Bytes` hold this one's buffer or map.
    #[cfg(test)]
    pub(crate) fn storage_holders(&self) -> usize {
        Arc::strong_count(&self.owner)
    }

    /// A sub-range of these bytes, sharing the storage.
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        assert!(range.start <= range.end && range.end <= self.len, "Bytes::slice out of range");
        Bytes { owner: self.owner.clone(), start: self.start + range.start, len: range.end - range.start }
    }

    /// The same bytes at an address aligned for `align` (copied only if they are not).
    pub fn aligned(self, align: usize) -> Bytes {
        if (self.as_slice().as_ptr() as usize).is_multiple_of(align) {
            self
        } else {
            Bytes::from_vec(self.as_slice())
        }
    }

    /// View as little-endian u16s. Panics if misaligned: build with [`Bytes::aligned`].
    pub fn as_u16(&self) -> &[u16] {
        // SAFETY: u16 has no invalid bit patterns; alignment is checked by align_to.
        let (pre, mid, post) = unsafe { self.as_slice().align_to::<u16>() };
        assert!(pre.is_empty() && post.is_empty(), "Bytes::as_u16 on misaligned or odd-length data");
        mid
    }
}

/// Asks Linux to move whatever of `m` (whole 2 MiB pages of a map) was faulted in 4 KiB
/// pages into 2 MiB ones now (`MADV_COLLAPSE`, Linux 6.1; best effort, older kernels refuse
/// it). A 2 MiB page at fault needs 2 MiB of free contiguous memory, and late in a load, with
/// the checkpoint's pages filling the page cache, the kernel often had none: loading the 20b
/// on a 24 GB machine put 276 of the 1210 MiB of attention matrices (then copied last) in
/// 4 KiB pages. Collapsing fails just as often under that pressure but recovers some:
/// 11.4–12.1 GB of the 12.9 GB resident in huge pages before, 11.9–12.3 after, over a few
/// loads each.
#[cfg(target_os = "linux")]
fn collapse_into_huge_pages(m: &[u8]) {
    /// Not in every target's `libc` (musl's lacks it); the value is the kernel ABI's.
    const MADV_COLLAPSE: libc::c_int = 25;
    if !m.is_empty() {
        // SAFETY: `m` is whole 2 MiB pages of a live anonymous mapping; collapsing changes
        // their page size, never their contents.
        let _ = unsafe { libc::madvise(m.as_ptr() as *mut libc::c_void, m.len(), MADV_COLLAPSE) };
    }
}

/// One tensor's header entry; `range` is absolute within the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// One memory-mapped safetensors file with a validated header.
pub struct SafeTensors {
    pub path: PathBuf,
    map: Bytes,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        Self::from_bytes(path, Bytes::map_file(path)?)
    }

    /// Parse and validate a whole file held in `map`.
    pub fn from_bytes(path: &Path, map: Bytes) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadHeader { path: path.to_path_buf(), reason };
        let bytes = map.as_slice();
        let file_len = bytes.len() as u64;
        if file_len < 8 {
            return Err(bad(format!("file is {file_len} bytes, too short for the 8-byte header length")));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
        }
        if 8 + header_len > file_len {
            return Err(bad(format!("header length {header_len} runs past the end of the {file_len}-byte file")));
        }
        let data_start = 8 + header_len as usize;
        let header =
            std::str::from_utf8(&bytes[8..data_start]).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
        if !header.starts_with('{') {
            return Err(bad(format!(
                "header does not start with `{{` (it starts with {:?}); the header length may be wrong",
                header.chars().next().unwrap_or(' ')
            )));
        }
        let header: Value = serde_json::from_str(header).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let Value::Object(entries) = header else {
            return Err(bad("header is not a JSON object".into()));
        };
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in entries {
            if name == "__metadata__" {
                let Value::Object(m) = entry else {
                    return Err(bad("`__metadata__` must be an object of strings".into()));
                };
                for (k, v) in m {
                    let Value::String(v) = v else {
                        return Err(bad(format!("`__metadata__.{k}` must be a string, not {v}")));
                    };
                    metadata.insert(k, v);
                }
                continue;
            }
            let info = parse_entry(path, &name, &entry, data_start, file_len)?;
            tensors.insert(name, info);
        }
        check_tiling(&tensors, data_start, file_len).map_err(bad)?;
        Ok(SafeTensors { path: path.to_path_buf(), map, tensors, metadata })
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The bytes of a tensor of this file.
    pub fn bytes(&self, info: &TensorInfo) -> Bytes {
        self.map.slice(info.range.clone())
    }
}

/// The tensors' byte ranges must tile the data section exactly, as the reference loader
/// requires: sorted by offset, each starts where the previous ends, the first at 0 and the last
/// at the end of the file. A header length off by a byte, a gap, an overlap or trailing bytes
/// would otherwise load every weight from the wrong place without a word.
fn check_tiling(tensors: &BTreeMap<String, TensorInfo>, data_start: usize, file_len: u64) -> Result<(), String> {
    let mut spans: Vec<(usize, usize, &str)> =
        tensors.iter().map(|(n, t)| (t.range.start - data_start, t.range.end - data_start, n.as_str())).collect();
    spans.sort_unstable();
    let mut at = 0;
    let mut previous = None;
    for (start, end, name) in spans {
        if start != at {
            let after = previous.map_or("the start of the data".to_string(), |p| format!("tensor `{p}`"));
            let how = if start > at { "a gap" } else { "an overlap" };
            return Err(format!(
                "tensor `{name}` starts at data offset {start} but {after} ends at {at} ({how}); the data offsets \
                 must tile the data section exactly"
            ));
        }
        at = end;
        previous = Some(name);
    }
    let data_len = file_len - data_start as u64;
    if at as u64 != data_len {
        return Err(format!(
            "the tensors end at data offset {at} but the data section after the {}-byte header holds {data_len} \
             bytes: a wrong header length, or bytes after the last tensor",
            data_start - 8
        ));
    }
    Ok(())
}

fn parse_entry(
    path: &Path,
    name: &str,
    entry: &Value,
    data_start: usize,
    file_len: u64,
) -> Result<TensorInfo, LoadError> {
    let bad =
        |what: String| LoadError::BadHeader { path: path.to_path_buf(), reason: format!("tensor `{name}`: {what}") };
    let dtype_str = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no `dtype` string".into()))?;
    let dtype = DType::parse(dtype_str).ok_or_else(|| LoadError::UnknownDtype {
        path: path.to_path_buf(),
        tensor: name.to_owned(),
        dtype: dtype_str.to_owned(),
    })?;
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `shape` array".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("shape entries must be non-negative integers".into()))?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| bad("`data_offsets` must be two non-negative integers".into()))?;
    let (start, end) = offsets;
    if end < start {
        return Err(bad(format!("data_offsets [{start}, {end}] end before they start")));
    }
    let needed = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if end - start != needed {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {needed} bytes but data_offsets [{start}, {end}] span {}",
            end - start
        )));
    }
    // data_start <= file_len and start <= end, so only `end` can overflow.
    let abs_end =
        (data_start as u64).checked_add(end).filter(|&e| e <= file_len).ok_or_else(|| LoadError::Truncated {
            path: path.to_path_buf(),
            tensor: name.to_owned(),
            needed: (data_start as u64).saturating_add(end),
            available: file_len,
        })?;
    let abs_start = data_start as u64 + start;
    Ok(TensorInfo { dtype, shape, range: abs_start as usize..abs_end as usize })
}

/// What a tensor will be when written.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[usize]) -> Self {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }

    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Write a safetensors file tensor by tensor, so memory use stays at one chunk however large
/// the file: `fill(i, out)` must write exactly `specs[i].byte_len()` bytes.
pub fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for s in specs {
        let len = s.byte_len();
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": s.dtype.name(), "shape": s.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&Value::Object(header))?.into_bytes();
    // Pad so the data section starts 8-byte aligned, as the reference writer does.
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut out = io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    for (i, s) in specs.iter().enumerate() {
        let mut counter = CountingWriter { inner: &mut out, written: 0 };
        fill(i, &mut counter)?;
        if counter.written != s.byte_len() {
            return Err(io::Error::other(format!(
                "tensor {}: wrote {} bytes, expected {}",
                s.name,
                counter.written,
                s.byte_len()
            )));
        }
    }
    out.flush()
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: usize,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let specs = [TensorSpec::new("a", DType::BF16, &[2, 3]), TensorSpec::new("b", DType::U8, &[5])];
        write_safetensors(&path, &specs, &BTreeMap::new(), |i, w| w.write_all(&vec![i as u8 + 1; specs[i].byte_len()]))
            .unwrap();
        let st = SafeTensors::open(&path).unwrap();
        let a = st.get("a").unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (DType::BF16, vec![2, 3]));
        assert_eq!(st.bytes(a).as_slice(), &[1u8; 12]);
        assert_eq!(st.bytes(st.get("b").unwrap()).as_slice(), &[2u8; 5]);
        assert_eq!(a.range.start % 8, 0, "data section is aligned");
    }

    /// A file with the header text as given (no padding) and `data` after it.
    fn raw_file(dir: &Path, header_len: Option<u64>, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join("raw.safetensors");
        let mut bytes = header_len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn refused(path: &Path, what: &str) {
        match SafeTensors::open(path) {
            Err(e @ LoadError::BadHeader { .. }) => assert!(e.to_string().contains(what), "{e}"),
            Err(e) => panic!("expected a bad header ({what}), got {e}"),
            Ok(_) => panic!("a file with {what} loaded"),
        }
    }

    #[test]
    fn structurally_invalid_files_are_refused_as_the_reference_loader_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let two = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
        let padded = format!("{two}  ");
        // As written: loads.
        let ok = raw_file(dir.path(), None, &padded, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(SafeTensors::open(&ok).unwrap().tensors.len(), 2);
        // The header length one byte short: the padding still parses, every weight one byte off.
        refused(&raw_file(dir.path(), Some(padded.len() as u64 - 1), &padded, &[1, 2, 3, 4, 5, 6]), "header length");
        // Bytes after the last tensor.
        refused(&raw_file(dir.path(), None, &padded, &[1, 2, 3, 4, 5, 6, 7]), "bytes after the last tensor");
        // A gap and an overlap between tensors.
        let gap = two.replace("[4,6]", "[5,7]");
        refused(&raw_file(dir.path(), None, &gap, &[0; 7]), "a gap");
        let overlap = two.replace("[4,6]", "[3,5]");
        refused(&raw_file(dir.path(), None, &overlap, &[0; 6]), "an overlap");
        // Data that does not start at offset 0.
        let late = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#;
        refused(&raw_file(dir.path(), None, late, &[0; 4]), "the start of the data");
        // A header that does not start with `{`.
        refused(&raw_file(dir.path(), None, &format!(" {two}"), &[0; 6]), "does not start with");
        // Metadata must be strings.
        let meta = format!(r#"{{"__metadata__":{{"format":3}},{}"#, &two[1..]);
        refused(&raw_file(dir.path(), None, &meta, &[0; 6]), "must be a string");
        // No tensors and no data is a valid (empty) file.
        assert!(SafeTensors::open(&raw_file(dir.path(), None, "{}", &[])).unwrap().tensors.is_empty());
    }

    #[test]
    fn mapped_bytes_copy_into_parts_of_one_anonymous_map_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let data: Vec<u8> = (0..(5 << 20) + 7).map(|i| (i * 131 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mapped = Bytes::map_file(&path).unwrap();
        assert!(mapped.is_mapped());
        // Ragged pieces: one past 2 MiB, odd lengths, an empty one.
        let pieces = [
            mapped.slice(3..(2 << 20) + 100),
            mapped.slice(5..6),
            mapped.slice(7..7),
            mapped.slice(1000..data.len() - 2),
        ];
        let lens: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        let parts = Bytes::build_parts(&lens, |i, dst| {
            assert!(dst.iter().all(|&b| b == 0), "part {i} was not given zeros");
            dst.copy_from_slice(pieces[i].as_slice());
            pieces[i].release();
        });
        assert_eq!(parts.len(), pieces.len());
        for (part, piece) in parts.iter().zip(&pieces) {
            assert!(!part.is_mapped());
            assert_eq!(part.as_slice().as_ptr() as usize % PART_ALIGN, 0, "a part does not start on a cache line");
            // The map still reads the file after its pages were released.
            assert_eq!(part.as_slice(), piece.as_slice());
        }
        assert_eq!(parts[3].as_slice(), &data[1000..data.len() - 2]);
        // A buffer past 2 MiB starts on a 2 MiB boundary where it is mapped.
        let big = Bytes::build(3 << 20, |d| d.fill(7));
        if matches!(*big.owner, Storage::Anon(_)) {
            assert_eq!(big.as_slice().as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert!(big.as_slice().iter().all(|&b| b == 7));
        assert!(Bytes::build_parts(&[], |_, _| unreachable!()).is_empty());
    }

    #[test]
    fn writer_rejects_short_fill() {
        let dir = tempfile::tempdir().unwrap();
        let specs = [TensorSpec::new("a", DType::F32, &[4])];
        let err = write_safetensors(&dir.path().join("x"), &specs, &BTreeMap::new(), |_, w| w.write_all(&[0; 3]))
            .unwrap_err();
        assert!(err.to_string().contains("wrote 3 bytes, expected 16"), "{err}");
    }
}
