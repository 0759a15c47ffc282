//! **inseq** — post-hoc interpretability for sequence generation models, in Rust.
//!
//! Load a model with an attribution method, attribute its generation (or a
//! forced target), aggregate and show the result:
//!
//! ```no_run
//! use inseq::{AttributeOptions, MethodArgs, aggregate, default_device, load_model};
//! let device = default_device().unwrap();
//! let model = load_model("tests/fixtures/models/tiny-gpt2", "integrated_gradients",
//!                        MethodArgs::parse("n_steps=16").unwrap(), &device).unwrap();
//! let opts = AttributeOptions { step_scores: vec!["probability".into()], ..Default::default() };
//! let out = model.attribute(&["Hello ladies and"], &opts).unwrap();
//! let shown = aggregate(&out).unwrap();
//! println!("{}", inseq::viz::render_terminal(&shown.sequence_attributions[0], &Default::default()));
//! ```
//!
//! The pieces are separate crates, re-exported here: [`core`] (data model),
//! [`models`], [`methods`], [`steps`], [`aggregation`], [`viz`].
#![warn(missing_docs)]

mod attribute;
pub mod context;
mod device;
mod positions;
mod registries;

pub use attribute::{
    AttributeOptions, AttributionModel, ContrastAlignment, Progress, SharedMethod,
    activation_bytes, encoder_decoder_activation_bytes, load_model, load_model_with,
    load_model_with_options, parse_memory_size,
};
pub use device::{DEVICE_NAMES, default_device, parse_device};
pub use inseq_aggregate as aggregation;
pub use inseq_core as core;
pub use inseq_core::{Array, AttributionOutput, Error, Result, SequenceAttribution, TokenWithId};
pub use inseq_methods as methods;
pub use inseq_methods::{MethodArgs, MethodRegistry};
pub use inseq_models as models;
pub use inseq_models::{GenerationOptions, LanguageOptions, LoadOptions, WeightStorage};
pub use inseq_steps as steps;
pub use inseq_steps::{StepArgs, StepRegistry};
pub use inseq_viz as viz;
pub use positions::AttributedSpan;
pub use registries::Registries;

/// Applies Inseq's default aggregation to every sequence of `out`: for
/// gradient methods the L2 norm over the hidden dimension, then normalisation
/// so each generated step's scores sum to 1; for attention the mean over heads
/// and layers; per-token scores (occlusion) are kept as they are.
pub fn aggregate(out: &AttributionOutput) -> Result<AttributionOutput> {
    inseq_aggregate::aggregate_output_inseq_default(out)
}

/// The Rust code blocks of `docs/*.md`, compiled (and run, unless marked `no_run`) as doc tests so
/// the guides stay true to the code.
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../../../docs/adding-a-method.md")]
    struct AddingAMethod;
    #[doc = include_str!("../../../docs/architecture.md")]
    struct Architecture;
    #[doc = include_str!("../../../docs/attribute-context.md")]
    struct AttributeContext;
    #[doc = include_str!("../../../docs/evaluation.md")]
    struct Evaluation;
    #[doc = include_str!("../../../docs/inseq-compatibility.md")]
    struct InseqCompatibility;
    #[doc = include_str!("../../../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../../../docs/reliability.md")]
    struct Reliability;
}
