//! Special tokens resolved as transformers resolves them, for each tokenizer layout in
//! `tests/fixtures/special_tokens/` (expected ids written by `make_layouts.py` from
//! `AutoTokenizer`, `AutoConfig` and `GenerationConfig`), and for the SmolLM2 GGUF file.

use std::path::{Path, PathBuf};

use inseq_core::Error;
use inseq_models::{SpecialTokens, TextTokenizer, models_dir};
use serde_json::Value;

fn layouts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/special_tokens")
}

fn resolve(dir: &Path) -> inseq_core::Result<SpecialTokens> {
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    SpecialTokens::from_dir(dir, &tokenizer, &config)
}

fn id(v: &Value) -> Option<usize> {
    v.as_u64().map(|i| i as usize)
}

/// An id field of the expected JSON as a list (`eos_token_id` may be one id or several).
fn id_list(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(items) => items.iter().filter_map(id).collect(),
        other => id(other).into_iter().collect(),
    }
}

#[test]
fn every_layout_resolves_as_transformers_does() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(layouts_dir().join("expected.json")).unwrap(),
    )
    .unwrap();
    let layouts = expected.as_object().unwrap();
    assert_eq!(layouts.len(), 7);
    for (name, want) in layouts {
        let got = resolve(&layouts_dir().join(name)).unwrap();
        let (tok, config) = (&want["tokenizer"], &want["config"]);
        let tokenizer_ids = [got.unk, got.pad, got.bos, got.eos];
        let want_tokenizer = ["unk", "pad", "bos", "eos"].map(|k| id(&tok[k]));
        assert_eq!(tokenizer_ids, want_tokenizer, "{name}: tokenizer tokens");
        assert_eq!(got.config_pad, id(&config["pad"]), "{name}: config pad");
        assert_eq!(got.config_bos, id(&config["bos"]), "{name}: config bos");
        assert_eq!(
            got.config_eos,
            id_list(&config["eos"]),
            "{name}: config eos"
        );
        assert_eq!(got.decoder_start, id(&config["decoder_start"]), "{name}");
        let generation = &want["generation"];
        assert_eq!(
            got.generation_eos,
            id_list(&generation["eos"]),
            "{name}: generation eos"
        );
        assert_eq!(
            got.generation_pad,
            id(&generation["pad"]),
            "{name}: generation pad"
        );
        assert_eq!(
            got.baseline(),
            id(&want["baseline"]),
            "{name}: Inseq baseline"
        );
    }
}

/// A copy of a layout folder in a fresh temporary directory, to corrupt.
fn scratch_copy(layout: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inseq-special-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(layouts_dir().join(layout)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn a_declared_token_outside_the_vocabulary_is_an_error_naming_the_file() {
    let dir = scratch_copy("gpt2", "oov");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"unk_token": "<nope>"}"#,
    )
    .unwrap();
    let err = resolve(&dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    match err {
        Error::CorruptFile { path, reason } => {
            assert!(path.ends_with("tokenizer_config.json"), "{path:?}");
            assert!(reason.contains("<nope>"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_malformed_eos_id_is_an_error_naming_the_file() {
    let dir = scratch_copy("llama3", "eos");
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": "x"}"#,
    )
    .unwrap();
    let err = resolve(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("generation_config.json") && err.contains("eos_token_id"),
        "{err}"
    );
}

/// SmolLM2's GGUF declares unk `<|endoftext|>` (0), as its Hugging Face tokenizer does; skipped
/// when the model is not fetched.
#[test]
fn smollm2_gguf_metadata_gives_unk_0() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let gguf = inseq_models::gguf::GgufModelFile::open(&path).unwrap();
    let special = gguf.special_tokens().unwrap();
    assert_eq!(special.unk, Some(0));
    assert_eq!(special.baseline(), Some(0));
    assert_eq!((special.bos, special.eos), (Some(1), Some(2)));
}
