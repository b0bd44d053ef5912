//! llama.cpp GGUF files: the tiny fixture converted by llama.cpp's own converter loads to the
//! same weights and logits as the Hugging Face folder it came from; variants built here (fused
//! gate/up, other dense types) load too; broken and hostile files give errors that name the
//! problem, never a panic. Run with --nocapture to see the parity figures.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{load_err, reference, tiny};
use gptoss_engine::checkpoint::Checkpoint;
use gptoss_engine::gguf::convert::{ggml_mxfp4_block_to_hf, hf_mxfp4_block_to_ggml};
use gptoss_engine::gguf::{GgmlType, GgufFile, GgufModel};
use gptoss_engine::safetensors::Bytes;
use gptoss_engine::weights::{Dense, ModelWeights};
use gptoss_engine::{KvCache, Layout, LoadError, LogitsRequest, Model, SeqChunk};
use gptoss_kernels::Kernels;

fn fixture() -> PathBuf {
    common::fixtures().join("tiny/gguf/tiny-mxfp4.gguf")
}

/// A GGUF file under construction, to build variants and hostile copies of the fixture.
#[derive(Clone)]
struct Gguf {
    version: u32,
    /// (key, GGUF value type id, value bytes).
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
}

#[derive(Clone)]
struct Tensor {
    name: String,
    /// ggml order (ne0 first).
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn string_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Gguf {
    fn from_fixture() -> Self {
        let f = GgufFile::open(&fixture()).unwrap();
        let b = f.file_bytes();
        Gguf {
            version: f.version,
            kv: f.metadata.iter().map(|e| (e.key.clone(), e.type_id, b[e.raw.clone()].to_vec())).collect(),
            tensors: f
                .tensors
                .iter()
                .map(|t| Tensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty.0,
                    data: b[t.range.clone()].to_vec(),
                })
                .collect(),
        }
    }

    fn set(&mut self, key: &str, type_id: u32, value: Vec<u8>) {
        match self.kv.iter_mut().find(|(k, _, _)| k == key) {
            Some(entry) => *entry = (key.into(), type_id, value),
            None => self.kv.push((key.into(), type_id, value)),
        }
    }

    fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn remove(&mut self, name: &str) -> Tensor {
        let i = self.tensors.iter().position(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"));
        self.tensors.remove(i)
    }

    /// The file: header, metadata, tensor infos, data at 32-byte aligned offsets.
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(b"GGUF")?;
        out.write_all(&self.version.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        let mut pos = 24;
        for (key, ty, value) in &self.kv {
            out.write_all(&string_bytes(key))?;
            out.write_all(&ty.to_le_bytes())?;
            out.write_all(value)?;
            pos += 8 + key.len() + 4 + value.len();
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            out.write_all(&string_bytes(&t.name))?;
            out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ty.to_le_bytes())?;
            out.write_all(&offset.to_le_bytes())?;
            pos += 8 + t.name.len() + 4 + 8 * t.dims.len() + 4 + 8;
            offset = (offset + t.data.len() as u64).next_multiple_of(32);
        }
        for t in &self.tensors {
            out.write_all(&vec![0; pos.next_multiple_of(32) - pos])?;
            out.write_all(&t.data)?;
            pos = pos.next_multiple_of(32) + t.data.len();
        }
        Ok(())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).unwrap();
        out
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        self.write_to(&mut out).unwrap();
        out.flush().unwrap();
        path
    }
}

/// Logits `[T, V]` for every position of `tokens`, in one forward call.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config, 4096);
    let seq = cache.add_sequence();
    model.forward(&mut cache, &[SeqChunk { seq, tokens, logits: LogitsRequest::All }]).unwrap().data
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// max |Δlogit| between `path` and the Hugging Face folder over the reference tokens.
fn logit_diff_to_hf(path: &Path, kernels: &'static Kernels) -> f32 {
    let tokens = reference().tokens;
    let mut hf = Model::load(&tiny("hf")).unwrap();
    let mut gguf = Model::load(path).unwrap();
    assert_eq!(gguf.layout, Layout::Gguf);
    hf.set_kernels(kernels);
    gguf.set_kernels(kernels);
    max_abs_diff(&all_logits(&hf, &tokens), &all_logits(&gguf, &tokens))
}

#[test]
fn config_from_metadata_equals_the_hf_config() {
    let hf = Checkpoint::open(&tiny("hf")).unwrap();
    let gguf = Checkpoint::open(&fixture()).unwrap();
    assert_eq!(gguf.layout, Layout::Gguf);
    assert_eq!(gguf.config, hf.config);
    assert_eq!(gguf.config.sliding_layers, [true, false, true, false]);
}

#[test]
fn weights_equal_the_hf_weights_bit_for_bit() {
    let hf = ModelWeights::load(&Checkpoint::open(&tiny("hf")).unwrap()).unwrap();
    let ck = Checkpoint::open(&fixture()).unwrap();
    let gguf = ModelWeights::load(&ck).unwrap();
    let bf16 = |d: &Dense| match d {
        Dense::Bf16(m) => m.bf16().to_vec(),
        _ => panic!("the fixture's dense weights are bf16"),
    };
    assert_eq!(gguf.embedding.as_bf16().unwrap().bf16(), hf.embedding.as_bf16().unwrap().bf16());
    assert_eq!(bf16(&gguf.unembedding), bf16(&hf.unembedding));
    assert_eq!(gguf.norm, hf.norm);
    for (l, (g, h)) in gguf.layers.iter().zip(&hf.layers).enumerate() {
        let (ga, ha) = (&g.attn, &h.attn);
        for (a, b) in [(&ga.q, &ha.q), (&ga.k, &ha.k), (&ga.v, &ha.v), (&ga.out, &ha.out)] {
            assert_eq!(bf16(a), bf16(b), "layer {l} attention");
        }
        for (a, b) in
            [(&ga.norm, &ha.norm), (&ga.q_bias, &ha.q_bias), (&ga.sinks, &ha.sinks), (&ga.out_bias, &ha.out_bias)]
        {
            assert_eq!(a, b, "layer {l} attention vectors");
        }
        let (gm, hm) = (&g.moe, &h.moe);
        // llama.cpp stores the router in F32; every value is a bf16 value.
        assert_eq!(gm.router.as_bf16().unwrap().bf16(), hm.router.as_bf16().unwrap().bf16(), "layer {l} router");
        assert_eq!((&gm.router_bias, &gm.norm), (&hm.router_bias, &hm.norm), "layer {l}");
        assert_eq!(gm.gate_up_bias, hm.gate_up_bias, "layer {l} gate/up bias (re-interleaved)");
        assert_eq!(gm.down_bias, hm.down_bias, "layer {l} down bias");
        for e in 0..gm.gate_up.experts() {
            assert_eq!(mx(&gm.gate_up).expert(e), mx(&hm.gate_up).expert(e), "layer {l} expert {e} gate/up");
            assert_eq!(mx(&gm.down).expert(e), mx(&hm.down).expert(e), "layer {l} expert {e} down");
        }
    }
    let rounded = ck.gguf.as_ref().unwrap().rounded_tensors();
    assert!(rounded.is_empty(), "nothing should be rounded: {rounded:?}");
}

#[test]
fn logits_equal_the_hf_folder() {
    let scalar = logit_diff_to_hf(&fixture(), Kernels::scalar());
    let default_kernels = Kernels::from_env().unwrap();
    let default = logit_diff_to_hf(&fixture(), default_kernels);
    eprintln!(
        "GGUF vs HF, 300 positions x 1024 logits: max |Δlogit| = {scalar:e} (scalar kernels), {default:e} ({default_kernels:?} kernels)"
    );
    // Same weights bit for bit, same kernels: the same arithmetic.
    assert_eq!(scalar, 0.0);
    assert_eq!(default, 0.0);
}

/// Newer converters can write one `ffn_gate_up_exps` per layer: all gate rows, then all up.
#[test]
fn fused_gate_up_gives_the_same_logits() {
    let mut g = Gguf::from_fixture();
    for l in 0..4 {
        let (gate, up) =
            (g.remove(&format!("blk.{l}.ffn_gate_exps.weight")), g.remove(&format!("blk.{l}.ffn_up_exps.weight")));
        let (gb, ub) =
            (g.remove(&format!("blk.{l}.ffn_gate_exps.bias")), g.remove(&format!("blk.{l}.ffn_up_exps.bias")));
        let (h, i, e) = (gate.dims[0], gate.dims[1], gate.dims[2]);
        // Per expert: its gate rows then its up rows (row-major [E, 2I, H]).
        let concat = |a: &[u8], b: &[u8], n: usize| -> Vec<u8> {
            a.chunks_exact(n).zip(b.chunks_exact(n)).flat_map(|(x, y)| x.iter().chain(y).copied()).collect()
        };
        let row_bytes = (h / 32 * 17 * i) as usize;
        g.tensors.push(Tensor {
            name: format!("blk.{l}.ffn_gate_up_exps.weight"),
            dims: vec![h, 2 * i, e],
            ty: gate.ty,
            data: concat(&gate.data, &up.data, row_bytes),
        });
        g.tensors.push(Tensor {
            name: format!("blk.{l}.ffn_gate_up_exps.bias"),
            dims: vec![2 * i, e],
            ty: gb.ty,
            data: concat(&gb.data, &ub.data, i as usize * 4),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = g.write(dir.path(), "fused.gguf");
    let diff = logit_diff_to_hf(&path, Kernels::scalar());
    eprintln!("fused ffn_gate_up_exps vs HF: max |Δlogit| = {diff:e}");
    assert_eq!(diff, 0.0);
}

/// Dense weights in F32 (bf16 values: exact), F16 (values bf16 cannot hold: rounded and
/// recorded) and Q8_0 (kept as q8 codes and scales).
#[test]
fn f32_f16_and_q8_0_dense_weights() {
    let base = Gguf::from_fixture();
    let dir = tempfile::tempdir().unwrap();
    let bf16s = |t: &Tensor| -> Vec<f32> {
        t.data.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect()
    };

    // F32 holding the bf16 values: the same logits, nothing rounded.
    let mut g = base.clone();
    for t in g.tensors.iter_mut().filter(|t| t.ty == GgmlType::BF16.0) {
        t.data = bf16s(t).iter().flat_map(|v| v.to_le_bytes()).collect();
        t.ty = GgmlType::F32.0;
    }
    let path = g.write(dir.path(), "f32.gguf");
    assert_eq!(logit_diff_to_hf(&path, Kernels::scalar()), 0.0);
    let ck = Checkpoint::open(&path).unwrap();
    ModelWeights::load(&ck).unwrap();
    assert!(ck.gguf.as_ref().unwrap().rounded_tensors().is_empty());

    // F16 with an extra mantissa bit on every other value: rounded to bf16, recorded.
    let mut g = base.clone();
    let t = g.tensor_mut("blk.0.attn_q.weight");
    let f16 = |v: f32| -> u16 {
        // Exact for these values (|v| < 2, normal in f16, at most 8 significant bits).
        let (bits, sign) = (v.abs().to_bits(), if v < 0.0 { 0x8000u16 } else { 0 });
        if v == 0.0 {
            return sign;
        }
        let exp = ((bits >> 23) as i32 - 127 + 15) as u16;
        sign | (exp << 10) | ((bits >> 13) & 0x3ff) as u16
    };
    t.data = bf16s(t).iter().enumerate().flat_map(|(i, &v)| (f16(v) | (i as u16 & 1)).to_le_bytes()).collect();
    t.ty = GgmlType::F16.0;
    let path = g.write(dir.path(), "f16.gguf");
    let ck = Checkpoint::open(&path).unwrap();
    ModelWeights::load(&ck).unwrap();
    let rounded = ck.gguf.as_ref().unwrap().rounded_tensors();
    let r = rounded.get("blk.0.attn_q.weight").expect("attn_q is recorded as rounded");
    assert_eq!((r.ty, r.total), (GgmlType::F16, 256 * 64));
    assert!(r.changed > 0 && r.changed <= r.total / 2, "{r:?}");
    assert_eq!(rounded.len(), 1);

    // Q8_0: codes and f16 scales become the engine's q8 codes and f32 scales, and compute
    // exactly as a BF16 file holding bf16(code · scale).
    let mut g = base.clone();
    let mut as_bf16 = base.clone();
    let t = g.tensor_mut("blk.1.attn_output.weight");
    let (mut codes, mut scales, mut data, mut dequant) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for block in bf16s(t).chunks_exact(32) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        // f16 scale max/127, truncated to f16 (10 mantissa bits), then read back exactly.
        let d = f16(max / 127.0);
        let df = f32::from_bits(((((d as u32) & 0x7c00) >> 10) + 127 - 15) << 23 | (((d as u32) & 0x3ff) << 13));
        data.extend_from_slice(&d.to_le_bytes());
        scales.push(df);
        for v in block {
            let q = (v / df).round().clamp(-127.0, 127.0) as i8;
            codes.push(q);
            data.push(q as u8);
            dequant.extend_from_slice(&gptoss_kernels::q8::weight_bf16(q, df).to_le_bytes());
        }
    }
    t.data = data;
    t.ty = GgmlType::Q8_0.0;
    as_bf16.tensor_mut("blk.1.attn_output.weight").data = dequant;
    let path = g.write(dir.path(), "q8.gguf");
    let ck = Checkpoint::open(&path).unwrap();
    let w = ModelWeights::load(&ck).unwrap();
    match &w.layers[1].attn.out {
        Dense::Q8(m) => assert_eq!((&m.codes, &m.scales, m.rows, m.cols), (&codes, &scales, 64, 256)),
        _ => panic!("Q8_0 should stay q8"),
    }
    let rounded = ck.gguf.as_ref().unwrap().rounded_tensors();
    assert_eq!(rounded.keys().collect::<Vec<_>>(), ["blk.1.attn_output.weight"]);
    let tokens = reference().tokens;
    // What is checked is the conversion, so both run the scalar twin: a set's q8 and bf16
    // matmuls may sum in different orders (`avx2` runs q8 on the twin, bf16 on its own kernel).
    let (mut q8_model, mut bf_model) =
        (Model::load(&path).unwrap(), Model::load(&as_bf16.write(dir.path(), "q8-as-bf16.gguf")).unwrap());
    q8_model.set_kernels(Kernels::scalar());
    bf_model.set_kernels(Kernels::scalar());
    let (q8, bf) = (all_logits(&q8_model, &tokens), all_logits(&bf_model, &tokens));
    assert_eq!(max_abs_diff(&q8, &bf), 0.0, "Q8_0 must compute as bf16(code * scale)");
    eprintln!(
        "one Q8_0 matrix (blk.1.attn_output) vs the bf16 original: max |Δlogit| = {:e}",
        logit_diff_to_hf(&path, Kernels::scalar())
    );
}

#[test]
fn random_mxfp4_round_trips_through_the_ggml_layout() {
    let mut rng = gptoss_engine::rng::Rng::new(7);
    let (rows, blocks) = (37, 5);
    let codes: Vec<u8> = (0..rows * blocks * 16).map(|_| (rng.next_u64() as u32) as u8).collect();
    let scales: Vec<u8> = (0..rows * blocks).map(|_| 100 + ((rng.next_u64() as u32) % 50) as u8).collect();
    let mut ggml = vec![0u8; rows * blocks * 17];
    for ((b, c), &s) in ggml.chunks_exact_mut(17).zip(codes.chunks_exact(16)).zip(&scales) {
        hf_mxfp4_block_to_ggml(s, c, b);
    }
    let mut back = vec![0u8; codes.len()];
    let back_scales: Vec<u8> =
        ggml.chunks_exact(17).zip(back.chunks_exact_mut(16)).map(|(b, c)| ggml_mxfp4_block_to_hf(b, c)).collect();
    assert_eq!((back, back_scales), (codes, scales));
}

#[test]
fn a_folder_with_one_gguf_and_a_file_without_the_extension_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), dir.path().join("model.gguf")).unwrap();
    assert_eq!(Model::load(dir.path()).unwrap().layout, Layout::Gguf);
    let renamed = dir.path().join("weights.bin");
    std::fs::copy(fixture(), &renamed).unwrap();
    assert_eq!(Model::load(&renamed).unwrap().layout, Layout::Gguf);
    std::fs::copy(fixture(), dir.path().join("other.gguf")).unwrap();
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("2 .gguf files"), "{msg}");
}

/// The parts `llama-gguf-split` writes: all metadata in the first, `split.no` (u16),
/// `split.count` (u16) and `split.tensors.count` (i32) in each, the tensors shared out.
fn split(g: &Gguf, n: usize) -> Vec<Gguf> {
    let per = g.tensors.len().div_ceil(n);
    g.tensors
        .chunks(per)
        .enumerate()
        .map(|(i, tensors)| {
            let mut part =
                Gguf { version: g.version, kv: if i == 0 { g.kv.clone() } else { vec![] }, tensors: tensors.to_vec() };
            part.set("split.no", 2, (i as u16).to_le_bytes().to_vec());
            part.set("split.count", 2, (n as u16).to_le_bytes().to_vec());
            part.set("split.tensors.count", 5, (g.tensors.len() as i32).to_le_bytes().to_vec());
            part
        })
        .collect()
}

#[test]
fn split_files_load_whole_from_any_part() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<PathBuf> = split(&Gguf::from_fixture(), 3)
        .iter()
        .enumerate()
        .map(|(i, p)| p.write(dir.path(), &format!("tiny-{:05}-of-00003.gguf", i + 1)))
        .collect();
    assert_eq!(logit_diff_to_hf(&parts[0], Kernels::scalar()), 0.0);
    let from_second = Checkpoint::open(&parts[1]).unwrap();
    assert_eq!(from_second.gguf.as_ref().unwrap().files.len(), 3);
    assert_eq!(from_second.dir, parts[0], "a split model is named by its first part");
    // The folder holding just the parts loads them.
    assert_eq!(Model::load(dir.path()).unwrap().layout, Layout::Gguf);
    // A missing part is named.
    std::fs::remove_file(&parts[2]).unwrap();
    let (_, msg) = load_err(&parts[0]);
    assert!(
        msg.contains("part 3 of 3") && msg.contains("tiny-00003-of-00003.gguf") && msg.contains("missing"),
        "{msg}"
    );
    // A part renamed away from llama-gguf-split's names cannot find its siblings.
    let renamed = dir.path().join("renamed.gguf");
    std::fs::rename(&parts[1], &renamed).unwrap();
    let (_, msg) = load_err(&renamed);
    assert!(msg.contains("part 2 of a GGUF split in 3") && msg.contains("-00002-of-00003.gguf"), "{msg}");
    // The same tensor in two parts.
    let mut parts = split(&Gguf::from_fixture(), 2);
    let extra = parts[0].tensors[0].clone();
    parts[1].tensors.push(extra);
    let d = tempfile::tempdir().unwrap();
    let first = parts[0].write(d.path(), "t-00001-of-00002.gguf");
    parts[1].write(d.path(), "t-00002-of-00002.gguf");
    let (err, msg) = load_err(&first);
    assert!(matches!(err, LoadError::DuplicateTensor { .. }), "{msg}");
}

#[test]
fn truncated_files_name_where_they_end() {
    let bytes = std::fs::read(fixture()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let header_end = GgufFile::open(&fixture()).unwrap().data_offset as usize;
    let last = GgufFile::open(&fixture()).unwrap().tensors.iter().max_by_key(|t| t.range.end).unwrap().clone();
    for (cut, expect) in [
        (3, "too short"),
        (20, "header (metadata count)"),
        (100, "34 metadata entries"),
        (2000, "tokenizer.ggml.tokens"),
        (header_end - 100, "tensor info"),
        (bytes.len() - 1, last.name.as_str()),
    ] {
        let path = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (_, msg) = load_err(&path);
        assert!(msg.contains("truncated") || msg.contains("too short"), "cut at {cut}: {msg}");
        assert!(msg.contains(expect) && msg.contains(&format!("cut{cut}.gguf")), "cut at {cut}: {msg}");
    }
    let path = dir.path().join(format!("cut{}.gguf", bytes.len() - 1));
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::TensorPastEnd { .. }), "{msg}");
    assert!(
        msg.contains(&format!("the file has {}", bytes.len() - 1)) && msg.contains(&last.range.end.to_string()),
        "{msg}"
    );
}

#[test]
fn another_architecture_is_refused_by_name() {
    let mut g = Gguf::from_fixture();
    g.set("general.architecture", 8, string_bytes("llama"));
    let dir = tempfile::tempdir().unwrap();
    let (err, msg) = load_err(&g.write(dir.path(), "llama.gguf"));
    assert!(matches!(err, LoadError::WrongArchitecture { .. }), "{msg}");
    assert!(msg.contains("`llama`") && msg.contains("`gpt-oss`") && msg.contains("llama.gguf"), "{msg}");
}

#[test]
fn unsupported_and_unknown_tensor_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Q4_0: a type ggml knows (18 bytes per 32 elements) that this engine does not load.
    let mut g = Gguf::from_fixture();
    let t = g.tensor_mut("blk.2.attn_k.weight");
    t.ty = 2;
    t.data = vec![0; 128 * 2 * 18];
    let (err, msg) = load_err(&g.write(dir.path(), "q4.gguf"));
    assert!(matches!(err, LoadError::UnsupportedTensorType { .. }), "{msg}");
    assert!(msg.contains("`blk.2.attn_k.weight`") && msg.contains("Q4_0 (type 2)"), "{msg}");
    // Experts in anything but MXFP4.
    let mut g = Gguf::from_fixture();
    let t = g.tensor_mut("blk.0.ffn_down_exps.weight");
    t.ty = GgmlType::Q8_0.0;
    t.data = vec![0; 8 * 64 * 3 * 34];
    let (_, msg) = load_err(&g.write(dir.path(), "q8experts.gguf"));
    assert!(
        msg.contains("`blk.0.ffn_down_exps.weight`") && msg.contains("Q8_0 (type 8)") && msg.contains("MXFP4"),
        "{msg}"
    );
    // An id ggml does not define: its size is unknown, so the file cannot be read.
    let mut g = Gguf::from_fixture();
    g.tensor_mut("output_norm.weight").ty = 77;
    let (_, msg) = load_err(&g.write(dir.path(), "t77.gguf"));
    assert!(msg.contains("`output_norm.weight`") && msg.contains("77"), "{msg}");
}

#[test]
fn bad_magic_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture()).unwrap();
    bytes[3] = b'G';
    let path = dir.path().join("magic.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let (_, msg) = load_err(&path);
    assert!(msg.contains("magic.gguf") && msg.contains("not the magic `GGUF`"), "{msg}");
    for (version, expect) in [(1, "version 1"), (4, "version 4"), (0x0300_0000, "big-endian")] {
        let mut g = Gguf::from_fixture();
        g.version = version;
        let (_, msg) = load_err(&g.write(dir.path(), "v.gguf"));
        assert!(msg.contains(expect), "version {version}: {msg}");
    }
}

#[test]
fn missing_tensors_and_keys_and_wrong_shapes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::from_fixture();
    g.remove("blk.3.attn_sinks.weight");
    let (err, msg) = load_err(&g.write(dir.path(), "nosinks.gguf"));
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("`blk.3.attn_sinks.weight`") && msg.contains("llama.cpp GGUF"), "{msg}");

    let mut g = Gguf::from_fixture();
    g.remove("blk.1.ffn_up_exps.weight");
    let (_, msg) = load_err(&g.write(dir.path(), "noup.gguf"));
    assert!(msg.contains("`blk.1.ffn_up_exps.weight`"), "{msg}");

    let mut g = Gguf::from_fixture();
    g.kv.retain(|(k, _, _)| k != "gpt-oss.expert_count");
    let (_, msg) = load_err(&g.write(dir.path(), "nokey.gguf"));
    assert!(msg.contains("`gpt-oss.expert_count`"), "{msg}");

    let mut g = Gguf::from_fixture();
    g.set("gpt-oss.attention.head_count_kv", 4, 3u32.to_le_bytes().to_vec());
    let (_, msg) = load_err(&g.write(dir.path(), "kv3.gguf"));
    assert!(msg.contains("gpt-oss.attention.head_count_kv") && msg.contains("does not divide"), "{msg}");

    let mut g = Gguf::from_fixture();
    let t = g.tensor_mut("output_norm.weight");
    t.dims = vec![32];
    t.data.truncate(128);
    let (err, msg) = load_err(&g.write(dir.path(), "shape.gguf"));
    assert!(matches!(err, LoadError::WrongShape { .. }), "{msg}");
    assert!(msg.contains("`output_norm.weight`") && msg.contains("[32]") && msg.contains("[64]"), "{msg}");
}

/// Lengths and counts far beyond the file: errors, no panic, no huge allocation.
#[test]
fn hostile_lengths_and_counts() {
    let g = Gguf::from_fixture();
    let parse = |bytes: &[u8]| {
        GgufFile::from_bytes(Path::new("hostile.gguf"), Bytes::from_vec(bytes)).err().map(|e| e.to_string())
    };
    let mut b = g.bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    assert!(parse(&b).unwrap().contains("tensors"));
    let mut b = g.bytes();
    b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes()); // metadata count
    assert!(parse(&b).unwrap().contains("metadata entries"));
    let mut b = g.bytes();
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes()); // first key's length
    assert!(parse(&b).unwrap().contains("truncated"));

    let mut h = g.clone();
    // An array claiming 2^62 u64 elements, and one of 2^40 strings.
    let mut arr = 10u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 62).to_le_bytes());
    h.set("x.huge", 9, arr);
    assert!(parse(&h.bytes()).unwrap().contains("x.huge"));
    let mut h = g.clone();
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 40).to_le_bytes());
    h.set("x.strings", 9, arr);
    assert!(parse(&h.bytes()).unwrap().contains("x.strings"));
    // Arrays nested past the depth limit.
    let mut h = g.clone();
    let mut nested = Vec::new();
    for _ in 0..100 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    h.set("x.nested", 9, nested);
    assert!(parse(&h.bytes()).unwrap().contains("nests arrays"));
    // Dimensions whose product overflows, and five dimensions.
    let mut h = g.clone();
    h.tensor_mut("output_norm.weight").dims = vec![1 << 40, 1 << 40];
    assert!(parse(&h.bytes()).unwrap().contains("output_norm.weight"));
    let mut h = g.clone();
    h.tensor_mut("output_norm.weight").dims = vec![64, 1, 1, 1, 1];
    assert!(parse(&h.bytes()).unwrap().contains("5 dimensions"));
    let mut h = g.clone();
    h.set("general.alignment", 4, 3u32.to_le_bytes().to_vec());
    assert!(parse(&h.bytes()).unwrap().contains("general.alignment"));
}

/// Random byte changes in the header: every outcome is Ok or an error.
#[test]
fn corrupted_headers_never_panic() {
    let g = Gguf::from_fixture();
    let clean = g.bytes();
    let header_len = GgufFile::open(&fixture()).unwrap().data_offset as usize;
    let mut rng = gptoss_engine::rng::Rng::new(1);
    let mut errors = 0;
    for _ in 0..400 {
        let mut b = clean[..header_len].to_vec();
        for _ in 0..1 + (rng.next_u64() as u32) % 4 {
            let at = (rng.next_u64() as u32) as usize % header_len;
            b[at] = (rng.next_u64() as u32) as u8;
        }
        b.extend_from_slice(&clean[header_len..]);
        match GgufFile::from_bytes(Path::new("fuzz.gguf"), Bytes::from_vec(&b)) {
            Ok(f) => errors += usize::from(GgufModel::from_parts(vec![f]).and_then(|m| m.config()).is_err()),
            Err(e) => {
                assert!(e.to_string().contains("fuzz.gguf"));
                errors += 1;
            }
        }
    }
    assert!(errors > 0);
}

/// The Hugging Face checkpoint at `dir` written as llama.cpp's converter lays it out (spec
/// §2.5): ggml names, dense weights BF16, norms, biases, sinks and the router F32, experts as
/// ggml MXFP4 blocks with gate and up split.
fn hf_to_gguf(dir: &Path) -> Gguf {
    use gptoss_engine::checkpoint::{LayerTensor::*, TensorNames};
    let ck = Checkpoint::open(dir).unwrap();
    let c = &ck.config;
    let names = TensorNames { layout: Layout::HuggingFace };
    let raw = |name: &str| {
        let (f, info) = ck.tensor(name).unwrap();
        f.bytes(info).as_slice().to_vec()
    };
    let f32s = |name: &str| -> Vec<u8> {
        raw(name)
            .chunks_exact(2)
            .flat_map(|b| ((u16::from_le_bytes([b[0], b[1]]) as u32) << 16).to_le_bytes())
            .collect()
    };
    let t = |name: String, dims: &[usize], ty: GgmlType, data: Vec<u8>| Tensor {
        name,
        dims: dims.iter().map(|&d| d as u64).collect(),
        ty: ty.0,
        data,
    };
    let u32v = |v: usize| (v as u32).to_le_bytes().to_vec();
    let f32v = |v: f64| (v as f32).to_le_bytes().to_vec();
    let mut g = Gguf { version: 3, kv: vec![], tensors: vec![] };
    g.set("general.architecture", 8, string_bytes("gpt-oss"));
    for (key, ty, value) in [
        ("block_count", 4, u32v(c.num_layers)),
        ("context_length", 4, u32v(c.max_context)),
        ("embedding_length", 4, u32v(c.hidden_size)),
        ("feed_forward_length", 4, u32v(c.intermediate_size)),
        ("expert_feed_forward_length", 4, u32v(c.intermediate_size)),
        ("expert_count", 4, u32v(c.num_experts)),
        ("expert_used_count", 4, u32v(c.experts_per_token)),
        ("attention.head_count", 4, u32v(c.num_heads)),
        ("attention.head_count_kv", 4, u32v(c.num_kv_heads)),
        ("attention.key_length", 4, u32v(c.head_dim)),
        ("attention.value_length", 4, u32v(c.head_dim)),
        ("attention.layer_norm_rms_epsilon", 6, f32v(c.rms_norm_eps as f64)),
        ("attention.sliding_window", 4, u32v(c.sliding_window)),
        ("rope.freq_base", 6, f32v(c.rope_theta)),
        ("rope.scaling.type", 8, string_bytes("yarn")),
        ("rope.scaling.factor", 6, f32v(c.rope_factor)),
        ("rope.scaling.original_context_length", 4, u32v(c.rope_original_context)),
    ] {
        g.set(&format!("gpt-oss.{key}"), ty, value);
    }
    let (h, i, e, v) = (c.hidden_size, c.intermediate_size, c.num_experts, c.vocab_size);
    g.tensors.push(t("token_embd.weight".into(), &[h, v], GgmlType::BF16, raw(names.embedding())));
    g.tensors.push(t("output.weight".into(), &[h, v], GgmlType::BF16, raw(names.unembedding())));
    g.tensors.push(t("output_norm.weight".into(), &[h], GgmlType::F32, f32s(names.final_norm())));
    // HF experts [E, R, C/32, 16] + [E, R, C/32] -> ggml rows of C/32 17-byte blocks, for
    // the rows `pick` selects of each expert.
    let ggml = |blocks: &[u8], scales: &[u8], rows: usize, cols: usize, pick: &dyn Fn(usize) -> Option<usize>| {
        let g = cols / 32;
        let mut out = Vec::new();
        for x in 0..e {
            for r in (0..rows).filter_map(|r| pick(r).map(|_| r)) {
                for b in 0..g {
                    let at = (x * rows + r) * g + b;
                    let mut block = [0u8; 17];
                    hf_mxfp4_block_to_ggml(scales[at], &blocks[at * 16..at * 16 + 16], &mut block);
                    out.extend_from_slice(&block);
                }
            }
        }
        out
    };
    for l in 0..c.num_layers {
        let n = |x| names.layer(l, x);
        let b = |s: &str| format!("blk.{l}.{s}");
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        for (name, dims, src) in [
            ("attn_q.weight", vec![h, qd], n(QWeight)),
            ("attn_k.weight", vec![h, kvd], n(KWeight)),
            ("attn_v.weight", vec![h, kvd], n(VWeight)),
            ("attn_output.weight", vec![qd, h], n(OutWeight)),
        ] {
            g.tensors.push(t(b(name), &dims, GgmlType::BF16, raw(&src)));
        }
        for (name, dims, src) in [
            ("attn_norm.weight", vec![h], n(AttnNorm)),
            ("attn_q.bias", vec![qd], n(QBias)),
            ("attn_k.bias", vec![kvd], n(KBias)),
            ("attn_v.bias", vec![kvd], n(VBias)),
            ("attn_output.bias", vec![h], n(OutBias)),
            ("attn_sinks.weight", vec![c.num_heads], n(Sinks)),
            ("post_attention_norm.weight", vec![h], n(MlpNorm)),
            ("ffn_gate_inp.weight", vec![h, e], n(RouterWeight)),
            ("ffn_gate_inp.bias", vec![e], n(RouterBias)),
            ("ffn_down_exps.bias", vec![h, e], n(DownBias)),
        ] {
            g.tensors.push(t(b(name), &dims, GgmlType::F32, f32s(&src)));
        }
        let (blocks, scales) = (raw(&n(GateUpBlocks)), raw(&n(GateUpScales)));
        let bias = f32s(&n(GateUpBias));
        for (name, parity) in [("gate", 0), ("up", 1)] {
            let pick = move |r: usize| (r % 2 == parity).then_some(r);
            g.tensors.push(t(
                b(&format!("ffn_{name}_exps.weight")),
                &[h, i, e],
                GgmlType::MXFP4,
                ggml(&blocks, &scales, 2 * i, h, &pick),
            ));
            let half: Vec<u8> = bias.chunks_exact(4).skip(parity).step_by(2).flatten().copied().collect();
            g.tensors.push(t(b(&format!("ffn_{name}_exps.bias")), &[i, e], GgmlType::F32, half));
        }
        let down = ggml(&raw(&n(DownBlocks)), &raw(&n(DownScales)), h, i, &|r| Some(r));
        g.tensors.push(t(b("ffn_down_exps.weight"), &[i, h, e], GgmlType::MXFP4, down));
    }
    g
}

/// gpt-oss-20b's shapes (hidden 2880, 32 experts, 201,088-token vocabulary) in 2 layers of
/// random weights: written as a Hugging Face checkpoint, converted here to GGUF, loaded both
/// ways; prints the load times and the logit difference. About 7 GB of disk, 8 GB of memory:
/// `cargo test -p gptoss-engine --test gguf -- --ignored --nocapture`.
#[test]
#[ignore]
fn twenty_b_shapes_load_the_same_from_gguf() {
    use gptoss_engine::ModelConfig;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { num_layers: 2, sliding_layers: vec![true, false], ..ModelConfig::gpt_oss_20b() };
    let hf_dir = dir.path().join("hf");
    gptoss_engine::synth::write_checkpoint(&cfg, Layout::HuggingFace, &hf_dir, 3, |_, _| {}).unwrap();
    let path = hf_to_gguf(&hf_dir).write(dir.path(), "twenty-b-2-layers.gguf");
    let time = |p: &Path| {
        let t0 = std::time::Instant::now();
        let m = Model::load(p).unwrap();
        (m, t0.elapsed().as_secs_f64())
    };
    let (hf, t_hf) = time(&hf_dir);
    let (gguf, t_gguf) = time(&path);
    assert_eq!(gguf.config, hf.config);
    let tokens = [200006, 17360, 200008, 3575, 553, 261, 10297, 13];
    let diff = max_abs_diff(&all_logits(&hf, &tokens), &all_logits(&gguf, &tokens));
    eprintln!(
        "20b shapes, 2 layers: load {t_hf:.2} s (HF) vs {t_gguf:.2} s (GGUF, {:?} kernels); max |Δlogit| over {} positions = {diff:e}",
        gguf.kernels(),
        tokens.len()
    );
    assert_eq!(diff, 0.0);
}

fn mx(x: &gptoss_engine::weights::Experts) -> &gptoss_engine::weights::Mxfp4Experts {
    x.as_mxfp4().expect("MXFP4 experts")
}
