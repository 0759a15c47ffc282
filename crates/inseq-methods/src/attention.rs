//! Attention weights as attribution scores (Inseq's `attention` method).

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, ModelInput, ModelKind};

use crate::{AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step};

/// The attention weights of the position that predicts the step's token,
/// for every layer and head, as Inseq's `attention` method extracts them:
/// decoder self-attention for the target prefix and, for encoder-decoder
/// models, cross-attention for the source (the decoder self-attention is only
/// returned with `attribute_target`). No gradient is computed.
///
/// Scores are `[batch, len, layers * heads]` (layer-major), with
/// [`StepAttribution::score_dims`] `Some(vec![layers, heads])`: Inseq stores
/// them as `[len, steps, layers, heads]` and by default averages heads, then
/// layers, then normalises each step.
#[derive(Debug, Clone, Default)]
pub struct Attention;

impl Attention {
    /// Builds from arguments (none).
    pub fn from_args(args: MethodArgs) -> Result<Self> {
        args.finish("attention")?;
        Ok(Self)
    }
}

/// Stacks per-layer `[batch, heads, q, k]` weights at the last query into `[batch, k, layers * heads]`.
fn last_query(layers: &[Tensor<4>]) -> Result<(Tensor<3>, usize, usize)> {
    let first = layers
        .first()
        .ok_or_else(|| Error::Unsupported("the model returned no attention weights".into()))?;
    let [b, h, _, k] = first.dims();
    let rows: Vec<Tensor<4>> = layers
        .iter()
        .map(|w| {
            let [b, h, q, k] = w.dims();
            w.clone()
                .slice([0..b, 0..h, q - 1..q, 0..k])
                .reshape([b, 1, h, k])
        })
        .collect();
    let n = rows.len();
    let stacked = Tensor::cat(rows, 1); // [b, layers, heads, k]
    Ok((stacked.permute([0, 3, 1, 2]).reshape([b, k, n * h]), n, h))
}

impl AttributionMethod for Attention {
    fn id(&self) -> &str {
        "attention"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let x = embed_step(ctx, step, false);
        let input = ModelInput {
            target_embeds: x.target,
            target_mask: step.prefix_mask.clone(),
            source_embeds: x.source,
            source_mask: step.source_mask.clone(),
        };
        let out = ctx.model.forward(
            input,
            ForwardOptions {
                attentions: true,
                last_position_only: true,
                ..Default::default()
            },
        );
        let (self_attn, layers, heads) = last_query(&out.attentions)?;
        let (source, target) = match ctx.model.kind() {
            ModelKind::DecoderOnly => (None, Some(self_attn)),
            ModelKind::EncoderDecoder => {
                let (cross, l, h) = last_query(&out.cross_attentions)?;
                if (l, h) != (layers, heads) {
                    return Err(Error::Unsupported(format!(
                        "cross-attention has {l} layers × {h} heads but self-attention {layers} × {heads}"
                    )));
                }
                (Some(cross), ctx.attribute_target.then_some(self_attn))
            }
        };
        Ok(StepAttribution {
            source,
            target,
            deltas: None,
            score_dims: Some(vec![layers, heads]),
        })
    }
}
