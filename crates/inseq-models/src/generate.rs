//! Greedy decoding.

use inseq_core::{Error, Result};

use crate::model::{ForwardOptions, KvCache, LanguageModel, ModelInput, ModelKind};
use crate::nn::ids_tensor;

/// Options for [`generate_greedy`], named as in Hugging Face `generate`.
#[derive(Debug, Clone, Copy)]
pub struct GenerationOptions {
    /// Upper bound on new tokens.
    pub max_new_tokens: usize,
    /// End-of-sequence is suppressed until this many tokens were generated.
    pub min_new_tokens: usize,
    /// Token forced as the last one when `max_new_tokens` is reached
    /// (Hugging Face's `forced_eos_token_id`, set by BART and Marian configs).
    pub forced_eos_token_id: Option<usize>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            forced_eos_token_id: None,
        }
    }
}

/// Greedily decodes. `prefix` is the prompt (or, for encoder-decoder models, the
/// decoder prefix starting with the decoder start token; empty means just the
/// decoder start token) and `source` the encoder input (encoder-decoder only).
/// Returns only the new token ids (the end-of-sequence token included when it
/// is produced).
pub fn generate_greedy(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
) -> Result<Vec<usize>> {
    let info = model.info();
    let device = model.device();
    // Encoder-decoder models start from the decoder start token when no prefix is given.
    let prefix: Vec<usize> = match (prefix.is_empty(), model.kind(), info.decoder_start_token_id) {
        (true, ModelKind::EncoderDecoder, Some(start)) => vec![start],
        _ => prefix.to_vec(),
    };
    if prefix.is_empty() {
        return Err(Error::InvalidInput(
            "generation needs at least one prefix token".into(),
        ));
    }
    if let Some(&bad) = prefix.iter().find(|&&t| t >= info.vocab_size) {
        return Err(Error::InvalidInput(format!(
            "token id {bad} is outside the vocabulary of {} tokens",
            info.vocab_size
        )));
    }
    if model.kind() == ModelKind::EncoderDecoder && source.is_some_and(<[usize]>::is_empty) {
        return Err(Error::InvalidInput(
            "encoder-decoder generation needs a non-empty source".into(),
        ));
    }
    let mut ids = prefix;
    let mut new = Vec::new();
    let source_embeds = match (model.kind(), source) {
        (ModelKind::EncoderDecoder, Some(src)) => {
            Some(model.embed_source(ids_tensor(&[src.to_vec()], device)))
        }
        (ModelKind::EncoderDecoder, None) => {
            return Err(Error::InvalidInput(
                "encoder-decoder generation needs a source".into(),
            ));
        }
        _ => None,
    };
    // Incremental decoding where the model supports it: each step feeds only the new tokens.
    let cache = model.supports_kv_cache().then(KvCache::default);
    for step in 0..options.max_new_tokens {
        if ids.len() > info.max_positions {
            break;
        }
        let fed = cache.as_ref().map_or(0, KvCache::len);
        let embeds = model.embed(ids_tensor(&[ids[fed..].to_vec()], device));
        let input = ModelInput {
            target_embeds: embeds,
            target_mask: vec![vec![true; ids.len()]],
            source_embeds: source_embeds.clone(),
            source_mask: source.map(|s| vec![vec![true; s.len()]]),
        };
        let out = model.forward(
            input,
            ForwardOptions {
                last_position_only: true,
                kv_cache: cache.clone(),
                ..Default::default()
            },
        );
        let logits: Vec<f32> = out
            .last_logits()
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        let suppress_eos = step < options.min_new_tokens;
        let next = match options.forced_eos_token_id {
            Some(eos) if step + 1 == options.max_new_tokens => eos,
            _ => argmax(
                &logits,
                if suppress_eos {
                    info.eos_token_id
                } else {
                    None
                },
            ),
        };
        ids.push(next);
        new.push(next);
        if Some(next) == info.eos_token_id {
            break;
        }
    }
    Ok(new)
}

fn argmax(values: &[f32], exclude: Option<usize>) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if Some(i) != exclude && v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}
