//! Chains of aggregators ([`Pipeline`]) and the pipeline Python Inseq applies
//! by default.

use inseq_core::{Array, AttributionOutput, Result, SequenceAttribution};

use super::{AggregationContext, Aggregator};
use crate::{AggregationFunction, AggregationRegistry};

/// A chain of aggregators applied in order (Python Inseq's `AggregatorPipeline`).
///
/// ```
/// use inseq_aggregate::Pipeline;
/// use inseq_core::{Array, SequenceAttribution, TokenWithId};
/// let target: Vec<_> = ["Hel", "lo", "Ġwor", "ld"].iter().map(|t| TokenWithId::new(*t, 0)).collect();
/// let seq = SequenceAttribution {
///     source: None,
///     target,
///     source_attributions: None,
///     target_attributions: Some(Array::new(vec![4, 2, 2], vec![
///         1.0, 0.0, 1.0, 1.0,   0.0, 2.0, 1.0, 0.0,
///         f32::NAN, f32::NAN, 3.0, 4.0,   f32::NAN, f32::NAN, f32::NAN, f32::NAN,
///     ]).unwrap()),
///     step_scores: [("probability".to_string(), vec![0.5, 0.5])].into_iter().collect(),
///     sequence_scores: Default::default(),
///     attr_pos_start: 2,
///     attr_pos_end: 4,
///     aggregations: vec![],
/// };
/// let out = Pipeline::parse("vnorm,subwords").unwrap().apply(&seq).unwrap();
/// let tokens: Vec<_> = out.target.iter().map(|t| t.token.as_str()).collect();
/// assert_eq!(tokens, ["Hello", "Ġworld"]);
/// assert_eq!(out.target_attributions.unwrap().shape(), &[2, 1]);
/// assert_eq!(out.step_scores["probability"], vec![0.25]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    /// The aggregators, applied first to last.
    pub steps: Vec<Aggregator>,
}

impl Pipeline {
    /// A pipeline of the given steps.
    pub fn new(steps: Vec<Aggregator>) -> Self {
        Self { steps }
    }

    /// Parses a comma-separated list of `id` or `id:function` items
    /// (e.g. `"subwords:sum,vnorm"`) with the built-in aggregators and
    /// functions, see [`Aggregator::from_id`].
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_with(spec, AggregationRegistry::builtin())
    }

    /// Parses a spec as [`Pipeline::parse`] does, looking ids up in `registry`
    /// (so registered aggregators and functions can be named).
    pub fn parse_with(spec: &str, registry: &AggregationRegistry) -> Result<Self> {
        if spec.trim().is_empty() {
            return Ok(Self { steps: vec![] });
        }
        let steps = spec
            .split(',')
            .map(str::trim)
            .map(|item| match item.split_once(':') {
                _ if item.is_empty() => Err(inseq_core::Error::invalid_arg(
                    "aggregation",
                    format!(
                        "`{spec}` has an empty step (two commas in a row, or a comma at an end)"
                    ),
                )),
                Some((id, f)) => registry.create(id.trim(), Some(f.trim())),
                None => registry.create(item, None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { steps })
    }

    /// Applies every step in order to one sequence, with an empty context.
    pub fn apply(&self, seq: &SequenceAttribution) -> Result<SequenceAttribution> {
        self.apply_with(seq, &AggregationContext::default())
    }

    /// Applies every step in order to one sequence in `ctx`.
    pub fn apply_with(
        &self,
        seq: &SequenceAttribution,
        ctx: &AggregationContext,
    ) -> Result<SequenceAttribution> {
        let mut cur = seq.clone();
        for step in &self.steps {
            cur = step.apply_with(&cur, ctx)?;
        }
        Ok(cur)
    }

    /// Applies the pipeline to every sequence of an output.
    pub fn apply_output(&self, out: &AttributionOutput) -> Result<AttributionOutput> {
        Ok(AttributionOutput {
            sequence_attributions: out
                .sequence_attributions
                .iter()
                .map(|s| self.apply(s))
                .collect::<Result<_>>()?,
            info: out.info.clone(),
        })
    }
}

/// The pipeline Python Inseq applies by default (`out.aggregate()` /
/// `out.show()`), chosen as Inseq chooses it from the sequence's class, which
/// follows from the rank of its attribution arrays: 3-D (granular, gradient
/// methods) → `vnorm` then normalize; 4-D and more (multi-dimensional,
/// attention) → `mean` then normalize once per extra dimension; 2-D (coarse,
/// occlusion) or no arrays → nothing.
///
/// ```
/// use inseq_aggregate::inseq_default_pipeline;
/// use inseq_core::{Array, SequenceAttribution};
/// let seq = SequenceAttribution {
///     source: None, target: vec![], source_attributions: None,
///     target_attributions: Some(Array::full(vec![0, 0, 2, 4], 0.0)),
///     step_scores: Default::default(), sequence_scores: Default::default(),
///     attr_pos_start: 0, attr_pos_end: 0, aggregations: vec![],
/// };
/// let p = inseq_default_pipeline(&seq);
/// let steps: Vec<String> = p.steps.iter().map(|s| format!("{s:?}")).collect();
/// assert_eq!(steps.len(), 2);
/// assert!(steps.iter().all(|s| s.contains("Mean")));
/// ```
pub fn inseq_default_pipeline(seq: &SequenceAttribution) -> Pipeline {
    let ndim = seq
        .source_attributions
        .as_ref()
        .or(seq.target_attributions.as_ref())
        .map_or(0, Array::ndim);
    let steps = match ndim {
        3 => vec![Aggregator::scores(AggregationFunction::L2)],
        n if n > 3 => vec![Aggregator::scores(AggregationFunction::Mean); n - 2],
        _ => vec![],
    };
    Pipeline { steps }
}

/// Applies [`inseq_default_pipeline`] to one sequence.
pub fn aggregate_inseq_default(seq: &SequenceAttribution) -> Result<SequenceAttribution> {
    inseq_default_pipeline(seq).apply(seq)
}

/// Applies [`inseq_default_pipeline`] to every sequence of an output.
///
/// ```
/// use inseq_core::AttributionOutput;
/// let out = AttributionOutput { sequence_attributions: vec![], info: Default::default() };
/// assert_eq!(inseq_aggregate::aggregate_output_inseq_default(&out).unwrap(), out);
/// ```
pub fn aggregate_output_inseq_default(out: &AttributionOutput) -> Result<AttributionOutput> {
    Ok(AttributionOutput {
        sequence_attributions: out
            .sequence_attributions
            .iter()
            .map(aggregate_inseq_default)
            .collect::<Result<_>>()?,
        info: out.info.clone(),
    })
}
