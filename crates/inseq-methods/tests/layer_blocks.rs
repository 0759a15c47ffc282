//! Layer methods on block outputs (`layer=<index>`, `layer=encoder.<index>`).

mod common;

use common::{PREFIX, assert_batch_matches_rows, ctx, method, step, step_fn};

use burn::tensor::{Tensor, activation};
use inseq_fixtures::tolerance::{MODEL_PASS_RELATIVE, model_pass};
use inseq_methods::{MethodArgs, MethodContext, MethodRegistry, StepInput, embed_step};
use inseq_models::{
    ForwardOptions, LanguageModel, LayerOverride, LayerRef, ModelInput, OverrideMode,
};

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().try_to_vec_as::<f32>().unwrap()
}

/// A fixture model: the shared tiny models, or inseq-models' tiny T5s.
fn load(name: &str) -> inseq_models::Pretrained {
    if name.starts_with("tiny-t5") {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../inseq-models/tests/fixtures/t5"
        );
        inseq_models::load_pretrained(&format!("{dir}/{name}"), &burn::tensor::Device::default())
            .unwrap()
    } else {
        common::load(name)
    }
}

fn seq2seq_step() -> StepInput {
    StepInput {
        source_ids: Some(vec![vec![0, 100, 200, 300, 2]]),
        source_mask: Some(vec![vec![true; 5]]),
        prefix_ids: vec![vec![2, 40, 77]],
        prefix_mask: vec![vec![true; 3]],
        target_ids: vec![50],
        contrast: None,
    }
}

/// The step's inputs (or the baseline inputs: the source, and the target when
/// `baseline_target`) as a model input.
fn model_input(
    c: &MethodContext,
    st: &StepInput,
    baseline: bool,
    baseline_target: bool,
) -> ModelInput {
    let x = embed_step(c, st, false);
    let b = embed_step(c, st, true);
    ModelInput {
        target_embeds: if baseline && baseline_target {
            b.target
        } else {
            x.target
        },
        target_mask: st.prefix_mask.clone(),
        source_embeds: if baseline { b.source } else { x.source },
        source_mask: st.source_mask.clone(),
    }
}

/// The output of `layer` on an input.
fn activation_of(m: &dyn LanguageModel, input: ModelInput, layer: LayerRef) -> Tensor<3> {
    let out = m.forward(
        input,
        ForwardOptions {
            hidden_states: true,
            ..Default::default()
        },
    );
    match layer {
        LayerRef::Decoder(k) => out.hidden_states[k + 1].clone(),
        LayerRef::Encoder(k) => out.encoder_hidden_states[k + 1].clone(),
    }
}

/// `[1]` probability of the step's token on the real inputs with `layer`'s output
/// replaced by `value`.
fn probability_with(
    m: &dyn LanguageModel,
    c: &MethodContext,
    st: &StepInput,
    layer: LayerRef,
    value: Tensor<3>,
) -> Tensor<1> {
    let out = m.forward(
        model_input(c, st, false, false),
        ForwardOptions {
            last_position_only: true,
            layer_override: Some(LayerOverride {
                layer,
                value,
                mode: OverrideMode::Replace,
            }),
            ..Default::default()
        },
    );
    let probs = activation::softmax(out.last_logits(), 1);
    let t = st.target_ids[0];
    probs.slice([0..1, t..t + 1]).reshape([1])
}

#[test]
fn layer_integrated_gradients_is_complete_on_a_middle_layer() {
    // (model, step, layer argument, block, attribute_target)
    let cases: Vec<(&str, StepInput, &str, LayerRef, bool)> = vec![
        (
            "tiny-gpt2",
            step(&[PREFIX.to_vec()], &[364]),
            "0",
            LayerRef::Decoder(0),
            true,
        ),
        (
            "tiny-llama",
            step(&[PREFIX.to_vec()], &[364]),
            "0",
            LayerRef::Decoder(0),
            true,
        ),
        ("tiny-bart", seq2seq_step(), "0", LayerRef::Decoder(0), true),
        (
            "tiny-bart",
            seq2seq_step(),
            "encoder.0",
            LayerRef::Encoder(0),
            false,
        ),
        (
            "tiny-marian",
            seq2seq_step(),
            "decoder.0",
            LayerRef::Decoder(0),
            false,
        ),
        (
            "tiny-t5-gated",
            seq2seq_step(),
            "encoder.1",
            LayerRef::Encoder(1),
            true,
        ),
        (
            "tiny-t5-relu",
            seq2seq_step(),
            "0",
            LayerRef::Decoder(0),
            true,
        ),
    ];
    for (name, st, arg, layer, attribute_target) in cases {
        let p = load(name);
        let m = p.model.as_ref();
        let f = step_fn("probability");
        let c = ctx(m, &f, 3, attribute_target);
        let out = method(
            "layer_integrated_gradients",
            &format!("layer={arg},n_steps=64,return_convergence_delta=true"),
        )
        .attribute_step(&c, &st)
        .unwrap();
        let attr = match layer {
            LayerRef::Decoder(_) => {
                assert!(out.source.is_none());
                out.target.unwrap()
            }
            LayerRef::Encoder(_) => {
                assert!(out.target.is_none());
                out.source.unwrap()
            }
        };
        let [_, positions, hidden] = attr.dims();
        assert_eq!(hidden, m.info().hidden_size);
        let src_len = st.source_ids.as_ref().map_or(0, |s| s[0].len());
        let expected_len = match layer {
            LayerRef::Decoder(_) => st.prefix_ids[0].len(),
            LayerRef::Encoder(_) => src_len,
        };
        assert_eq!(positions, expected_len);
        let total: f32 = host(&attr).iter().sum();
        // f(x) - f(x with the block output taken from the baseline inputs), computed here.
        let baseline_target = attribute_target || m.kind() == inseq_models::ModelKind::DecoderOnly;
        let act = activation_of(m, model_input(&c, &st, false, false), layer);
        let act_base = activation_of(m, model_input(&c, &st, true, baseline_target), layer);
        let fx = host(&probability_with(m, &c, &st, layer, act))[0];
        let fb = host(&probability_with(m, &c, &st, layer, act_base))[0];
        let expected = fx - fb;
        let err = (total - expected).abs() / expected.abs();
        println!(
            "{name} layer={arg}: sum {total:e}, f(x) - f(baseline) {expected:e}, relative error {err:.2e}"
        );
        // Layer IG's quadrature error (not rounding), measured below 3 %.
        assert!(err < 0.03, "{name} layer={arg}: {total} vs {expected}");
        let delta = out.deltas.unwrap()[0]; // the same quadrature error
        assert!(
            delta.abs() <= 0.03 * expected.abs(),
            "{name}: delta {delta}"
        );
        if m.kind() == inseq_models::ModelKind::DecoderOnly {
            // For a decoder-only model the baseline of the block is f(baseline inputs).
            let fb_inputs = host(
                &inseq_methods::forward_scores(&c, &st, &embed_step(&c, &st, true), 1).unwrap(),
            )[0];
            // The same probability through another graph (the block's output fed back in):
            // the model-pass rule.
            assert!(
                f64::from((fb_inputs - fb).abs()) <= model_pass(fb.abs().into()),
                "{fb_inputs} vs {fb}"
            );
        }
    }
}

#[test]
fn layer_gradient_x_activation_is_gradient_times_activation() {
    for (name, st, arg, layer) in [
        (
            "tiny-gpt2",
            step(&[PREFIX.to_vec()], &[364]),
            "1",
            LayerRef::Decoder(1),
        ),
        (
            "tiny-llama",
            step(&[PREFIX.to_vec()], &[364]),
            "0",
            LayerRef::Decoder(0),
        ),
        (
            "tiny-bart",
            seq2seq_step(),
            "encoder.1",
            LayerRef::Encoder(1),
        ),
        ("tiny-marian", seq2seq_step(), "1", LayerRef::Decoder(1)),
        (
            "tiny-t5-gated",
            seq2seq_step(),
            "encoder.0",
            LayerRef::Encoder(0),
        ),
        (
            "tiny-t5-relu",
            seq2seq_step(),
            "decoder.1",
            LayerRef::Decoder(1),
        ),
    ] {
        let p = load(name);
        let m = p.model.as_ref();
        let f = step_fn("probability");
        let c = ctx(m, &f, 3, true);
        let out = method("layer_gradient_x_activation", &format!("layer={arg}"))
            .attribute_step(&c, &st)
            .unwrap();
        let ours = host(&match layer {
            LayerRef::Decoder(_) => out.target.unwrap(),
            LayerRef::Encoder(_) => out.source.unwrap(),
        });
        // Directly: the block output, tracked and fed back in its place.
        let act = activation_of(m, model_input(&c, &st, false, false), layer);
        let tracked = act.clone().detach().autodiff().require_grad();
        let prob = probability_with(m, &c, &st, layer, tracked.clone());
        let grads = prob.sum().backward();
        let grad = tracked.grad(&grads).unwrap();
        let direct = host(&(grad.clone() * act));
        let scale = direct.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        // The same gradient through another graph: the model-pass rule.
        let tol = model_pass(scale.into()) as f32;
        for (a, b) in ours.iter().zip(&direct) {
            assert!((a - b).abs() <= tol, "{name} layer={arg}: {a} vs {b}");
        }
        // Without multiply_by_inputs: the gradient, as layer_deeplift's multipliers.
        let plain = method(
            "layer_gradient_x_activation",
            &format!("layer={arg},multiply_by_inputs=false"),
        )
        .attribute_step(&c, &st)
        .unwrap();
        let dl = method(
            "layer_deeplift",
            &format!("layer={arg},multiply_by_inputs=false"),
        )
        .attribute_step(&c, &st)
        .unwrap();
        let pick = |o: &inseq_methods::StepAttribution| {
            host(o.target.as_ref().or(o.source.as_ref()).unwrap())
        };
        let g = host(&grad);
        let gscale = g.iter().fold(0f32, |a, x| a.max(x.abs()));
        for (x, y) in pick(&plain).iter().zip(&g).chain(pick(&dl).iter().zip(&g)) {
            let tol = model_pass(gscale.into()) as f32; // as above
            assert!((x - y).abs() <= tol, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn layer_deeplift_on_a_block_is_gradient_times_activation_difference() {
    let p = load("tiny-gpt2");
    let m = p.model.as_ref();
    let f = step_fn("probability");
    let c = ctx(m, &f, 3, false);
    let st = step(&[PREFIX.to_vec()], &[364]);
    let dl = host(
        method("layer_deeplift", "layer=0")
            .attribute_step(&c, &st)
            .unwrap()
            .target
            .as_ref()
            .unwrap(),
    );
    let grad = host(
        method(
            "layer_gradient_x_activation",
            "layer=0,multiply_by_inputs=false",
        )
        .attribute_step(&c, &st)
        .unwrap()
        .target
        .as_ref()
        .unwrap(),
    );
    let layer = LayerRef::Decoder(0);
    let act = host(&activation_of(m, model_input(&c, &st, false, false), layer));
    let base = host(&activation_of(m, model_input(&c, &st, true, true), layer));
    let expected: Vec<f32> = (0..dl.len())
        .map(|i| grad[i] * (act[i] - base[i]))
        .collect();
    let scale = expected.iter().fold(0f32, |a, x| a.max(x.abs()));
    let tol = model_pass(scale.into()) as f32; // the same values through other graphs
    for (a, b) in dl.iter().zip(&expected) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }
}

#[test]
fn block_layers_batch_like_single_rows() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    for (id, args) in [
        ("layer_gradient_x_activation", "layer=0"),
        ("layer_integrated_gradients", "layer=1,n_steps=8"),
        ("layer_deeplift", "layer=0"),
    ] {
        let rel_tol = MODEL_PASS_RELATIVE as f32;
        assert_batch_matches_rows(method(id, args).as_ref(), &c, id, rel_tol);
    }
}

#[test]
fn bad_layers_name_the_valid_range() {
    let f = step_fn("probability");
    let err = |model: &str, args: &str, st: &StepInput, id: &str| -> String {
        let p = load(model);
        method(id, args)
            .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), st)
            .unwrap_err()
            .to_string()
    };
    let dec = step(&[PREFIX.to_vec()], &[364]);
    let e = err("tiny-gpt2", "layer=2", &dec, "layer_integrated_gradients");
    assert!(
        e.contains("decoder block 2 does not exist") && e.contains("0..=1"),
        "{e}"
    );
    let e = err(
        "tiny-llama",
        "layer=encoder.0",
        &dec,
        "layer_gradient_x_activation",
    );
    assert!(e.contains("decoder-only") && e.contains("0..=1"), "{e}");
    let e = err(
        "tiny-bart",
        "layer=encoder.7",
        &seq2seq_step(),
        "layer_deeplift",
    );
    assert!(
        e.contains("encoder block 7 does not exist") && e.contains("0..=1"),
        "{e}"
    );
    for bad in ["layer=-1", "layer=encoder.x", "layer=lm_head"] {
        let e = MethodRegistry::with_defaults()
            .create(
                "layer_integrated_gradients",
                MethodArgs::parse(bad).unwrap(),
            )
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("encoder.<index>"), "{bad}: {e}");
    }
}
