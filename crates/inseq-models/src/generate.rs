//! Greedy decoding and seeded sampling, with Hugging Face `generate`'s logits processors.

use burn::tensor::Tensor;
use inseq_core::{Error, Result};

use crate::beam::{BeamHypothesis, BeamModel, EarlyStopping};
use crate::model::{ForwardOptions, KvCache, LanguageModel, ModelInput, ModelKind};
use crate::nn::ids_tensor;

/// Options for [`generate_greedy`], named as in Hugging Face `generate`.
#[derive(Debug, Clone)]
pub struct GenerationOptions {
    /// Upper bound on new tokens.
    pub max_new_tokens: usize,
    /// End-of-sequence is suppressed until this many tokens were generated.
    pub min_new_tokens: usize,
    /// End-of-sequence is suppressed while the sequence (the prompt of a decoder-only model
    /// included, the decoder start token of an encoder-decoder one) is shorter than this
    /// (Hugging Face's `min_length`; 0: off).
    pub min_length: usize,
    /// Token sequences never generated (Hugging Face's `bad_words_ids`; Marian bans its pad
    /// token this way): a one-token entry bans that token, a longer one bans its last token
    /// after the others. Entries that are an end token alone are ignored, as in `transformers`.
    pub bad_words_ids: Vec<Vec<usize>>,
    /// Token forced as the last one when `max_new_tokens` is reached
    /// (Hugging Face's `forced_eos_token_id`, set by BART and Marian configs).
    pub forced_eos_token_id: Option<usize>,
    /// Token forced as the first generated one when the sequence holds a single token
    /// (Hugging Face's `forced_bos_token_id`, the target language of mBART, M2M100 and NLLB).
    pub forced_bos_token_id: Option<usize>,
    /// Tokens that end generation, any of them (Hugging Face's `eos_token_id`, one id or a list
    /// as Llama 3 declares). Empty: the model's `eos_token_id`.
    pub eos_token_ids: Vec<usize>,
    /// Hugging Face's `repetition_penalty` (1.0: off): the logits of tokens already in the
    /// sequence are divided by it when positive and multiplied by it when negative.
    pub repetition_penalty: f32,
    /// Hugging Face's `no_repeat_ngram_size` (0: off): no n-gram of this size occurs twice.
    pub no_repeat_ngram_size: usize,
    /// Sample from the processed distribution instead of taking its argmax.
    pub do_sample: bool,
    /// Seed of the sampler: the same seed gives the same tokens on every run.
    pub seed: u64,
    /// Sampling temperature (1.0: off).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens when sampling (0: off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1.0: off).
    pub top_p: f32,
    /// Beams of beam search (1: greedy decoding or sampling).
    pub num_beams: usize,
    /// Beam search: finished hypotheses score `sum_logprobs / generated_len^length_penalty`.
    pub length_penalty: f32,
    /// Beam search: when to stop once `num_beams` hypotheses are finished.
    pub early_stopping: EarlyStopping,
    /// Beam search: how many of the best hypotheses [`beam_search`] returns.
    pub num_return_sequences: usize,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            min_length: 0,
            bad_words_ids: Vec::new(),
            forced_eos_token_id: None,
            forced_bos_token_id: None,
            eos_token_ids: Vec::new(),
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            do_sample: false,
            seed: 0,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            num_return_sequences: 1,
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
    /// The query positions whose weights were recorded, in row order: the prompt's last
    /// position and each generated token's (every prompt position where the model does not
    /// honour [`ForwardOptions::attention_rows`]).
    pub rows: Vec<usize>,
    /// Per decoder layer `[1, heads, rows.len(), ids.len()]` causal self-attention weights of
    /// the queries `rows`.
    pub weights: Vec<Tensor<4>>,
}

/// Decodes greedily, samples with `options.do_sample`, or runs beam search with
/// `options.num_beams > 1` (see [`beam_search`]), after Hugging Face's logits processors.
/// `prefix` is the prompt (or, for encoder-decoder models, the decoder prefix starting with the
/// decoder start token; empty means just the decoder start token) and `source` the encoder input
/// (encoder-decoder only).
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
/// the last prompt position's row (only the rows the `attention` method reads, so that a long
/// prompt does not hold `[heads, len, len]` per layer), each one-token pass one more row.
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
/// assert_eq!(rec.rows, [1, 2, 3]);
/// assert_eq!(rec.weights[0].dims()[2..], [3, 4]);
/// ```
pub fn generate_greedy_recording(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
) -> Result<(Vec<usize>, Option<RecordedAttentions>)> {
    generate(model, source, prefix, options, true)
}

/// [`generate_greedy`] with `options.num_beams > 1`, returning the
/// `options.num_return_sequences` best hypotheses, best first (Hugging Face's beam search).
///
/// ```
/// # use inseq_models::{beam_search, GenerationOptions, load_pretrained};
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-gpt2");
/// # if !std::path::Path::new(dir).exists() { return; }
/// let m = load_pretrained(dir, &burn::tensor::Device::default()).unwrap();
/// let options = GenerationOptions {
///     max_new_tokens: 4,
///     num_beams: 3,
///     num_return_sequences: 2,
///     ..Default::default()
/// };
/// let best = beam_search(m.model.as_ref(), None, &[1, 2], options).unwrap();
/// assert_eq!(best.len(), 2);
/// assert!(best[0].score >= best[1].score);
/// ```
pub fn beam_search(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
) -> Result<Vec<BeamHypothesis>> {
    let start = Start::new(model, source, prefix, &options)?;
    // As greedy decoding: no sequence longer than `max_positions` tokens.
    let room = (model.info().max_positions).saturating_sub(start.prefix.len());
    let options = GenerationOptions {
        max_new_tokens: options.max_new_tokens.min(room),
        ..options
    };
    let stepper = BeamModel {
        model,
        source: start
            .source_embeds
            .map(|e| (e, source.map_or(0, <[usize]>::len))),
        cache: model.supports_kv_cache().then(KvCache::default),
    };
    crate::beam::beam_search(&stepper, start.prefix, &options, &start.eos)
}

/// What every decoding strategy starts from: the checked prefix, the end tokens and the
/// encoder input.
struct Start {
    prefix: Vec<usize>,
    eos: Vec<usize>,
    source_embeds: Option<Tensor<3>>,
}

impl Start {
    fn new(
        model: &dyn LanguageModel,
        source: Option<&[usize]>,
        prefix: &[usize],
        options: &GenerationOptions,
    ) -> Result<Self> {
        let info = model.info();
        // Encoder-decoder models start from the decoder start token when no prefix is given.
        let prefix: Vec<usize> =
            match (prefix.is_empty(), model.kind(), info.decoder_start_token_id) {
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
        options.validate()?;
        let eos: Vec<usize> = match options.eos_token_ids.as_slice() {
            [] => info.eos_token_id.into_iter().collect(),
            list => list.to_vec(),
        };
        let source_embeds = match (model.kind(), source) {
            (ModelKind::EncoderDecoder, Some([])) => {
                return Err(Error::InvalidInput(
                    "encoder-decoder generation needs a non-empty source".into(),
                ));
            }
            (ModelKind::EncoderDecoder, Some(src)) => {
                Some(model.embed_source(ids_tensor(&[src.to_vec()], model.device())))
            }
            (ModelKind::EncoderDecoder, None) => {
                return Err(Error::InvalidInput(
                    "encoder-decoder generation needs a source".into(),
                ));
            }
            _ => None,
        };
        Ok(Self {
            prefix,
            eos,
            source_embeds,
        })
    }
}

fn generate(
    model: &dyn LanguageModel,
    source: Option<&[usize]>,
    prefix: &[usize],
    options: GenerationOptions,
    record: bool,
) -> Result<(Vec<usize>, Option<RecordedAttentions>)> {
    if options.num_beams > 1 {
        let best = beam_search(model, source, prefix, options)?;
        return Ok((
            best.into_iter().next().map(|h| h.ids).unwrap_or_default(),
            None,
        ));
    }
    let info = model.info();
    let device = model.device();
    let Start {
        prefix,
        eos,
        source_embeds,
    } = Start::new(model, source, prefix, &options)?;
    let mut sampler = options.do_sample.then_some(SplitMix64(options.seed));
    let mut ids = prefix;
    let mut new = Vec::new();
    // Incremental decoding where the model supports it: each step feeds only the new tokens.
    let cache = model.supports_kv_cache().then(KvCache::default);
    let record = record && cache.is_some() && model.kind() == ModelKind::DecoderOnly;
    // Per pass, the recorded query positions and per layer `[1, heads, rows, positions so far]`.
    let mut passes: Vec<(Vec<usize>, Vec<Tensor<4>>)> = Vec::new();
    for step in 0..options.max_new_tokens {
        // The sequence never outgrows the model's context, so that it can be attributed.
        if ids.len() >= info.max_positions {
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
                attention_rows: record.then(|| vec![ids.len() - fed - 1]),
                ..Default::default()
            },
        );
        if record {
            let rows = match out.attention_rows.take() {
                Some(rows) => rows.into_iter().map(|r| fed + r).collect(),
                None => (fed..ids.len()).collect(),
            };
            passes.push((rows, std::mem::take(&mut out.attentions)));
        }
        let mut logits: Vec<f32> = out
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
        process_logits(&mut logits, &ids, step, &options, &eos);
        let next = match sampler.as_mut() {
            Some(rng) => sample(&logits, rng)?,
            None => argmax(&logits),
        };
        ids.push(next);
        new.push(next);
        if eos.contains(&next) {
            break;
        }
    }
    let recorded = match (record, &cache) {
        (true, Some(cache)) if !passes.is_empty() => Some(RecordedAttentions {
            ids: ids[..cache.len()].to_vec(),
            rows: passes.iter().flat_map(|(rows, _)| rows.clone()).collect(),
            weights: assemble_rows(passes.into_iter().map(|(_, w)| w).collect(), cache.len()),
        }),
        _ => None,
    };
    Ok((new, recorded))
}

/// Stacks the attention rows of successive passes into per-layer `[1, heads, rows, total]`
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

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

impl GenerationOptions {
    /// Sets the fields named in `args`, a JSON object with Hugging Face `generate`'s keys (as
    /// Inseq's `generation_args`). `origin` names where `args` come from, for errors. Keys this
    /// crate does not implement are errors; `seed` is this crate's sampler seed.
    pub fn update_from_json(
        &mut self,
        args: &serde_json::Map<String, serde_json::Value>,
        origin: &str,
    ) -> Result<()> {
        for (key, value) in args {
            let bad = || Error::InvalidArgument {
                name: format!("{origin}: {key}"),
                reason: format!("unsupported value {value}"),
            };
            let uint = || value.as_u64().map(|v| v as usize).ok_or_else(bad);
            let float = || value.as_f64().map(|v| v as f32).ok_or_else(bad);
            let token = || match value {
                serde_json::Value::Null => Ok(None),
                _ => uint().map(Some),
            };
            match key.as_str() {
                "max_new_tokens" => self.max_new_tokens = uint()?,
                "min_new_tokens" => self.min_new_tokens = uint()?,
                "min_length" => self.min_length = uint()?,
                "bad_words_ids" => {
                    self.bad_words_ids = match value {
                        serde_json::Value::Null => Vec::new(),
                        serde_json::Value::Array(seqs) => seqs
                            .iter()
                            .map(|seq| {
                                seq.as_array()
                                    .filter(|ids| !ids.is_empty())
                                    .ok_or_else(bad)?
                                    .iter()
                                    .map(|v| v.as_u64().map(|v| v as usize).ok_or_else(bad))
                                    .collect::<Result<Vec<_>>>()
                            })
                            .collect::<Result<_>>()?,
                        _ => return Err(bad()),
                    }
                }
                "do_sample" => self.do_sample = value.as_bool().ok_or_else(bad)?,
                "seed" => self.seed = value.as_u64().ok_or_else(bad)?,
                "temperature" => self.temperature = float()?,
                "top_k" => self.top_k = uint()?,
                "top_p" => self.top_p = float()?,
                "repetition_penalty" => self.repetition_penalty = float()?,
                "no_repeat_ngram_size" => self.no_repeat_ngram_size = uint()?,
                "forced_bos_token_id" => self.forced_bos_token_id = token()?,
                "forced_eos_token_id" => self.forced_eos_token_id = token()?,
                "eos_token_id" => {
                    self.eos_token_ids = match value {
                        serde_json::Value::Null => Vec::new(),
                        serde_json::Value::Array(items) => items
                            .iter()
                            .map(|v| v.as_u64().map(|v| v as usize).ok_or_else(bad))
                            .collect::<Result<_>>()?,
                        _ => vec![uint()?],
                    }
                }
                "num_beams" => self.num_beams = uint()?,
                "length_penalty" => self.length_penalty = float()?,
                "num_return_sequences" => self.num_return_sequences = uint()?,
                "early_stopping" => {
                    self.early_stopping = match value {
                        serde_json::Value::Bool(false) => EarlyStopping::Heuristic,
                        serde_json::Value::Bool(true) => EarlyStopping::Done,
                        serde_json::Value::String(s) if s == "never" => EarlyStopping::Never,
                        _ => return Err(bad()),
                    }
                }
                _ => {
                    return Err(Error::Unsupported(format!(
                        "{origin}: generation argument `{key}` = {value} is not implemented"
                    )));
                }
            }
        }
        self.validate()
    }

    /// Rejects values Hugging Face `generate` rejects.
    fn validate(&self) -> Result<()> {
        let check = |ok: bool, name: &str, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid_arg(name, what))
            }
        };
        check(
            self.repetition_penalty > 0.0,
            "repetition_penalty",
            "must be a positive number",
        )?;
        check(
            self.temperature > 0.0,
            "temperature",
            "must be a positive number",
        )?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            "must be in (0, 1]",
        )?;
        check(self.num_beams >= 1, "num_beams", "must be at least 1")?;
        check(
            self.num_beams <= MAX_BEAMS,
            "num_beams",
            "must be at most 1024, which bounds the work and memory of a search (each beam keeps \
             its own cache and scores the whole vocabulary at every step)",
        )?;
        check(
            self.num_return_sequences >= 1 && self.num_return_sequences <= self.num_beams,
            "num_return_sequences",
            "must be between 1 and num_beams (several sequences come from beam search only)",
        )?;
        if self.do_sample && self.num_beams > 1 {
            return Err(Error::Unsupported(
                "beam sampling (do_sample with num_beams > 1) is not implemented".into(),
            ));
        }
        Ok(())
    }
}

/// The most beams [`beam_search`] takes.
pub const MAX_BEAMS: usize = 1024;

/// Hugging Face `generate`'s logits processors, in the order `_get_logits_processor` builds
/// them: repetition penalty, no-repeat n-gram, bad words, min length, min new tokens, forced BOS,
/// forced EOS, then
/// (sampling only) temperature, top-k and top-p. `ids` is the sequence so far (the prompt for
/// decoder-only models, the decoder prefix for encoder-decoder ones) and `step` the number of
/// tokens generated.
pub(crate) fn process_logits(
    logits: &mut [f32],
    ids: &[usize],
    step: usize,
    options: &GenerationOptions,
    eos: &[usize],
) {
    if options.repetition_penalty != 1.0 {
        apply_repetition_penalty(logits, ids, options.repetition_penalty);
    }
    if options.no_repeat_ngram_size > 0 {
        for banned in banned_ngram_tokens(ids, options.no_repeat_ngram_size) {
            if let Some(l) = logits.get_mut(banned) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    for banned in banned_words(ids, &options.bad_words_ids, eos) {
        if let Some(l) = logits.get_mut(banned) {
            *l = f32::NEG_INFINITY;
        }
    }
    if step < options.min_new_tokens || ids.len() < options.min_length {
        for &id in eos {
            if let Some(l) = logits.get_mut(id) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if let Some(bos) = options.forced_bos_token_id.filter(|_| ids.len() == 1) {
        force_token(logits, bos);
    }
    if let Some(eos) = options
        .forced_eos_token_id
        .filter(|_| step + 1 == options.max_new_tokens)
    {
        force_token(logits, eos);
    }
    if options.do_sample {
        if options.temperature != 1.0 {
            logits.iter_mut().for_each(|l| *l /= options.temperature);
        }
        if options.top_k > 0 {
            keep_top_k(logits, options.top_k);
        }
        if options.top_p < 1.0 {
            keep_top_p(logits, options.top_p);
        }
    }
}

/// Every logit is minus infinity but `token`'s, which is zero.
fn force_token(logits: &mut [f32], token: usize) {
    logits.iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
    if let Some(l) = logits.get_mut(token) {
        *l = 0.0;
    }
}

/// `RepetitionPenaltyLogitsProcessor`: each distinct token of `ids` once.
fn apply_repetition_penalty(logits: &mut [f32], ids: &[usize], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    let vocab = logits.len();
    for &t in ids.iter().filter(|&&t| t < vocab) {
        if seen.insert(t) {
            let l = &mut logits[t];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: the tokens that would complete an n-gram already in `ids`.
fn banned_ngram_tokens(ids: &[usize], n: usize) -> Vec<usize> {
    if ids.len() + 1 < n {
        return Vec::new();
    }
    let tail = &ids[ids.len() + 1 - n..];
    ids.windows(n)
        .filter(|w| w[..n - 1] == *tail)
        .map(|w| w[n - 1])
        .collect()
}

/// `NoBadWordsLogitsProcessor`: the last token of every banned sequence whose other tokens end
/// `ids` (end tokens banned alone are skipped).
fn banned_words(ids: &[usize], bad_words: &[Vec<usize>], eos: &[usize]) -> Vec<usize> {
    bad_words
        .iter()
        .filter(|seq| !(seq.len() == 1 && eos.contains(&seq[0])))
        .filter_map(|seq| {
            let (last, before) = seq.split_last()?;
            ids.ends_with(before).then_some(*last)
        })
        .collect()
}

/// `TopKLogitsWarper`: logits below the k-th largest become minus infinity (ties kept).
fn keep_top_k(logits: &mut [f32], k: usize) {
    let k = k.min(logits.len());
    let mut sorted = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    logits
        .iter_mut()
        .filter(|l| **l < kth)
        .for_each(|l| *l = f32::NEG_INFINITY);
}

/// `TopPLogitsWarper`: sorted ascending, tokens whose cumulative probability stays at or below
/// `1 - top_p` are removed; the most likely token is always kept.
fn keep_top_p(logits: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let probs = softmax(&order.iter().map(|&i| logits[i]).collect::<Vec<_>>());
    let mut cumulative = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        cumulative += probs[rank];
        if cumulative <= 1.0 - top_p && rank + 1 < order.len() {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Draws a token from `softmax(logits)`.
fn sample(logits: &[f32], rng: &mut SplitMix64) -> Result<usize> {
    let probs = softmax(logits);
    if probs.iter().any(|p| p.is_nan()) {
        return Err(Error::Numerical(
            "sampling: the processed logits give no valid distribution".into(),
        ));
    }
    let mut u = rng.next_unit() * probs.iter().sum::<f32>();
    for (i, &p) in probs.iter().enumerate() {
        if u < p {
            return Ok(i);
        }
        u -= p;
    }
    Ok(argmax(logits))
}

/// SplitMix64: a small reproducible generator (the same seed, the same draws on every platform).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}
