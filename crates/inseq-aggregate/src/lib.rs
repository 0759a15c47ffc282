//! Aggregation of attribution results, as Python Inseq 0.7.1 does it.
//!
//! * Aggregation functions implement [`Reduce`]; Inseq's `mean`, `max`, `min`,
//!   `sum`, `prod`, `absmax`, `vnorm` are the [`AggregationFunction`]s;
//!   [`normalize`] and [`rescale`] post-process scores.
//! * Aggregators implement [`Aggregate`]; Inseq's `scores`, `spans`,
//!   `subwords`, `split`, `pair` and `slices` are [`ScoresAggregator`],
//!   [`SpansAggregator`], [`SubwordsAggregator`], [`SplitAggregator`],
//!   [`PairAggregator`] and [`SlicesAggregator`]. [`Aggregator`] handles are
//!   chained in a [`Pipeline`] (`Pipeline::parse("subwords,vnorm")`).
//! * An [`AggregationRegistry`] maps ids to aggregators and functions; register
//!   your own there and name them in specs with [`Pipeline::parse_with`].
//! * Word-level aggregation works from explicit word ids
//!   ([`Aggregator::words`], as a tokenizer's `word_ids()` gives them) or infers
//!   them from byte-level BPE (`Ġ`), SentencePiece (`▁`) and WordPiece (`##`)
//!   markers ([`infer_word_ids`]).
//! * [`inseq_default_pipeline`] is the aggregation Inseq applies by default
//!   (`vnorm` + normalize for gradient methods, `mean` + normalize per extra
//!   dimension for attention, none for occlusion-like methods); the older
//!   [`default_aggregate`] always takes vector norms.
//!
//! The default aggregation ([`default_aggregate`]) takes the L2 norm over the
//! trailing (hidden) dimension of 3-D attribution arrays, then normalises each
//! generated step's column so source and target scores together sum to 1.
//!
//! ```
//! use inseq_core::{Array, SequenceAttribution, TokenWithId};
//! let seq = SequenceAttribution {
//!     source: None,
//!     target: vec![TokenWithId::new("a", 0), TokenWithId::new("b", 1)],
//!     source_attributions: None,
//!     target_attributions: Some(Array::new(vec![2, 1, 2], vec![3.0, 4.0, f32::NAN, f32::NAN]).unwrap()),
//!     step_scores: Default::default(),
//!     sequence_scores: Default::default(),
//!     attr_pos_start: 1,
//!     attr_pos_end: 2,
//!     aggregations: vec![],
//! };
//! let agg = inseq_aggregate::default_aggregate(&seq);
//! let t = agg.target_attributions.unwrap();
//! assert_eq!(t.shape(), &[2, 1]);
//! // √(3² + 4²) = 5 over a column summing to 5: exact in f32.
//! assert_eq!(t.get(&[0, 0]), 1.0);
//! assert!(t.get(&[1, 0]).is_nan());
//! ```
#![warn(missing_docs)]

mod aggregators;
mod functions;
mod method_defaults;
mod nd;
mod normalize;
mod registry;
mod words;

pub use aggregators::{
    AGGREGATOR_IDS, Aggregate, AggregationContext, Aggregator, IndexSelection, PairAggregator,
    Pipeline, PostProcess, ScoresAggregator, SlicesAggregator, SpansAggregator, SplitAggregator,
    SubwordsAggregator, WordBoundaries, aggregate_inseq_default, aggregate_output_inseq_default,
    check_sequence, inseq_default_pipeline, list_aggregators,
};
pub use functions::{
    AGGREGATION_FUNCTION_IDS, AggregationFunction, Reduce, default_step_score_function,
    list_aggregation_functions,
};
pub use method_defaults::{
    MethodOutputKind, default_aggregate_for, method_output_kind, reshape_scores,
};
pub use nd::{Span, aggregate_contiguous};
pub use normalize::{normalize, rescale};
pub use registry::{AggregationRegistry, AggregatorArgs, AggregatorFactory};
pub use words::{
    SplitMode, SubwordScheme, detect_subword_scheme, infer_word_ids, is_special_token,
    marker_spans, merge_tokens, split_spans, word_spans,
};

use inseq_core::{Array, SequenceAttribution};

/// L2 norm over the last dimension; all-NaN vectors stay NaN, other NaNs count as 0.
pub fn vnorm_last(a: &Array) -> Array {
    a.reduce_last(|v| {
        if v.iter().all(|x| x.is_nan()) {
            f32::NAN
        } else {
            v.iter()
                .filter(|x| !x.is_nan())
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        }
    })
}

/// Divides each step column (dimension 1) of the 2-D source and target arrays
/// by the column's total over both, ignoring NaN. Columns summing to 0 are left unchanged.
pub fn normalize_columns(source: Option<&mut Array>, target: Option<&mut Array>) {
    let steps = source
        .as_ref()
        .map(|a| a.shape()[1])
        .or(target.as_ref().map(|a| a.shape()[1]))
        .unwrap_or(0);
    let mut totals = vec![0f32; steps];
    let column_sums = |a: &Array, totals: &mut [f32]| {
        let (rows, cols) = (a.shape()[0], a.shape()[1]);
        for r in 0..rows {
            for (c, t) in totals.iter_mut().enumerate().take(cols) {
                let v = a.data()[r * cols + c];
                if !v.is_nan() {
                    *t += v;
                }
            }
        }
    };
    if let Some(a) = source.as_deref() {
        column_sums(a, &mut totals);
    }
    if let Some(a) = target.as_deref() {
        column_sums(a, &mut totals);
    }
    let divide = |a: &mut Array| {
        let cols = a.shape()[1];
        for (i, v) in a.data_mut().iter_mut().enumerate() {
            let t = totals[i % cols];
            if t != 0.0 {
                *v /= t;
            }
        }
    };
    if let Some(a) = source {
        divide(a);
    }
    if let Some(a) = target {
        divide(a);
    }
}

/// Inseq's default aggregation: `vnorm` over the hidden dimension of 3-D arrays
/// (arrays that are already 2-D, like attention or occlusion scores, are kept),
/// then `normalize` so each generated step's scores sum to 1.
pub fn default_aggregate(seq: &SequenceAttribution) -> SequenceAttribution {
    let mut out = seq.clone();
    let reduce = |a: &Option<Array>| {
        a.as_ref().map(|a| {
            let mut a = a.clone();
            while a.ndim() > 2 {
                a = vnorm_last(&a);
            }
            a
        })
    };
    out.source_attributions = reduce(&seq.source_attributions);
    out.target_attributions = reduce(&seq.target_attributions);
    normalize_columns(
        out.source_attributions.as_mut(),
        out.target_attributions.as_mut(),
    );
    out.aggregations.push("vnorm".into());
    out.aggregations.push("normalize".into());
    out
}

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
