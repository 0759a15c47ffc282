//! The `scores` aggregator: reduces the trailing dimension of attribution
//! arrays (hidden size, attention heads...).

use std::collections::BTreeMap;
use std::sync::Arc;

use inseq_core::{Array, Error, Result, SequenceAttribution};

use super::{Aggregate, AggregationContext, check_sequence};
use crate::nd;
use crate::{AggregationFunction, Reduce, normalize, rescale};

/// Post-processing of the `scores` aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostProcess {
    /// L1-normalise each generated step's column over source and target ([`crate::normalize`]; Inseq's default).
    #[default]
    Normalize,
    /// Divide by the largest absolute score ([`crate::rescale`]).
    Rescale,
    /// Keep the raw aggregated scores.
    None,
}

/// Indices of the trailing dimension to keep before a `scores` aggregation
/// (Inseq's `select_idx`, e.g. one attention head or a range of layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexSelection {
    /// One index: the dimension is dropped without aggregating.
    One(usize),
    /// The `[start, end)` range.
    Range(usize, usize),
    /// A list of distinct indices.
    Indices(Vec<usize>),
}

/// The `scores` aggregator: reduces the trailing dimension of the attribution
/// arrays (hidden size, attention heads...) with an aggregation function,
/// then post-processes (normalises by default).
///
/// ```
/// use inseq_aggregate::{Aggregator, AggregationFunction, PostProcess, ScoresAggregator};
/// let raw_sums = ScoresAggregator { post: PostProcess::None, ..Default::default() }
///     .with_function(AggregationFunction::Sum);
/// assert_eq!(Aggregator::new(raw_sums).id(), "scores");
/// ```
#[derive(Debug, Clone, Default)]
pub struct ScoresAggregator {
    /// The reduction; `None` uses Inseq's default: `vnorm` for 3-D (granular)
    /// arrays, `mean` otherwise.
    pub function: Option<Arc<dyn Reduce>>,
    /// What to do after the reduction.
    pub post: PostProcess,
    /// Optional selection of trailing indices before reducing.
    pub select: Option<IndexSelection>,
}

impl ScoresAggregator {
    /// The same aggregator reducing with `function`.
    pub fn with_function(mut self, function: impl Reduce + 'static) -> Self {
        self.function = Some(Arc::new(function));
        self
    }

    fn post_process(&self, out: &mut SequenceAttribution) -> Result<()> {
        let (source, target) = (
            out.source_attributions.as_mut(),
            out.target_attributions.as_mut(),
        );
        let name = match self.post {
            PostProcess::Normalize => {
                normalize(source, target)?;
                "normalize"
            }
            PostProcess::Rescale => {
                rescale(source, target)?;
                "rescale"
            }
            PostProcess::None => return Ok(()),
        };
        out.aggregations.push(name.into());
        Ok(())
    }
}

impl Aggregate for ScoresAggregator {
    fn id(&self) -> &str {
        "scores"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        _ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let arrays = [
            seq.source_attributions.as_ref(),
            seq.target_attributions.as_ref(),
        ];
        let Some(ndim) = arrays.iter().flatten().map(|a| a.ndim()).next() else {
            // Nothing to aggregate (step scores only).
            return Ok(seq.clone());
        };
        if arrays.iter().flatten().any(|a| a.ndim() < 3) {
            return Err(Error::invalid_arg(
                "aggregator",
                "the `scores` aggregator reduces the trailing dimension of 3-D or larger attributions, \
                 but these are already 2-D (tokens × generated steps)",
            ));
        }
        let default = if ndim == 3 {
            AggregationFunction::L2
        } else {
            AggregationFunction::Mean
        };
        let f: &dyn Reduce = self.function.as_deref().unwrap_or(&default);
        let select = self.select.as_ref();
        let reduce =
            |a: &Option<Array>| a.as_ref().map(|a| reduce_scores(a, f, select)).transpose();
        let mut out = seq.clone();
        out.source_attributions = reduce(&seq.source_attributions)?;
        out.target_attributions = reduce(&seq.target_attributions)?;
        out.sequence_scores = seq
            .sequence_scores
            .iter()
            .map(|(k, v)| {
                let r = if v.ndim() == 0 {
                    v.clone()
                } else {
                    reduce_scores(v, f, select)?
                };
                Ok((k.clone(), r))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        out.aggregations.push(f.id().to_string());
        self.post_process(&mut out)?;
        Ok(out)
    }
}

fn select_indices(sel: &IndexSelection, n: usize) -> Result<Vec<usize>> {
    let idx: Vec<usize> = match sel {
        IndexSelection::One(i) => vec![*i],
        IndexSelection::Range(s, e) => {
            if s >= e {
                return Err(Error::invalid_arg(
                    "select_idx",
                    format!("empty range ({s}, {e})"),
                ));
            }
            (*s..*e).collect()
        }
        IndexSelection::Indices(v) => {
            if v.is_empty() {
                return Err(Error::invalid_arg(
                    "select_idx",
                    "an empty list of indices is not allowed",
                ));
            }
            let mut sorted = v.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != v.len() {
                return Err(Error::invalid_arg(
                    "select_idx",
                    "duplicate indices are not allowed",
                ));
            }
            v.clone()
        }
    };
    if let Some(bad) = idx.iter().find(|&&i| i >= n) {
        return Err(Error::invalid_arg(
            "select_idx",
            format!("index {bad} out of range: the scores only have {n} units"),
        ));
    }
    Ok(idx)
}

fn reduce_scores(a: &Array, f: &dyn Reduce, select: Option<&IndexSelection>) -> Result<Array> {
    let last = a.ndim().saturating_sub(1);
    match select {
        None => f.apply_last(a),
        Some(sel) => {
            let n = a.shape().get(last).copied().unwrap_or(0);
            let idx = select_indices(sel, n)?;
            let picked = nd::select_axis(a, last, &idx)?;
            if matches!(sel, IndexSelection::One(_)) || idx.len() == 1 {
                nd::squeeze_axis(picked, last)
            } else {
                f.apply_last(&picked)
            }
        }
    }
}
