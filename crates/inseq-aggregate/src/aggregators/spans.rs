//! The `spans` aggregator, and the span merging that `subwords` and `split`
//! share with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use inseq_core::{Array, Error, Result, SequenceAttribution};

use super::checks::validate_spans;
use super::{Aggregate, AggregationContext, check_sequence};
use crate::merge_tokens;
use crate::{AggregationFunction, Reduce, Span, aggregate_contiguous, default_step_score_function};

/// The `spans` aggregator: merges the given contiguous `[start, end)` token
/// spans (tokens, attributions, step and sequence scores).
///
/// Without an explicit `function` it uses Inseq's defaults: `absmax` for
/// attributions and sequence scores and [`crate::default_step_score_function`]
/// for step scores.
///
/// ```
/// use inseq_aggregate::{AggregationFunction, SpansAggregator};
/// let sums = SpansAggregator::new(vec![], vec![(0, 2)]).with_function(AggregationFunction::Sum);
/// assert_eq!(sums.target_spans, vec![(0, 2)]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SpansAggregator {
    /// Spans of source tokens.
    pub source_spans: Vec<Span>,
    /// Spans of target tokens (indices in the full target, prompt included).
    pub target_spans: Vec<Span>,
    /// Override for the merging function.
    pub function: Option<Arc<dyn Reduce>>,
}

impl SpansAggregator {
    /// Merges `source_spans` and `target_spans` with Inseq's default functions.
    pub fn new(source_spans: Vec<Span>, target_spans: Vec<Span>) -> Self {
        Self {
            source_spans,
            target_spans,
            function: None,
        }
    }

    /// The same aggregator merging with `function`.
    pub fn with_function(mut self, function: impl Reduce + 'static) -> Self {
        self.function = Some(Arc::new(function));
        self
    }
}

impl Aggregate for SpansAggregator {
    fn id(&self) -> &str {
        "spans"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let function = self.function.as_deref();
        let spans = (&self.source_spans[..], &self.target_spans[..]);
        merge_spans(seq, spans, function, ctx, "spans")
    }
}

/// Merges the source and target spans of `seq` (see [`SpansAggregator`]) and
/// records `name` in its aggregations.
pub(crate) fn merge_spans(
    seq: &SequenceAttribution,
    (source_spans, target_spans): (&[Span], &[Span]),
    function: Option<&dyn Reduce>,
    ctx: &AggregationContext,
    name: &str,
) -> Result<SequenceAttribution> {
    if seq.source.is_none() && !source_spans.is_empty() {
        return Err(Error::invalid_arg(
            "source_spans",
            "this sequence has no source tokens",
        ));
    }
    validate_spans(
        seq.source.as_ref().map_or(0, Vec::len),
        source_spans,
        "source_spans",
    )?;
    validate_spans(seq.target.len(), target_spans, "target_spans")?;
    let gen_spans = relativize(target_spans, seq.attr_pos_start);
    let attr_fn = function.unwrap_or(&AggregationFunction::AbsMax);
    let mut out = seq.clone();
    out.source = seq.source.as_ref().map(|s| merge_tokens(s, source_spans));
    out.target = merge_tokens(&seq.target, target_spans);
    out.source_attributions = seq
        .source_attributions
        .as_ref()
        .map(|a| sequential(a, source_spans, &gen_spans, attr_fn))
        .transpose()?;
    out.target_attributions = seq
        .target_attributions
        .as_ref()
        .map(|a| {
            // Rows may stop at attr_pos_end: only keep the spans inside them.
            let rows = a.shape()[0];
            let spans: Vec<Span> = target_spans
                .iter()
                .copied()
                .filter(|s| s.1 <= rows)
                .collect();
            sequential(a, &spans, &gen_spans, attr_fn)
        })
        .transpose()?;
    out.step_scores = merge_step_scores(seq, &gen_spans, function, ctx)?;
    out.sequence_scores = merge_sequence_scores(seq, source_spans, &gen_spans, attr_fn)?;
    if !target_spans.is_empty() {
        (out.attr_pos_start, out.attr_pos_end) = merged_positions(seq, target_spans, &gen_spans);
    }
    out.aggregations.push(name.to_string());
    Ok(out)
}

/// Target spans as spans of generated steps (those ending in the prompt dropped).
fn relativize(spans: &[Span], start: usize) -> Vec<Span> {
    if start == 0 {
        return spans.to_vec();
    }
    spans
        .iter()
        .filter(|s| s.1 > start)
        .map(|&(s, e)| (s.saturating_sub(start), e - start))
        .collect()
}

/// Merges `y_spans` of the steps (dimension 1), then `x_spans` of the tokens (dimension 0).
fn sequential(a: &Array, x_spans: &[Span], y_spans: &[Span], f: &dyn Reduce) -> Result<Array> {
    let y = if a.ndim() >= 2 {
        aggregate_contiguous(a, y_spans, f, 1)?
    } else {
        a.clone()
    };
    aggregate_contiguous(&y, x_spans, f, 0)
}

fn merge_step_scores(
    seq: &SequenceAttribution,
    gen_spans: &[Span],
    function: Option<&dyn Reduce>,
    ctx: &AggregationContext,
) -> Result<BTreeMap<String, Vec<f32>>> {
    seq.step_scores
        .iter()
        .map(|(k, v)| {
            let default = default_step_score_function(k);
            let stated = ctx.step_score_functions.get(k).map(|f| f.as_ref());
            let f = function.or(stated).unwrap_or(&default);
            let a = Array::new(vec![v.len()], v.clone())?;
            let merged = aggregate_contiguous(&a, gen_spans, f, 0)?.into_data();
            Ok((k.clone(), merged))
        })
        .collect()
}

fn merge_sequence_scores(
    seq: &SequenceAttribution,
    source_spans: &[Span],
    gen_spans: &[Span],
    f: &dyn Reduce,
) -> Result<BTreeMap<String, Array>> {
    seq.sequence_scores
        .iter()
        .map(|(k, v)| {
            let r = if k.starts_with("decoder") {
                sequential(v, gen_spans, gen_spans, f)
            } else if k.starts_with("encoder") {
                sequential(v, source_spans, source_spans, f)
            } else {
                sequential(v, source_spans, gen_spans, f)
            }?;
            Ok((k.clone(), r))
        })
        .collect()
}

/// `attr_pos_start` and `attr_pos_end` once `target_spans` are merged.
fn merged_positions(
    seq: &SequenceAttribution,
    target_spans: &[Span],
    gen_spans: &[Span],
) -> (usize, usize) {
    let start = seq.attr_pos_start;
    let merged_prefix: usize = target_spans
        .iter()
        .filter(|s| s.1 <= start)
        .map(|s| s.1 - s.0 - 1)
        .sum();
    let mut new_start = start - merged_prefix;
    let overlapping: Vec<&Span> = target_spans
        .iter()
        .filter(|s| s.0 < start && start < s.1)
        .collect();
    if let [s] = overlapping[..] {
        new_start -= start - s.0;
    }
    let merged_gen: usize = gen_spans.iter().map(|s| s.1 - s.0 - 1).sum();
    (new_start, new_start + seq.n_steps() - merged_gen)
}
