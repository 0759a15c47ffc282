//! The walkthrough of `docs/adding-a-method.md`: an attribution method defined
//! outside the workspace, registered in a `MethodRegistry` and run through
//! `inseq::AttributionModel` on tiny-gpt2.

mod common;

use burn::tensor::Tensor;
use inseq::methods::{
    AttributionMethod, MethodContext, StepAttribution, StepInput, embed_step, gradients,
};
use inseq::{AttributeOptions, AttributionModel, MethodArgs, MethodRegistry, StepRegistry};

/// The L2 norm of the gradient of the attributed function w.r.t. each token
/// embedding, optionally multiplied by the embedding's own norm.
struct GradientNorm {
    times_input_norm: bool,
}

impl GradientNorm {
    fn from_args(mut args: MethodArgs) -> inseq::Result<Self> {
        let times_input_norm = args.take("times_input_norm", false)?;
        args.finish("gradient_norm")?; // rejects misspelled arguments
        Ok(Self { times_input_norm })
    }
}

/// `[batch, len, hidden]` -> `[batch, len, 1]` L2 norms.
fn l2(t: Tensor<3>) -> Tensor<3> {
    t.square().sum_dim(2).sqrt()
}

impl AttributionMethod for GradientNorm {
    fn id(&self) -> &str {
        "gradient_norm"
    }

    fn attribute_step(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
    ) -> inseq::Result<StepAttribution> {
        let inputs = embed_step(ctx, step, false);
        let (source_grad, target_grad, _scores) = gradients(ctx, step, inputs.clone(), 1)?;
        let score =
            |grad: Tensor<3>, input: Option<&Tensor<3>>| match (self.times_input_norm, input) {
                (true, Some(x)) => l2(grad) * l2(x.clone()),
                _ => l2(grad),
            };
        Ok(StepAttribution {
            source: source_grad.map(|g| score(g, inputs.source.as_ref())),
            target: target_grad.map(|g| score(g, Some(&inputs.target))),
            deltas: None,
            // One score per token: stored as `[len, steps]`.
            score_dims: Some(vec![]),
        })
    }
}

#[test]
fn a_method_defined_outside_the_workspace_runs_through_the_facade() {
    let mut methods = MethodRegistry::with_defaults();
    methods.register(
        "gradient_norm",
        "L2 norm of the gradient per token.",
        |args| Ok(Box::new(GradientNorm::from_args(args)?)),
    );
    assert!(methods.ids().contains(&"gradient_norm".to_string()));

    let device = burn::tensor::Device::default();
    let args = MethodArgs::parse("times_input_norm=true").unwrap();
    let method = methods.create("gradient_norm", args.clone()).unwrap();
    let pretrained =
        inseq::models::load_pretrained(&common::model_dir("tiny-gpt2"), &device).unwrap();
    let model = AttributionModel::new(
        pretrained,
        method,
        "gradient_norm",
        args,
        StepRegistry::with_defaults(),
    );

    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    let out = model.attribute(&["Hello ladies and"], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    let attr = seq.target_attributions.as_ref().unwrap();
    assert_eq!(attr.shape(), [seq.target.len(), seq.n_steps()]);
    assert!(seq.n_steps() >= 1);
    // Attributed positions (before the generated token) hold finite, non-negative norms.
    let prompt = seq.attr_pos_start;
    for i in 0..prompt {
        let v = attr.get(&[i, 0]);
        assert!(v.is_finite() && v >= 0.0, "position {i}: {v}");
    }
    assert_eq!(out.info["attribution_method"], "gradient_norm");

    // A misspelled argument is an error, not silently ignored.
    assert!(
        methods
            .create(
                "gradient_norm",
                MethodArgs::parse("times_input=true").unwrap()
            )
            .is_err()
    );
}
