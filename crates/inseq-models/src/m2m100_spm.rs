//! The tokenizer of an M2M100 repository (`sentencepiece.bpe.model`, `vocab.json`,
//! `tokenizer_config.json`, no `tokenizer.json`, as facebook/m2m100_* ship it), built as a
//! `tokenizers` tokenizer that encodes like transformers' `M2M100Tokenizer`:
//!
//! - text is split on the special tokens (`bos`, `eos`, `unk`, `pad`), each chunk goes through
//!   the SentencePiece model's normaliser and BPE segmentation (merges ranked by piece score, as
//!   `convert_slow_tokenizer` derives them; runs of unknown characters fused into one `<unk>`),
//!   and pieces map to ids through `vocab.json`;
//! - the language token of `src_lang` (default `en`) is prepended and `</s>` appended; target
//!   texts get `tgt_lang`'s token instead (an error when `tgt_lang` is not set, as transformers
//!   raises);
//! - the language tokens `__xx__` of `language_codes` (`m2m100` or `wmt21`) take the ids after
//!   `vocab.json`'s, in the order of that list; as in transformers 5 they decode but are neither
//!   matched in text nor skipped as special tokens.
//!
//! Limits, where `M2M100Tokenizer` differs: a SentencePiece piece missing from `vocab.json`
//! (transformers maps it to `<unk>`) is never produced, its merges being left out; decoding
//! with special tokens kept keeps the space after a special token inside a text (transformers
//! decodes the pieces between special tokens separately, which drops it).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use inseq_core::{Error, Result};
use serde_json::{Map, Value, json};

use crate::marian_spm::{corrupt, pipeline, read_json, vocab_in_id_order};
use crate::spm::{PieceType, SpmModel};

/// transformers' `FAIRSEQ_LANGUAGE_CODES["m2m100"]`.
const M2M100_CODES: &[&str] = &[
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk",
    "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my",
    "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl",
    "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi",
    "wo", "xh", "yi", "yo", "zh", "zu",
];

/// transformers' `FAIRSEQ_LANGUAGE_CODES["wmt21"]`.
const WMT21_CODES: &[&str] = &["en", "ha", "is", "ja", "cs", "ru", "zh", "de"];

const SPM_FILE: &str = "sentencepiece.bpe.model";

/// Whether `dir` holds an M2M100 SentencePiece tokenizer.
pub fn is_m2m100_spm_dir(dir: &Path) -> bool {
    dir.join(SPM_FILE).exists() && dir.join("vocab.json").exists()
}

/// What `tokenizer_config.json` sets, with `M2M100Tokenizer`'s defaults.
struct Settings {
    src_lang: String,
    tgt_lang: Option<String>,
    codes: &'static [&'static str],
    /// `bos`, `eos`, `unk`, `pad`.
    specials: [String; 4],
}

fn settings(dir: &Path) -> Result<Settings> {
    let path = dir.join("tokenizer_config.json");
    let config = if path.exists() {
        read_json(&path)?
    } else {
        json!({})
    };
    let string = |key: &str| match config.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let codes = match string("language_codes").as_deref() {
        None | Some("m2m100") => M2M100_CODES,
        Some("wmt21") => WMT21_CODES,
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{}: `language_codes` `{other}` (M2M100Tokenizer knows m2m100 and wmt21)",
                path.display()
            )));
        }
    };
    let settings = Settings {
        src_lang: string("src_lang").unwrap_or_else(|| "en".into()),
        tgt_lang: string("tgt_lang"),
        codes,
        specials: [
            string("bos_token").unwrap_or_else(|| "<s>".into()),
            string("eos_token").unwrap_or_else(|| "</s>".into()),
            string("unk_token").unwrap_or_else(|| "<unk>".into()),
            string("pad_token").unwrap_or_else(|| "<pad>".into()),
        ],
    };
    for lang in std::iter::once(&settings.src_lang).chain(&settings.tgt_lang) {
        if !codes.contains(&lang.as_str()) {
            return Err(Error::invalid_arg(
                "src_lang/tgt_lang",
                format!(
                    "{}: `{lang}` is not one of the language codes",
                    path.display()
                ),
            ));
        }
    }
    Ok(settings)
}

/// BPE merges of the normal pieces that `vocab.json` holds, ranked as `convert_slow_tokenizer`
/// ranks them (by piece score, then piece id).
fn merges(spm: &SpmModel, known: &HashSet<&str>) -> Vec<Value> {
    let normal: HashMap<&str, (f32, usize)> = spm
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == PieceType::Normal && known.contains(p.piece.as_str()))
        .map(|(i, p)| (p.piece.as_str(), (p.score, i)))
        .collect();
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (&token, &(score, id)) in &normal {
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if normal.contains_key(left) && normal.contains_key(right) {
                ranked.push((-score, id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .map(|(_, _, l, r)| json!([l, r]))
        .collect()
}

/// The source tokenizer and, with `tgt_lang`, the target one (see the module docs).
pub fn m2m100_tokenizers(
    dir: &Path,
) -> Result<(tokenizers::Tokenizer, Option<tokenizers::Tokenizer>)> {
    let s = settings(dir)?;
    let source = m2m100_tokenizer(dir, &s, &s.src_lang)?;
    let target = match &s.tgt_lang {
        Some(lang) => Some(m2m100_tokenizer(dir, &s, lang)?),
        None => None,
    };
    Ok((source, target))
}

/// The tokenizer that prefixes `lang`'s token.
fn m2m100_tokenizer(dir: &Path, s: &Settings, lang: &str) -> Result<tokenizers::Tokenizer> {
    let spm_path = dir.join(SPM_FILE);
    let spm = SpmModel::read(&spm_path)?;
    if spm.model_type != 2 {
        return Err(Error::Unsupported(format!(
            "{}: SentencePiece model type {} (M2M100 models are BPE, type 2)",
            spm_path.display(),
            spm.model_type
        )));
    }
    if spm.pieces.iter().any(|p| p.kind == PieceType::UserDefined) {
        return Err(Error::Unsupported(format!(
            "{}: user-defined SentencePiece pieces in an M2M100 model",
            spm_path.display()
        )));
    }
    let vocab_path = dir.join("vocab.json");
    let tokens = vocab_in_id_order(&vocab_path)?;
    let mut vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let lang_id = |code: &str| tokens.len() + s.codes.iter().position(|c| *c == code).unwrap_or(0);
    for code in s.codes {
        vocab.insert(format!("__{code}__"), json!(lang_id(code)));
    }
    let find = |t: &str| {
        vocab.get(t).cloned().ok_or_else(|| {
            corrupt(
                &vocab_path,
                format!("the special token `{t}` is not in the vocabulary"),
            )
        })
    };
    let [_, eos, unk, _] = &s.specials;
    let (eos_id, _) = (find(eos)?, find(unk)?);
    let added: Vec<Value> = s
        .specials
        .iter()
        .filter_map(|t| vocab.get(t).map(|id| (t, id)))
        .map(|(t, id)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let lang_token = format!("__{lang}__");
    let (normalizer, pre_tokenizer, mut decoder) = pipeline(&spm);
    if let Some(steps) = decoder["decoders"].as_array_mut() {
        // `convert_tokens_to_string` ends with `strip()`: the text's trailing spaces go.
        steps.push(json!({"type": "Fuse"}));
        steps.push(json!({"type": "Strip", "content": " ", "start": 0, "stop": usize::MAX >> 1}));
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": lang_token, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": lang_token, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {
                eos.clone(): {"id": eos, "ids": [eos_id], "tokens": [eos]},
                lang_token.clone(): {"id": lang_token, "ids": [lang_id(lang)], "tokens": [lang_token]},
            }
        },
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": spm.byte_fallback,
                  "ignore_merges": false, "vocab": vocab, "merges": merges(&spm, &known)},
    });
    tokenizer
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| corrupt(&spm_path, format!("building its tokenizer: {e}")))
}
