//! The tokenizer of a T5 / mT5 repository that ships only `spiece.model` (as google/mt5-* do),
//! built as transformers 5's `T5Tokenizer` builds it from that file: a unigram model over the
//! SentencePiece pieces (same ids and scores), the precompiled charsmap as normaliser, whitespace
//! split then `▁` prefixing, `</s>` appended, and the sentinels `<extra_id_0>`..`<extra_id_{n-1}>`
//! (`extra_ids` of `tokenizer_config.json`, default 100) after the pieces, in reverse order
//! (`<extra_id_0>` last).

use std::path::Path;

use inseq_core::{Error, Result};
use serde_json::{Value, json};

use crate::marian_spm::{corrupt, read_json};
use crate::spm::{SpmModel, base64};

/// Whether `dir` holds a SentencePiece-only T5 tokenizer.
pub fn is_t5_spm_dir(dir: &Path) -> bool {
    dir.join("spiece.model").exists()
}

/// `tokenizer_config.json`'s `(eos, unk, pad, extra_ids)`, with `T5Tokenizer`'s defaults.
fn settings(dir: &Path) -> Result<(String, String, String, usize)> {
    let path = dir.join("tokenizer_config.json");
    let config = if path.exists() {
        read_json(&path)?
    } else {
        json!({})
    };
    let token = |key: &str, default: &str| match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    };
    let extra = config
        .get("extra_ids")
        .and_then(Value::as_u64)
        .unwrap_or(100) as usize;
    let listed: Vec<&str> = config
        .get("additional_special_tokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if listed.iter().any(|t| !t.starts_with("<extra_id_")) {
        return Err(Error::Unsupported(format!(
            "{}: `additional_special_tokens` other than the `<extra_id_N>` sentinels",
            path.display()
        )));
    }
    let extra = if listed.is_empty() {
        extra
    } else {
        listed.len()
    };
    Ok((
        token("eos_token", "</s>"),
        token("unk_token", "<unk>"),
        token("pad_token", "<pad>"),
        extra,
    ))
}

/// Builds the tokenizer of a directory with `spiece.model` (see the module docs).
pub fn t5_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("spiece.model");
    let spm = SpmModel::read(&path)?;
    if spm.model_type != 1 {
        return Err(Error::Unsupported(format!(
            "{}: SentencePiece model type {} (only unigram models are read)",
            path.display(),
            spm.model_type
        )));
    }
    let (eos, unk, pad, extra_ids) = settings(dir)?;
    let mut vocab: Vec<Value> = spm
        .pieces
        .iter()
        .map(|p| json!([p.piece, f64::from(p.score)]))
        .collect();
    vocab.extend(
        (0..extra_ids)
            .rev()
            .map(|i| json!([format!("<extra_id_{i}>"), 0.0])),
    );
    let id_of = |t: &str| vocab.iter().position(|v| v[0] == t);
    let eos_id =
        id_of(&eos).ok_or_else(|| corrupt(&path, format!("no piece `{eos}` (eos_token)")))?;
    let unk_id = id_of(&unk).unwrap_or(spm.unk_id);
    let added: Vec<Value> = [&pad, &eos, &unk]
        .into_iter()
        .filter_map(|t| id_of(t).map(|id| (id, t.clone())))
        .chain((0..extra_ids).rev().map(|i| {
            (
                spm.pieces.len() + extra_ids - 1 - i,
                format!("<extra_id_{i}>"),
            )
        }))
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let normalizer = if spm.precompiled_charsmap.is_empty() {
        Value::Null
    } else {
        json!({"type": "Precompiled", "precompiled_charsmap": base64(&spm.precompiled_charsmap)})
    };
    let metaspace =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {eos.clone(): {"id": eos, "ids": [eos_id], "tokens": [eos]}}
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": unk_id, "vocab": vocab, "byte_fallback": spm.byte_fallback},
    });
    tokenizer
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| corrupt(&path, format!("building its tokenizer: {e}")))
}
