//! The `slices` aggregator: keeps only some spans of tokens.

use std::collections::BTreeMap;

use inseq_core::{Array, Error, Result, SequenceAttribution};

use super::checks::validate_spans;
use super::{Aggregate, AggregationContext, check_sequence};
use crate::{Span, nd};

/// The `slices` aggregator: keeps only some spans of tokens (generated tokens
/// are always kept).
///
/// ```
/// use inseq_aggregate::{Aggregator, SlicesAggregator};
/// let keep_first = SlicesAggregator { source_spans: None, target_spans: Some(vec![(0, 1)]) };
/// assert_eq!(Aggregator::new(keep_first).id(), "slices");
/// ```
#[derive(Debug, Clone, Default)]
pub struct SlicesAggregator {
    /// Source spans to keep (`None`: all).
    pub source_spans: Option<Vec<Span>>,
    /// Target spans to keep.
    pub target_spans: Option<Vec<Span>>,
}

impl Aggregate for SlicesAggregator {
    fn id(&self) -> &str {
        "slices"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        _ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let target_spans = kept_target_spans(seq, self.target_spans.as_deref());
        validate_spans(seq.target.len(), &target_spans, "target_spans")?;
        let source_spans = kept_source_spans(seq, self.source_spans.as_deref(), &target_spans);
        if seq.source_attributions.is_some() {
            let source_len = seq.source.as_ref().map_or(0, Vec::len);
            validate_spans(source_len, &source_spans, "source_spans")?;
        }
        let mut out = seq.clone();
        if seq.source_attributions.is_some()
            && let Some(src) = &seq.source
        {
            out.source = Some(
                source_spans
                    .iter()
                    .flat_map(|&(s, e)| src[s..e].iter().cloned())
                    .collect(),
            );
        }
        out.target = target_spans
            .iter()
            .flat_map(|&(s, e)| seq.target[s..e].iter().cloned())
            .collect();
        let slice = |a: &Option<Array>, spans: &[Span], what: &str| {
            a.as_ref().map(|a| slice_rows(a, spans, what)).transpose()
        };
        out.source_attributions = slice(
            &seq.source_attributions,
            &source_spans,
            "source_attributions",
        )?;
        out.target_attributions = slice(
            &seq.target_attributions,
            &target_spans,
            "target_attributions",
        )?;
        out.sequence_scores = slice_sequence_scores(seq, &source_spans, &target_spans)?;
        let start = seq.attr_pos_start;
        let new_start: usize = target_spans
            .iter()
            .map(|&(s, e)| e.min(start).saturating_sub(s))
            .sum();
        out.attr_pos_start = new_start;
        out.attr_pos_end = new_start + seq.n_steps();
        out.aggregations.push("slices".into());
        Ok(out)
    }
}

/// The target spans to keep: generated tokens are always kept, the first span
/// reaching them being extended to `attr_pos_end`.
fn kept_target_spans(seq: &SequenceAttribution, target_spans: Option<&[Span]>) -> Vec<Span> {
    let (start, end) = (seq.attr_pos_start, seq.attr_pos_end);
    let mut kept: Vec<Span> = Vec::new();
    let mut gen_added = false;
    for &(s, e) in target_spans.unwrap_or(&[]) {
        if e > start {
            if !gen_added {
                kept.push((s.min(start), end));
                gen_added = true;
            }
        } else {
            kept.push((s, e));
        }
    }
    if !gen_added && end > start {
        kept.push((start, end));
    }
    kept
}

/// The source spans to keep (decoder-only models: the prompt part of the kept target spans).
fn kept_source_spans(
    seq: &SequenceAttribution,
    source_spans: Option<&[Span]>,
    target_spans: &[Span],
) -> Vec<Span> {
    match (&seq.source, &seq.source_attributions) {
        (_, None) => target_spans
            .iter()
            .map(|&(s, e)| (s, e.min(seq.attr_pos_start)))
            .filter(|s| s.1 > s.0)
            .collect(),
        (Some(src), Some(_)) => source_spans.map_or_else(|| vec![(0, src.len())], <[Span]>::to_vec),
        (None, Some(_)) => vec![],
    }
}

/// The rows (dimension 0) of `a` in `spans`, concatenated.
fn slice_rows(a: &Array, spans: &[Span], what: &str) -> Result<Array> {
    let parts = spans
        .iter()
        .map(|&(s, e)| {
            if e > a.shape()[0] {
                return Err(Error::invalid_arg(
                    what,
                    format!("span ({s}, {e}) beyond {} rows", a.shape()[0]),
                ));
            }
            nd::rows(a, s, e)
        })
        .collect::<Result<Vec<_>>>()?;
    if parts.is_empty() {
        let mut shape = a.shape().to_vec();
        shape[0] = 0;
        return Ok(Array::full(shape, 0.0));
    }
    nd::concat0(&parts, what)
}

fn slice_sequence_scores(
    seq: &SequenceAttribution,
    source_spans: &[Span],
    target_spans: &[Span],
) -> Result<BTreeMap<String, Array>> {
    seq.sequence_scores
        .iter()
        .map(|(k, v)| {
            let r = if k.starts_with("decoder") {
                slice_rows(v, target_spans, k)
            } else if k.starts_with("encoder") {
                slice_encoder_scores(v, source_spans, k)
            } else {
                slice_rows(v, source_spans, k)
            }?;
            Ok((k.clone(), r))
        })
        .collect()
}

/// Encoder self-scores: each kept span's rows, restricted to its own columns.
fn slice_encoder_scores(v: &Array, source_spans: &[Span], what: &str) -> Result<Array> {
    let parts = source_spans
        .iter()
        .map(|&(s, e)| {
            let r = slice_rows(v, &[(s, e)], what)?;
            if r.ndim() < 2 {
                return Ok(r);
            }
            nd::select_axis(&r, 1, &(s..e).collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>>>()?;
    nd::concat0(&parts, what)
}
