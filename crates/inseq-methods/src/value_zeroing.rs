//! Value Zeroing (Mohebbi et al., 2023, <https://aclanthology.org/2023.eacl-main.245>):
//! how much a layer's output changes when one token's attention value vector is zeroed.

use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::{
    AttentionKind, ForwardOptions, ModelInput, ModelKind, ModelOutput, ValueZeroing as ZeroHook,
};

use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
};

/// How clean and corrupted hidden states are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimilarityMetric {
    /// `1 - cosine similarity` (default, as Inseq).
    #[default]
    Cosine,
    /// Euclidean distance.
    Euclidean,
}

impl FromStr for SimilarityMetric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "euclidean" => Ok(Self::Euclidean),
            other => Err(Error::invalid_arg(
                "similarity_metric",
                format!("`{other}` is not one of cosine, euclidean"),
            )),
        }
    }
}

/// Value Zeroing, as Inseq's `value_zeroing`: for each layer `l` and each real
/// token `j`, the value vector of `j` is zeroed in every head of one attention
/// sublayer of layer `l`, layer `l` is re-run on its clean input, and token
/// `j`'s raw score for layer `l` is the distance between the clean and the
/// corrupted output of layer `l` at the position predicting the step's token
/// (`1 - cosine similarity` by default, or the euclidean distance). For the
/// last layer the stack's output after its final normalisation is compared
/// (GPT-2's `ln_f`, Llama's and T5's final norms), as Inseq takes it from
/// Hugging Face's last hidden state. Raw scores below `min_score_threshold`
/// (default `1e-5`) become 0, then each layer's scores are normalised to sum
/// to 1 over the attributed tokens (left as they are when they sum to 0).
///
/// * Decoder-only models: target scores, zeroing in the self-attention.
/// * Encoder-decoder models (as Inseq's `ValueZeroingAttribution`): the
///   **source** scores zero source token `j`'s value vector in the decoder's
///   *cross-attention* of layer `l`; with `attribute_target`, the **target**
///   scores zero target token `j`'s value vector in the decoder's
///   self-attention. Source and target scores are normalised separately (each
///   sums to 1 per layer). Inseq also returns the encoder self-attention scores
///   (`encoder_self_scores`, and `decoder_self_scores` without
///   `attribute_target`) as sequence scores; they are available from
///   [`ValueZeroing::encoder_self_scores`], not in the per-step output.
///
/// Scores are `[batch, len, layers]` with [`StepAttribution::score_dims`]
/// `Some(vec![layers])` (Inseq: `[len, steps, layers]`). Needs a model that
/// implements the value-zeroing hook ([`inseq_models::LanguageModel::supports_internal_hooks`]:
/// GPT-2, the Llama family, BART, Marian and T5).
///
/// Python Inseq 0.7.1 itself does not run `value_zeroing` on transformers 5.x (its
/// block-output hook expects tuples; its value hook, placed with `sys.settrace`,
/// zeroes nothing for most tokens); with those two hooks repaired its results
/// match this implementation (`tests/fixtures/value_zeroing_reference.py`).
/// Inseq's `euclidean` metric is broken (it computes `1 - cdist` of whole
/// sequences); here it is the euclidean distance of the two states.
#[derive(Debug, Clone)]
pub struct ValueZeroing {
    /// Distance between clean and corrupted states.
    pub similarity_metric: SimilarityMetric,
    /// Scores below this become 0 (default `1e-5`).
    pub min_score_threshold: f64,
}

impl Default for ValueZeroing {
    fn default() -> Self {
        Self {
            similarity_metric: SimilarityMetric::Cosine,
            min_score_threshold: 1e-5,
        }
    }
}

/// `[batch, hidden]` row `pos` of `[batch, len, hidden]`.
fn at_position(h: &Tensor<3>, pos: usize) -> Tensor<2> {
    let [b, _, d] = h.dims();
    h.clone().slice([0..b, pos..pos + 1, 0..d]).reshape([b, d])
}

/// The output of decoder layer `l` of `out` (the final, normalised state for the last layer).
fn decoder_state(out: &ModelOutput, l: usize, layers: usize) -> Result<Tensor<3>> {
    let state = if l + 1 == layers {
        out.final_hidden_state.as_ref()
    } else {
        out.hidden_states.get(l + 1)
    };
    state
        .cloned()
        .ok_or_else(|| Error::Unsupported("the model returned too few hidden states".into()))
}

/// The output of encoder layer `l` of `out` (the final, normalised state for the last layer).
fn encoder_state(out: &ModelOutput, l: usize, layers: usize) -> Result<Tensor<3>> {
    let state = if l + 1 == layers {
        out.encoder_final_hidden_state.as_ref()
    } else {
        out.encoder_hidden_states.get(l + 1)
    };
    state.cloned().ok_or_else(|| {
        Error::Unsupported("the model returned too few encoder hidden states".into())
    })
}

/// Repeats each row list of `mask` `times` times (`[times * batch]` rows, copy-major).
fn repeat_rows(mask: &[Vec<bool>], times: usize) -> Vec<Vec<bool>> {
    (0..times).flat_map(|_| mask.iter().cloned()).collect()
}

impl ValueZeroing {
    /// Builds from arguments (`similarity_metric`, `min_score_threshold`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let v = Self {
            similarity_metric: args.take("similarity_metric", d.similarity_metric)?,
            min_score_threshold: args.take("min_score_threshold", d.min_score_threshold)?,
        };
        args.finish("value_zeroing")?;
        Ok(v)
    }

    /// `[rows]` distances between `[rows, hidden]` clean and corrupted states.
    fn distance(&self, clean: Tensor<2>, corrupted: Tensor<2>) -> Result<Vec<f32>> {
        let [rows, _] = clean.dims();
        let d: Tensor<1> = match self.similarity_metric {
            SimilarityMetric::Cosine => {
                // torch.nn.CosineSimilarity clamps each norm at eps = 1e-8. For unit vectors
                // `1 - a·b = |a - b|² / 2`, which keeps its precision when the states barely
                // differ (`1 - a·b` in f32 cancels to noise below ~1e-7).
                let unit = |t: Tensor<2>| {
                    let n = t.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
                    t / n
                };
                ((unit(clean) - unit(corrupted)).square().sum_dim(1) * 0.5).reshape([rows])
            }
            SimilarityMetric::Euclidean => (clean - corrupted)
                .square()
                .sum_dim(1)
                .sqrt()
                .reshape([rows]),
        };
        crate::occlusion::to_vec(d)
    }

    /// Raw score after the threshold.
    fn threshold(&self, d: f32) -> f32 {
        if f64::from(d) < self.min_score_threshold {
            0.0
        } else {
            d
        }
    }

    /// Runs `x` (the step's batch) `n` times stacked, zeroing position `j` of copy
    /// `j` (where `mask` keeps it) in layer `layer`'s attention `kind`.
    fn corrupted_run(
        ctx: &MethodContext,
        step: &StepInput,
        x: &Embedded,
        kind: AttentionKind,
        layer: usize,
        mask: &[Vec<bool>],
        last_only: bool,
    ) -> ModelOutput {
        let n = mask.first().map_or(0, Vec::len);
        let positions: Vec<Option<usize>> = (0..n)
            .flat_map(|j| mask.iter().map(move |row| row[j].then_some(j)))
            .collect();
        ctx.model.forward(
            ModelInput {
                target_embeds: x.target.clone().repeat_dim(0, n),
                target_mask: repeat_rows(&step.prefix_mask, n),
                source_embeds: x.source.clone().map(|s| s.repeat_dim(0, n)),
                source_mask: step.source_mask.as_ref().map(|m| repeat_rows(m, n)),
            },
            ForwardOptions {
                hidden_states: true,
                last_position_only: last_only,
                zero_value: Some(ZeroHook {
                    layer,
                    positions,
                    attention: kind,
                }),
                ..Default::default()
            },
        )
    }

    /// The clean forward pass of the step with hidden states.
    fn clean_run(ctx: &MethodContext, step: &StepInput, x: &Embedded) -> ModelOutput {
        ctx.model.forward(
            ModelInput {
                target_embeds: x.target.clone(),
                target_mask: step.prefix_mask.clone(),
                source_embeds: x.source.clone(),
                source_mask: step.source_mask.clone(),
            },
            ForwardOptions {
                hidden_states: true,
                last_position_only: true,
                ..Default::default()
            },
        )
    }

    /// `[batch, n, layers]` normalised scores of zeroing each of the `n` positions of
    /// `mask` in the attention `kind`, measured on the decoder's last position.
    fn decoder_scores(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        x: &Embedded,
        clean: &ModelOutput,
        kind: AttentionKind,
        mask: &[Vec<bool>],
    ) -> Result<Tensor<3>> {
        let batch = mask.len();
        let n = mask.first().map_or(0, Vec::len);
        let layers = ctx.model.info().num_layers;
        let device = x.target.device();
        // scores[(r * n + j) * layers + l]
        let mut scores = vec![0f32; batch * n * layers];
        for l in 0..layers {
            let clean_state = decoder_state(clean, l, layers)?;
            let last = clean_state.dims()[1] - 1;
            let clean_l = at_position(&clean_state, last).repeat_dim(0, n);
            let out = Self::corrupted_run(ctx, step, x, kind, l, mask, true);
            let corrupted = decoder_state(&out, l, layers)?;
            let last = corrupted.dims()[1] - 1;
            let dist = self.distance(clean_l, at_position(&corrupted, last))?;
            for j in 0..n {
                for (r, row) in mask.iter().enumerate() {
                    if row[j] {
                        scores[(r * n + j) * layers + l] = self.threshold(dist[j * batch + r]);
                    }
                }
            }
        }
        normalise(&mut scores, batch, n, 1, layers);
        Ok(Tensor::<3>::from_data(
            TensorData::new(scores, [batch, n, layers]),
            &device,
        ))
    }

    /// Inseq's `encoder_self_scores` for the step's sources (encoder-decoder models):
    /// `[batch, source_len, source_len, layers]`, where entry `[r, j, i, l]` is the
    /// normalised score of zeroing source token `j`'s value vector in encoder layer
    /// `l`'s self-attention, measured on encoder layer `l`'s output at source position
    /// `i` (the encoder's final output for the last layer). Each `[r, .., i, l]`
    /// sums to 1 over `j` (unless all scores are 0); padding positions score 0.
    pub fn encoder_self_scores(&self, ctx: &MethodContext, step: &StepInput) -> Result<Tensor<4>> {
        let model = ctx.model;
        if model.kind() != ModelKind::EncoderDecoder {
            return Err(Error::Unsupported(
                "value_zeroing: encoder self-attention scores need an encoder-decoder model".into(),
            ));
        }
        check_hooks(ctx)?;
        let x = embed_step(ctx, step, false);
        let Some(src) = &x.source else {
            return Err(Error::invalid_arg("source_ids", "missing"));
        };
        let [batch, n, _] = src.dims();
        let mask = step
            .source_mask
            .clone()
            .unwrap_or_else(|| vec![vec![true; n]; batch]);
        let layers = model.num_encoder_layers();
        let clean = Self::clean_run(ctx, step, &x);
        // scores[((r * n + j) * n + i) * layers + l]
        let mut scores = vec![0f32; batch * n * n * layers];
        for l in 0..layers {
            let clean_l = encoder_state(&clean, l, layers)?.repeat_dim(0, n);
            let out =
                Self::corrupted_run(ctx, step, &x, AttentionKind::EncoderSelf, l, &mask, true);
            let corrupted = encoder_state(&out, l, layers)?;
            let [rows, _, d] = corrupted.dims();
            let dist = self.distance(
                clean_l.reshape([rows * n, d]),
                corrupted.reshape([rows * n, d]),
            )?;
            for j in 0..n {
                for (r, row) in mask.iter().enumerate() {
                    if !row[j] {
                        continue;
                    }
                    for i in 0..n {
                        if row[i] {
                            let v = dist[(j * batch + r) * n + i];
                            scores[((r * n + j) * n + i) * layers + l] = self.threshold(v);
                        }
                    }
                }
            }
        }
        normalise(&mut scores, batch, n, n, layers);
        Ok(Tensor::<4>::from_data(
            TensorData::new(scores, [batch, n, n, layers]),
            &src.device(),
        ))
    }
}

/// Divides `scores` (`[batch, n, m, layers]`) by their sum over `n` per `(batch, m, layer)`,
/// where that sum is not 0 (Inseq's per-token normalisation).
fn normalise(scores: &mut [f32], batch: usize, n: usize, m: usize, layers: usize) {
    for r in 0..batch {
        for i in 0..m {
            for l in 0..layers {
                let idx = |j: usize| ((r * n + j) * m + i) * layers + l;
                let sum: f32 = (0..n).map(|j| scores[idx(j)]).sum();
                if sum != 0.0 {
                    for j in 0..n {
                        scores[idx(j)] /= sum;
                    }
                }
            }
        }
    }
}

fn check_hooks(ctx: &MethodContext) -> Result<()> {
    if ctx.model.supports_internal_hooks() {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "value_zeroing: the `{}` model does not implement the value-zeroing hook",
            ctx.model.info().architecture
        )))
    }
}

impl AttributionMethod for ValueZeroing {
    fn id(&self) -> &str {
        "value_zeroing"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        check_hooks(ctx)?;
        let layers = ctx.model.info().num_layers;
        if layers == 0 {
            return Err(Error::Unsupported(
                "value_zeroing: the model has no layers".into(),
            ));
        }
        let x = embed_step(ctx, step, false);
        let clean = Self::clean_run(ctx, step, &x);
        let encoder_decoder = ctx.model.kind() == ModelKind::EncoderDecoder;
        let source = match (&x.source, encoder_decoder) {
            (Some(src), true) => {
                let [batch, n, _] = src.dims();
                let mask = step
                    .source_mask
                    .clone()
                    .unwrap_or_else(|| vec![vec![true; n]; batch]);
                Some(self.decoder_scores(ctx, step, &x, &clean, AttentionKind::Cross, &mask)?)
            }
            _ => None,
        };
        let target = if ctx.attribute_target || !encoder_decoder {
            Some(self.decoder_scores(
                ctx,
                step,
                &x,
                &clean,
                AttentionKind::DecoderSelf,
                &step.prefix_mask,
            )?)
        } else {
            None
        };
        Ok(StepAttribution {
            source,
            target,
            deltas: None,
            score_dims: Some(vec![layers]),
        })
    }
}
