//! Defining properties of gradient_shap, lime, value_zeroing, attention_rollout and attnlrp.

mod common;

use common::{PREFIX, SHORT, assert_batch_matches_rows, ctx, host, load, method, step, step_fn};

use burn::tensor::{Device, Int, Tensor, TensorData};
use inseq_fixtures::tolerance::{MODEL_PASS_RELATIVE, gamma, max_abs, model_pass, probability_sum};
use inseq_methods::{MethodArgs, MethodRegistry, StepInput};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInfo, ModelInput, ModelKind, ModelOutput, ids_tensor,
};

fn seq2seq_step() -> StepInput {
    StepInput {
        source_ids: Some(vec![vec![0, 100, 200, 300, 2], vec![0, 150, 2, 1, 1]]),
        source_mask: Some(vec![vec![true; 5], vec![true, true, true, false, false]]),
        prefix_ids: vec![vec![2, 0], vec![2, 0]],
        prefix_mask: vec![vec![true; 2]; 2],
        target_ids: vec![50, 60],
        contrast: None,
    }
}

/// Batched results equal per-row results on the real (unpadded) positions.
fn assert_batch_consistent(model: &str, id: &str, args: &str) {
    let p = load(model);
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    let m = method(id, args);
    // Twice the model-pass rule: value zeroing's distances |a - b|² of nearby states, rollout's
    // products of attention matrices and AttnLRP's divisions by pre-activations amplify the
    // rounding of a plain pass.
    let rel_tol = 2.0 * MODEL_PASS_RELATIVE as f32;
    assert_batch_matches_rows(m.as_ref(), &c, &format!("{id} on {model}"), rel_tol);
}

#[test]
fn gradient_shap_converges_to_integrated_gradients_and_is_seeded() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, 1, false);
    let st = step(&[PREFIX.to_vec(), SHORT.to_vec()], &[364, 287]);
    let ig = method("integrated_gradients", "n_steps=64")
        .attribute_step(&c, &st)
        .unwrap();
    let (ig, _) = host(ig.target.as_ref().unwrap());
    let shap = method("gradient_shap", "n_samples=2000,seed=7")
        .attribute_step(&c, &st)
        .unwrap();
    let (sh, dims) = host(shap.target.as_ref().unwrap());
    assert_eq!(dims[..2], [2, 5]);
    let err: f32 = ig
        .iter()
        .zip(&sh)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = ig.iter().map(|a| a * a).sum::<f32>().sqrt();
    // Monte-Carlo error, not rounding: 2000 samples leave a standard error ~1/sqrt(2000) ~ 2% of
    // the gradients' spread, and IG's own 64-step quadrature error is far smaller.
    assert!(err <= 0.1 * norm, "relative error {} too large", err / norm);

    let run = |args: &str| {
        host(
            method("gradient_shap", args)
                .attribute_step(&c, &st)
                .unwrap()
                .target
                .as_ref()
                .unwrap(),
        )
        .0
    };
    let a = run("seed=3,stdevs=0.01");
    assert_eq!(a, run("seed=3,stdevs=0.01"));
    assert_ne!(a, run("seed=4,stdevs=0.01"));
}

#[test]
fn gradient_shap_on_encoder_decoder() {
    let p = load("tiny-bart");
    let f = step_fn("probability");
    let st = seq2seq_step();
    let out = method("gradient_shap", "")
        .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), &st)
        .unwrap();
    let hidden = p.model.info().hidden_size;
    assert_eq!(out.source.as_ref().unwrap().dims(), [2, 5, hidden]);
    assert_eq!(out.target.as_ref().unwrap().dims(), [2, 2, hidden]);
    let out = method("gradient_shap", "")
        .attribute_step(&ctx(p.model.as_ref(), &f, 3, false), &st)
        .unwrap();
    assert!(out.target.is_none());
    assert!(
        MethodRegistry::with_defaults()
            .create("gradient_shap", MethodArgs::parse("n_samples=0").unwrap())
            .is_err()
    );
}

/// A decoder-only "model" whose every logit is `sum_j w_j * e(id_j)` with
/// one-dimensional embeddings `e(i) = i`: linear in which tokens are kept.
struct LinearModel {
    info: ModelInfo,
    weights: Vec<f32>,
    device: Device,
}

impl LinearModel {
    fn new(weights: Vec<f32>) -> Self {
        Self {
            info: ModelInfo {
                architecture: "linear".into(),
                hf_class: "Linear".into(),
                vocab_size: 8,
                hidden_size: 1,
                num_layers: 1,
                num_heads: 1,
                max_positions: 64,
                bos_token_id: None,
                eos_token_id: None,
                pad_token_id: None,
                decoder_start_token_id: None,
            },
            weights,
            device: Device::default(),
        }
    }
}

impl LanguageModel for LinearModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn kind(&self) -> ModelKind {
        ModelKind::DecoderOnly
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        ids.float().reshape([b, s, 1])
    }
    fn forward(&self, input: ModelInput, _options: ForwardOptions) -> ModelOutput {
        let [_, s, _] = input.target_embeds.dims();
        let w = Tensor::<3>::from_data(
            TensorData::new(self.weights[..s].to_vec(), [1, s, 1]),
            &self.device,
        );
        let total = (input.target_embeds * w).sum_dim(1); // [b, 1, 1]
        ModelOutput {
            logits: total.repeat_dim(2, self.info.vocab_size),
            attentions: vec![],
            attention_rows: None,
            cross_attentions: vec![],
            encoder_attentions: vec![],
            hidden_states: vec![],
            encoder_hidden_states: vec![],
            final_hidden_state: None,
            encoder_final_hidden_state: None,
        }
    }
}

#[test]
fn lime_recovers_a_linear_model_and_is_seeded() {
    let weights = vec![0.5f32, -1.0, 2.0, 0.25];
    let model = LinearModel::new(weights.clone());
    let f = step_fn("logit");
    // Baseline token 0 has embedding 0: masking token j removes w_j * id_j.
    let c = ctx(&model, &f, 0, false);
    let ids = [3usize, 5, 1, 7];
    let st = step(&[ids.to_vec(), ids[1..].to_vec()], &[2, 2]);
    let out = method("lime", "n_samples=200,alpha=0.000001")
        .attribute_step(&c, &st)
        .unwrap();
    let (v, dims) = host(out.target.as_ref().unwrap());
    assert_eq!(dims, [2, 4, 1]);
    assert_eq!(out.score_dims, Some(vec![]));
    // The f64 least squares fits exactly linear data: off by the ridge shrinkage (alpha 1e-6 over
    // 200 samples, ~1e-8 relative) and by the f32 rounding of the logits (|logit| <= 10.25: at
    // most f32_sum(10.25, 4) ~ 2.4e-6) amplified by the design's conditioning (binary masks, well
    // conditioned): 1e-3 leaves a factor > 100 for it.
    for j in 0..4 {
        let want = weights[j] * ids[j] as f32;
        assert!(
            (v[j] - want).abs() < 1e-3,
            "row 0 token {j}: {} vs {want}",
            v[j]
        );
    }
    // Row 1 is left-padded by one: its tokens sit at positions 1..4 with weights 1..4.
    assert_eq!(v[4], 0.0);
    for j in 1..4 {
        let want = weights[j] * ids[j] as f32;
        assert!(
            (v[4 + j] - want).abs() < 1e-3, // as for row 0
            "row 1 token {j}: {} vs {want}",
            v[4 + j]
        );
    }
    let run = |args: &str| {
        host(
            method("lime", args)
                .attribute_step(&c, &st)
                .unwrap()
                .target
                .as_ref()
                .unwrap(),
        )
        .0
    };
    // With the default ridge penalty the coefficients shrink, so seeds matter.
    assert_eq!(run("seed=1,n_samples=20"), run("seed=1,n_samples=20"));
    assert_ne!(run("seed=1,n_samples=20"), run("seed=2,n_samples=20"));
}

#[test]
fn lime_on_real_models() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let p = load(name);
        let f = step_fn("probability");
        let out = method("lime", "")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec()], &[364]),
            )
            .unwrap();
        assert_eq!(out.target.as_ref().unwrap().dims(), [1, 5, 1]);
    }
    let p = load("tiny-marian");
    let f = step_fn("probability");
    let out = method("lime", "")
        .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), &seq2seq_step())
        .unwrap();
    assert_eq!(out.source.as_ref().unwrap().dims(), [2, 5, 1]);
    assert_eq!(out.target.as_ref().unwrap().dims(), [2, 2, 1]);
    let (src, _) = host(out.source.as_ref().unwrap());
    assert_eq!(&src[8..10], &[0.0, 0.0], "source padding scored");
}

#[test]
fn value_zeroing_scores_layers_and_batches() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let p = load(name);
        let layers = p.model.info().num_layers;
        let f = step_fn("probability");
        let out = method("value_zeroing", "")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec()], &[364]),
            )
            .unwrap();
        assert_eq!(out.score_dims, Some(vec![layers]));
        let (v, dims) = host(out.target.as_ref().unwrap());
        assert_eq!(dims, [1, 5, layers]);
        // |a - b|² / 2 of unit vectors: >= 0 by construction, <= 2 (antipodal states only).
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0 && *x <= 2.0));
        assert!(v.iter().any(|x| *x > 0.0), "{name}: all scores zero");
        assert_batch_consistent(name, "value_zeroing", "");
        let e = method("value_zeroing", "similarity_metric=euclidean")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec()], &[364]),
            )
            .unwrap();
        assert_eq!(e.target.unwrap().dims(), [1, 5, layers]);
    }
    assert!(
        MethodRegistry::with_defaults()
            .create(
                "value_zeroing",
                MethodArgs::parse("similarity_metric=l1").unwrap()
            )
            .is_err()
    );
    // Encoder-decoder: source scores from the cross-attention, target scores with attribute_target.
    let p = load("tiny-bart");
    let layers = p.model.info().num_layers;
    let f = step_fn("probability");
    let out = method("value_zeroing", "")
        .attribute_step(&ctx(p.model.as_ref(), &f, 3, false), &seq2seq_step())
        .unwrap();
    assert_eq!(out.source.as_ref().unwrap().dims(), [2, 5, layers]);
    assert!(out.target.is_none());
}

#[test]
fn forward_hooks_leave_the_clean_forward_unchanged() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let p = load(name);
        let m = p.model.as_ref();
        let ids = vec![PREFIX.to_vec()];
        let run = |opts: ForwardOptions| {
            let input = ModelInput {
                target_embeds: m.embed(ids_tensor(&ids, m.device())),
                target_mask: vec![vec![true; 5]],
                source_embeds: None,
                source_mask: None,
            };
            m.forward(input, opts)
                .logits
                .try_to_vec_as::<f32>()
                .unwrap()
        };
        let clean = run(ForwardOptions::default());
        let lrp = run(ForwardOptions {
            attn_lrp: true,
            ..Default::default()
        });
        // The same forward values through AttnLRP's detached graph (other ops, other orders).
        let tol = model_pass(max_abs(&clean)) as f32;
        for (a, b) in clean.iter().zip(&lrp) {
            assert!((a - b).abs() <= tol, "{name}: {a} vs {b}");
        }
        // Zeroing a value in the last layer changes the logits; zeroing nothing does not.
        let none = run(ForwardOptions {
            zero_value: Some(inseq_models::ValueZeroing {
                layer: 0,
                positions: vec![None],
                attention: Default::default(),
            }),
            ..Default::default()
        });
        assert_eq!(clean, none);
        let zeroed = run(ForwardOptions {
            zero_value: Some(inseq_models::ValueZeroing {
                layer: m.info().num_layers - 1,
                positions: vec![Some(0)],
                attention: Default::default(),
            }),
            ..Default::default()
        });
        assert_ne!(clean, zeroed);
    }
}

/// How far a rollout row (a product of `layers` row-stochastic attention matrices over at most 5
/// positions, renormalized) may sum from 1: each factor's rows sum to 1 within
/// [`probability_sum`], and each product adds a dot product's `γ(5)`.
fn rollout_sum(layers: usize) -> f64 {
    (layers + 1) as f64 * (probability_sum(5) + gamma(5))
}

#[test]
fn attention_rollout_rows_are_distributions() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let p = load(name);
        let f = step_fn("probability");
        let out = method("attention_rollout", "")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec(), SHORT.to_vec()], &[364, 287]),
            )
            .unwrap();
        let (v, dims) = host(out.target.as_ref().unwrap());
        assert_eq!(dims, [2, 5, 1]);
        for r in 0..2 {
            let sum: f32 = v[r * 5..r * 5 + 5].iter().sum();
            assert!(
                f64::from((sum - 1.0).abs()) <= rollout_sum(p.model.info().num_layers),
                "{name}: row {r} sums to {sum}"
            );
        }
        // Padding takes part in no sum: 0 up to residues below 16u ~ 1e-6 of weights <= 1.
        assert!(v[5] < 1e-6 && v[6] < 1e-6, "{name}: padding scored");
        assert_batch_consistent(name, "attention_rollout", "");
    }
    for name in ["tiny-bart", "tiny-marian"] {
        let p = load(name);
        let f = step_fn("probability");
        let out = method("attention_rollout", "")
            .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), &seq2seq_step())
            .unwrap();
        let (src, dims) = host(out.source.as_ref().unwrap());
        assert_eq!(dims, [2, 5, 1]);
        for r in 0..2 {
            let sum: f32 = src[r * 5..r * 5 + 5].iter().sum();
            assert!(
                f64::from((sum - 1.0).abs()) <= rollout_sum(2 * p.model.info().num_layers),
                "{name}: source row {r} sums to {sum}"
            );
        }
        assert!(
            src[8] < 1e-6 && src[9] < 1e-6, // as above
            "{name}: source padding scored"
        );
        assert_eq!(out.target.as_ref().unwrap().dims(), [2, 2, 1]);
    }
}

#[test]
fn attnlrp_on_decoder_only_models() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let p = load(name);
        let f = step_fn("logit");
        let out = method("attnlrp", "")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec()], &[364]),
            )
            .unwrap();
        let (v, dims) = host(out.target.as_ref().unwrap());
        assert_eq!(dims, [1, 5, p.model.info().hidden_size]);
        assert!(v.iter().all(|x| x.is_finite()));
        // It differs from plain Gradient x Input (the rules change the backward pass).
        let gxi = method("input_x_gradient", "")
            .attribute_step(
                &ctx(p.model.as_ref(), &f, 1, false),
                &step(&[PREFIX.to_vec()], &[364]),
            )
            .unwrap();
        let (g, _) = host(gxi.target.as_ref().unwrap());
        let rounding = model_pass(max_abs(&g)) as f32; // a difference beyond any rounding
        assert!(v.iter().zip(&g).any(|(a, b)| (a - b).abs() > rounding));
        assert_batch_consistent(name, "attnlrp", "");
    }
    // Encoder-decoder models: source relevance, and target relevance with attribute_target.
    let p = load("tiny-marian");
    let f = step_fn("probability");
    let hidden = p.model.info().hidden_size;
    let out = method("attnlrp", "")
        .attribute_step(&ctx(p.model.as_ref(), &f, 3, false), &seq2seq_step())
        .unwrap();
    assert_eq!(out.source.as_ref().unwrap().dims(), [2, 5, hidden]);
    assert!(out.target.is_none());
}
