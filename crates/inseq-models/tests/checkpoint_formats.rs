//! Checkpoints as users find them on the hub: `pytorch_model.bin` (a `torch.save` zip read without
//! Python), sharded safetensors and sharded `.bin` (`*.index.json`) give the same model as the
//! single safetensors file; the unpickler's dtypes and strided views; corrupt files name the file.
//! Fixtures: `fixtures/checkpoints/`, written by `tests/fixtures/zoo/make_encdec.py`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq_core::Error;
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInput, TorchBinSource, WeightSource, ids_tensor,
    load_pretrained,
};

fn checkpoints() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

fn logits(dir: &Path) -> Vec<f32> {
    let m = load_pretrained(dir.to_str().expect("utf-8"), &Device::default()).expect("load");
    let model: &dyn LanguageModel = m.model.as_ref();
    let dev = model.device().clone();
    let (src, tgt) = (vec![5, 17, 42, 99, 2], vec![2, 12, 77, 150]);
    let input = ModelInput {
        target_embeds: model.embed(ids_tensor(std::slice::from_ref(&tgt), &dev)),
        target_mask: vec![vec![true; tgt.len()]],
        source_embeds: Some(model.embed_source(ids_tensor(std::slice::from_ref(&src), &dev))),
        source_mask: Some(vec![vec![true; src.len()]]),
    };
    let out = model.forward(input, ForwardOptions::default());
    out.logits.try_to_vec_as::<f32>().expect("f32")
}

#[test]
fn bin_and_sharded_checkpoints_match_safetensors() {
    let reference = logits(&inseq_fixtures::model_dir("tiny-m2m100"));
    for kind in [
        "m2m100-bin",
        "m2m100-sharded-safetensors",
        "m2m100-sharded-bin",
    ] {
        // The same f32 values, read from another container: the same computation, exactly.
        assert_eq!(logits(&checkpoints().join(kind)), reference, "{kind}");
    }
}

#[test]
fn bin_keeps_tied_tensors_and_state_dict_metadata() {
    let path = checkpoints().join("m2m100-bin/pytorch_model.bin");
    let mut src = TorchBinSource::open_files(&[path]).expect("open");
    let names = src.names();
    assert!(names.contains(&"lm_head.weight".to_string()), "{names:?}");
    let head = src.read("lm_head.weight").unwrap().unwrap();
    let shared = src.read("model.shared.weight").unwrap().unwrap();
    assert_eq!(head.data, shared.data);
    assert_eq!(head.shape, vec![400, 32]);
}

#[test]
fn bin_dtypes_and_strided_views() {
    let path = checkpoints().join("dtypes.bin");
    let mut src = TorchBinSource::open_files(std::slice::from_ref(&path)).expect("open");
    let base = |i: usize| i as f32 / 7.0;
    let half = src.read("half").unwrap().unwrap();
    assert_eq!(half.shape, vec![4, 6]);
    // f16 and bf16 rounding (to nearest even) as torch does it: exact.
    let want: Vec<f32> = (0..24)
        .map(|i| half::f16::from_f32(base(i) * 3.0).to_f32())
        .collect();
    assert_eq!(half.data, want);
    let bf = src.read("bfloat").unwrap().unwrap();
    let want: Vec<f32> = (0..24)
        .map(|i| half::bf16::from_f32(base(i) - 1.0).to_f32())
        .collect();
    assert_eq!(bf.data, want);
    // `base.t()[1:]`: [5, 4], element (r, c) = base[c][r + 1].
    let view = src.read("view").unwrap().unwrap();
    assert_eq!(view.shape, vec![5, 4]);
    let want: Vec<f32> = (0..20).map(|k| base((k % 4) * 6 + k / 4 + 1)).collect();
    assert_eq!(view.data, want);
    match src.read("ints") {
        Err(Error::CorruptFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(
                reason.contains("`ints`") && reason.contains("floating-point"),
                "{reason}"
            );
        }
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

/// Opens a `.bin` made of `bytes`; the error must be a `CorruptFile` naming it.
fn corrupt_reason(bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("inseq-bin-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.bin", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    let result = TorchBinSource::open_files(std::slice::from_ref(&path)).and_then(|mut s| {
        for name in s.names() {
            s.read(&name)?;
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&path);
    match result {
        Err(Error::CorruptFile { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn corrupt_bin_files_name_the_file_and_the_problem() {
    let good = std::fs::read(checkpoints().join("dtypes.bin")).unwrap();
    let reason = corrupt_reason(b"\x80\x02}q\x00.legacy");
    assert!(reason.contains("legacy"), "{reason}");
    let reason = corrupt_reason(&good[..good.len() / 2]);
    assert!(reason.contains("truncated"), "{reason}");
    // A global outside the allowed set (same length, so the archive stays valid).
    let evil = replace(
        &good,
        b"collections\nOrderedDict",
        b"posixpathh\nsystemsystem",
    );
    let reason = corrupt_reason(&evil);
    assert!(
        reason.contains("unsupported pickle global `posixpathh.systemsystem`"),
        "{reason}"
    );
    // A view past the end of its storage: the size tuple (4, 6) of `half` becomes (4, 9).
    let oversized = replace(&good, b"K\x00K\x04K\x06\x86", b"K\x00K\x04K\x09\x86");
    let reason = corrupt_reason(&oversized);
    assert!(
        reason.contains("`half`") && reason.contains("storage"),
        "{reason}"
    );
    // A sharded index naming a path outside its directory.
    let dir = std::env::temp_dir().join(format!("inseq-bin-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pytorch_model.bin.index.json"),
        br#"{"weight_map": {"a": "../../etc/passwd"}}"#,
    )
    .unwrap();
    let err = TorchBinSource::open_dir(&dir)
        .err()
        .expect("must fail")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        err.contains("pytorch_model.bin.index.json") && err.contains("not a file name"),
        "{err}"
    );
}

/// `tests/fixtures/zoo/marian_spm_tokens.json`: MarianTokenizer's ids of varied sentences.
fn marian_spm_reference() -> serde_json::Value {
    let path = inseq_fixtures::golden_dir()
        .parent()
        .expect("fixtures dir")
        .join("zoo/marian_spm_tokens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn marian_spm_only_repository_tokenises_as_marian_tokenizer() {
    let dir = inseq_fixtures::model_dir("tiny-marian-spm");
    assert!(!dir.join("tokenizer.json").exists());
    let m = load_pretrained(dir.to_str().unwrap(), &Device::default()).expect("load");
    assert_eq!(m.model.info().architecture, "marian");
    let reference = marian_spm_reference();
    let mut mismatches = Vec::new();
    // Sources with `source.spm`, targets (`text_target=`) with `target.spm`.
    for (side, target) in [("source", false), ("target", true)] {
        for case in reference[side].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<usize> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect();
            let got = match target {
                true => m.tokenizer.encode_target(text, true).unwrap(),
                false => m.tokenizer.encode(text, true).unwrap(),
            };
            if got != want {
                mismatches.push(format!("{side} {text:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Special tokens resolve through the built vocabulary.
    assert_eq!(m.special_tokens.eos, Some(0));
    assert_eq!(m.special_tokens.unk, Some(1));
}

#[test]
fn corrupt_spm_and_vocab_name_the_file() {
    let src = inseq_fixtures::model_dir("tiny-marian-spm");
    let dir = std::env::temp_dir().join(format!("inseq-spm-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "source.spm",
        "target.spm",
        "vocab.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let spm = std::fs::read(src.join("source.spm")).unwrap();
    std::fs::write(dir.join("source.spm"), &spm[..spm.len() / 3]).unwrap();
    let err = load_pretrained(dir.to_str().unwrap(), &Device::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("source.spm"), "{err}");
    std::fs::copy(src.join("source.spm"), dir.join("source.spm")).unwrap();
    std::fs::write(dir.join("vocab.json"), br#"{"</s>": 0, "<unk>": 5}"#).unwrap();
    let err = load_pretrained(dir.to_str().unwrap(), &Device::default())
        .err()
        .unwrap()
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("vocab.json") && err.contains("<unk>"), "{err}");
}

#[test]
fn t5_spiece_only_tokenizer_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5-spiece");
    let tok = inseq_models::TextTokenizer::from_dir(&dir).expect("tokenizer");
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect()
    };
    let mut mismatches = Vec::new();
    for case in reference["tokens"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        if got != ids(&case["ids"]) {
            mismatches.push(format!("{text:?}: got {got:?}, want {:?}", case["ids"]));
        }
    }
    for case in reference["decoded"].as_array().unwrap() {
        let got = tok.decode(&ids(&case["ids"]), false).unwrap();
        if got != case["text"].as_str().unwrap() {
            mismatches.push(format!("decode {:?}: got {got:?}", case["text"]));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(tok.token_to_id("<extra_id_0>"), Some(102));
}

#[test]
fn legacy_format_and_protocol_4_read_as_the_zip_format() {
    let zip = checkpoints().join("dtypes.bin");
    let legacy = checkpoints().join("dtypes-legacy.bin");
    let mut a = TorchBinSource::open_files(&[zip]).expect("zip");
    let mut b = TorchBinSource::open_files(std::slice::from_ref(&legacy)).expect("legacy");
    // nn.Parameters (`_rebuild_parameter`) pickled with protocol 4.
    let p4 = checkpoints().join("dtypes-protocol4.bin");
    let mut c = TorchBinSource::open_files(&[p4]).expect("protocol 4");
    assert_eq!(a.names(), b.names());
    assert_eq!(c.names(), ["bfloat", "half", "view"]);
    for name in ["half", "bfloat", "view"] {
        let x = a.read(name).unwrap().unwrap();
        for other in [&mut b, &mut c] {
            let y = other.read(name).unwrap().unwrap();
            assert_eq!((&x.shape, &x.data), (&y.shape, &y.data), "{name}");
        }
    }
    assert!(b.read("ints").is_err());
    // Cut inside the raw storages: the error names the file and the storage.
    let bytes = std::fs::read(&legacy).unwrap();
    let reason = corrupt_reason(&bytes[..bytes.len() - 10]);
    assert!(reason.contains("storage"), "{reason}");
}

/// An M2M100 repository's `sentencepiece.bpe.model` + `vocab.json` encode like transformers'
/// `M2M100Tokenizer` (`tests/fixtures/m2m100-spm/make_m2m100_spm.py`): source ids with the
/// `src_lang` prefix, target ids with `tgt_lang`'s, decoding with and without special tokens.
#[test]
fn m2m100_spm_tokenizer_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/m2m100-spm");
    let tok = inseq_models::TextTokenizer::from_dir(&dir).expect("tokenizer");
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect()
    };
    let mut mismatches = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        if got != ids(&case["ids"]) {
            mismatches.push(format!("{text:?}: got {got:?}, want {:?}", case["ids"]));
        }
        let got = tok.encode_target(text, true).unwrap();
        if got != ids(&case["target_ids"]) {
            mismatches.push(format!("target {text:?}: got {got:?}"));
        }
        let skip = tok.decode(&ids(&case["ids"]), true).unwrap();
        if skip != case["decoded_skip"].as_str().unwrap() {
            mismatches.push(format!("decode {text:?}: got {skip:?}"));
        }
        // Special tokens (ids 0-3) inside the text keep the space after them (a documented limit).
        let want = ids(&case["ids"]);
        let inside = want[..want.len() - 1].iter().any(|&i| i <= 3);
        let full = tok.decode(&want, false).unwrap();
        if !inside && full != case["decoded"].as_str().unwrap() {
            mismatches.push(format!("decode with specials {text:?}: got {full:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    for (token, id) in reference["lang_ids"].as_object().unwrap() {
        assert_eq!(tok.token_to_id(token), id.as_u64().map(|i| i as usize));
    }
    // Without `tgt_lang`, target texts are an error (transformers raises too).
    let copy = std::env::temp_dir().join(format!("inseq-m2m100-spm-{}", std::process::id()));
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["sentencepiece.bpe.model", "vocab.json"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    std::fs::write(copy.join("tokenizer_config.json"), r#"{"src_lang": "fr"}"#).unwrap();
    let tok = inseq_models::TextTokenizer::from_dir(&copy).expect("tokenizer");
    let err = tok.encode_target("a", true).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&copy);
    assert!(err.contains("tgt_lang"), "{err}");
}
