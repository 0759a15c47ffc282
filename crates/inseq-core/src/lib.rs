//! Data model, errors and serialization shared by the inseq-rs crates.
//!
//! [`AttributionOutput`] mirrors Python Inseq's `FeatureAttributionOutput`: one
//! [`SequenceAttribution`] per input, holding the tokens, attribution arrays
//! ([`Array`], `NaN` where no score exists), step scores and positions.
//!
//! ```
//! use inseq_core::{Array, AttributionOutput, SequenceAttribution, TokenWithId};
//! let seq = SequenceAttribution {
//!     source: None,
//!     target: vec![TokenWithId::new("Hello", 1), TokenWithId::new("Ġworld", 2)],
//!     source_attributions: None,
//!     target_attributions: Some(Array::new(vec![2, 1], vec![1.0, f32::NAN]).unwrap()),
//!     step_scores: Default::default(),
//!     sequence_scores: Default::default(),
//!     attr_pos_start: 1,
//!     attr_pos_end: 2,
//!     aggregations: vec![],
//! };
//! let out = AttributionOutput { sequence_attributions: vec![seq], info: Default::default() };
//! let back = AttributionOutput::from_json(&out.to_json().unwrap()).unwrap();
//! assert_eq!(back.sequence_attributions[0].generated()[0].token, "Ġworld");
//! ```
#![warn(missing_docs)]

mod array;
pub mod context_output;
mod error;
pub mod inseq_format;
mod output;

pub use array::Array;
pub use context_output::{CciCues, CciOutput, ContextInfo, ContextOutput, Cue};
pub use error::{Error, Result};
pub use inseq_format::{InseqSaveOptions, ScorePrecision};
pub use output::{AttributionOutput, SequenceAttribution, TokenWithId, write_atomic};
