//! Finding and loading a pretrained model: a local directory, a GGUF file,
//! a short alias (`smollm2`), or a Hugging Face model id through hf-hub.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq_core::{Error, Result};

use crate::bart::Bart;
use crate::compact::WeightStorage;
use crate::generation_config::GenerationConfig;
use crate::marian::Marian;
use crate::mbart::{M2M100, MBart};
use crate::model::LanguageModel;
use crate::special_tokens::SpecialTokens;
use crate::t5::T5;
use crate::tokenizer::{LanguageOptions, TextTokenizer};
use crate::weights::{WeightSource, Weights, open_weights_dir};

/// A loaded model with its tokenizer.
pub struct Pretrained {
    /// The network.
    pub model: Box<dyn LanguageModel>,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// The name or path it was loaded from.
    pub name: String,
    /// The Hugging Face `config.json` (for GGUF files, its equivalent built from the metadata).
    pub config: serde_json::Value,
    /// Its special tokens, resolved as transformers does.
    pub special_tokens: SpecialTokens,
    /// Its decoding defaults (`generation_config.json`; empty for GGUF files).
    pub generation_config: GenerationConfig,
}

/// Short names for real models fetched by `cargo xtask fetch-models`.
pub const MODEL_ALIASES: &[(&str, &str)] = &[("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")];

/// Directory where `cargo xtask fetch-models` stores models: `$INSEQ_MODELS_DIR`,
/// else `$XDG_CACHE_HOME/inseq-rs/models`, else `~/.cache/inseq-rs/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INSEQ_MODELS_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("inseq-rs").join("models")
}

/// Loads a model from a directory (`config.json`, safetensors, `tokenizer.json`),
/// a `.gguf` file, an alias from [`MODEL_ALIASES`], or a Hugging Face model id.
///
/// ```no_run
/// let device = burn::tensor::Device::default();
/// let pretrained = inseq_models::load_pretrained("path/to/tiny-gpt2", &device).unwrap();
/// assert_eq!(pretrained.model.info().architecture, "gpt2");
/// ```
pub fn load_pretrained(name_or_path: &str, device: &Device) -> Result<Pretrained> {
    load_pretrained_with(name_or_path, device, &LoadOptions::from_env()?)
}

/// How a model is loaded beyond its files: how its weight matrices are held and its
/// tokenizer's languages.
///
/// ```
/// let opts = inseq_models::LoadOptions::default();
/// assert_eq!(opts.weights, inseq_models::WeightStorage::Auto);
/// assert!(opts.languages.src_lang.is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Weight matrices widened at load time or kept as the file stores them.
    pub weights: WeightStorage,
    /// Source and target languages of a multilingual tokenizer (M2M100), overriding
    /// `tokenizer_config.json`'s (Inseq's `tokenizer_kwargs`).
    pub languages: LanguageOptions,
}

impl LoadOptions {
    /// The defaults, with the weight storage [`crate::compact::WEIGHTS_ENV`] asks for.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            weights: WeightStorage::from_env()?,
            languages: LanguageOptions::default(),
        })
    }
}

/// [`load_pretrained`] with `options` ([`load_pretrained`] takes the weight storage from
/// [`crate::compact::WEIGHTS_ENV`], `auto` by default).
pub fn load_pretrained_with(
    name_or_path: &str,
    device: &Device,
    options: &LoadOptions,
) -> Result<Pretrained> {
    if name_or_path.trim().is_empty() {
        return Err(Error::invalid_arg("model", "empty model name"));
    }
    let path = Path::new(name_or_path);
    if let Some((_, file)) = MODEL_ALIASES.iter().find(|(a, _)| *a == name_or_path) {
        let p = models_dir().join(file);
        if !p.exists() {
            return Err(Error::MissingFile {
                path: p,
                hint: format!(
                    "model `{name_or_path}`; run `cargo xtask fetch-models` to download it"
                ),
            });
        }
        return load_gguf_file(&p, name_or_path, device, options);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        return load_gguf_file(path, name_or_path, device, options);
    }
    if path.is_dir() {
        return load_dir_with(path, name_or_path, device, options);
    }
    if path.exists() || name_or_path.starts_with('.') || name_or_path.starts_with('/') {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
            hint: "a model directory with config.json, model.safetensors and tokenizer.json".into(),
        });
    }
    let dir = crate::hub::snapshot_dir(name_or_path)?;
    load_dir_with(&dir, name_or_path, device, options)
}

fn load_gguf_file(
    path: &Path,
    name: &str,
    device: &Device,
    options: &LoadOptions,
) -> Result<Pretrained> {
    options.languages.require_empty(path)?;
    let gguf = crate::gguf::GgufModelFile::open(path)?;
    let config = gguf.hf_config()?;
    let tokenizer = TextTokenizer::new(gguf.tokenizer()?);
    let special_tokens = gguf.special_tokens()?;
    let model = build_model_with(&config, Box::new(gguf), path, device, options.weights)?;
    Ok(Pretrained {
        model,
        tokenizer,
        name: name.to_string(),
        config,
        special_tokens,
        generation_config: GenerationConfig::default(),
    })
}

/// Loads a model directory laid out as `save_pretrained` writes it.
pub fn load_dir(dir: &Path, name: &str, device: &Device) -> Result<Pretrained> {
    load_dir_with(dir, name, device, &LoadOptions::from_env()?)
}

/// [`load_dir`] with `options`.
pub fn load_dir_with(
    dir: &Path,
    name: &str,
    device: &Device,
    options: &LoadOptions,
) -> Result<Pretrained> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: config_path.clone(),
            hint: "the model configuration (config.json)".into(),
        },
        _ => Error::io(&config_path, e),
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::CorruptFile {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
    let tokenizer = TextTokenizer::from_dir_with(dir, &options.languages)?;
    let special_tokens = SpecialTokens::from_dir(dir, &tokenizer, &config)?;
    let generation_config = GenerationConfig::read(dir, &config)?;
    let source = open_weights_dir(dir)?;
    let model = build_model_with(&config, source, &config_path, device, options.weights)?;
    Ok(Pretrained {
        model,
        tokenizer,
        name: name.to_string(),
        config,
        special_tokens,
        generation_config,
    })
}

/// Size fields that must be at least 1 wherever a config has them.
const POSITIVE_SIZES: [&str; 20] = [
    "vocab_size",
    "n_layer",
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
    "n_head",
    "num_attention_heads",
    "num_heads",
    "num_key_value_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "n_embd",
    "hidden_size",
    "d_model",
    "d_kv",
    "intermediate_size",
    "n_positions",
    "max_position_embeddings",
];

/// `(width, heads)` pairs where the width must split evenly into heads (unless `head_dim` is set).
const HEAD_SPLITS: [(&str, &str); 4] = [
    ("n_embd", "n_head"),
    ("hidden_size", "num_attention_heads"),
    ("d_model", "encoder_attention_heads"),
    ("d_model", "decoder_attention_heads"),
];

/// Fields that must be finite and strictly positive.
const POSITIVE_REALS: [&str; 4] = [
    "layer_norm_epsilon",
    "layer_norm_eps",
    "rms_norm_eps",
    "rope_theta",
];

/// Token-id fields that index the embedding table.
const TOKEN_IDS: [&str; 4] = [
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
];

/// Rejects impossible values in a `config.json` (zero sizes, widths that do not split into heads,
/// non-positive epsilons or `rope_theta`, token ids outside the vocabulary) before any of them
/// sizes a tensor or indexes a table; the error names the file and the field.
pub fn check_config_values(config: &serde_json::Value, path: &Path) -> Result<()> {
    let bad = |field: &str, reason: String| Error::CorruptFile {
        path: path.to_path_buf(),
        reason: format!("`{field}` {reason}"),
    };
    let uint = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    for key in POSITIVE_SIZES {
        if uint(key) == Some(0) {
            return Err(bad(key, "is 0; it must be at least 1".into()));
        }
    }
    if config
        .get("head_dim")
        .is_none_or(serde_json::Value::is_null)
    {
        for (width, heads) in HEAD_SPLITS {
            if let (Some(w), Some(h)) = (uint(width), uint(heads))
                && !w.is_multiple_of(h)
            {
                return Err(bad(heads, format!("({h}) does not divide `{width}` ({w})")));
            }
        }
    }
    // RoPE settings may sit in `rope_parameters` / `rope_scaling` (transformers >= 4.56).
    let scopes = [
        Some(config),
        config.get("rope_parameters"),
        config.get("rope_scaling"),
    ];
    for (scope, key) in scopes
        .into_iter()
        .flatten()
        .flat_map(|s| POSITIVE_REALS.map(|k| (s, k)))
    {
        if let Some(x) = scope.get(key).and_then(serde_json::Value::as_f64)
            && !(x.is_finite() && x > 0.0)
        {
            return Err(bad(key, format!("is {x}; it must be finite and > 0")));
        }
    }
    let Some(vocab) = uint("vocab_size") else {
        return Ok(());
    };
    for key in TOKEN_IDS {
        let ids = match config.get(key) {
            Some(serde_json::Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        for id in ids.into_iter().filter_map(serde_json::Value::as_i64) {
            if id < 0 || id as u64 >= vocab {
                return Err(bad(
                    key,
                    format!("is {id}, outside the vocabulary of {vocab}"),
                ));
            }
        }
    }
    Ok(())
}

/// The `model_type` values [`build_model`] loads.
pub const SUPPORTED_ARCHITECTURES: [&str; 20] = [
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "gpt_neox",
    "opt",
    "falcon",
    "marian",
    "bart",
    "mbart",
    "m2m_100",
    "t5",
    "mt5",
    "umt5",
];

/// `config` with `defaults` filled in where it lacks the key (a model class's own defaults).
fn with_defaults(
    config: &serde_json::Value,
    defaults: &[(&str, serde_json::Value)],
) -> serde_json::Value {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        for (key, value) in defaults {
            map.entry(key.to_string()).or_insert_with(|| value.clone());
        }
    }
    config
}

/// Builds the architecture named by a Hugging Face `config.json` value from `source`.
pub fn build_model(
    config: &serde_json::Value,
    source: Box<dyn WeightSource>,
    config_path: &Path,
    device: &Device,
) -> Result<Box<dyn LanguageModel>> {
    let storage = WeightStorage::from_env()?;
    build_model_with(config, source, config_path, device, storage)
}

/// [`build_model`] with weight matrices held as `storage` says.
pub fn build_model_with(
    config: &serde_json::Value,
    source: Box<dyn WeightSource>,
    config_path: &Path,
    device: &Device,
    storage: WeightStorage,
) -> Result<Box<dyn LanguageModel>> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::CorruptFile {
            path: config_path.to_path_buf(),
            reason: "no `model_type` field".into(),
        })?;
    check_layer_counts(config, source.as_ref(), config_path)?;
    check_config_values(config, config_path)?;
    let build = Build {
        config,
        source,
        config_path,
        device,
        storage,
    };
    match model_type {
        "gpt2" => build.with(&["transformer."], crate::gpt2::load),
        "llama" | "mistral" | "qwen2" => build.with(&["model."], crate::llama::load),
        "gemma" | "gemma2" | "gemma3_text" => build.with(&["model."], crate::gemma::load),
        "qwen3" => build.with(&["model."], crate::qwen3::load),
        "phi3" => build.with(&["model."], crate::phi3::load),
        "olmo2" => build.with(&["model."], crate::olmo2::load),
        "gpt_neox" => build.with(&["gpt_neox."], crate::gpt_neox::load),
        "opt" => build.with(&["model."], crate::opt::load),
        "falcon" => {
            let c = crate::falcon::parse(config.clone()).map_err(|e| build.parse_error(e))?;
            build.load(&["transformer."], c, crate::falcon::load)
        }
        "marian" => build.with(&["model."], Marian::load),
        "bart" => build.with(&["model."], Bart::load),
        "mbart" => build.with(&["model."], MBart::load),
        // `M2M100Config`'s defaults where they differ from BART's.
        "m2m_100" => build.with_defaults(
            &[
                ("scale_embedding", true.into()),
                ("activation_function", "relu".into()),
            ],
            &["model."],
            M2M100::load,
        ),
        "t5" => build.with_defaults(&[("feed_forward_proj", "relu".into())], &[], T5::load),
        // `MT5Config` and `UMT5Config` default to T5 v1.1's gated-gelu feed-forward.
        "mt5" | "umt5" => {
            build.with_defaults(&[("feed_forward_proj", "gated-gelu".into())], &[], T5::load)
        }
        other => Err(Error::UnsupportedArchitecture(format!(
            "{other} (supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        ))),
    }
}

/// Layer vectors are sized from the config before any weight is read: a hostile or mistyped
/// layer count must not become a huge allocation.
fn check_layer_counts(
    config: &serde_json::Value,
    source: &dyn WeightSource,
    config_path: &Path,
) -> Result<()> {
    let n_tensors = source.names().len() as u64;
    for key in [
        "n_layer",
        "num_hidden_layers",
        "num_layers",
        "num_decoder_layers",
        "encoder_layers",
        "decoder_layers",
    ] {
        if let Some(n) = config.get(key).and_then(|v| v.as_u64())
            && n > n_tensors
        {
            return Err(Error::CorruptFile {
                path: config_path.to_path_buf(),
                reason: format!("`{key}` is {n} but the weights hold only {n_tensors} tensors"),
            });
        }
    }
    Ok(())
}

/// What [`build_model`] builds an architecture from: its config, weights and device.
struct Build<'a> {
    config: &'a serde_json::Value,
    source: Box<dyn WeightSource>,
    config_path: &'a Path,
    device: &'a Device,
    storage: WeightStorage,
}

impl Build<'_> {
    fn parse_error(&self, e: serde_json::Error) -> Error {
        Error::CorruptFile {
            path: self.config_path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// Parses the config as `C` and loads the model with `load`, weight names tried with each
    /// of `prefixes`.
    fn with<C, M>(
        self,
        prefixes: &[&str],
        load: impl FnOnce(C, &mut Weights) -> Result<M>,
    ) -> Result<Box<dyn LanguageModel>>
    where
        C: serde::de::DeserializeOwned,
        M: LanguageModel + 'static,
    {
        self.with_defaults(&[], prefixes, load)
    }

    /// [`Build::with`] with `defaults` for the config keys it lacks (the architecture's own
    /// config class defaults where they differ from the shared config struct's).
    fn with_defaults<C, M>(
        self,
        defaults: &[(&str, serde_json::Value)],
        prefixes: &[&str],
        load: impl FnOnce(C, &mut Weights) -> Result<M>,
    ) -> Result<Box<dyn LanguageModel>>
    where
        C: serde::de::DeserializeOwned,
        M: LanguageModel + 'static,
    {
        let c = serde_json::from_value(with_defaults(self.config, defaults))
            .map_err(|e| self.parse_error(e))?;
        self.load(prefixes, c, load)
    }

    fn load<C, M>(
        self,
        prefixes: &[&str],
        config: C,
        load: impl FnOnce(C, &mut Weights) -> Result<M>,
    ) -> Result<Box<dyn LanguageModel>>
    where
        M: LanguageModel + 'static,
    {
        let mut w = Weights::new(self.source, prefixes, self.device).with_storage(self.storage);
        let model = load(config, &mut w).map_err(|e| config_error(e, self.config_path))?;
        Ok(Box::new(model))
    }
}

/// A model's loader rejects config values as invalid arguments named after the field; they come
/// from the config file at `path`, so the error names that file.
fn config_error(e: Error, path: &Path) -> Error {
    match e {
        Error::InvalidArgument { name, reason } => Error::CorruptFile {
            path: path.to_path_buf(),
            reason: format!("`{name}`: {reason}"),
        },
        other => other,
    }
}
