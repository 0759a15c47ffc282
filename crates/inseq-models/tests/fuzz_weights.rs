//! Property-based fuzzing of the weight and model-directory loaders:
//! safetensors files of random or mutated bytes, headers claiming huge tensors,
//! GGUF files mutated anywhere (beyond `gguf_corrupt.rs`' header flips),
//! `config.json` files with hostile numbers, and configs that disagree with
//! their weights. Every case is an error with a clear message, never a panic
//! or an allocation sized from a claimed length.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use inseq_core::Error;
use inseq_models::{SafetensorsSource, WeightSource, load_dir, load_pretrained};
use proptest::prelude::*;

fn shared_model(name: &str) -> PathBuf {
    inseq_fixtures::model_dir(name)
}

fn gguf_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

/// A fresh scratch directory per call, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "inseq-fuzzw-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A copy of a shared model directory.
    fn model(tag: &str, name: &str) -> Self {
        let s = Self::new(tag);
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(shared_model(name).join(f), s.0.join(f)).unwrap();
        }
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn device() -> Device {
    Device::default()
}

/// A safetensors file: 8-byte header length, JSON header, data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)], region: usize) {
    for &(at, op, val) in edits {
        let len = bytes.len().min(region.max(1));
        if bytes.is_empty() {
            bytes.push(val);
            continue;
        }
        let at = at % len;
        match op % 4 {
            0 | 1 => bytes[at] = val,
            2 => bytes.insert(at, val),
            _ => {
                bytes.remove(at);
            }
        }
    }
}

fn open_and_read_all(path: &Path) -> Result<usize, Error> {
    let mut src = SafetensorsSource::open_files(&[path.to_path_buf()])?;
    let mut n = 0;
    for name in src.names() {
        if let Some(t) = src.read(&name)? {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
            n += 1;
        }
    }
    Ok(n)
}

fn expect_corrupt(res: Result<usize, Error>, path: &Path) -> String {
    match res {
        Err(Error::CorruptFile { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = Scratch::new("st-rand");
        let p = s.write("model.safetensors", &bytes);
        let _ = open_and_read_all(&p);
    }

    #[test]
    fn safetensors_mutated_real_file(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        header_only in any::<bool>(),
    ) {
        let s = Scratch::new("st-mut");
        let mut bytes = std::fs::read(shared_model("tiny-gpt2").join("model.safetensors")).unwrap();
        let region = if header_only { 2600 } else { bytes.len() };
        mutate(&mut bytes, &edits, region);
        let p = s.write("model.safetensors", &bytes);
        let _ = open_and_read_all(&p);
    }

    /// Random header numbers: claimed shapes and offsets are checked against the file.
    #[test]
    fn safetensors_claimed_sizes(
        dims in prop::collection::vec(any::<u64>(), 0..4),
        start in any::<u64>(),
        end in any::<u64>(),
        dtype in prop::sample::select(vec!["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "XX"]),
        data_len in 0usize..64,
    ) {
        let s = Scratch::new("st-claim");
        let header = format!(r#"{{"w":{{"dtype":"{dtype}","shape":{dims:?},"data_offsets":[{start},{end}]}}}}"#);
        let p = s.write("model.safetensors", &safetensors(&header, &vec![0u8; data_len]));
        let t0 = std::time::Instant::now();
        let _ = open_and_read_all(&p);
        prop_assert!(t0.elapsed().as_secs() < 2);
    }

    /// GGUF files mutated anywhere (header, metadata, tensor table, data) or truncated,
    /// loaded all the way to a model.
    #[test]
    fn gguf_mutations_load_or_fail_cleanly(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        llama in any::<bool>(),
        cut in prop::option::of(any::<usize>()),
    ) {
        let s = Scratch::new("gguf");
        let name = if llama { "tiny-llama.gguf" } else { "tiny-gpt2.gguf" };
        let mut bytes = std::fs::read(gguf_fixture(name)).unwrap();
        let len = bytes.len();
        mutate(&mut bytes, &edits, len);
        if let Some(c) = cut {
            bytes.truncate(c % (len + 1));
        }
        let p = s.write("m.gguf", &bytes);
        if let Err(e) = load_pretrained(p.to_str().unwrap(), &device()) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
        }
    }

    /// config.json numbers set to 0, 1 or huge values: an error or a model, no panic,
    /// no allocation sized from the config alone.
    #[test]
    fn hostile_config_numbers(
        field in prop::sample::select(vec![
            "n_embd", "n_head", "n_layer", "n_positions", "vocab_size", "n_inner",
            "bos_token_id", "eos_token_id", "pad_token_id", "layer_norm_epsilon",
        ]),
        value in prop_oneof![Just(0u64), Just(1), Just(3), Just(u32::MAX as u64), Just(1u64 << 40), Just(u64::MAX)],
    ) {
        let s = Scratch::model("cfg", "tiny-gpt2");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(s.0.join("config.json")).unwrap()).unwrap();
        cfg[field] = value.into();
        s.write("config.json", cfg.to_string().as_bytes());
        let t0 = std::time::Instant::now();
        let _ = load_dir(&s.0, "fuzz", &device());
        prop_assert!(t0.elapsed().as_secs() < 5);
    }

    #[test]
    fn hostile_llama_config_numbers(
        field in prop::sample::select(vec![
            "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "num_hidden_layers", "intermediate_size", "max_position_embeddings", "vocab_size",
        ]),
        value in prop_oneof![Just(0u64), Just(1), Just(3), Just(u32::MAX as u64), Just(1u64 << 40)],
    ) {
        let s = Scratch::model("lcfg", "tiny-llama");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(s.0.join("config.json")).unwrap()).unwrap();
        cfg[field] = value.into();
        s.write("config.json", cfg.to_string().as_bytes());
        let t0 = std::time::Instant::now();
        let _ = load_dir(&s.0, "fuzz", &device());
        prop_assert!(t0.elapsed().as_secs() < 5);
    }
}

/// A header claiming a 4 TB tensor in a 100-byte file fails at once.
#[test]
fn safetensors_huge_claimed_tensor_fails_fast() {
    let s = Scratch::new("st-huge");
    let header =
        r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let p = s.write("model.safetensors", &safetensors(header, &[0u8; 16]));
    let t0 = std::time::Instant::now();
    let reason = expect_corrupt(open_and_read_all(&p), &p);
    assert!(t0.elapsed().as_millis() < 1000);
    assert!(!reason.is_empty());
    // A header length beyond the file.
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend(b"{}");
    let p = s.write("model.safetensors", &bytes);
    expect_corrupt(open_and_read_all(&p), &p);
    // Empty and tiny files.
    for b in [&b""[..], &b"\x01"[..], &[0u8; 8][..]] {
        let p = s.write("model.safetensors", b);
        expect_corrupt(open_and_read_all(&p), &p);
    }
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let s = Scratch::new("st-dtype");
    let header = r#"{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let p = s.write("model.safetensors", &safetensors(header, &[0u8; 16]));
    let reason = expect_corrupt(open_and_read_all(&p), &p);
    assert!(
        reason.contains("`w`") && reason.contains("dtype"),
        "{reason}"
    );
}

/// A config claiming `n_embd` 64 over the 32-wide tiny weights.
#[test]
fn config_weight_shape_mismatch() {
    let s = Scratch::model("mismatch", "tiny-gpt2");
    let cfg = std::fs::read_to_string(s.0.join("config.json"))
        .unwrap()
        .replace("\"n_embd\": 32", "\"n_embd\": 64");
    s.write("config.json", cfg.as_bytes());
    let err = load_dir(&s.0, "mismatch", &device())
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("shape mismatch for weight") && msg.contains("64"),
        "{msg}"
    );
    // Llama: hidden_size 64 over 32-wide weights.
    let s = Scratch::model("mismatch-llama", "tiny-llama");
    let cfg = std::fs::read_to_string(s.0.join("config.json"))
        .unwrap()
        .replace("\"hidden_size\": 32", "\"hidden_size\": 64");
    s.write("config.json", cfg.as_bytes());
    let msg = load_dir(&s.0, "mismatch", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("shape mismatch"), "{msg}");
    // More layers than stored.
    let s = Scratch::model("layers", "tiny-gpt2");
    let cfg = std::fs::read_to_string(s.0.join("config.json"))
        .unwrap()
        .replace("\"n_layer\": 2", "\"n_layer\": 3");
    s.write("config.json", cfg.as_bytes());
    let msg = load_dir(&s.0, "layers", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("missing weight `h.2."), "{msg}");
}

/// Weights stored as F16 load (converted); a config `dtype` is not trusted.
#[test]
fn wrong_typed_config_field() {
    let s = Scratch::model("types", "tiny-gpt2");
    let cfg = std::fs::read_to_string(s.0.join("config.json"))
        .unwrap()
        .replace("\"n_embd\": 32", "\"n_embd\": \"32\"");
    s.write("config.json", cfg.as_bytes());
    let msg = load_dir(&s.0, "types", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("corrupt or unsupported model file") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn corrupt_and_truncated_tokenizer() {
    let s = Scratch::model("tok", "tiny-gpt2");
    let full = std::fs::read(s.0.join("tokenizer.json")).unwrap();
    for bytes in [&full[..full.len() / 2], &b""[..], &b"{\"model\": 3}"[..]] {
        s.write("tokenizer.json", bytes);
        let msg = load_dir(&s.0, "tok", &device())
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            msg.contains("corrupt or unsupported model file") && msg.contains("tokenizer.json"),
            "{msg}"
        );
    }
}

#[test]
fn missing_weights_and_truncated_config() {
    let s = Scratch::model("missing", "tiny-gpt2");
    std::fs::remove_file(s.0.join("model.safetensors")).unwrap();
    let msg = load_dir(&s.0, "m", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        msg.contains("missing model file") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let s = Scratch::model("trunc-cfg", "tiny-gpt2");
    let cfg = std::fs::read(s.0.join("config.json")).unwrap();
    s.write("config.json", &cfg[..cfg.len() / 2]);
    let msg = load_dir(&s.0, "m", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("config.json") && msg.contains("EOF"), "{msg}");
    // A sharded index pointing at a missing shard.
    let s = Scratch::model("shard", "tiny-gpt2");
    std::fs::remove_file(s.0.join("model.safetensors")).unwrap();
    s.write(
        "model.safetensors.index.json",
        br#"{"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}"#,
    );
    let msg = load_dir(&s.0, "m", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("model-00001-of-00002.safetensors"), "{msg}");
    s.write("model.safetensors.index.json", b"[1, 2");
    let msg = load_dir(&s.0, "m", &device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
}

#[test]
fn truncated_gguf_model() {
    let s = Scratch::new("gguf-trunc");
    let bytes = std::fs::read(gguf_fixture("tiny-llama.gguf")).unwrap();
    for cut in [0, 3, 8, 24, bytes.len() / 3, bytes.len() - 1] {
        let p = s.write("m.gguf", &bytes[..cut]);
        let msg = load_pretrained(p.to_str().unwrap(), &device())
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            msg.contains("corrupt or unsupported model file") && msg.contains("m.gguf"),
            "cut {cut}: {msg}"
        );
    }
}

fn bin_open_and_read_all(path: &Path) -> Result<usize, Error> {
    let mut src = inseq_models::TorchBinSource::open_files(&[path.to_path_buf()])?;
    let mut n = 0;
    for name in src.names() {
        if let Some(t) = src.read(&name)? {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
            n += 1;
        }
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// `pytorch_model.bin` (zip or legacy format) mutated anywhere (zip structure, pickles,
    /// storages): read or a `CorruptFile` naming it, never a panic.
    #[test]
    fn torch_bin_mutations_load_or_fail_cleanly(
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        legacy in any::<bool>(),
    ) {
        let s = Scratch::new("bin-mut");
        let file = if legacy { "dtypes-legacy.bin" } else { "dtypes.bin" };
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/checkpoints")
            .join(file);
        let mut bytes = std::fs::read(fixture).unwrap();
        let region = bytes.len();
        mutate(&mut bytes, &edits, region);
        let p = s.write("pytorch_model.bin", &bytes);
        if let Err(e) = bin_open_and_read_all(&p) {
            expect_corrupt(Err(e), &p);
        }
    }
}
