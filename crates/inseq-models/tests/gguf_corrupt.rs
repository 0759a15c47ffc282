//! Truncated, corrupt and hostile GGUF files give `Error::CorruptFile` with a
//! clear reason, never a panic or a huge allocation.

use std::path::{Path, PathBuf};

use inseq_core::Error;
use inseq_models::WeightSource;
use inseq_models::gguf::{GgufFile, GgufModelFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

/// A scratch directory for this test binary, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("inseq-gguf-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn corrupt_reason(result: inseq_core::Result<GgufFile>) -> String {
    match result {
        Err(Error::CorruptFile { reason, .. }) => reason,
        Err(other) => panic!("expected CorruptFile, got {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

/// Writes a GGUF header: magic, version, counts, then `body`.
fn header(version: u32, tensors: u64, kvs: u64, body: &[u8]) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(version.to_le_bytes());
    v.extend(tensors.to_le_bytes());
    v.extend(kvs.to_le_bytes());
    v.extend(body);
    v
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

/// One tensor info: name, dims, type, offset.
fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut v = gguf_string(name);
    v.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        v.extend(d.to_le_bytes());
    }
    v.extend(ty.to_le_bytes());
    v.extend(offset.to_le_bytes());
    v
}

#[test]
fn truncated_files_are_rejected() {
    let scratch = Scratch::new("trunc");
    let full = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    // Every offset through the header, then a spread through the data.
    let mut cuts: Vec<usize> = (0..600.min(full.len())).collect();
    cuts.extend((600..full.len()).step_by(997));
    cuts.push(full.len() - 1);
    for cut in cuts {
        let p = scratch.write("t.gguf", &full[..cut]);
        let reason = corrupt_reason(GgufFile::open(&p));
        assert!(!reason.is_empty());
        if cut > 24 && cut < 500 {
            assert!(
                ["truncated", "exceeds", "cannot fit", "header claims"]
                    .iter()
                    .any(|w| reason.contains(w)),
                "cut {cut}: {reason}"
            );
        }
        assert!(GgufModelFile::open(&p).is_err());
    }
    // The untruncated file opens.
    let p = scratch.write("t.gguf", &full);
    GgufModelFile::open(&p).unwrap();
}

#[test]
fn bad_magic_and_version() {
    let scratch = Scratch::new("magic");
    let mut bytes = std::fs::read(fixture("tiny-gpt2.gguf")).unwrap();
    bytes[0] = b'X';
    let reason = corrupt_reason(GgufFile::open(&scratch.write("m.gguf", &bytes)));
    assert!(reason.contains("not a GGUF file"), "{reason}");

    for version in [0u32, 1, 4, u32::MAX] {
        let reason = corrupt_reason(GgufFile::open(
            &scratch.write("v.gguf", &header(version, 0, 0, &[])),
        ));
        assert!(reason.contains("unsupported GGUF version"), "{reason}");
    }
    let reason = corrupt_reason(GgufFile::open(&scratch.write("e.gguf", &[])));
    assert!(reason.contains("truncated"), "{reason}");
    // An empty but valid file (no metadata, no tensors) parses.
    let file = GgufFile::open(&scratch.write("ok.gguf", &header(3, 0, 0, &[]))).unwrap();
    assert!(file.tensors().is_empty());
    assert_eq!(file.version(), 3);
}

#[test]
fn absurd_counts_and_sizes() {
    let scratch = Scratch::new("absurd");
    let open =
        |name: &str, bytes: Vec<u8>| corrupt_reason(GgufFile::open(&scratch.write(name, &bytes)));

    let r = open("tc.gguf", header(3, u64::MAX, 0, &[]));
    assert!(r.contains("tensors"), "{r}");
    let r = open("tc2.gguf", header(3, 1 << 40, 0, &[0; 64]));
    assert!(r.contains("tensors"), "{r}");
    let r = open("kv.gguf", header(3, 0, u64::MAX, &[]));
    assert!(r.contains("metadata entries"), "{r}");

    // A key whose length is absurd.
    let mut body = u64::MAX.to_le_bytes().to_vec();
    body.extend([0u8; 16]);
    let r = open("key.gguf", header(3, 0, 1, &body));
    assert!(r.contains("string length"), "{r}");

    // An array claiming 2^40 u32 elements.
    let mut body = gguf_string("a");
    body.extend(9u32.to_le_bytes());
    body.extend(4u32.to_le_bytes());
    body.extend((1u64 << 40).to_le_bytes());
    body.extend([0u8; 16]);
    let r = open("arr.gguf", header(3, 0, 1, &body));
    assert!(r.contains("array"), "{r}");

    // An array claiming many strings that cannot fit.
    let mut body = gguf_string("a");
    body.extend(9u32.to_le_bytes());
    body.extend(8u32.to_le_bytes());
    body.extend(1000u64.to_le_bytes());
    body.extend([0u8; 100]);
    let r = open("arrs.gguf", header(3, 0, 1, &body));
    assert!(r.contains("cannot fit"), "{r}");

    // Unknown value type, invalid bool.
    let mut body = gguf_string("a");
    body.extend(99u32.to_le_bytes());
    body.extend([0u8; 8]);
    let r = open("vt.gguf", header(3, 0, 1, &body));
    assert!(r.contains("unknown value type"), "{r}");
    let mut body = gguf_string("a");
    body.extend(7u32.to_le_bytes());
    body.push(7);
    let r = open("bool.gguf", header(3, 0, 1, &body));
    assert!(r.contains("invalid bool"), "{r}");

    // Arrays nested too deep.
    let mut body = gguf_string("a");
    body.extend(9u32.to_le_bytes());
    for _ in 0..10 {
        body.extend(9u32.to_le_bytes());
        body.extend(1u64.to_le_bytes());
    }
    body.extend([0u8; 64]);
    let r = open("deep.gguf", header(3, 0, 1, &body));
    assert!(r.contains("nested") || r.contains("array"), "{r}");

    // Bad alignment value.
    let mut body = gguf_string("general.alignment");
    body.extend(4u32.to_le_bytes());
    body.extend(3u32.to_le_bytes());
    let r = open("align.gguf", header(3, 0, 1, &body));
    assert!(r.contains("alignment"), "{r}");
}

#[test]
fn bad_tensor_tables() {
    let scratch = Scratch::new("tensors");
    let open = |name: &str, infos: Vec<u8>, data: usize| {
        let mut bytes = header(3, 1, 0, &infos);
        bytes.resize(bytes.len().div_ceil(32) * 32 + data, 0);
        corrupt_reason(GgufFile::open(&scratch.write(name, &bytes)))
    };
    let r = open("ty.gguf", tensor_info("w", &[4], 99, 0), 64);
    assert!(r.contains("unknown ggml type"), "{r}");
    let r = open("dims.gguf", tensor_info("w", &[1; 9], 0, 0), 64);
    assert!(r.contains("dimensions"), "{r}");
    let r = open(
        "overflow.gguf",
        tensor_info("w", &[u64::MAX, u64::MAX], 0, 0),
        64,
    );
    assert!(r.contains("overflow"), "{r}");
    let r = open("huge.gguf", tensor_info("w", &[1 << 20, 1 << 20], 0, 0), 64);
    assert!(r.contains("truncated"), "{r}");
    let r = open("past.gguf", tensor_info("w", &[4], 0, 1 << 40), 64);
    assert!(r.contains("truncated") || r.contains("overflow"), "{r}");
    let r = open("offmax.gguf", tensor_info("w", &[4], 0, u64::MAX - 31), 64);
    assert!(r.contains("overflow") || r.contains("truncated"), "{r}");
    let r = open("misaligned.gguf", tensor_info("w", &[4], 0, 4), 64);
    assert!(r.contains("alignment"), "{r}");
    let r = open("block.gguf", tensor_info("w", &[33], 8, 0), 64);
    assert!(r.contains("block size"), "{r}");
    // Two tensors with one name.
    let mut infos = tensor_info("w", &[4], 0, 0);
    infos.extend(tensor_info("w", &[4], 0, 32));
    let mut bytes = header(3, 2, 0, &infos);
    bytes.resize(bytes.len().div_ceil(32) * 32 + 64, 0);
    let r = corrupt_reason(GgufFile::open(&scratch.write("dup.gguf", &bytes)));
    assert!(r.contains("duplicate"), "{r}");
    // A well-formed one reads.
    let mut bytes = header(3, 1, 0, &tensor_info("w", &[2, 2], 0, 0));
    bytes.resize(bytes.len().div_ceil(32) * 32, 0);
    for x in [1f32, 2.0, 3.0, 4.0] {
        bytes.extend(x.to_le_bytes());
    }
    let f = GgufFile::open(&scratch.write("good.gguf", &bytes)).unwrap();
    let t = f.read_f32("w").unwrap().unwrap();
    assert_eq!(t.shape, vec![2, 2]);
    assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn missing_file_is_reported() {
    let err = GgufFile::open(Path::new("/nonexistent/dir/model.gguf")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err:?}");
}

/// Random byte flips in the header never panic: opening either fails cleanly or
/// succeeds, and then reading every tensor, the config and the tokenizer also
/// returns rather than panics.
#[test]
fn random_header_corruption_never_panics() {
    let scratch = Scratch::new("fuzz");
    for fixture_name in ["tiny-llama.gguf", "tiny-gpt2.gguf"] {
        let full = std::fs::read(fixture(fixture_name)).unwrap();
        // Header and metadata end where the tensor data starts; corrupt only there.
        let header_len = 8000.min(full.len());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let mut bytes = full.clone();
            for _ in 0..(1 + round % 4) {
                let at = (next() as usize) % header_len;
                bytes[at] = next() as u8;
            }
            let p = scratch.write("f.gguf", &bytes);
            if let Ok(mut m) = GgufModelFile::open(&p) {
                let _ = m.hf_config();
                let _ = m.tokenizer();
                for name in m.names() {
                    let _ = m.read(&name);
                }
            }
        }
    }
}

/// A non-finite number in the metadata (here `llama.rope.freq_base`, an f32 after its key and
/// type 6) is a corrupt file, not a default: JSON cannot hold NaN, so it used to vanish.
#[test]
fn non_finite_metadata_is_rejected() {
    let scratch = Scratch::new("nan-meta");
    let full = std::fs::read(fixture("tiny-llama.gguf")).unwrap();
    let key = b"llama.rope.freq_base";
    let at = (full.windows(key.len()))
        .position(|w| w == key)
        .expect("the fixture has rope.freq_base");
    let value = at + key.len() + 4;
    assert_eq!(
        full[at + key.len()..value],
        6u32.to_le_bytes(),
        "an f32 value"
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bytes = full.clone();
        bytes[value..value + 4].copy_from_slice(&bad.to_le_bytes());
        let path = scratch.write("nan.gguf", &bytes);
        let device = burn::tensor::Device::default();
        let err = match inseq_models::load_pretrained(path.to_str().unwrap(), &device) {
            Ok(_) => panic!("{bad} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("rope.freq_base") && err.contains("finite"),
            "{err}"
        );
    }
}

/// `llama.vocab_size` disagreeing with the embedding's rows is a corrupt file, not ignored.
#[test]
fn vocab_size_metadata_must_match_the_embedding() {
    // The tiny fixtures do not declare it; SmolLM2's file does (`cargo xtask fetch-models`).
    let smollm2 = inseq_models::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !smollm2.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").is_err(),
            "SmolLM2 missing: run cargo xtask fetch-models"
        );
        return;
    }
    let scratch = Scratch::new("vocab-meta");
    let mut bytes = std::fs::read(smollm2).unwrap();
    let key = b"llama.vocab_size";
    let at = (bytes.windows(key.len()).position(|w| w == key)).expect("SmolLM2 declares it");
    let ty = u32::from_le_bytes(
        bytes[at + key.len()..at + key.len() + 4]
            .try_into()
            .unwrap(),
    );
    let value = at + key.len() + 4;
    match ty {
        4 => bytes[value..value + 4].copy_from_slice(&(1u32 << 31).to_le_bytes()),
        10 => bytes[value..value + 8].copy_from_slice(&(1u64 << 31).to_le_bytes()),
        other => panic!("unexpected metadata type {other}"),
    }
    let path = scratch.write("vocab.gguf", &bytes);
    let device = burn::tensor::Device::default();
    let err = match inseq_models::load_pretrained(path.to_str().unwrap(), &device) {
        Ok(_) => panic!("a wrong vocab_size loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("vocab_size") && err.contains("rows"), "{err}");
}
