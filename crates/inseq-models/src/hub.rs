//! Resolving Hugging Face model ids to local snapshot directories with hf-hub.
//!
//! The local cache (`$HF_HOME/hub`, or `$HF_HUB_CACHE`) is consulted first;
//! with `HF_HUB_OFFLINE=1` nothing else is tried. Otherwise missing files are
//! downloaded through the hub API.

use std::path::PathBuf;

use inseq_core::{Error, Result};

/// Files a model directory needs; the weights are either single or sharded.
const REQUIRED: &[&str] = &["config.json"];
/// Tokenizer files, in order of preference: `tokenizer.json`, or the SentencePiece files of a
/// Marian, M2M100 or T5 repository.
const TOKENIZERS: &[&[&str]] = &[
    &["tokenizer.json"],
    &["source.spm", "target.spm", "vocab.json"],
    &["sentencepiece.bpe.model", "vocab.json"],
    &["spiece.model"],
];
/// Weight files in transformers' order of preference; the `.index.json` ones list shards.
const WEIGHTS: &[&str] = &[
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

#[cfg(feature = "hub")]
fn cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => hf_hub::Cache::new(PathBuf::from(dir)),
        None => hf_hub::Cache::from_env(),
    }
}

/// Returns the snapshot directory holding `model_id`'s files, downloading
/// them unless offline mode is on.
#[cfg(feature = "hub")]
pub fn snapshot_dir(model_id: &str) -> Result<PathBuf> {
    let repo = cache().model(model_id.to_string());
    let mut found: Vec<PathBuf> = REQUIRED.iter().filter_map(|f| repo.get(f)).collect();
    let weights = WEIGHTS.iter().find_map(|f| repo.get(f));
    let tokenizer = TOKENIZERS
        .iter()
        .any(|files| files.iter().all(|f| repo.get(f).is_some()));
    if found.len() == REQUIRED.len() && tokenizer && weights.is_some() {
        if let Some(index) = weights
            .as_ref()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            ensure_shards(index, |shard| repo.get(shard).is_some(), model_id)?;
        }
        return Ok(found
            .remove(0)
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default());
    }
    if offline() {
        return Err(Error::Hub(format!(
            "model `{model_id}` is not in the local hub cache ({}) and HF_HUB_OFFLINE is set",
            cache().path().display()
        )));
    }
    download(model_id)
}

#[cfg(feature = "hub")]
fn ensure_shards(
    index: &std::path::Path,
    present: impl Fn(&str) -> bool,
    model_id: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    if let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) {
        for shard in map.values().filter_map(|v| v.as_str()) {
            if !present(shard) {
                return Err(Error::Hub(format!(
                    "shard `{shard}` of `{model_id}` is missing from the cache"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(feature = "hub")]
fn download(model_id: &str) -> Result<PathBuf> {
    let hub_err = |e: hf_hub::api::sync::ApiError| Error::Hub(format!("`{model_id}`: {e}"));
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env();
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        builder = builder.with_cache_dir(PathBuf::from(dir));
    }
    let api = builder.build().map_err(hub_err)?;
    let repo = api.model(model_id.to_string());
    let mut dir = None;
    for f in REQUIRED {
        dir = Some(repo.get(f).map_err(hub_err)?);
    }
    let mut tokenizer_err = None;
    for files in TOKENIZERS {
        match files.iter().try_for_each(|f| repo.get(f).map(drop)) {
            Ok(()) => {
                tokenizer_err = None;
                break;
            }
            Err(e) => tokenizer_err = tokenizer_err.or(Some(e)),
        }
    }
    if let Some(e) = tokenizer_err {
        return Err(hub_err(e));
    }
    // Optional: the special tokens and decoding defaults.
    for f in ["tokenizer_config.json", "generation_config.json"] {
        let _ = repo.get(f);
    }
    let mut last_err = None;
    for &file in WEIGHTS {
        match repo.get(file) {
            Ok(path) if file.ends_with(".index.json") => {
                for shard in crate::weights::shard_files(&path)? {
                    let name = shard
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default();
                    repo.get(name).map_err(hub_err)?;
                }
                last_err = None;
                break;
            }
            Ok(_) => {
                last_err = None;
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(e) = last_err {
        return Err(hub_err(e));
    }
    Ok(dir
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default())
}

/// Without the `hub` feature only local paths can be loaded.
#[cfg(not(feature = "hub"))]
pub fn snapshot_dir(model_id: &str) -> Result<PathBuf> {
    let _ = (REQUIRED, TOKENIZERS, WEIGHTS, offline());
    Err(Error::Hub(format!(
        "`{model_id}` is not a local path and inseq-models was built without the `hub` feature"
    )))
}

/// The local snapshot directory of the Hugging Face dataset `dataset_id`,
/// downloading its data files for `split` (Parquet, JSONL or CSV) unless offline.
#[cfg(feature = "hub")]
pub fn dataset_dir(dataset_id: &str, split: &str) -> Result<PathBuf> {
    let cache = cache();
    let folder = cache
        .path()
        .join(format!("datasets--{}", dataset_id.replace('/', "--")));
    let cached = std::fs::read_to_string(folder.join("refs").join("main"))
        .ok()
        .map(|rev| folder.join("snapshots").join(rev.trim()))
        .filter(|p| p.is_dir());
    if let Some(dir) = cached {
        return Ok(dir);
    }
    if offline() {
        return Err(Error::Hub(format!(
            "dataset `{dataset_id}` is not in the local hub cache ({}) and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    let hub_err =
        |e: hf_hub::api::sync::ApiError| Error::Hub(format!("dataset `{dataset_id}`: {e}"));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .map_err(hub_err)?;
    let repo = api.dataset(dataset_id.to_string());
    let info = repo.info().map_err(hub_err)?;
    let data: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| {
            [".parquet", ".jsonl", ".csv"]
                .iter()
                .any(|e| f.ends_with(e))
        })
        .collect();
    let for_split: Vec<&String> = data.iter().filter(|f| f.contains(split)).collect();
    let chosen: Vec<&String> = if for_split.is_empty() {
        data.iter().collect()
    } else {
        for_split
    };
    let mut dir = None;
    for f in chosen {
        let local = repo.get(f).map_err(hub_err)?;
        // snapshots/<rev>/<f>: strip the file's own path components
        let depth = std::path::Path::new(f).components().count();
        dir = local.ancestors().nth(depth).map(PathBuf::from);
    }
    dir.ok_or_else(|| {
        Error::Hub(format!(
            "dataset `{dataset_id}` has no Parquet, JSONL or CSV files"
        ))
    })
}

/// Without the `hub` feature only local dataset files can be read.
#[cfg(not(feature = "hub"))]
pub fn dataset_dir(dataset_id: &str, _split: &str) -> Result<PathBuf> {
    Err(Error::Hub(format!(
        "`{dataset_id}` is not a local path and inseq-models was built without the `hub` feature"
    )))
}
