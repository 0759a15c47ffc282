//! Helpers shared by the method tests: tiny fixture models, contexts and step batches.
#![allow(dead_code)]

use burn::tensor::Device;
use inseq_methods::{AttributedFn, MethodContext, StepInput};
use inseq_models::{LanguageModel, Pretrained, load_pretrained};
use inseq_steps::{StepArgs, StepRegistry};

pub fn models_dir() -> std::path::PathBuf {
    inseq_fixtures::models_dir()
}

/// Loads a tiny fixture model on the CPU.
pub fn load(name: &str) -> Pretrained {
    load_pretrained(
        models_dir().join(name).to_str().unwrap(),
        &Device::default(),
    )
    .unwrap()
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
        recorded_attentions: None,
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

/// A five-token GPT-2 prefix and a three-token one, for batch-consistency checks.
pub const PREFIX: [usize; 5] = [373, 275, 311, 389, 295];
/// See [`PREFIX`].
pub const SHORT: [usize; 3] = [311, 389, 295];

/// A `[batch, len, d]` tensor on the host, with its shape.
pub fn host(t: &burn::tensor::Tensor<3>) -> (Vec<f32>, [usize; 3]) {
    (t.clone().try_to_vec_as::<f32>().unwrap(), t.dims())
}

/// The method `id` with arguments `args` from the built-in registry.
pub fn method(id: &str, args: &str) -> Box<dyn inseq_methods::AttributionMethod> {
    inseq_methods::MethodRegistry::with_defaults()
        .create(id, inseq_methods::MethodArgs::parse(args).unwrap())
        .unwrap()
}

/// Attributing [`PREFIX`] and [`SHORT`] (left-padded) in one batch gives each row's result
/// alone on its real positions, within `rel_tol` of the largest score, and padding scores
/// (about) 0. The batch and the rows are the same passes summed in other orders (other matrix
/// shapes): `rel_tol` is [`MODEL_PASS_RELATIVE`](inseq_fixtures::tolerance::MODEL_PASS_RELATIVE),
/// or a multiple a caller justifies.
pub fn assert_batch_matches_rows(
    m: &dyn inseq_methods::AttributionMethod,
    c: &MethodContext,
    what: &str,
    rel_tol: f32,
) {
    let both = m
        .attribute_step(c, &step(&[PREFIX.to_vec(), SHORT.to_vec()], &[364, 287]))
        .unwrap();
    let long = m
        .attribute_step(c, &step(&[PREFIX.to_vec()], &[364]))
        .unwrap();
    let short = m
        .attribute_step(c, &step(&[SHORT.to_vec()], &[287]))
        .unwrap();
    let (b, [_, len, h]) = host(both.target.as_ref().unwrap());
    let (l, _) = host(long.target.as_ref().unwrap());
    let (s, _) = host(short.target.as_ref().unwrap());
    assert!(b.iter().all(|x| x.is_finite()), "{what}: non-finite scores");
    let scale = l
        .iter()
        .chain(&s)
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(1e-12);
    for (i, x) in l.iter().enumerate() {
        assert!(
            (b[i] - x).abs() <= rel_tol * scale,
            "{what}: row 0 differs at {i}: {} vs {x}",
            b[i]
        );
    }
    let pad = len - SHORT.len();
    for (i, x) in s.iter().enumerate() {
        let y = b[len * h + pad * h + i];
        assert!(
            (y - x).abs() <= rel_tol * scale,
            "{what}: row 1 differs at {i}: {y} vs {x}"
        );
    }
    // Padding takes part in no sum (its attention weights underflow to 0): 0 up to residues far
    // below 16 roundings of the scale (16u ~ 1e-6).
    for i in 0..pad * h {
        assert!(
            b[len * h + i].abs() <= 1e-6 * scale,
            "{what}: padding scored {}",
            b[len * h + i]
        );
    }
}
