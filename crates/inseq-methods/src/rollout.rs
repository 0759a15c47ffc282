//! Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
//! Transformers", <https://aclanthology.org/2020.acl-main.385>).

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, ModelInput, ModelKind};

use crate::{AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step};

/// Attention rollout, a method beyond Python Inseq: each layer's attention
/// weights are averaged over heads, mixed with the identity to account for the
/// residual connection (`Â = (1 - r) A + r I`, `r = residual_weight`, default
/// 0.5 as in the paper) and multiplied through the layers
/// (`R = Â_L ⋯ Â_1`); a token's score is the row of `R` for the position that
/// predicts the step's token. No gradient is computed.
///
/// Decoder-only models: rollout of the self-attention. Encoder-decoder models
/// (an extension of the paper, which covers encoders only): the source scores
/// are the cross-attention of the predicting position, averaged over heads and
/// layers, propagated through the rollout of the encoder's self-attention;
/// the target prefix (with `attribute_target`) gets the decoder self-attention
/// rollout. Scores are one per token ([`StepAttribution::score_dims`]
/// `Some(vec![])`); each row sums to 1.
#[derive(Debug, Clone)]
pub struct AttentionRollout {
    /// Weight of the identity (residual) term, in `[0, 1]` (default 0.5).
    pub residual_weight: f64,
}

impl Default for AttentionRollout {
    fn default() -> Self {
        Self {
            residual_weight: 0.5,
        }
    }
}

impl AttentionRollout {
    /// Builds from arguments (`residual_weight`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let r = Self {
            residual_weight: args.take("residual_weight", 0.5)?,
        };
        args.finish("attention_rollout")?;
        if !(0.0..=1.0).contains(&r.residual_weight) {
            return Err(Error::invalid_arg("residual_weight", "must be in [0, 1]"));
        }
        Ok(r)
    }

    /// `R = Â_L ⋯ Â_1` of per-layer `[batch, heads, s, s]` weights, `[batch, s, s]`.
    fn rollout(&self, layers: &[Tensor<4>]) -> Result<Tensor<3>> {
        let first = layers
            .first()
            .ok_or_else(|| Error::Unsupported("the model returned no attention weights".into()))?;
        let [b, _, s, k] = first.dims();
        if s != k {
            return Err(Error::Unsupported(format!(
                "attention_rollout: self-attention is {s} × {k}, not square"
            )));
        }
        let device = first.device();
        let eye: Vec<f32> = (0..b * s * s)
            .map(|i| if (i % (s * s)) / s == i % s { 1.0 } else { 0.0 })
            .collect();
        let eye = Tensor::<3>::from_data(TensorData::new(eye, [b, s, s]), &device);
        let r = self.residual_weight;
        let mut acc = eye.clone();
        for w in layers {
            let a = w.clone().mean_dim(1).reshape([b, s, s]) * (1.0 - r) + eye.clone() * r;
            // Renormalise rows (padding queries may not sum to exactly 1).
            let a = a.clone() / a.sum_dim(2).clamp_min(1e-12);
            acc = a.matmul(acc);
        }
        Ok(acc)
    }
}

/// The last row of `[batch, s, s]` as `[batch, s, 1]`.
fn last_row(r: Tensor<3>) -> Tensor<3> {
    let [b, s, k] = r.dims();
    r.slice([0..b, s - 1..s, 0..k]).reshape([b, k, 1])
}

impl AttributionMethod for AttentionRollout {
    fn id(&self) -> &str {
        "attention_rollout"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let out = ctx.model.forward(
            ModelInput {
                target_embeds: x.target,
                target_mask: step.prefix_mask.clone(),
                source_embeds: x.source,
                source_mask: step.source_mask.clone(),
            },
            ForwardOptions {
                attentions: true,
                last_position_only: true,
                ..Default::default()
            },
        );
        let (source, target) = match ctx.model.kind() {
            ModelKind::DecoderOnly => (None, Some(last_row(self.rollout(&out.attentions)?))),
            ModelKind::EncoderDecoder => {
                let enc = self.rollout(&out.encoder_attentions)?;
                let n = out.cross_attentions.len();
                if n == 0 {
                    return Err(Error::Unsupported(
                        "attention_rollout: the model returned no cross-attention weights".into(),
                    ));
                }
                let cross: Vec<Tensor<3>> = out
                    .cross_attentions
                    .iter()
                    .map(|w| {
                        let [b, h, q, k] = w.dims();
                        w.clone()
                            .slice([0..b, 0..h, q - 1..q, 0..k])
                            .mean_dim(1)
                            .reshape([b, 1, k])
                    })
                    .collect();
                let cross = Tensor::cat(cross, 1).mean_dim(1); // [b, 1, k]
                let src = cross.matmul(enc); // [b, 1, k]
                let [b, _, k] = src.dims();
                let target = if ctx.attribute_target {
                    Some(last_row(self.rollout(&out.attentions)?))
                } else {
                    None
                };
                (Some(src.reshape([b, k, 1])), target)
            }
        };
        Ok(StepAttribution {
            source,
            target,
            deltas: None,
            score_dims: Some(vec![]),
        })
    }
}
