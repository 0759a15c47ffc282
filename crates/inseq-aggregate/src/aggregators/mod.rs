//! The [`Aggregate`] trait every aggregator implements, the context they run
//! in, and the [`Aggregator`] handle that pipelines hold. Python Inseq's
//! built-ins each live in their own module.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use inseq_core::{Result, SequenceAttribution};

use crate::{AggregationRegistry, Reduce, Span, SplitMode};

mod checks;
mod pair;
mod pipeline;
mod scores;
mod slices;
mod spans;
mod split;
mod subwords;

pub use checks::check_sequence;
pub use pair::PairAggregator;
pub use pipeline::{
    Pipeline, aggregate_inseq_default, aggregate_output_inseq_default, inseq_default_pipeline,
};
pub use scores::{IndexSelection, PostProcess, ScoresAggregator};
pub use slices::SlicesAggregator;
pub use spans::SpansAggregator;
pub use split::SplitAggregator;
pub use subwords::{SubwordsAggregator, WordBoundaries};

/// The ids of the built-in aggregators, as Python Inseq's `list_aggregators()`.
pub const AGGREGATOR_IDS: [&str; 6] = ["pair", "scores", "slices", "spans", "split", "subwords"];

/// Lists the ids of the built-in aggregators
/// ([`AggregationRegistry::aggregator_ids`] also lists registered ones).
///
/// ```
/// assert!(inseq_aggregate::list_aggregators().contains(&"subwords"));
/// ```
pub fn list_aggregators() -> Vec<&'static str> {
    AGGREGATOR_IDS.to_vec()
}

/// What an aggregator may know beyond the sequence itself.
///
/// `subwords` with [`WordBoundaries::Auto`] uses the word ids given here (from
/// the tokenizer, as `inseq::AttributionModel::aggregate_with` passes them)
/// instead of inferring words from token markers.
/// Span aggregators merge a step score over generated tokens with the function given here for
/// its id (each step function states its own, `inseq_steps::StepFunction::span_aggregation`),
/// else with [`crate::default_step_score_function`].
#[derive(Debug, Clone, Default)]
pub struct AggregationContext {
    /// Word id of each source token (`None` for special tokens).
    pub source_word_ids: Option<Vec<Option<usize>>>,
    /// Word id of each target token (`None` for special tokens).
    pub target_word_ids: Option<Vec<Option<usize>>>,
    /// The span aggregation of each step score, by step score id.
    pub step_score_functions: BTreeMap<String, Arc<dyn Reduce>>,
}

/// An aggregator: one step of a [`Pipeline`], as Python Inseq's `Aggregator`
/// classes. Implement it and register a factory in an [`AggregationRegistry`]
/// to use your own aggregator by id in pipeline specs.
///
/// ```
/// use inseq_aggregate::{Aggregate, AggregationContext, Aggregator};
/// use inseq_core::{Result, SequenceAttribution};
///
/// /// Upper-cases the target tokens.
/// #[derive(Debug)]
/// struct Shout;
/// impl Aggregate for Shout {
///     fn id(&self) -> &str { "shout" }
///     fn apply(&self, seq: &SequenceAttribution, _: &AggregationContext) -> Result<SequenceAttribution> {
///         let mut out = seq.clone();
///         out.target.iter_mut().for_each(|t| t.token = t.token.to_uppercase());
///         out.aggregations.push(self.id().into());
///         Ok(out)
///     }
/// }
/// let shout = Aggregator::new(Shout);
/// assert_eq!(shout.id(), "shout");
/// ```
pub trait Aggregate: Send + Sync + fmt::Debug {
    /// The id used in pipeline specs and recorded in `aggregations`.
    fn id(&self) -> &str;

    /// Aggregates one sequence. Built-in aggregators first check it with
    /// [`check_sequence`] and fail on inconsistent shapes instead of panicking.
    fn apply(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution>;
}

/// A shared handle to any [`Aggregate`]: the steps of a [`Pipeline`].
///
/// ```
/// use inseq_aggregate::{AggregationFunction, Aggregator, SpansAggregator};
/// assert_eq!(Aggregator::scores(AggregationFunction::Sum).id(), "scores");
/// let merge = Aggregator::new(SpansAggregator::new(vec![], vec![(0, 2)]).with_function(AggregationFunction::Sum));
/// assert_eq!(merge.id(), "spans");
/// ```
#[derive(Clone)]
pub struct Aggregator(Arc<dyn Aggregate>);

impl fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<A: Aggregate + 'static> From<A> for Aggregator {
    fn from(aggregator: A) -> Self {
        Self::new(aggregator)
    }
}

impl Aggregator {
    /// Wraps an aggregator.
    pub fn new(aggregator: impl Aggregate + 'static) -> Self {
        Self(Arc::new(aggregator))
    }

    /// The `scores` aggregator with the given function and normalisation.
    pub fn scores(function: impl Reduce + 'static) -> Self {
        Self::new(ScoresAggregator::default().with_function(function))
    }

    /// The `subwords` aggregator inferring word boundaries from token markers
    /// (or taking them from the [`AggregationContext`]).
    pub fn subwords() -> Self {
        Self::new(SubwordsAggregator::default())
    }

    /// The `subwords` aggregator with explicit word ids (from a tokenizer).
    pub fn words(source: Option<Vec<Option<usize>>>, target: Vec<Option<usize>>) -> Self {
        Self::new(SubwordsAggregator {
            boundaries: WordBoundaries::WordIds { source, target },
            ..Default::default()
        })
    }

    /// The `spans` aggregator.
    pub fn spans(source_spans: Vec<Span>, target_spans: Vec<Span>) -> Self {
        Self::new(SpansAggregator::new(source_spans, target_spans))
    }

    /// The `split` aggregator with `single` mode.
    pub fn split(pattern: impl Into<String>) -> Self {
        Self::new(SplitAggregator::new(pattern, SplitMode::Single))
    }

    /// Builds a built-in aggregator from Inseq's string ids (see
    /// [`AggregationRegistry::create`]; a registry of your own also knows your
    /// aggregators and functions): an aggregator id, or an aggregation
    /// function id meaning `scores` with that function; `function` optionally
    /// overrides the function. `spans`, `split`, `pair` and `slices` need
    /// arguments and must be built directly.
    ///
    /// ```
    /// use inseq_aggregate::Aggregator;
    /// let a = Aggregator::from_id("vnorm", None).unwrap();
    /// let b = Aggregator::from_id("scores", Some("vnorm")).unwrap();
    /// assert_eq!(format!("{a:?}"), format!("{b:?}"));
    /// assert!(Aggregator::from_id("subwords", Some("sum")).is_ok());
    /// let err = Aggregator::from_id("words", None).unwrap_err();
    /// assert!(err.to_string().contains("unknown aggregator"));
    /// ```
    pub fn from_id(id: &str, function: Option<&str>) -> Result<Self> {
        AggregationRegistry::builtin().create(id, function)
    }

    /// The id of the aggregator.
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// Applies the aggregator to one sequence, with an empty context.
    pub fn apply(&self, seq: &SequenceAttribution) -> Result<SequenceAttribution> {
        self.apply_with(seq, &AggregationContext::default())
    }

    /// Applies the aggregator to one sequence in `ctx`.
    pub fn apply_with(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        self.0.apply(seq, ctx)
    }
}
