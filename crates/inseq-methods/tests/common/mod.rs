//! Helpers shared by the method tests: tiny fixture models, contexts and step batches.
#![allow(dead_code)]

use burn::tensor::Device;
use inseq_methods::{AttributedFn, MethodContext, StepInput};
use inseq_models::{LanguageModel, Pretrained, load_pretrained};
use inseq_steps::{StepArgs, StepRegistry};

pub const MODELS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/models"
);

/// Loads a tiny fixture model on the CPU.
pub fn load(name: &str) -> Pretrained {
    load_pretrained(&format!("{MODELS}/{name}"), &Device::flex()).unwrap()
}

/// The built-in step function `id` as attributed function.
pub fn step_fn(id: &str) -> AttributedFn {
    AttributedFn {
        function: StepRegistry::with_defaults().get(id).unwrap(),
        args: StepArgs::default(),
    }
}

/// A method context without Inseq-compatibility quirks.
pub fn ctx<'a>(
    model: &'a dyn LanguageModel,
    f: &'a AttributedFn,
    baseline: usize,
    attribute_target: bool,
) -> MethodContext<'a> {
    MethodContext {
        model,
        attributed_fn: f,
        attribute_target,
        baseline_token_id: baseline,
        eos_token_id: model.info().eos_token_id,
        inseq_compat: false,
    }
}

/// A decoder-only step batch from prefixes (left-padded with 0) and next tokens.
pub fn step(prefixes: &[Vec<usize>], targets: &[usize]) -> StepInput {
    let w = prefixes.iter().map(Vec::len).max().unwrap();
    StepInput {
        source_ids: None,
        source_mask: None,
        prefix_ids: prefixes
            .iter()
            .map(|p| {
                std::iter::repeat_n(0, w - p.len())
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect(),
        prefix_mask: prefixes
            .iter()
            .map(|p| (0..w).map(|j| j >= w - p.len()).collect())
            .collect(),
        target_ids: targets.to_vec(),
        contrast: None,
    }
}
