//! Compares methods with the random reference on the tiny GPT-2 fixture:
//! `cargo run --example evaluate_methods -p inseq-eval [model]`.

use inseq::{AttributeOptions, GenerationOptions, MethodArgs, Registries};
use inseq_eval::{
    EvalConfig, EvalReport, Evaluator, MethodReport, MetricInfo, MetricRegistry, example_scores,
};

fn main() -> inseq::Result<()> {
    let model_path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/models/tiny-gpt2"
        )
        .into()
    });
    let mut registries = Registries::default();
    inseq_eval::register_random_method(&mut registries.methods);
    let device = inseq::default_device()?;
    let mut model = inseq::load_model_with(
        &model_path,
        "dummy",
        MethodArgs::default(),
        &device,
        registries,
    )?;
    let prompts = [
        "Hello ladies and",
        "The quick brown fox",
        "Once upon a time",
    ];
    let opts = AttributeOptions {
        generation: GenerationOptions {
            max_new_tokens: 3,
            min_new_tokens: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let config = EvalConfig::default();
    let registry = MetricRegistry::with_defaults();
    let metrics: Vec<_> = registry
        .ids()
        .iter()
        .map(|id| registry.get(id))
        .collect::<inseq::Result<_>>()?;
    let mut methods = Vec::new();
    for method in ["saliency", "input_x_gradient", "occlusion", "random"] {
        model.set_method(method, MethodArgs::default())?;
        let evaluator = Evaluator::new(
            &model,
            "probability",
            Default::default(),
            metrics.clone(),
            config.clone(),
        )?;
        let mut examples = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let out = inseq::aggregate(&model.attribute(&[prompt], &opts)?)?;
            let steps = evaluator.evaluate_output(&out, i as u64)?;
            examples.push(example_scores(i, &steps.concat()));
        }
        methods.push(MethodReport::new(method, "", examples, &config));
    }
    let metric_info = metrics
        .iter()
        .map(|m| {
            let info = MetricInfo {
                description: m.description().into(),
                higher_is_better: m.higher_is_better(),
            };
            (m.id().to_string(), info)
        })
        .collect();
    let mut report = EvalReport {
        model: model_path,
        attributed_fn: "probability".into(),
        config,
        metric_info,
        randomisation_levels: vec![],
        methods,
        ranking: vec![],
        seconds: 0.0,
    };
    report.rank();
    println!("{}", report.table());
    Ok(())
}
