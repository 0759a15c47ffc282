//! Criterion benches of the hot paths of attribution: a forward pass, one saliency step
//! (forward + backward to the input embeddings) and one batched integrated-gradients step.
//!
//! ```text
//! cargo bench -p inseq-benches --bench hot_paths
//! ```
//!
//! Runs on the tiny Llama fixture (`tests/fixtures/models/tiny-llama`) and, when
//! `cargo xtask fetch-models` has downloaded it, on SmolLM2-135M, with a 30-token prefix.

use std::sync::Arc;

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use inseq::methods::{
    AttributedFn, AttributionMethod, IntegratedGradients, MethodContext, Saliency, StepInput,
    embed_target,
};
use inseq::models::{ForwardOptions, LanguageModel, ModelInput, Pretrained, load_pretrained};
use inseq::{MethodArgs, StepArgs, StepRegistry};

const PREFIX_LEN: usize = 30;

fn models(device: &Device) -> Vec<(String, Pretrained)> {
    let tiny = inseq_fixtures::model_dir("tiny-llama");
    let tiny = tiny.to_str().expect("fixture path is UTF-8");
    ["smollm2", tiny]
        .iter()
        .filter_map(|name| {
            let short = name.rsplit('/').next().unwrap_or(name).to_string();
            load_pretrained(name, device).ok().map(|m| (short, m))
        })
        .collect()
}

fn step_input(model: &dyn LanguageModel) -> StepInput {
    let vocab = model.info().vocab_size;
    let prefix: Vec<usize> = (0..PREFIX_LEN).map(|i| (i * 7919 + 13) % vocab).collect();
    StepInput {
        source_ids: None,
        source_mask: None,
        prefix_mask: vec![vec![true; prefix.len()]],
        prefix_ids: vec![prefix],
        target_ids: vec![1],
        contrast: None,
    }
}

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let probability = AttributedFn {
        function: StepRegistry::with_defaults()
            .get("probability")
            .expect("built-in step function"),
        args: StepArgs::default(),
    };
    for (name, pretrained) in models(&device) {
        let model: &dyn LanguageModel = pretrained.model.as_ref();
        let step = step_input(model);
        let ctx = MethodContext {
            model,
            attributed_fn: &probability,
            attribute_target: true,
            baseline_token_id: 0,
            eos_token_id: model.info().eos_token_id,
            inseq_compat: false,
            recorded_attentions: None,
        };
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.bench_function("forward", |b| {
            b.iter(|| {
                let input = ModelInput {
                    target_embeds: embed_target(model, &step.prefix_ids, false),
                    target_mask: step.prefix_mask.clone(),
                    source_embeds: None,
                    source_mask: None,
                };
                let options = ForwardOptions {
                    last_position_only: true,
                    ..Default::default()
                };
                model.forward(input, options).last_logits().into_data()
            })
        });
        let saliency: Arc<dyn AttributionMethod> = Arc::new(Saliency { abs: true });
        group.bench_function("saliency_step", |b| {
            b.iter(|| saliency.attribute_step(&ctx, &step).expect("saliency"))
        });
        let ig = IntegratedGradients::from_args(
            MethodArgs::parse("n_steps=16,internal_batch_size=16").expect("valid args"),
        )
        .expect("valid args");
        group.bench_function("integrated_gradients_16_step", |b| {
            b.iter(|| {
                ig.attribute_step(&ctx, &step)
                    .expect("integrated gradients")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
