//! The memory check before attribution: a job whose activations cannot fit its budget fails at
//! once with `Error::OutOfMemory` saying how to proceed, and nothing is attributed.

mod common;

use inseq::{AttributeOptions, Error, MethodArgs, activation_bytes};
use inseq_fixtures::tolerance::{max_abs, model_pass};

fn model(method: &str, args: &str) -> inseq::AttributionModel {
    let device = burn::tensor::Device::default();
    let args = MethodArgs::parse(args).unwrap();
    inseq::load_model(&common::model_dir("tiny-gpt2"), method, args, &device).unwrap()
}

fn forced(budget: Option<u64>) -> AttributeOptions {
    AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into(); 2]),
        memory_budget: budget,
        ..Default::default()
    }
}

#[test]
fn a_row_over_budget_is_an_error_that_says_how_to_proceed() {
    let ig = model("integrated_gradients", "n_steps=8,internal_batch_size=4");
    let inputs = ["Hello ladies and"; 2];
    let err = ig.attribute(&inputs, &forced(Some(1000))).unwrap_err();
    let Error::OutOfMemory { needed, budget, .. } = &err else {
        panic!("expected OutOfMemory, got {err}");
    };
    assert_eq!(*budget, 1000);
    // One row of 4 copies, all layers kept: the estimate of the formula, exactly.
    let info = ig.model().info();
    let len = ig
        .tokenizer()
        .encode("Hello ladies and gentlemen", true)
        .unwrap()
        .len();
    assert_eq!(*needed, activation_bytes(info, len, 4, true));
    let message = err.to_string();
    for advice in [
        "not enough memory",
        "internal_batch_size (now 4",
        "--memory-budget",
    ] {
        assert!(message.contains(advice), "{advice}: {message}");
    }
}

#[test]
fn rows_that_do_not_fit_together_run_in_smaller_batches() {
    let ig = model("integrated_gradients", "n_steps=8,internal_batch_size=4");
    let inputs = ["Hello ladies and", "Hello ladies or", "Hello ladies and"];
    let opts = |budget| AttributeOptions {
        targets: Some(vec![
            "Hello ladies and gentlemen".into(),
            "Hello ladies or gentlemen".into(),
            "Hello ladies and gentlemen".into(),
        ]),
        memory_budget: budget,
        ..Default::default()
    };
    let together = ig.attribute(&inputs, &opts(Some(u64::MAX))).unwrap();
    let len = (together.sequence_attributions.iter())
        .map(|s| s.target.len())
        .max()
        .unwrap();
    // Room for one row (4 copies) at a time, not two.
    let info = ig.model().info();
    let one_row = activation_bytes(info, len, 4, true);
    assert!(activation_bytes(info, len, 8, true) > one_row + 1);
    let chunked = ig.attribute(&inputs, &opts(Some(one_row + 1))).unwrap();
    assert_eq!(chunked.sequence_attributions.len(), 3);
    for (a, b) in chunked
        .sequence_attributions
        .iter()
        .zip(&together.sequence_attributions)
    {
        assert_eq!(a.target, b.target);
        let (a, b) = (
            a.target_attributions.as_ref().unwrap(),
            b.target_attributions.as_ref().unwrap(),
        );
        // The same rows batched differently: two f32 passes, the model-pass rule.
        let tol = model_pass(max_abs(b.data()));
        for (x, y) in a.data().iter().zip(b.data()) {
            assert!(
                (x.is_nan() && y.is_nan()) || f64::from((x - y).abs()) <= tol,
                "{x} vs {y}"
            );
        }
    }
}

#[test]
fn forward_only_methods_count_one_layer() {
    let attention = model("attention", "");
    let err = attention
        .attribute(&["Hello ladies and"; 2], &forced(Some(1)))
        .unwrap_err();
    let Error::OutOfMemory { needed, .. } = err else {
        panic!("expected OutOfMemory, got {err}");
    };
    let info = attention.model().info();
    let len = attention
        .tokenizer()
        .encode("Hello ladies and gentlemen", true)
        .unwrap()
        .len();
    assert_eq!(needed, activation_bytes(info, len, 1, false));
    assert!(!err_mentions_gradients(&attention));
}

fn err_mentions_gradients(m: &inseq::AttributionModel) -> bool {
    let err = m
        .attribute(&["Hello ladies and"; 2], &forced(Some(1)))
        .unwrap_err();
    err.to_string().contains("without gradients")
}

/// Encoder-decoder models are estimated with their quadratic attention terms, from the source
/// and target lengths and both stacks' layers (a linear estimate over `source + target` would
/// let a long T5 input, which has no length limit of its own, pass and then exhaust memory).
#[test]
fn encoder_decoder_estimates_count_source_and_target() {
    let device = burn::tensor::Device::default();
    let dir = common::model_dir("tiny-mt5");
    let saliency = inseq::load_model(&dir, "saliency", MethodArgs::default(), &device).unwrap();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into()]),
        memory_budget: Some(1),
        ..Default::default()
    };
    let source = "Hello ladies and gentlemen of the jury";
    let err = saliency.attribute(&[source], &opts).unwrap_err();
    let Error::OutOfMemory { needed, .. } = err else {
        panic!("expected OutOfMemory, got {err}");
    };
    let model = saliency.model();
    let tokens = |text| saliency.tokenizer().encode(text, true).unwrap().len();
    let (s, t) = (tokens(source), tokens("Hello ladies and gentlemen"));
    let shape = |s, t| {
        let layers = model.num_encoder_layers();
        inseq::encoder_decoder_activation_bytes(model.info(), layers, (s, t), 1, true)
    };
    // The decoder input starts with the decoder start token.
    assert!([shape(s, t), shape(s, t + 1)].contains(&needed), "{needed}");
    // Quadratic in the source: doubling it more than doubles the attention terms.
    let chunks = 4 * 4 * inseq::models::CHUNK_FLOATS as u64;
    assert!(shape(4096, t) - chunks > 3 * (shape(2048, t) - chunks));
}

/// Gradient methods on encoder-decoder models go back through a long source's encoder stage by
/// stage (autodiff holding one layer's attention weights); forced here on the tiny models, their
/// attributions equal those of the whole-graph backward pass.
#[test]
fn encoder_gradients_stage_by_stage_equal_the_whole_graph() {
    let device = burn::tensor::Device::default();
    let opts = AttributeOptions {
        targets: Some(vec!["Hello ladies".into(), "and gentlemen of".into()]),
        attribute_target: true,
        ..Default::default()
    };
    let sources = ["Hello ladies and gentlemen of the jury", "Hello there"];
    for name in ["tiny-bart", "tiny-mbart", "tiny-mt5", "tiny-umt5"] {
        let methods = [
            ("saliency", ""),
            ("integrated_gradients", "n_steps=4"),
            ("attnlrp", ""),
        ];
        for (method, args) in methods {
            let args = MethodArgs::parse(args).unwrap();
            let dir = common::model_dir(name);
            let m = inseq::load_model(&dir, method, args, &device).unwrap();
            let whole = m.attribute(&sources, &opts).unwrap();
            let before = inseq::methods::set_staged_encoder_from_bytes(0);
            let staged = m.attribute(&sources, &opts);
            inseq::methods::set_staged_encoder_from_bytes(before);
            let staged = staged.unwrap();
            for (a, b) in staged
                .sequence_attributions
                .iter()
                .zip(&whole.sequence_attributions)
            {
                let pairs = [
                    (&a.source_attributions, &b.source_attributions),
                    (&a.target_attributions, &b.target_attributions),
                ];
                for (x, y) in pairs {
                    let (x, y) = (x.as_ref().unwrap().data(), y.as_ref().unwrap().data());
                    // The same operations chained by hand: equal up to f32 reordering (measured
                    // ≤ 1.4e-6 of the largest value), far inside the model-pass rule, whose
                    // absolute floor would not see a 1% error at these magnitudes.
                    let tol = 1e-4 * max_abs(y);
                    let diff = (x.iter().zip(y))
                        .map(|(p, q)| f64::from((p - q).abs()))
                        .fold(0.0, f64::max);
                    assert!(diff <= tol, "{name} {method}: {diff} > {tol}");
                }
            }
        }
    }
}
