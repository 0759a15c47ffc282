//! The tokenizer of a Marian repository that ships only SentencePiece files (`source.spm`,
//! `target.spm`) and `vocab.json`, as the opus-mt models do, built as a `tokenizers` tokenizer
//! that encodes like transformers' `MarianTokenizer`:
//!
//! - text is split on the special tokens (`eos`, `unk`, `pad` of `tokenizer_config.json`), each
//!   chunk is encoded by the source SentencePiece model (its normaliser — the precompiled charsmap,
//!   whitespace clean-up, `▁` escaping and dummy prefix, as `convert_slow_tokenizer` rebuilds
//!   them — then its unigram segmentation), and pieces map to ids through `vocab.json`;
//! - `</s>` is appended; a leading language code (`>>fr<<`) is a token of its own.
//!
//! Target texts are encoded the same way with `target.spm` ([`marian_tokenizers`]; the facade
//! calls `TextTokenizer::encode_target` for them). The unigram model is laid out in
//! `vocab.json`'s id order with the SentencePiece model's scores, so ids come out directly.
//! Limits, where `MarianTokenizer` differs: a `vocab.json` entry that the model lacks gets a score below
//! every source piece (used only where the source model knows no piece, as MarianTokenizer's
//! vocabulary lookup of unknown text then often finds it); language codes are recognised
//! anywhere, not only at the start; `separate_vocabs` repositories are refused.

use std::collections::HashMap;
use std::path::Path;

use inseq_core::{Error, Result};
use serde_json::{Value, json};

use crate::spm::{PieceType, SpmModel, base64};

/// Whether `dir` holds a SentencePiece-only Marian tokenizer.
pub fn is_marian_spm_dir(dir: &Path) -> bool {
    dir.join("source.spm").exists() && dir.join("vocab.json").exists()
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| corrupt(path, e.to_string()))
}

/// `vocab.json` as a list of tokens in id order (the ids must be `0..n`).
pub(crate) fn vocab_in_id_order(path: &Path) -> Result<Vec<String>> {
    let Value::Object(map) = read_json(path)? else {
        return Err(corrupt(path, "not a JSON object of token ids"));
    };
    let mut tokens = vec![None; map.len()];
    for (token, id) in map {
        let id = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < tokens.len())
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("`{token}` has id {id}, not in 0..{}", tokens.len()),
                )
            })?;
        if tokens[id].replace(token).is_some() {
            return Err(corrupt(path, format!("id {id} is given twice")));
        }
    }
    Ok(tokens
        .into_iter()
        .map(|t| t.expect("ids 0..n, each once"))
        .collect())
}

/// The special tokens of `tokenizer_config.json` (MarianTokenizer's defaults when absent).
fn special_tokens(dir: &Path) -> Result<[String; 3]> {
    let path = dir.join("tokenizer_config.json");
    let config = if path.exists() {
        read_json(&path)?
    } else {
        json!({})
    };
    if config.get("separate_vocabs").and_then(Value::as_bool) == Some(true) {
        return Err(Error::Unsupported(format!(
            "{}: `separate_vocabs` Marian tokenizers (target_vocab.json)",
            path.display()
        )));
    }
    let token = |key: &str, default: &str| match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    };
    Ok([
        token("eos_token", "</s>"),
        token("unk_token", "<unk>"),
        token("pad_token", "<pad>"),
    ])
}

/// The normaliser, pre-tokeniser and decoder `convert_slow_tokenizer` derives from a model's
/// `NormalizerSpec` (legacy dummy-prefix handling, as `MarianTokenizer`'s per-chunk encoding).
pub(crate) fn pipeline(spm: &SpmModel) -> (Value, Value, Value) {
    let mut normalizers = Vec::new();
    if !spm.precompiled_charsmap.is_empty() {
        normalizers.push(json!({"type": "Precompiled", "precompiled_charsmap": base64(&spm.precompiled_charsmap)}));
    }
    if spm.remove_extra_whitespaces {
        normalizers
            .push(json!({"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""}));
        normalizers.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
    }
    if spm.escape_whitespaces {
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    }
    let mut decoders = vec![json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})];
    if spm.byte_fallback {
        decoders.push(json!({"type": "ByteFallback"}));
    }
    let pre_tokenizer = if spm.add_dummy_prefix {
        normalizers.push(json!({"type": "Replace", "pattern": {"Regex": "\\A▁"}, "content": "▁▁"}));
        decoders.push(json!({"type": "Fuse"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false})
    } else {
        Value::Null
    };
    (
        json!({"type": "Sequence", "normalizers": normalizers}),
        pre_tokenizer,
        json!({"type": "Sequence", "decoders": decoders}),
    )
}

/// The unigram vocabulary in `vocab` order, scored by `spm` (see the module docs).
fn unigram_vocab(vocab: &[String], spm: &SpmModel) -> Vec<Value> {
    let scores: HashMap<&str, f32> = spm
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Normal | PieceType::UserDefined))
        .map(|p| (p.piece.as_str(), p.score))
        .collect();
    let lowest = scores.values().copied().fold(0f32, f32::min);
    vocab
        .iter()
        .map(|t| {
            json!([
                t,
                f64::from(scores.get(t.as_str()).copied().unwrap_or(lowest - 10.0))
            ])
        })
        .collect()
}

/// The source and target tokenizers of a SentencePiece-only Marian directory: `source.spm`,
/// and `target.spm` (the source model when absent) over the same `vocab.json`.
pub fn marian_tokenizers(dir: &Path) -> Result<(tokenizers::Tokenizer, tokenizers::Tokenizer)> {
    let source = marian_tokenizer(dir, "source.spm")?;
    let target = if dir.join("target.spm").exists() {
        marian_tokenizer(dir, "target.spm")?
    } else {
        source.clone()
    };
    Ok((source, target))
}

/// Builds the tokenizer of a SentencePiece-only Marian directory with its SentencePiece model
/// `spm_file` (see the module docs).
pub fn marian_tokenizer(dir: &Path, spm_file: &str) -> Result<tokenizers::Tokenizer> {
    let spm_path = dir.join(spm_file);
    let spm = SpmModel::read(&spm_path)?;
    if spm.model_type != 1 {
        return Err(Error::Unsupported(format!(
            "{}: SentencePiece model type {} (only unigram models are read)",
            spm_path.display(),
            spm.model_type
        )));
    }
    let vocab_path = dir.join("vocab.json");
    let vocab = vocab_in_id_order(&vocab_path)?;
    let id_of: HashMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let [eos, unk, pad] = special_tokens(dir)?;
    let find = |t: &str| {
        id_of.get(t).copied().ok_or_else(|| {
            corrupt(
                &vocab_path,
                format!("the special token `{t}` is not in the vocabulary"),
            )
        })
    };
    let (eos_id, unk_id) = (find(&eos)?, find(&unk)?);
    let added_token = |t: &str, special: bool| {
        json!({"id": id_of[t], "content": t, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": !special, "special": special})
    };
    let mut added: Vec<Value> = [&eos, &unk, &pad]
        .into_iter()
        .filter(|t| id_of.contains_key(t.as_str()))
        .map(|t| added_token(t, true))
        .collect();
    added.extend(
        vocab
            .iter()
            .filter(|t| t.starts_with(">>") && t.ends_with("<<") && t.len() > 4)
            .map(|t| added_token(t, false)),
    );
    let (normalizer, pre_tokenizer, decoder) = pipeline(&spm);
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {eos.clone(): {"id": eos, "ids": [eos_id], "tokens": [eos]}}
        },
        "decoder": decoder,
        "model": {"type": "Unigram", "unk_id": unk_id, "vocab": unigram_vocab(&vocab, &spm),
                  "byte_fallback": spm.byte_fallback},
    });
    tokenizer
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| corrupt(&spm_path, format!("building its tokenizer: {e}")))
}
