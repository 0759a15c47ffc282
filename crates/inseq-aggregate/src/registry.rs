//! A registry of aggregators and aggregation functions keyed by Inseq's ids.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use inseq_core::{Error, Result};

use crate::{AggregationFunction, Aggregator, Reduce, ScoresAggregator, SubwordsAggregator};

/// What a pipeline spec item gives an aggregator factory besides its id.
#[derive(Debug, Clone, Default)]
pub struct AggregatorArgs {
    /// The function named after the colon (`"subwords:sum"`), already looked up.
    pub function: Option<Arc<dyn Reduce>>,
}

/// Builds an aggregator from its arguments.
pub type AggregatorFactory = Arc<dyn Fn(AggregatorArgs) -> Result<Aggregator> + Send + Sync>;

#[derive(Clone)]
struct Entry {
    description: String,
    factory: AggregatorFactory,
}

/// Aggregators and aggregation functions by id, for [`crate::Pipeline::parse_with`].
/// [`AggregationRegistry::with_defaults`] holds Inseq's built-ins;
/// [`register_aggregator`](Self::register_aggregator) and
/// [`register_function`](Self::register_function) add your own. Built-in
/// aggregators look their `function` override up here too, so a registered
/// function works inside `subwords`, `scores`...
///
/// ```
/// use inseq_aggregate::{AggregationRegistry, Pipeline, Reduce};
///
/// /// The mean of squares.
/// #[derive(Debug)]
/// struct MeanSquare;
/// impl Reduce for MeanSquare {
///     fn id(&self) -> &str { "mean_square" }
///     fn reduce(&self, v: &[f32]) -> f32 { v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32 }
/// }
/// let mut reg = AggregationRegistry::with_defaults();
/// reg.register_function(MeanSquare);
/// assert!(Pipeline::parse_with("mean_square,subwords:mean_square", &reg).is_ok());
/// assert!(Pipeline::parse("mean_square").is_err());
/// ```
#[derive(Clone, Default)]
pub struct AggregationRegistry {
    aggregators: BTreeMap<String, Entry>,
    functions: BTreeMap<String, Arc<dyn Reduce>>,
}

static BUILTIN: LazyLock<AggregationRegistry> = LazyLock::new(AggregationRegistry::with_defaults);

impl AggregationRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in aggregators and functions of Python Inseq 0.7.1.
    pub fn with_defaults() -> Self {
        let mut r = Self::new();
        for f in [
            AggregationFunction::Mean,
            AggregationFunction::Max,
            AggregationFunction::Min,
            AggregationFunction::Sum,
            AggregationFunction::Prod,
            AggregationFunction::AbsMax,
            AggregationFunction::L2,
        ] {
            r.register_function(f);
        }
        r.register_aggregator(
            "scores",
            "Reduce the trailing dimension (hidden size, heads...), then normalize.",
            |a| {
                Ok(Aggregator::new(ScoresAggregator {
                    function: a.function,
                    ..Default::default()
                }))
            },
        );
        r.register_aggregator("subwords", "Merge the subword tokens of each word.", |a| {
            Ok(Aggregator::new(SubwordsAggregator {
                function: a.function,
                ..Default::default()
            }))
        });
        r.register_needing_args(
            "spans",
            "Merge given token spans.",
            "source/target spans",
            "SpansAggregator",
        );
        r.register_needing_args(
            "split",
            "Merge tokens between matches of a regex.",
            "a split pattern",
            "SplitAggregator",
        );
        r.register_needing_args(
            "pair",
            "Difference with a paired attribution.",
            "a paired attribution",
            "PairAggregator",
        );
        r.register_needing_args(
            "slices",
            "Keep only some token spans.",
            "spans to keep",
            "SlicesAggregator",
        );
        r
    }

    /// The shared registry of built-ins ([`AggregationRegistry::with_defaults`]).
    pub(crate) fn builtin() -> &'static Self {
        &BUILTIN
    }

    /// An aggregator that cannot be built from a spec item (it needs `what`).
    fn register_needing_args(
        &mut self,
        id: &'static str,
        description: &str,
        what: &'static str,
        type_name: &'static str,
    ) {
        self.register_aggregator(id, description, move |_| {
            Err(Error::invalid_arg(
                id,
                format!("the `{id}` aggregator needs {what}; build `inseq_aggregate::{type_name}` directly"),
            ))
        });
    }

    /// Registers (or replaces) an aggregator factory under `id`.
    pub fn register_aggregator(
        &mut self,
        id: &str,
        description: &str,
        factory: impl Fn(AggregatorArgs) -> Result<Aggregator> + Send + Sync + 'static,
    ) {
        let entry = Entry {
            description: description.to_string(),
            factory: Arc::new(factory),
        };
        self.aggregators.insert(id.to_string(), entry);
    }

    /// Registers (or replaces) an aggregation function under its id.
    pub fn register_function(&mut self, function: impl Reduce + 'static) {
        self.functions
            .insert(function.id().to_string(), Arc::new(function));
    }

    /// Looks up an aggregation function.
    pub fn function(&self, id: &str) -> Result<Arc<dyn Reduce>> {
        self.functions
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownId {
                kind: "aggregation function",
                id: id.to_string(),
                available: self.function_ids(),
            })
    }

    /// Builds the aggregator `id`, with the function `function` (an id of
    /// this registry) as its override. A bare function id means the `scores`
    /// aggregator with that function (`"vnorm"` is `"scores:vnorm"`).
    pub fn create(&self, id: &str, function: Option<&str>) -> Result<Aggregator> {
        let function = function.map(|f| self.function(f)).transpose()?;
        if let Some(entry) = self.aggregators.get(id) {
            return (entry.factory)(AggregatorArgs { function });
        }
        if let Ok(f) = self.function(id) {
            if function.is_some() {
                return Err(Error::invalid_arg(
                    "aggregate_fn",
                    format!("`{id}` is already an aggregation function; do not give another one"),
                ));
            }
            return self.create_scores(f);
        }
        Err(Error::UnknownId {
            kind: "aggregator",
            id: id.to_string(),
            available: self
                .aggregator_ids()
                .into_iter()
                .chain(self.function_ids())
                .collect(),
        })
    }

    fn create_scores(&self, function: Arc<dyn Reduce>) -> Result<Aggregator> {
        let entry = self
            .aggregators
            .get("scores")
            .ok_or_else(|| Error::UnknownId {
                kind: "aggregator",
                id: "scores".into(),
                available: self.aggregator_ids(),
            })?;
        (entry.factory)(AggregatorArgs {
            function: Some(function),
        })
    }

    /// Registered aggregator ids, sorted.
    pub fn aggregator_ids(&self) -> Vec<String> {
        self.aggregators.keys().cloned().collect()
    }

    /// Registered function ids, sorted.
    pub fn function_ids(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }

    /// `(id, description)` pairs of the aggregators, sorted by id.
    pub fn describe_aggregators(&self) -> Vec<(String, String)> {
        self.aggregators
            .iter()
            .map(|(k, e)| (k.clone(), e.description.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AGGREGATION_FUNCTION_IDS, AGGREGATOR_IDS};

    #[test]
    fn defaults_match_the_listed_ids() {
        let reg = AggregationRegistry::with_defaults();
        assert_eq!(reg.aggregator_ids(), AGGREGATOR_IDS);
        assert_eq!(reg.function_ids(), AGGREGATION_FUNCTION_IDS);
        assert_eq!(reg.describe_aggregators().len(), AGGREGATOR_IDS.len());
    }
}
