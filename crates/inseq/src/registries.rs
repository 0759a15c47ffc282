//! The ids a model can use: attribution methods, step functions, aggregators and aggregation
//! functions, built-in and a researcher's own.

use inseq_aggregate::{AggregationContext, AggregationRegistry, Pipeline};
use inseq_core::{Result, SequenceAttribution};
use inseq_methods::MethodRegistry;
use inseq_steps::StepRegistry;

/// Every registry an [`crate::AttributionModel`] (and the `inseq` CLI) looks ids up in; register
/// your own methods, step functions, aggregators and aggregation functions here and they work by
/// id everywhere the built-in ones do.
///
/// ```
/// let mut registries = inseq::Registries::default();
/// registries.methods.register("signed_saliency", "Saliency without |.|.", |args| {
///     inseq::MethodRegistry::with_defaults().create("saliency", args)
/// });
/// assert!(registries.methods.ids().contains(&"signed_saliency".to_string()));
/// assert!(registries.pipeline("subwords, vnorm").is_ok());
/// ```
#[derive(Clone)]
pub struct Registries {
    /// Attribution methods (`--method`).
    pub methods: MethodRegistry,
    /// Step functions (`--step-scores`, `--attributed-fn`, PECoRe's metrics).
    pub steps: StepRegistry,
    /// Aggregators and aggregation functions (`--aggregation`).
    pub aggregations: AggregationRegistry,
}

impl Default for Registries {
    /// The built-ins of Python Inseq 0.7.1.
    fn default() -> Self {
        Self {
            methods: MethodRegistry::with_defaults(),
            steps: StepRegistry::with_defaults(),
            aggregations: AggregationRegistry::with_defaults(),
        }
    }
}

impl Registries {
    /// Parses an aggregation pipeline spec (`subwords, scores:vnorm`) against these aggregators.
    pub fn pipeline(&self, spec: &str) -> Result<Pipeline> {
        Pipeline::parse_with(spec, &self.aggregations)
    }

    /// The span aggregation of each step score of `seq`, as its step function states it
    /// ([`inseq_steps::StepFunction::span_aggregation`]), looked up among the aggregation
    /// functions; unknown ids are left to the aggregators' defaults.
    pub fn aggregation_context(&self, seq: &SequenceAttribution) -> AggregationContext {
        let step_score_functions = (seq.step_scores.keys())
            .filter_map(|id| {
                let function_id = self.steps.get(id).ok()?.span_aggregation().to_string();
                let function = self.aggregations.function(&function_id).ok()?;
                Some((id.clone(), function))
            })
            .collect();
        AggregationContext {
            step_score_functions,
            ..Default::default()
        }
    }
}
