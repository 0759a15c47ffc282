//! Greedy decoding.

use burn::tensor::Tensor;
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

/// Self-attention weights recorded while generating (see [`generate_greedy_recording`]): those of
/// one forward pass over `ids` with [`ForwardOptions::attentions`], up to floating-point rounding,
/// so that the `attention` method need not run that pass again.
#[derive(Debug, Clone)]
pub struct RecordedAttentions {
    /// The tokens fed to the model: the prompt and every generated token but the last.
    pub ids: Vec<usize>,
    /// Per decoder layer `[1, heads, ids.len(), ids.len()]` causal self-attention weights.
    pub weights: Vec<Tensor<4>>,
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
    generate(model, source, prefix, options, false).map(|(new, _)| new)
}

/// [`generate_greedy`], also returning the self-attention weights of the passes it ran, for
/// decoder-only models with a key/value cache (`None` for other models). The prompt pass gives
/// the prompt's rows, each one-token pass one more row.
///
/// ```
/// # use inseq_models::{generate_greedy_recording, GenerationOptions, load_pretrained};
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-gpt2");
/// # if !std::path::Path::new(dir).exists() { return; }
/// let m = load_pretrained(dir, &burn::tensor::Device::default()).unwrap();
/// let options = GenerationOptions { max_new_tokens: 3, min_new_tokens: 3, ..Default::default() };
/// let (new, rec) = generate_greedy_recording(m.model.as_ref(), None, &[1, 2], options).unwrap();
/// let rec = rec.unwrap();
/// assert_eq!(rec.ids, [&[1, 2][..], &new[..2]].concat());
/// assert_eq!(rec.weights[0].dims()[2..], [4, 4]);
/// ```
pub fn generate_greedy_recording(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
) -> Result<(Vec<usize>, Option<RecordedAttentions>)> {
    generate(model, source, prefix, options, true)
}

fn generate(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
    record: bool,
) -> Result<(Vec<usize>, Option<RecordedAttentions>)> {
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
    let record = record && cache.is_some() && model.kind() == ModelKind::DecoderOnly;
    // Per pass, per layer `[1, heads, new positions, positions so far]`.
    let mut passes: Vec<Vec<Tensor<4>>> = Vec::new();
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
        let mut out = model.forward(
            input,
            ForwardOptions {
                last_position_only: true,
                kv_cache: cache.clone(),
                attentions: record,
                ..Default::default()
            },
        );
        if record {
            passes.push(std::mem::take(&mut out.attentions));
        }
        let logits: Vec<f32> = out
            .last_logits()
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::Numerical(format!(
                "generation step {step}: the next-token logits are not finite (e.g. {bad}); \
                 likely cause: the model's weights or config (NaN weights, a non-positive norm \
                 epsilon, rope_theta)"
            )));
        }
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
    let recorded = match (record, &cache) {
        (true, Some(cache)) if !passes.is_empty() => Some(RecordedAttentions {
            ids: ids[..cache.len()].to_vec(),
            weights: assemble_rows(passes, cache.len()),
        }),
        _ => None,
    };
    Ok((new, recorded))
}

/// Stacks the attention rows of successive passes into per-layer `[1, heads, total, total]`
/// matrices, with zeros for the keys a row's pass had not seen yet (causal masking gives them zero
/// weight anyway).
fn assemble_rows(passes: Vec<Vec<Tensor<4>>>, total: usize) -> Vec<Tensor<4>> {
    let layers = passes[0].len();
    let mut per_layer: Vec<Vec<Tensor<4>>> = vec![Vec::with_capacity(passes.len()); layers];
    for pass in passes {
        for (l, w) in pass.into_iter().enumerate() {
            let [b, h, q, k] = w.dims();
            let w = if k < total {
                let zeros = Tensor::zeros([b, h, q, total - k], &w.device());
                Tensor::cat(vec![w, zeros], 3)
            } else {
                w
            };
            per_layer[l].push(w);
        }
    }
    per_layer
        .into_iter()
        .map(|rows| Tensor::cat(rows, 2))
        .collect()
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
