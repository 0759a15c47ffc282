//! Attention weights as attribution scores (Inseq's `attention` method).

use burn::tensor::Tensor;
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, ModelInput, ModelKind, ModelOutput};

use crate::{
    AttributionMethod, MethodArgs, MethodContext, SequenceInput, StepAttribution, StepInput,
    embed_step,
};

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

/// Per-layer attention weights as a forward pass returned them: `[batch, heads, q, k]`, or only
/// the query positions `rows` (see [`ForwardOptions::attention_rows`]).
type Weights<'a> = (&'a [Tensor<4>], Option<&'a [usize]>);

/// Stacks per-layer weights of query `query` over the first `keys` keys into `[batch, keys,
/// layers * heads]`; `None` picks the last query and every key.
fn query_rows(
    (layers, rows): Weights<'_>,
    query: Option<usize>,
    keys: Option<usize>,
) -> Result<(Tensor<3>, usize, usize)> {
    let first = layers
        .first()
        .ok_or_else(|| Error::Unsupported("the model returned no attention weights".into()))?;
    let [b, h, q_len, k_len] = first.dims();
    let q = match (query, rows) {
        (None, _) => q_len - 1,
        (Some(q), None) => q,
        (Some(q), Some(rows)) => rows.iter().position(|&r| r == q).ok_or_else(|| {
            Error::Unsupported(format!("the model did not record attention row {q}"))
        })?,
    };
    let k = keys.unwrap_or(k_len);
    let rows: Vec<Tensor<4>> = layers
        .iter()
        .map(|w| {
            w.clone()
                .slice([0..b, 0..h, q..q + 1, 0..k])
                .reshape([b, 1, h, k])
        })
        .collect();
    let n = rows.len();
    let stacked = Tensor::cat(rows, 1); // [b, layers, heads, k]
    Ok((stacked.permute([0, 3, 1, 2]).reshape([b, k, n * h]), n, h))
}

impl Attention {
    /// Runs the model on the step's inputs and returns its output with the attention weights
    /// of the query positions `rows` (the model may return every query's).
    fn forward(&self, ctx: &MethodContext, step: &StepInput, rows: Vec<usize>) -> ModelOutput {
        let x = embed_step(ctx, step, false);
        let input = ModelInput {
            target_embeds: x.target,
            target_mask: step.prefix_mask.clone(),
            source_embeds: x.source,
            source_mask: step.source_mask.clone(),
        };
        ctx.model.forward(
            input,
            ForwardOptions {
                attentions: true,
                attention_rows: Some(rows),
                last_position_only: true,
                ..Default::default()
            },
        )
    }

    /// The scores of query `query` (`None`: the last) over `keys` target keys (`None`: all),
    /// from per-layer self-attention and cross-attention weights.
    fn scores(
        &self,
        ctx: &MethodContext,
        (attentions, cross_attentions): (Weights<'_>, &[Tensor<4>]),
        query: Option<usize>,
        keys: Option<usize>,
    ) -> Result<StepAttribution> {
        let (self_attn, layers, heads) = query_rows(attentions, query, keys)?;
        let (source, target) = match ctx.model.kind() {
            ModelKind::DecoderOnly => (None, Some(self_attn)),
            ModelKind::EncoderDecoder => {
                // Cross-attention records the same query rows as self-attention.
                let (cross, l, h) = query_rows((cross_attentions, attentions.1), query, None)?;
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

impl AttributionMethod for Attention {
    fn id(&self) -> &str {
        "attention"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let last = step
            .prefix_mask
            .first()
            .map_or(0, Vec::len)
            .saturating_sub(1);
        let out = self.forward(ctx, step, vec![last]);
        let weights = (&out.attentions[..], out.attention_rows.as_deref());
        self.scores(ctx, (weights, &out.cross_attentions), None, None)
    }

    fn uses_recorded_attentions(&self) -> bool {
        true
    }

    /// One forward pass over the whole sequence: causal self-attention makes the weights of
    /// query `i` over keys `..=i` those of the step whose prefix ends at `i`. A decoder-only
    /// sequence that was just generated needs no pass at all: generation recorded the same
    /// weights ([`MethodContext::recorded_attentions`]).
    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<Result<Vec<StepAttribution>>> {
        let full = seq.full();
        let recorded = ctx.recorded_attentions.filter(|r| {
            ctx.model.kind() == ModelKind::DecoderOnly
                && full.prefix_ids.len() == 1
                && full.prefix_ids[0] == r.ids
                && full.prefix_mask[0].iter().all(|&real| real)
        });
        let out;
        let weights = match recorded {
            Some(r) => ((&r.weights[..], Some(&r.rows[..])), &[][..]),
            None => {
                let rows = (0..seq.steps).map(|s| seq.prefix_width(s) - 1).collect();
                out = self.forward(ctx, &full, rows);
                let rows = out.attention_rows.as_deref();
                ((&out.attentions[..], rows), &out.cross_attentions[..])
            }
        };
        Some(
            (0..seq.steps)
                .map(|s| {
                    let w = seq.prefix_width(s);
                    self.scores(ctx, weights, Some(w - 1), Some(w))
                })
                .collect(),
        )
    }
}
