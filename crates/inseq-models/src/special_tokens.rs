//! The special tokens of a model, resolved once at load time as `transformers` resolves them.
//!
//! Tokenizer tokens (`unk`, `pad`, `bos`, `eos`) come from `tokenizer_config.json`
//! (strings or AddedToken objects `{"content": ...}`), overridden by
//! `special_tokens_map.json` when the config has no `added_tokens_decoder` (the legacy
//! layout, as in `PreTrainedTokenizerBase._from_pretrained`). Like transformers'
//! `TokenizersBackend`, the `unk_token` of `tokenizer.json`'s model is not consulted.
//! Model ids come from `config.json` and `generation_config.json`; for GGUF files
//! all of them come from the `tokenizer.ggml.*_token_id` metadata.

use std::path::Path;

use inseq_core::{Error, Result};
use serde_json::Value;

use crate::tokenizer::TextTokenizer;

/// Special-token ids of a model: the tokenizer's declared tokens and the model config's ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The tokenizer's `unk_token` id, if declared.
    pub unk: Option<usize>,
    /// The tokenizer's `pad_token` id, if declared.
    pub pad: Option<usize>,
    /// The tokenizer's `bos_token` id, if declared.
    pub bos: Option<usize>,
    /// The tokenizer's `eos_token` id, if declared.
    pub eos: Option<usize>,
    /// `config.json`'s `pad_token_id`.
    pub config_pad: Option<usize>,
    /// `config.json`'s `bos_token_id`.
    pub config_bos: Option<usize>,
    /// `config.json`'s `eos_token_id` (a list for models with several end tokens).
    pub config_eos: Vec<usize>,
    /// `config.json`'s `decoder_start_token_id`.
    pub decoder_start: Option<usize>,
    /// `generation_config.json`'s `eos_token_id` (empty when absent).
    pub generation_eos: Vec<usize>,
    /// `generation_config.json`'s `pad_token_id`.
    pub generation_pad: Option<usize>,
}

const TOKEN_KEYS: [&str; 4] = ["unk_token", "pad_token", "bos_token", "eos_token"];

impl SpecialTokens {
    /// Inseq's baseline token (`HuggingfaceModel.__init__`): the tokenizer's unk token,
    /// else its pad token, else the config's pad id, else the config's first eos id.
    pub fn baseline(&self) -> Option<usize> {
        self.unk
            .or(self.pad)
            .or(self.config_pad)
            .or(self.config_eos.first().copied())
    }

    /// Resolves the special tokens of a `save_pretrained` directory; `config` is its `config.json`.
    pub fn from_dir(dir: &Path, tokenizer: &TextTokenizer, config: &Value) -> Result<Self> {
        let tokens = declared_tokens(dir)?;
        let id_of = |i: usize| -> Result<Option<usize>> {
            let Some(token) = &tokens[i] else {
                return Ok(None);
            };
            tokenizer
                .token_to_id(token)
                .map(Some)
                .ok_or_else(|| Error::CorruptFile {
                    path: dir.join("tokenizer_config.json"),
                    reason: format!("`{}` `{token}` is not in the vocabulary", TOKEN_KEYS[i]),
                })
        };
        let generation = read_optional_json(&dir.join("generation_config.json"))?;
        let config_path = dir.join("config.json");
        let generation_path = dir.join("generation_config.json");
        let gen_value = generation.as_ref().unwrap_or(&Value::Null);
        Ok(Self {
            unk: id_of(0)?,
            pad: id_of(1)?,
            bos: id_of(2)?,
            eos: id_of(3)?,
            generation_eos: ids(gen_value, "eos_token_id", &generation_path)?,
            generation_pad: single_id(gen_value, "pad_token_id", &generation_path)?,
            ..Self::from_config(config, &config_path)?
        })
    }

    /// The model ids of a `config.json` value (tokenizer fields left unset).
    pub fn from_config(config: &Value, path: &Path) -> Result<Self> {
        Ok(Self {
            config_pad: single_id(config, "pad_token_id", path)?,
            config_bos: single_id(config, "bos_token_id", path)?,
            config_eos: ids(config, "eos_token_id", path)?,
            decoder_start: single_id(config, "decoder_start_token_id", path)?,
            ..Self::default()
        })
    }
}

/// The four token strings transformers resolves from the tokenizer files of `dir`.
fn declared_tokens(dir: &Path) -> Result<[Option<String>; 4]> {
    let config_path = dir.join("tokenizer_config.json");
    let config = read_optional_json(&config_path)?.unwrap_or(Value::Null);
    let mut tokens = [None, None, None, None];
    for (slot, key) in tokens.iter_mut().zip(TOKEN_KEYS) {
        *slot = token_string(&config, key, &config_path)?;
    }
    if config.get("added_tokens_decoder").is_none() {
        let map_path = dir.join("special_tokens_map.json");
        if let Some(map) = read_optional_json(&map_path)? {
            for (slot, key) in tokens.iter_mut().zip(TOKEN_KEYS) {
                if map.get(key).is_some() {
                    *slot = token_string(&map, key, &map_path)?;
                }
            }
        }
    }
    Ok(tokens)
}

/// A token given as a string, an AddedToken object `{"content": ...}`, or null.
fn token_string(value: &Value, key: &str, path: &Path) -> Result<Option<String>> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(corrupt(path, format!("`{key}` has no string `content`"))),
        },
        Some(other) => Err(corrupt(path, format!("`{key}` is {other}, not a token"))),
    }
}

/// A token id field that may be an integer or a list of integers (`eos_token_id`).
fn ids(value: &Value, key: &str, path: &Path) -> Result<Vec<usize>> {
    let as_id = |v: &Value| {
        v.as_u64()
            .map(|i| i as usize)
            .ok_or_else(|| corrupt(path, format!("`{key}` holds {v}, not a token id")))
    };
    match value.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

/// A token id field holding one id.
fn single_id(value: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match ids(value, key, path)?.as_slice() {
        [] => Ok(None),
        [id] => Ok(Some(*id)),
        _ => Err(corrupt(path, format!("`{key}` is a list; one id expected"))),
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| corrupt(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// Deserialises a config's `eos_token_id` given as one id or a list (Llama 3 lists several) into
/// its first id: the model's end token; generation stops at any of the list
/// ([`SpecialTokens::config_eos`], [`crate::GenerationOptions::eos_token_ids`]).
pub(crate) fn first_token_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<usize>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(usize),
        Many(Vec<usize>),
    }
    let value: Option<OneOrMany> = serde::Deserialize::deserialize(deserializer)?;
    Ok(match value {
        None => None,
        Some(OneOrMany::One(id)) => Some(id),
        Some(OneOrMany::Many(ids)) => ids.first().copied(),
    })
}
