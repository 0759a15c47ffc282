//! A researcher's own attribution method and step functions, defined outside the workspace and
//! used by id through the facade (`AttributionModel`) and PECoRe (`attribute_context`), exactly
//! where the built-in ones are.

mod common;

use burn::tensor::Tensor;
use inseq::context::{ContextArgs, attribute_context};
use inseq::methods::{AttributionMethod, MethodContext, SequenceInput, StepAttribution, StepInput};
use inseq::steps::{StepContext, StepFunction, gather_ids};
use inseq::{AttributeOptions, AttributionModel, MethodArgs, StepArgs};

/// Twice the target logit; merged over spans by `sum`.
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
    fn span_aggregation(&self) -> &str {
        "sum"
    }
}

/// The target logit minus the contrastive target's: a contrastive function of the user's own
/// (the built-in `contrast_logits_diff` under another id).
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

/// Saliency with its scores negated: the default aggregation (absolute-value norms, then
/// normalisation) shows exactly saliency's view.
struct NegatedSaliency(Box<dyn AttributionMethod>);

impl AttributionMethod for NegatedSaliency {
    fn id(&self) -> &str {
        "negated_saliency"
    }
    fn attribute_step(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
    ) -> inseq::Result<StepAttribution> {
        Ok(negate(self.0.attribute_step(ctx, step)?))
    }
    // Forwarded so that both run saliency's one-pass sequence path (same summation order).
    fn attribute_sequence(
        &self,
        ctx: &MethodContext,
        seq: &SequenceInput,
    ) -> Option<inseq::Result<Vec<StepAttribution>>> {
        let steps = self.0.attribute_sequence(ctx, seq)?;
        Some(steps.map(|s| s.into_iter().map(negate).collect()))
    }
}

fn negate(out: StepAttribution) -> StepAttribution {
    StepAttribution {
        source: out.source.map(Tensor::neg),
        target: out.target.map(Tensor::neg),
        ..out
    }
}

/// tiny-gpt2 with the three extensions registered.
fn extended_model() -> AttributionModel {
    let device = burn::tensor::Device::default();
    let dir = common::model_dir("tiny-gpt2");
    let mut model = inseq::load_model(&dir, "saliency", MethodArgs::default(), &device).unwrap();
    model.step_registry_mut().register(DoubleLogit);
    model.step_registry_mut().register(LogitGap);
    model
        .method_registry_mut()
        .register("negated_saliency", "Saliency, negated.", |args| {
            let inner = inseq::MethodRegistry::with_defaults().create("saliency", args)?;
            Ok(Box::new(NegatedSaliency(inner)))
        });
    model
}

fn forced(step_scores: &[&str], attributed_fn: &str) -> AttributeOptions {
    AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        step_scores: step_scores.iter().map(|s| s.to_string()).collect(),
        attributed_fn: attributed_fn.into(),
        ..Default::default()
    }
}

#[test]
fn a_user_step_function_is_a_step_score_and_an_attributed_function_by_id() {
    let model = extended_model();
    let out = model
        .attribute(
            &["Hello ladies and"],
            &forced(&["double_logit", "logit"], "probability"),
        )
        .unwrap();
    let scores = &out.sequence_attributions[0].step_scores;
    for (double, logit) in scores["double_logit"].iter().zip(&scores["logit"]) {
        // Both values come from the same f32 logit; doubling is exact in binary floating point.
        assert_eq!(*double, 2.0 * logit);
    }
    // As the attributed function: saliency of 2·logit is twice saliency of the logit.
    let of = |f: &str| {
        let out = model
            .attribute(&["Hello ladies and"], &forced(&[], f))
            .unwrap();
        out.sequence_attributions[0]
            .target_attributions
            .clone()
            .unwrap()
    };
    let (double, logit) = (of("double_logit"), of("logit"));
    for (d, l) in double.data().iter().zip(logit.data()) {
        // |∂(2x)| = 2|∂x| exactly: the backward pass scales the seed gradient by 2, a power of two.
        assert!((d.is_nan() && l.is_nan()) || *d == 2.0 * l, "{d} vs 2·{l}");
    }
}

#[test]
fn a_user_step_function_says_how_its_scores_merge_over_spans() {
    let model = extended_model();
    let registry = model.step_registry();
    assert_eq!(
        registry.get("double_logit").unwrap().span_aggregation(),
        "sum"
    );
    assert_eq!(
        registry.get("logit_gap").unwrap().span_aggregation(),
        "absmax"
    );
    assert!(registry.get("logit_gap").unwrap().is_contrastive());
    // The built-ins state Inseq's defaults (DEFAULT_ATTRIBUTION_AGGREGATE_DICT).
    for id in registry.ids() {
        let f = registry.get(&id).unwrap();
        if ["double_logit", "logit_gap"].contains(&id.as_str()) {
            continue;
        }
        let inseq_default = inseq::aggregation::default_step_score_function(&id);
        assert_eq!(f.span_aggregation(), inseq_default.id(), "{id}");
    }
}

#[test]
fn a_user_method_is_selected_by_id() {
    let mut model = extended_model();
    model
        .set_method("negated_saliency", MethodArgs::default())
        .unwrap();
    let opts = forced(&[], "probability");
    let negated = model.attribute(&["Hello ladies and"], &opts).unwrap();
    assert_eq!(negated.info["attribution_method"], "negated_saliency");
    let saliency = model
        .attribute_with("saliency", &["Hello ladies and"], &opts)
        .unwrap();
    let (n, s) = (
        negated.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap(),
        saliency.sequence_attributions[0]
            .target_attributions
            .as_ref()
            .unwrap(),
    );
    for (a, b) in n.data().iter().zip(s.data()) {
        // Negation is exact.
        assert!((a.is_nan() && b.is_nan()) || *a == -b, "{a} vs -{b}");
    }
    assert!(
        model
            .set_method("no_such_method", MethodArgs::default())
            .is_err()
    );
}

#[test]
fn pecore_uses_user_step_functions_and_methods_by_id() {
    let base = ContextArgs {
        input_context_text: Some("George was sick yesterday.".into()),
        input_current_text: "His colleagues asked him".into(),
        output_current_text: Some("to take the day off".into()),
        context_sensitivity_std_threshold: 0.0,
        ..Default::default()
    };
    let mut model = extended_model();
    let builtin = attribute_context(
        &model,
        &ContextArgs {
            context_sensitivity_metric: "contrast_logits_diff".into(),
            attributed_fn: "contrast_logits_diff".into(),
            ..base.clone()
        },
    )
    .unwrap();
    model
        .set_method("negated_saliency", MethodArgs::default())
        .unwrap();
    let user = attribute_context(
        &model,
        &ContextArgs {
            context_sensitivity_metric: "logit_gap".into(),
            attributed_fn: "logit_gap".into(),
            ..base
        },
    )
    .unwrap();
    // The same computation under other ids: identical CTI scores, and (a contrastive function,
    // so) a contrast token for every CCI entry, and CCI scores equal after aggregation.
    assert_eq!(user.cti_scores, builtin.cti_scores);
    assert_eq!(user.cci_scores.len(), builtin.cci_scores.len());
    for (u, b) in user.cci_scores.iter().zip(&builtin.cci_scores) {
        assert!(u.contrast_token.is_some());
        assert_eq!(u.contrast_token, b.contrast_token);
        assert_eq!(u.input_context_scores, b.input_context_scores);
    }
    let info = user.info.unwrap();
    assert_eq!(info.attribution_method.as_deref(), Some("negated_saliency"));
}

/// Largest minus smallest value: an aggregation function of the user's own.
#[derive(Debug)]
struct Range;

impl inseq::aggregation::Reduce for Range {
    fn id(&self) -> &str {
        "range"
    }
    fn reduce(&self, values: &[f32]) -> f32 {
        if values.iter().any(|v| v.is_nan()) {
            return f32::NAN; // positions not generated yet stay NaN
        }
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        max - min
    }
}

#[test]
fn a_user_aggregation_function_works_by_id_through_the_facade() {
    let mut model = extended_model();
    model.registries_mut().aggregations.register_function(Range);
    let raw = model
        .attribute(&["Hello ladies and"], &forced(&[], "probability"))
        .unwrap();
    let out = model.aggregate_spec(&raw, "range").unwrap();
    let (raw_seq, seq) = (&raw.sequence_attributions[0], &out.sequence_attributions[0]);
    let (r, a) = (
        raw_seq.target_attributions.as_ref().unwrap(),
        seq.target_attributions.as_ref().unwrap(),
    );
    let [len, steps, hidden] = r.shape()[..] else {
        panic!("granular saliency expected, got {:?}", r.shape())
    };
    for s in 0..steps {
        let range = |i: usize| {
            let v: Vec<f32> = (0..hidden).map(|k| r.get(&[i, s, k])).collect();
            inseq::aggregation::Reduce::reduce(&Range, &v)
        };
        let column: Vec<f32> = (0..len).map(range).collect();
        // `scores` normalises each step's column to unit L1 norm (NaN rows: not generated yet).
        let total: f32 = column
            .iter()
            .filter(|v| v.is_finite())
            .map(|v| v.abs())
            .sum();
        for (i, expected) in column.iter().enumerate() {
            let got = a.get(&[i, s]);
            if expected.is_nan() {
                assert!(got.is_nan());
                continue;
            }
            // Same f32 operations in another order over `len` terms: relative error ~ len·2^-23.
            let tol = 1e-6 + 4.0 * len as f32 * f32::EPSILON * expected.abs() / total;
            assert!(
                (got - expected / total).abs() <= tol,
                "[{i}, {s}] {got} vs {}",
                expected / total
            );
        }
    }
    assert!(model.aggregate_spec(&raw, "no_such_aggregator").is_err());
}

#[test]
fn step_scores_merge_over_words_as_their_functions_say() {
    let model = extended_model();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen of the jury".into()]),
        step_scores: vec!["double_logit".into(), "probability".into()],
        ..Default::default()
    };
    let raw = model.attribute(&["Hello"], &opts).unwrap();
    let merged = model.aggregate_spec(&raw, "subwords").unwrap();
    let (v, m) = (
        &raw.sequence_attributions[0].step_scores,
        &merged.sequence_attributions[0].step_scores,
    );
    assert!(
        m["double_logit"].len() < v["double_logit"].len(),
        "no word was merged"
    );
    // `double_logit` states `sum`, `probability` Inseq's `prod`: both keep the total over the
    // partition into words. f32 sums of n terms: error <= n·2^-23·Σ|v|; products likewise.
    let n = v["double_logit"].len() as f32;
    let (sv, sm): (f32, f32) = (
        v["double_logit"].iter().sum(),
        m["double_logit"].iter().sum(),
    );
    let scale: f32 = v["double_logit"].iter().map(|x| x.abs()).sum();
    assert!(
        (sv - sm).abs() <= 2.0 * n * f32::EPSILON * scale,
        "{sv} vs {sm}"
    );
    let (pv, pm): (f32, f32) = (
        v["probability"].iter().product(),
        m["probability"].iter().product(),
    );
    assert!(
        (pv - pm).abs() <= 2.0 * n * f32::EPSILON * pv.abs(),
        "{pv} vs {pm}"
    );
}

/// Upper-cases the target tokens: an aggregator of the user's own.
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
        out.aggregations.push(self.id().into());
        Ok(out)
    }
}

#[test]
fn a_user_aggregator_works_by_id_through_the_facade() {
    let mut model = extended_model();
    model.registries_mut().aggregations.register_aggregator(
        "shout",
        "Upper-cases the target tokens.",
        |_| Ok(inseq::aggregation::Aggregator::new(Shout)),
    );
    let raw = model
        .attribute(&["Hello ladies and"], &forced(&[], "probability"))
        .unwrap();
    let out = model.aggregate_spec(&raw, "vnorm, shout").unwrap();
    let seq = &out.sequence_attributions[0];
    assert_eq!(seq.aggregations.last().map(String::as_str), Some("shout"));
    for (ours, raw) in seq.target.iter().zip(&raw.sequence_attributions[0].target) {
        assert_eq!(ours.token, raw.token.to_uppercase());
    }
}
