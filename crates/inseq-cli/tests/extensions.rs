//! A researcher's own binary: the whole `inseq` command through `inseq_cli::run_with`, with a
//! method, a step function and an aggregation function defined outside the workspace, used by id
//! on the command line.

mod common;

use std::process::ExitCode;

use burn::tensor::Tensor;
use inseq::steps::{StepContext, StepFunction, gather_ids};
use inseq::{MethodRegistry, Registries, StepArgs};

/// The target logit minus the contrastive target's (contrastive, so PECoRe can use it).
struct LogitGap;

impl StepFunction for LogitGap {
    fn id(&self) -> &str {
        "logit_gap"
    }
    fn description(&self) -> &str {
        "Target logit minus contrastive target logit."
    }
    fn compute(&self, ctx: &StepContext, _: &StepArgs) -> inseq::Result<Tensor<1>> {
        let c = ctx.contrast("logit_gap")?;
        Ok(gather_ids(ctx.logits.clone(), &ctx.target_ids)?
            - gather_ids(c.logits.clone(), &c.target_ids)?)
    }
    fn is_contrastive(&self) -> bool {
        true
    }
}

/// Twice the target logit.
struct DoubleLogit;

impl StepFunction for DoubleLogit {
    fn id(&self) -> &str {
        "double_logit"
    }
    fn description(&self) -> &str {
        "Twice the logit of the target token."
    }
    fn compute(&self, ctx: &StepContext, _: &StepArgs) -> inseq::Result<Tensor<1>> {
        Ok(gather_ids(ctx.logits.clone(), &ctx.target_ids)? * 2.0)
    }
}

/// The largest value.
#[derive(Debug)]
struct Largest;

impl inseq::aggregation::Reduce for Largest {
    fn id(&self) -> &str {
        "largest"
    }
    fn reduce(&self, values: &[f32]) -> f32 {
        values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
}

fn registries() -> Registries {
    let mut r = Registries::default();
    r.methods
        .register("my_saliency", "Saliency under another id.", |args| {
            MethodRegistry::with_defaults().create("saliency", args)
        });
    r.steps.register(DoubleLogit);
    r.steps.register(LogitGap);
    r.aggregations.register_function(Largest);
    r.aggregations
        .register_aggregator("shout", "Upper-cases the target tokens.", |_| {
            Ok(inseq::aggregation::Aggregator::new(Shout))
        });
    r
}

/// Upper-cases the target tokens.
#[derive(Debug)]
struct Shout;

impl inseq::aggregation::Aggregate for Shout {
    fn id(&self) -> &str {
        "shout"
    }
    fn apply(
        &self,
        seq: &inseq::SequenceAttribution,
        _: &inseq::aggregation::AggregationContext,
    ) -> inseq::Result<inseq::SequenceAttribution> {
        let mut out = seq.clone();
        out.target
            .iter_mut()
            .for_each(|t| t.token = t.token.to_uppercase());
        Ok(out)
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("inseq-ext-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_command_line_uses_registered_ids() {
    let save = scratch("attribute").join("out.json");
    let model = common::model_dir("tiny-gpt2");
    let args = [
        "inseq",
        "attribute",
        "--model",
        &model,
        "--method",
        "my_saliency",
        "--input",
        "Hello ladies and",
        "--target",
        "Hello ladies and gentlemen",
        "--step-scores",
        "double_logit",
        "--attributed-fn",
        "double_logit",
        "--aggregation",
        "largest, shout",
        "--save",
        save.to_str().unwrap(),
    ];
    assert_eq!(inseq_cli::run_with(args, &registries()), ExitCode::SUCCESS);
    let out = inseq::AttributionOutput::load(&save).unwrap();
    assert_eq!(out.info["attribution_method"], "my_saliency");
    assert_eq!(out.info["attributed_fn"], "double_logit");
    assert!(
        out.sequence_attributions[0]
            .step_scores
            .contains_key("double_logit")
    );
    // Without the registries the same command line is a clean error naming the id.
    assert_eq!(inseq_cli::run(args), ExitCode::FAILURE);
}

#[test]
fn attribute_context_uses_registered_ids() {
    let save = scratch("context").join("ctx.json");
    let model = common::model_dir("tiny-gpt2");
    let args = [
        "inseq",
        "attribute-context",
        "--model",
        &model,
        "--method",
        "my_saliency",
        "--input-context-text",
        "George was sick yesterday.",
        "--input-current-text",
        "His colleagues asked him",
        "--output-current-text",
        "to take the day off",
        "--context-sensitivity-metric",
        "logit_gap",
        "--attributed-fn",
        "logit_gap",
        "--context-sensitivity-std-threshold",
        "0",
        "--save-path",
        save.to_str().unwrap(),
    ];
    assert_eq!(inseq_cli::run_with(args, &registries()), ExitCode::SUCCESS);
    let out = inseq::context::ContextOutput::load(&save).unwrap();
    let info = out.info.unwrap();
    assert_eq!(info.attribution_method.as_deref(), Some("my_saliency"));
    assert_eq!(info.context_sensitivity_metric, "logit_gap");
    // `logit_gap` says it is contrastive: each CCI entry contrasts the contextless prediction.
    assert!(!out.cci_scores.is_empty());
    assert!(out.cci_scores.iter().all(|c| c.contrast_token.is_some()));
}

/// The drop of the attributed function when only the most relevant token is removed.
struct TopOneDrop;

impl inseq_eval::Metric for TopOneDrop {
    fn id(&self) -> &str {
        "top1_drop"
    }
    fn description(&self) -> &str {
        "Drop when the most relevant token is removed."
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn perturbations(&self, s: &inseq_eval::StepScores) -> Vec<inseq_eval::Perturbation> {
        let keep = inseq_eval::metrics::top_k_keep(s.step, 1, false);
        vec![inseq_eval::Perturbation::Keep(keep)]
    }
    fn finish(&self, s: &inseq_eval::StepScores, values: &[f32]) -> inseq_eval::MetricValue {
        inseq_eval::MetricValue {
            value: f64::from(s.original - values[0]),
            curve: None,
        }
    }
}

#[test]
fn evaluate_uses_registered_metrics() {
    let dir = scratch("evaluate");
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, "{\"text\": \"Hello ladies and\"}\n").unwrap();
    let save = dir.join("report.json");
    let model = common::model_dir("tiny-gpt2");
    let args = [
        "inseq",
        "evaluate",
        "--model",
        &model,
        "--methods",
        "my_saliency,random",
        "--metrics",
        "top1_drop,deletion",
        "--data",
        data.to_str().unwrap(),
        "--max-new-tokens",
        "2",
        "--save",
        save.to_str().unwrap(),
    ];
    let mut extensions = inseq_cli::Extensions::from(registries());
    extensions.metrics.register(std::sync::Arc::new(TopOneDrop));
    assert_eq!(
        inseq_cli::run_extended(args, &extensions),
        ExitCode::SUCCESS
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    for m in report["methods"].as_array().unwrap() {
        assert!(m["metrics"]["top1_drop"]["mean"].is_number(), "{m}");
    }
    // The methods alone do not bring the metric: a clean error naming it.
    std::fs::remove_dir_all(dir.join("report.json.work")).unwrap();
    assert_eq!(inseq_cli::run_with(args, &registries()), ExitCode::FAILURE);
    assert_eq!(
        inseq_cli::run_extended(["inseq", "list-metrics"], &extensions),
        ExitCode::SUCCESS
    );
    std::fs::remove_dir_all(dir).unwrap();
}
