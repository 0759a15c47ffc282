//! Value Zeroing (Mohebbi et al., 2023, <https://aclanthology.org/2023.eacl-main.245>):
//! how much a layer's output at the predicting position changes when one
//! token's attention value vector is zeroed.

use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, ModelInput, ModelKind, ValueZeroing as ZeroHook};

use crate::{AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step};

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

/// Value Zeroing of the decoder's self-attention, as Inseq's `value_zeroing`
/// (which fails on every model of this workspace in Python Inseq 0.7.1): for
/// each layer `l` and each real token `j`, the value vector of `j` is zeroed in
/// every head of layer `l`'s self-attention, layer `l` is re-run on its clean
/// input, and token `j`'s score for layer `l` is the distance between the clean
/// and the corrupted output of layer `l` at the position predicting the
/// step's token (`1 - cosine similarity` by default, or the euclidean
/// distance). Scores below `min_score_threshold` (default `1e-5`) become 0.
///
/// Scores are `[batch, len, layers]` with [`StepAttribution::score_dims`]
/// `Some(vec![layers])` (Inseq: `[len, steps, layers]`). Needs a model that
/// implements the value-zeroing hook ([`inseq_models::LanguageModel::supports_internal_hooks`]:
/// GPT-2 and the Llama family); encoder-decoder models are refused with
/// [`Error::Unsupported`].
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
}

/// `[batch, hidden]` hidden state of layer output `index` at the last position.
fn last_state(states: &[Tensor<3>], index: usize) -> Result<Tensor<2>> {
    let h = states
        .get(index)
        .ok_or_else(|| Error::Unsupported("the model returned too few hidden states".into()))?;
    let [b, s, d] = h.dims();
    Ok(h.clone().slice([0..b, s - 1..s, 0..d]).reshape([b, d]))
}

impl AttributionMethod for ValueZeroing {
    fn id(&self) -> &str {
        "value_zeroing"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let model = ctx.model;
        if model.kind() == ModelKind::EncoderDecoder {
            return Err(Error::Unsupported(
                "value_zeroing: encoder-decoder models are not supported yet (the hook is implemented for the decoder-only GPT-2 and Llama models)".into(),
            ));
        }
        if !model.supports_internal_hooks() {
            return Err(Error::Unsupported(format!(
                "value_zeroing: the `{}` model does not implement the value-zeroing hook",
                model.info().architecture
            )));
        }
        let x = embed_step(ctx, step, false);
        let batch = step.prefix_ids.len();
        let [_, len, _] = x.target.dims();
        let device = x.target.device();
        let run = |embeds: Tensor<3>, mask: Vec<Vec<bool>>, zero: Option<ZeroHook>| {
            model.forward(
                ModelInput {
                    target_embeds: embeds,
                    target_mask: mask,
                    source_embeds: None,
                    source_mask: None,
                },
                ForwardOptions {
                    hidden_states: true,
                    last_position_only: true,
                    zero_value: zero,
                    ..Default::default()
                },
            )
        };
        let clean = run(x.target.clone(), step.prefix_mask.clone(), None);
        let layers = clean.hidden_states.len().saturating_sub(1);
        if layers == 0 {
            return Err(Error::Unsupported(
                "value_zeroing: the model returned no hidden states".into(),
            ));
        }
        // One corrupted copy of the batch per position: row `j * batch + r` zeroes token j of row r.
        let rep_mask: Vec<Vec<bool>> = (0..len).flat_map(|_| step.prefix_mask.clone()).collect();
        let positions: Vec<Option<usize>> = (0..len)
            .flat_map(|j| (0..batch).map(move |r| (r, j)))
            .map(|(r, j)| step.prefix_mask[r][j].then_some(j))
            .collect();
        let embeds = x.target.clone().repeat_dim(0, len);
        // scores[(r * len + j) * layers + l]
        let mut scores = vec![0f32; batch * len * layers];
        for l in 0..layers {
            let clean_l = last_state(&clean.hidden_states, l + 1)?.repeat_dim(0, len);
            let out = run(
                embeds.clone(),
                rep_mask.clone(),
                Some(ZeroHook {
                    layer: l,
                    positions: positions.clone(),
                }),
            );
            let corrupted = last_state(&out.hidden_states, l + 1)?;
            let dist: Tensor<1> = match self.similarity_metric {
                SimilarityMetric::Cosine => {
                    let dot = (clean_l.clone() * corrupted.clone()).sum_dim(1);
                    let n1 = clean_l.square().sum_dim(1).sqrt();
                    let n2 = corrupted.square().sum_dim(1).sqrt();
                    // torch.nn.CosineSimilarity clamps each norm at eps = 1e-8.
                    let sim = dot / (n1.clamp_min(1e-8) * n2.clamp_min(1e-8));
                    (sim.neg() + 1.0).reshape([len * batch])
                }
                SimilarityMetric::Euclidean => (clean_l - corrupted)
                    .square()
                    .sum_dim(1)
                    .sqrt()
                    .reshape([len * batch]),
            };
            let dist = crate::occlusion::to_vec(dist)?;
            for j in 0..len {
                for r in 0..batch {
                    if positions[j * batch + r].is_some() {
                        let d = dist[j * batch + r];
                        let d = if f64::from(d) < self.min_score_threshold {
                            0.0
                        } else {
                            d
                        };
                        scores[(r * len + j) * layers + l] = d;
                    }
                }
            }
        }
        let target = Tensor::<3>::from_data(TensorData::new(scores, [batch, len, layers]), &device);
        Ok(StepAttribution {
            source: None,
            target: Some(target),
            deltas: None,
            score_dims: Some(vec![layers]),
        })
    }
}
