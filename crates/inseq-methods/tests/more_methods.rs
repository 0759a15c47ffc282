//! Defining properties of occlusion, attention, SIG, DeepLIFT and the layer methods on tiny models.

mod common;

use common::{PREFIX, assert_batch_matches_rows, ctx, host, load, method, step, step_fn};

use burn::tensor::{Device, Tensor};
use inseq_fixtures::tolerance::{MODEL_PASS_RELATIVE, max_abs, model_pass, probability_sum};
use inseq_methods::{
    Embedded, MethodArgs, MethodContext, MethodRegistry, StepAttribution, StepInput, embed_step,
    forward_scores,
};

#[test]
fn occlusion_of_a_token_equal_to_the_baseline_scores_zero() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    // The baseline is token 311, which sits at position 2: occluding it changes nothing.
    let c = ctx(p.model.as_ref(), &f, 311, false);
    let out = method("occlusion", "")
        .attribute_step(&c, &step(&[PREFIX.to_vec()], &[364]))
        .unwrap();
    assert_eq!(out.score_dims, Some(vec![]));
    let (v, dims) = host(out.target.as_ref().unwrap());
    assert_eq!(dims, [1, 5, 1]);
    // p(x) - p(x): zero up to the rounding of the probability in two forward passes that sum
    // in other orders (the occluded batch and the single row): the model-pass rule on p(x).
    let st = step(&[PREFIX.to_vec()], &[364]);
    let px = forward_scores(&c, &st, &embed_step(&c, &st, false), 1)
        .unwrap()
        .try_to_vec_as::<f32>()
        .unwrap()[0];
    assert!(f64::from(v[2].abs()) <= model_pass(px.into()), "{v:?}");
    assert!(v.iter().all(|x| *x >= 0.0));
    assert!(v.iter().enumerate().any(|(i, x)| i != 2 && *x > 0.0));
}

/// Batched results equal per-row results on the real (unpadded) positions.
fn assert_batch_consistent(id: &str, args: &str) {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    assert_batch_matches_rows(
        method(id, args).as_ref(),
        &c,
        id,
        MODEL_PASS_RELATIVE as f32,
    );
}

#[test]
fn batches_match_single_rows() {
    assert_batch_consistent("occlusion", "");
    assert_batch_consistent("attention", "");
    assert_batch_consistent("sequential_integrated_gradients", "n_steps=4");
    assert_batch_consistent("deeplift", "");
}

#[test]
fn attention_rows_are_distributions() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    let out = method("attention", "")
        .attribute_step(&c, &step(&[PREFIX.to_vec()], &[364]))
        .unwrap();
    let info = p.model.info();
    assert_eq!(out.score_dims, Some(vec![info.num_layers, info.num_heads]));
    let t = out.target.unwrap();
    let sums = t.sum_dim(1).try_to_vec_as::<f32>().unwrap();
    assert_eq!(sums.len(), info.num_layers * info.num_heads);
    let tol = probability_sum(PREFIX.len()) as f32; // softmax rows over the positions
    assert!(sums.iter().all(|s| (s - 1.0).abs() <= tol), "{sums:?}");
}

#[test]
fn sig_is_complete_per_position() {
    // SIG's attribution of token i sums to f(x) - f(x with token i at the baseline).
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    let st = step(&[PREFIX.to_vec()], &[364]);
    let out = method("sequential_integrated_gradients", "n_steps=32")
        .attribute_step(&c, &st)
        .unwrap();
    let (v, [_, len, h]) = host(out.target.as_ref().unwrap());
    let x = embed_step(&c, &st, false);
    let base = embed_step(&c, &st, true);
    let fx = forward_scores(&c, &st, &x, 1)
        .unwrap()
        .try_to_vec_as::<f32>()
        .unwrap()[0];
    for i in 0..len {
        let mut mask = vec![0f32; len];
        mask[i] = 1.0;
        let m = Tensor::<3>::from_data(
            burn::tensor::TensorData::new(mask, [1, len, 1]),
            &Device::default(),
        );
        let moved = x.target.clone() * (m.clone().neg() + 1.0) + base.target.clone() * m;
        let fi = forward_scores(
            &c,
            &st,
            &Embedded {
                source: None,
                target: moved,
            },
            1,
        )
        .unwrap()
        .try_to_vec_as::<f32>()
        .unwrap()[0];
        let total: f32 = v[i * h..(i + 1) * h].iter().sum();
        let expected = fx - fi;
        // SIG's 32-step quadrature error (not rounding): 1e-2 of the difference; plus the
        // rounding of f(x) - f(x_i) from two forward passes (the model-pass rule on f(x)).
        let tol = 1e-2 * f64::from(expected.abs()) + model_pass(fx.into());
        assert!(
            f64::from((total - expected).abs()) <= tol,
            "position {i}: {total} vs {expected}"
        );
    }
}

#[test]
fn deeplift_and_layer_methods_match_their_gradient_forms() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    let st = step(&[PREFIX.to_vec()], &[364]);
    let get = |id: &str, args: &str| -> Vec<f32> {
        let out: StepAttribution = method(id, args).attribute_step(&c, &st).unwrap();
        host(out.target.as_ref().unwrap()).0
    };
    // The same gradients through other graphs (other summation orders): the model-pass rule.
    let close = |a: &[f32], b: &[f32]| {
        let tol = model_pass(max_abs(a)) as f32;
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    };
    assert!(close(
        &get("deeplift", "multiply_by_inputs=false"),
        &get("saliency", "abs=false")
    ));
    assert!(close(
        &get("layer_gradient_x_activation", ""),
        &get("input_x_gradient", "")
    ));
    assert!(close(
        &get("layer_integrated_gradients", "n_steps=8"),
        &get("integrated_gradients", "n_steps=8")
    ));
    assert!(close(&get("layer_deeplift", ""), &get("deeplift", "")));
    // Inseq 0.7.1 compatibility: layer IG / DeepLIFT come out as zeros.
    let compat = MethodContext {
        inseq_compat: true,
        ..ctx(p.model.as_ref(), &f, 1, false)
    };
    let z = method("layer_integrated_gradients", "")
        .attribute_step(&compat, &st)
        .unwrap();
    assert!(host(z.target.as_ref().unwrap()).0.iter().all(|x| *x == 0.0));
    assert!(
        MethodRegistry::with_defaults()
            .create(
                "layer_deeplift",
                MethodArgs::parse("layer=lm_head").unwrap()
            )
            .is_err()
    );
    // Block indices are checked against the model when attributing.
    let err = method("layer_deeplift", "layer=3")
        .attribute_step(&c, &st)
        .unwrap_err()
        .to_string();
    assert!(err.contains("valid indices 0..=1"), "{err}");
}

#[test]
fn encoder_decoder_occlusion_attention_and_sig() {
    let p = load("tiny-bart");
    let f = step_fn("probability");
    let src = vec![vec![0, 100, 200, 300, 2], vec![0, 150, 2, 1, 1]];
    let st = StepInput {
        source_ids: Some(src),
        source_mask: Some(vec![vec![true; 5], vec![true, true, true, false, false]]),
        prefix_ids: vec![vec![2, 0], vec![2, 0]],
        prefix_mask: vec![vec![true; 2]; 2],
        target_ids: vec![50, 60],
        contrast: None,
    };
    let c = ctx(p.model.as_ref(), &f, 3, true);
    let occ = method("occlusion", "").attribute_step(&c, &st).unwrap();
    assert_eq!(occ.source.as_ref().unwrap().dims(), [2, 5, 1]);
    assert_eq!(occ.target.as_ref().unwrap().dims(), [2, 2, 1]);
    let att = method("attention", "").attribute_step(&c, &st).unwrap();
    let info = p.model.info();
    assert_eq!(
        att.source.as_ref().unwrap().dims(),
        [2, 5, info.num_layers * info.num_heads]
    );
    assert_eq!(
        att.target.as_ref().unwrap().dims(),
        [2, 2, info.num_layers * info.num_heads]
    );
    // SIG moves position i of every attributed input at once: lengths must agree.
    let err = method("sequential_integrated_gradients", "n_steps=2").attribute_step(&c, &st);
    assert!(err.is_err());
    let c = ctx(p.model.as_ref(), &f, 3, false);
    let sig = method("sequential_integrated_gradients", "n_steps=2")
        .attribute_step(&c, &st)
        .unwrap();
    assert_eq!(sig.source.as_ref().unwrap().dims()[..2], [2, 5]);
    assert!(sig.target.is_none());
}
