//! Faithfulness evaluation of attribution methods for generation models, and benchmarks of
//! attribution jobs across backends.
//!
//! For each attributed step (a generated token and its attributed function, by default the
//! token's probability), the scores of the input tokens (source and target prefix) are checked
//! against what the model does when those tokens are perturbed:
//!
//! | id | metric | reference | better |
//! |---|---|---|---|
//! | `deletion` | area under the deletion curve | Petsiuk et al. 2018 | lower |
//! | `insertion` | area under the insertion curve | Petsiuk et al. 2018 | higher |
//! | `comprehensiveness` | AOPC comprehensiveness at 1/5/10/20/50 % | DeYoung et al. 2020 | higher |
//! | `sufficiency` | AOPC sufficiency at 1/5/10/20/50 % | DeYoung et al. 2020 | lower |
//! | `soft_nc` | soft normalised comprehensiveness | Zhao and Aletras 2023 | higher |
//! | `soft_ns` | soft normalised sufficiency | Zhao and Aletras 2023 | higher |
//! | `model_randomisation` | rank correlation with the attributions of progressively randomised models | Adebayo et al. 2018 | lower |
//!
//! Metrics implement [`Metric`] and are looked up by id in a [`MetricRegistry`]; the
//! [`random`](register_random_method) method is the reference every method should beat.
//!
//! ```no_run
//! use inseq_eval::{EvalConfig, Evaluator, MetricRegistry, example_scores};
//! let device = inseq::default_device().unwrap();
//! let model = inseq::load_model("tests/fixtures/models/tiny-gpt2", "saliency",
//!                               Default::default(), &device).unwrap();
//! let out = inseq::aggregate(&model.attribute(&["Hello ladies and"], &Default::default()).unwrap()).unwrap();
//! let registry = MetricRegistry::with_defaults();
//! let metrics = registry.ids().iter().map(|id| registry.get(id).unwrap()).collect();
//! let evaluator = Evaluator::new(&model, "probability", Default::default(), metrics,
//!                                EvalConfig::default()).unwrap();
//! let steps = evaluator.evaluate_output(&out, 0).unwrap();
//! println!("{:?}", example_scores(0, &steps[0]).metrics);
//! ```
#![warn(missing_docs)]

pub mod bench;
mod config;
mod evaluator;
pub mod metrics;
mod random_method;
pub mod randomisation;
pub mod render;
mod report;
pub mod rng;
mod scorer;
pub mod stats;
mod step;

pub use config::EvalConfig;
pub use evaluator::{Evaluator, StepResult};
pub use metrics::{Metric, MetricRegistry, MetricValue, Perturbation, StepScores};
pub use random_method::{RandomAttribution, register_random_method};
pub use report::{
    EvalReport, ExampleScores, MethodReport, MetricInfo, MetricSummary, RANDOMISATION, RankEntry,
    example_scores, format_value, mean_curve, summary_cell,
};
pub use scorer::Scorer;
pub use step::{EvalStep, steps_of_sequence};

/// The README's example, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct Readme;
