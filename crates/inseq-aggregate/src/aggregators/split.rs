//! The `split` aggregator: merges the tokens between matches of a regular
//! expression.

use std::sync::Arc;

use inseq_core::{Result, SequenceAttribution};

use super::spans::merge_spans;
use super::{Aggregate, AggregationContext, check_sequence};
use crate::{Reduce, SplitMode, split_spans};

/// The `split` aggregator: merges tokens between matches of a regular
/// expression ([`crate::split_spans`]), with the same default functions as
/// [`crate::SpansAggregator`].
///
/// ```
/// use inseq_aggregate::{Aggregator, SplitAggregator, SplitMode};
/// let sentences = SplitAggregator::new("[.!?]", SplitMode::End);
/// assert_eq!(Aggregator::new(sentences).id(), "split");
/// ```
#[derive(Debug, Clone)]
pub struct SplitAggregator {
    /// The regular expression.
    pub pattern: String,
    /// Treatment of the matching tokens.
    pub mode: SplitMode,
    /// Merge source tokens.
    pub aggregate_source: bool,
    /// Merge target tokens.
    pub aggregate_target: bool,
    /// Override for the merging function.
    pub function: Option<Arc<dyn Reduce>>,
}

impl SplitAggregator {
    /// Splits source and target tokens at `pattern` with Inseq's default functions.
    pub fn new(pattern: impl Into<String>, mode: SplitMode) -> Self {
        Self {
            pattern: pattern.into(),
            mode,
            aggregate_source: true,
            aggregate_target: true,
            function: None,
        }
    }

    /// The same aggregator merging with `function`.
    pub fn with_function(mut self, function: impl Reduce + 'static) -> Self {
        self.function = Some(Arc::new(function));
        self
    }
}

impl Aggregate for SplitAggregator {
    fn id(&self) -> &str {
        "split"
    }

    fn apply(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        check_sequence(seq)?;
        let src = match (&seq.source, self.aggregate_source) {
            (Some(s), true) => split_spans(s, &self.pattern, self.mode)?,
            _ => vec![],
        };
        let tgt = if self.aggregate_target {
            split_spans(&seq.target, &self.pattern, self.mode)?
        } else {
            vec![]
        };
        merge_spans(seq, (&src, &tgt), self.function.as_deref(), ctx, "split")
    }
}
