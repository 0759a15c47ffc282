//! A model's `generation_config.json`: the defaults Hugging Face `generate` (and so Inseq)
//! starts from before the caller's arguments, e.g. `num_beams: 4` for Marian `opus-mt`, or
//! `do_sample`, `temperature` and `top_p` for chat models.

use std::path::{Path, PathBuf};

use inseq_core::{Error, Result};
use serde_json::{Map, Value};

use crate::generate::GenerationOptions;

/// Keys that describe the model rather than the decoding (ids resolved by
/// [`crate::SpecialTokens`], versions, output and cache switches), and `max_length`, which
/// `transformers` ignores when `max_new_tokens` is given, as [`GenerationOptions`] always is.
const DESCRIPTIVE: [&str; 13] = [
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "use_cache",
    "cache_implementation",
    "return_dict_in_generate",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "max_length",
];

/// The decoding keys [`GenerationOptions::update_from_json`] implements, as `transformers` names them.
const DECODING: [&str; 17] = [
    "max_new_tokens",
    "min_new_tokens",
    "min_length",
    "bad_words_ids",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "eos_token_id",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "num_return_sequences",
];

/// Keys of processors this crate does not implement, accepted at the value that turns them off.
const UNIMPLEMENTED: [&str; 12] = [
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_decoder_ids",
    "exponential_decay_length_penalty",
    "renormalize_logits",
    "num_beam_groups",
    "diversity_penalty",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "min_p",
    "encoder_no_repeat_ngram_size",
];

/// Whether `value` turns the processor `key` off (`0`, `1`, `0.0`, `1.0`, `false` or `null` as
/// `transformers` takes them).
fn is_off(key: &str, value: &Value) -> bool {
    let neutral = match key {
        "num_beam_groups" | "typical_p" => 1.0,
        _ => 0.0,
    };
    UNIMPLEMENTED.contains(&key)
        && (value.is_null()
            || value == &Value::Bool(false)
            || value.as_array().is_some_and(Vec::is_empty)
            || value.as_f64() == Some(neutral))
}

/// The decoding defaults of a model, from its `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// The file they come from (`None`: the model has none, e.g. a GGUF file).
    pub path: Option<PathBuf>,
    /// Its keys.
    pub values: Map<String, Value>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; without it, as `transformers`
    /// (`GenerationConfig.from_model_config`), the decoding keys of `config`, the model's
    /// `config.json` (legacy models such as BART summarisers keep `num_beams` there).
    pub fn read(dir: &Path, config: &Value) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let values = config.as_object().into_iter().flatten().filter(|(k, v)| {
                    !v.is_null()
                        && (DECODING.contains(&k.as_str()) || UNIMPLEMENTED.contains(&k.as_str()))
                });
                return Ok(Self {
                    path: Some(dir.join("config.json")),
                    values: values.map(|(k, v)| (k.clone(), v.clone())).collect(),
                });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let values = match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(corrupt(&path, "not a JSON object".into())),
            Err(e) => return Err(corrupt(&path, e.to_string())),
        };
        Ok(Self {
            path: Some(path),
            values,
        })
    }

    /// [`GenerationOptions::default`] updated with this file's decoding keys, as `generate`
    /// starts from it. A key this crate does not implement, set to a value that changes the
    /// tokens, is an error naming the file and the key.
    ///
    /// ```
    /// # use inseq_models::GenerationConfig;
    /// let config = GenerationConfig {
    ///     path: None,
    ///     values: serde_json::from_str(r#"{"num_beams": 4, "transformers_version": "4.40"}"#).unwrap(),
    /// };
    /// assert_eq!(config.options().unwrap().num_beams, 4);
    /// ```
    pub fn options(&self) -> Result<GenerationOptions> {
        let origin = self
            .path
            .as_ref()
            .map_or("generation_config.json".into(), |p| p.display().to_string());
        let mut decoding = Map::new();
        for (key, value) in &self.values {
            if DESCRIPTIVE.contains(&key.as_str()) || is_off(key, value) {
                continue;
            }
            if UNIMPLEMENTED.contains(&key.as_str()) {
                return Err(Error::Unsupported(format!(
                    "{origin}: `{key}` = {value} is not implemented (it changes the generated \
                     tokens); give a target, or remove the key from a copy of the model"
                )));
            }
            decoding.insert(key.clone(), value.clone());
        }
        let mut options = GenerationOptions::default();
        options.update_from_json(&decoding, &origin)?;
        Ok(options)
    }
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> GenerationConfig {
        GenerationConfig {
            path: Some("m/generation_config.json".into()),
            values: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn marian_defaults_are_read() {
        let marian = r#"{"bad_words_ids": null, "bos_token_id": 0, "decoder_start_token_id": 58100,
            "eos_token_id": 0, "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4,
            "pad_token_id": 58100, "renormalize_logits": false}"#;
        let options = config(marian).options().unwrap();
        assert_eq!(options.num_beams, 4);
        assert_eq!(options.forced_eos_token_id, Some(0));
        assert_eq!(options.eos_token_ids, [0]);
        let with_bad = r#"{"bad_words_ids": [[58100]], "min_length": 3}"#;
        let options = config(with_bad).options().unwrap();
        assert_eq!(
            (options.bad_words_ids, options.min_length),
            (vec![vec![58100]], 3)
        );
    }

    #[test]
    fn chat_sampling_defaults_are_read() {
        let llama = r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9,
            "eos_token_id": [128001, 128009], "transformers_version": "4.40.0.dev0"}"#;
        let options = config(llama).options().unwrap();
        assert!(options.do_sample);
        assert_eq!((options.temperature, options.top_p), (0.6, 0.9));
        assert_eq!(options.eos_token_ids, [128001, 128009]);
    }

    #[test]
    fn unimplemented_keys_are_errors_naming_the_file() {
        let err = config(r#"{"suppress_tokens": [5]}"#).options().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("generation_config.json") && text.contains("suppress_tokens"),
            "{text}"
        );
        let err = config(r#"{"watermarking_config": {}}"#)
            .options()
            .unwrap_err();
        assert!(err.to_string().contains("watermarking_config"), "{err}");
        assert!(
            config(r#"{"typical_p": 1.0, "renormalize_logits": false}"#)
                .options()
                .is_ok()
        );
    }
}
