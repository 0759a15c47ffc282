//! The `pair` aggregator: the difference between two attributions of the same
//! shape (e.g. a minimal pair).

use inseq_core::{Array, Error, Result, SequenceAttribution, TokenWithId};

use super::{Aggregate, AggregationContext, check_sequence};
use crate::nd;

/// The `pair` aggregator: the difference `other - self` of two attributions of
/// the same shape; differing tokens become `"a → b"` with id -1.
///
/// ```
/// use inseq_aggregate::{Aggregator, PairAggregator};
/// use inseq_core::SequenceAttribution;
/// # let other = SequenceAttribution { source: None, target: vec![], source_attributions: None,
/// #     target_attributions: None, step_scores: Default::default(), sequence_scores: Default::default(),
/// #     attr_pos_start: 0, attr_pos_end: 0, aggregations: vec![] };
/// let diff = Aggregator::new(PairAggregator { other });
/// assert_eq!(diff.id(), "pair");
/// ```
#[derive(Debug, Clone)]
pub struct PairAggregator {
    /// The paired attribution.
    pub other: SequenceAttribution,
}

impl Aggregate for PairAggregator {
    fn id(&self) -> &str {
        "pair"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        _ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let other = &self.other;
        let len = |s: &Option<Vec<TokenWithId>>| s.as_ref().map_or(0, Vec::len);
        if len(&seq.source) != len(&other.source) || seq.target.len() != other.target.len() {
            return Err(Error::invalid_arg(
                "paired_attr",
                "source and target sequences must have the same lengths in both attributions",
            ));
        }
        let mut out = seq.clone();
        out.source = match (&seq.source, &other.source) {
            (Some(a), Some(b)) => Some(pair_tokens(a, b)),
            (a, _) => a.clone(),
        };
        out.target = pair_tokens(&seq.target, &other.target);
        out.source_attributions = difference(
            &seq.source_attributions,
            &other.source_attributions,
            "source_attributions",
        )?;
        out.target_attributions = difference(
            &seq.target_attributions,
            &other.target_attributions,
            "target_attributions",
        )?;
        subtract_scores(&mut out, other)?;
        out.aggregations.push("pair".into());
        Ok(out)
    }
}

/// Tokens of `a`, or `"a → b"` (id -1) where the two differ.
fn pair_tokens(a: &[TokenWithId], b: &[TokenWithId]) -> Vec<TokenWithId> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.token == y.token {
                x.clone()
            } else {
                TokenWithId::new(format!("{} → {}", x.token, y.token), -1)
            }
        })
        .collect()
}

/// `b - a`, where `a` has attributions.
fn difference(a: &Option<Array>, b: &Option<Array>, what: &str) -> Result<Option<Array>> {
    match (a, b) {
        (None, _) => Ok(None),
        (Some(a), Some(b)) => nd::zip_with(a, b, what, |x, y| y - x).map(Some),
        (Some(_), None) => Err(Error::invalid_arg(
            "paired_attr",
            format!("the paired attribution has no {what}"),
        )),
    }
}

/// Replaces the step and sequence scores of `out` by `other`'s minus them.
fn subtract_scores(out: &mut SequenceAttribution, other: &SequenceAttribution) -> Result<()> {
    for (k, v) in out.step_scores.iter_mut() {
        let o = other
            .step_scores
            .get(k)
            .filter(|o| o.len() == v.len())
            .ok_or_else(|| {
                Error::invalid_arg(
                    "paired_attr",
                    format!("step score `{k}` missing or of another length"),
                )
            })?;
        v.iter_mut().zip(o).for_each(|(x, y)| *x = y - *x);
    }
    for (k, v) in out.sequence_scores.iter_mut() {
        let o = other.sequence_scores.get(k).ok_or_else(|| {
            Error::invalid_arg("paired_attr", format!("sequence score `{k}` missing"))
        })?;
        *v = nd::zip_with(v, o, &format!("sequence score `{k}`"), |x, y| y - x)?;
    }
    Ok(())
}
