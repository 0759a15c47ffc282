//! The internal hooks (value zeroing, AttnLRP's forward mode, layer overrides) on the
//! encoder-decoder models, and value zeroing compared with Python Inseq 0.7.1.

mod common;

use common::{ctx, step, step_fn};

use burn::tensor::Tensor;
use inseq_fixtures::tolerance::{max_abs, model_pass, probability_sum};
use inseq_methods::{
    AttributionMethod, MethodArgs, MethodContext, MethodRegistry, StepInput, ValueZeroing,
};
use inseq_models::{
    AttentionKind, ForwardOptions, LanguageModel, LayerOverride, LayerRef, ModelInput,
    OverrideMode, SafetensorsSource, ValueZeroing as ZeroHook, WeightSource, ids_tensor,
};

const ENC_DEC: [&str; 8] = [
    "tiny-bart",
    "tiny-marian",
    "tiny-t5-gated",
    "tiny-t5-relu",
    "tiny-mbart",
    "tiny-m2m100",
    "tiny-mt5",
    "tiny-umt5",
];

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

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().try_to_vec_as::<f32>().unwrap()
}

fn method(id: &str, args: &str) -> Box<dyn AttributionMethod> {
    MethodRegistry::with_defaults()
        .create(id, MethodArgs::parse(args).unwrap())
        .unwrap()
}

/// Two sources (the second right-padded) and a two-token target prefix.
fn seq2seq_step() -> StepInput {
    StepInput {
        source_ids: Some(vec![vec![0, 100, 200, 300, 2], vec![0, 150, 2, 1, 1]]),
        source_mask: Some(vec![vec![true; 5], vec![true, true, true, false, false]]),
        prefix_ids: vec![vec![2, 40], vec![2, 70]],
        prefix_mask: vec![vec![true; 2]; 2],
        target_ids: vec![50, 60],
        contrast: None,
    }
}

/// The model's own input for a step.
fn input(m: &dyn LanguageModel, st: &StepInput) -> ModelInput {
    let src = st.source_ids.as_ref().unwrap();
    ModelInput {
        target_embeds: m.embed(ids_tensor(&st.prefix_ids, m.device())),
        target_mask: st.prefix_mask.clone(),
        source_embeds: Some(m.embed_source(ids_tensor(src, m.device()))),
        source_mask: st.source_mask.clone(),
    }
}

fn logits(m: &dyn LanguageModel, st: &StepInput, opts: ForwardOptions) -> Vec<f32> {
    host(&m.forward(input(m, st), opts).logits)
}

#[test]
fn hooks_leave_the_encoder_decoder_forward_unchanged() {
    for name in ENC_DEC {
        let p = load(name);
        let m = p.model.as_ref();
        assert!(m.supports_internal_hooks());
        assert_eq!(m.num_encoder_layers(), 2);
        let st = seq2seq_step();
        let clean = logits(m, &st, ForwardOptions::default());
        let lrp = logits(
            m,
            &st,
            ForwardOptions {
                attn_lrp: true,
                ..Default::default()
            },
        );
        let max_diff = clean
            .iter()
            .zip(&lrp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // The same forward values through AttnLRP's detached graph: the model-pass rule.
        let tol = model_pass(max_abs(&clean));
        assert!(
            f64::from(max_diff) <= tol,
            "{name}: attn_lrp changes logits by {max_diff}"
        );
        for kind in [
            AttentionKind::EncoderSelf,
            AttentionKind::DecoderSelf,
            AttentionKind::Cross,
        ] {
            let zero = |positions: Vec<Option<usize>>, layer: usize| ForwardOptions {
                zero_value: Some(ZeroHook {
                    layer,
                    positions,
                    attention: kind,
                }),
                ..Default::default()
            };
            // Zeroing nothing is a no-op; zeroing a token in the last layer changes the logits.
            let last = match kind {
                AttentionKind::EncoderSelf => m.num_encoder_layers() - 1,
                _ => m.info().num_layers - 1,
            };
            assert_eq!(
                clean,
                logits(m, &st, zero(vec![None, None], last)),
                "{name} {kind:?}"
            );
            assert_ne!(
                clean,
                logits(m, &st, zero(vec![Some(1), Some(1)], last)),
                "{name} {kind:?}"
            );
            // Zeroing a padding position of the source (row 1, position 4) changes nothing
            // there: padded keys carry no attention weight.
            if kind != AttentionKind::DecoderSelf {
                let padded = logits(m, &st, zero(vec![None, Some(4)], 0));
                let v = m.info().vocab_size;
                let row1 = 2 * v; // [batch, 2 positions, vocab]: row 1 starts after 2 * vocab
                // Only the hook's other op order can differ: the model-pass rule.
                let tol = model_pass(max_abs(&clean)) as f32;
                for (a, b) in clean[row1..].iter().zip(&padded[row1..]) {
                    assert!((a - b).abs() <= tol, "{name} {kind:?}: {a} vs {b}");
                }
            }
        }
        // Monte Carlo dropout: seeded, and a no-op at p = 0.
        let drop = |p: f64, seed: u64| ForwardOptions {
            dropout: Some(inseq_models::McDropout { p, seed }),
            ..Default::default()
        };
        assert_eq!(
            m.dropout_probability(),
            0.0,
            "{name}: the fixtures are saved with dropout 0"
        );
        assert_eq!(clean, logits(m, &st, drop(0.0, 1)), "{name}");
        let d1 = logits(m, &st, drop(0.3, 1));
        assert_ne!(clean, d1, "{name}: dropout ignored");
        assert_eq!(d1, logits(m, &st, drop(0.3, 1)), "{name}: not reproducible");
        assert_ne!(d1, logits(m, &st, drop(0.3, 2)), "{name}: seed ignored");
        // Layer overrides: adding zeros, or replacing a block output by itself, is a no-op.
        let out = m.forward(
            input(m, &st),
            ForwardOptions {
                hidden_states: true,
                ..Default::default()
            },
        );
        assert_eq!(out.hidden_states.len(), m.info().num_layers + 1);
        assert_eq!(out.encoder_hidden_states.len(), 3);
        assert!(out.final_hidden_state.is_some() && out.encoder_final_hidden_state.is_some());
        for (layer, state) in [
            (LayerRef::Decoder(0), out.hidden_states[1].clone()),
            (LayerRef::Encoder(1), out.encoder_hidden_states[2].clone()),
        ] {
            for (mode, value) in [
                (OverrideMode::Add, state.zeros_like()),
                (OverrideMode::Replace, state.clone()),
            ] {
                let o = logits(
                    m,
                    &st,
                    ForwardOptions {
                        layer_override: Some(LayerOverride { layer, value, mode }),
                        ..Default::default()
                    },
                );
                let d = clean
                    .iter()
                    .zip(&o)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Adding 0 or replacing a state by itself: only the hook's op order differs.
                let tol = model_pass(max_abs(&clean));
                assert!(f64::from(d) <= tol, "{name} {layer:?} {mode:?}: {d}");
            }
            let o = logits(
                m,
                &st,
                ForwardOptions {
                    layer_override: Some(LayerOverride {
                        layer,
                        value: state.zeros_like(),
                        mode: OverrideMode::Replace,
                    }),
                    ..Default::default()
                },
            );
            assert_ne!(
                clean, o,
                "{name} {layer:?}: replacing by zeros changes nothing"
            );
        }
    }
}

/// `[rows, hidden]` rows `first..first + n` of the fixture model's stored table `name`.
fn stored_rows(model: &str, name: &str, first: usize, n: usize) -> Vec<f32> {
    let dir = common::models_dir().join(model);
    let mut src = SafetensorsSource::open_dir(&dir).unwrap();
    let t = src.read(name).unwrap().unwrap();
    let h = t.shape[1];
    t.data[first * h..(first + n) * h].to_vec()
}

/// `[len, hidden]` position embeddings the model adds to its token embeddings
/// (`None`: no additive positions), for the encoder or the decoder.
fn positions(model: &str, len: usize, decoder: bool) -> Option<Vec<f32>> {
    match model {
        "tiny-gpt2" => Some(stored_rows(model, "transformer.wpe.weight", 0, len)),
        "tiny-bart" | "tiny-mbart" => {
            let stack = if decoder { "decoder" } else { "encoder" };
            let name = format!("model.{stack}.embed_positions.weight");
            Some(stored_rows(model, &name, 2, len))
        }
        "tiny-marian" => Some(inseq_models::bart::sinusoidal_positions(len, 32)),
        // fairseq positions from row pad_token_id + 1 = 2.
        "tiny-m2m100" => Some(inseq_models::bart::fairseq_sinusoidal_positions(2, len, 32)),
        _ => None,
    }
}

/// AttnLRP explaining the logit of a one-row step: `(Σ relevance of the token
/// embeddings, Σ relevance of the position embeddings, logit)`. The relevance of the
/// positions is `∂f/∂u · p` where `u = scale · x + p` is the sum they enter.
fn lrp_totals(name: &str, st: &StepInput, baseline: usize) -> (f32, f32, f32) {
    let p = load(name);
    let m = p.model.as_ref();
    let f = step_fn("logit");
    let c = ctx(m, &f, baseline, true);
    let out = method("attnlrp", "").attribute_step(&c, st).unwrap();
    let sum = |t: &Option<Tensor<3>>| t.as_ref().map_or(0.0, |t| host(t).iter().sum::<f32>());
    let tokens = sum(&out.source) + sum(&out.target);
    // The gradients themselves, from the same rule-modified forward pass.
    let x = inseq_methods::embed_step(&c, st, false);
    let track = |t: Tensor<3>| t.detach().autodiff().require_grad();
    let src = x.source.clone().map(track);
    let tgt = track(x.target.clone());
    let o = m.forward(
        ModelInput {
            target_embeds: tgt.clone(),
            target_mask: st.prefix_mask.clone(),
            source_embeds: src.clone(),
            source_mask: st.source_mask.clone(),
        },
        ForwardOptions {
            last_position_only: true,
            attn_lrp: true,
            ..Default::default()
        },
    );
    let logits = o.last_logits();
    let v = logits.dims()[1];
    let logit = logits.slice([0..1, st.target_ids[0]..st.target_ids[0] + 1]);
    let logit_value = host(&logit)[0];
    assert!(st.target_ids[0] < v);
    let grads = logit.sum().backward();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
    let mut pos = 0.0;
    // Marian's decoder multiplies the target embeddings by sqrt(d_model) before adding positions.
    let target_scale = if name == "tiny-marian" {
        32f32.sqrt()
    } else {
        1.0
    };
    let g = host(&tgt.grad(&grads).unwrap());
    if let Some(p) = positions(name, st.prefix_ids[0].len(), true) {
        pos += dot(&g, &p) / target_scale;
    }
    if let Some(src) = src {
        let g = host(&src.grad(&grads).unwrap());
        let len = st.source_ids.as_ref().unwrap()[0].len();
        if let Some(p) = positions(name, len, false) {
            pos += dot(&g, &p);
        }
    }
    (tokens, pos, logit_value)
}

#[test]
fn attnlrp_relevance_is_approximately_conserved() {
    // With the logit as attributed function and all biases of the tiny models zero, the
    // relevance of the token and position embeddings sums to the logit up to what the
    // softmax rule absorbs (AttnLRP's softmax rule is not conservative; the relative
    // position bias of T5, inside the softmax, takes its share there). Measured: GPT-2
    // 1.8 %, BART 1.5 %, Marian 1.1 %, Llama 26 %, T5 gated 74 %, T5 ReLU 69 %. All of it is
    // left in the softmax: with the attention weights detached in `lrp_attention` instead
    // (all relevance through the values), the sums match the logits to within 1e-3 on all
    // six models. (tiny-mbart and tiny-m2m100 are left out: their biases are random, and
    // biases take relevance; tiny-umt5's logit here is ~0.008, too small for a relative error.)
    let one_row = StepInput {
        source_ids: Some(vec![vec![0, 100, 200, 300, 2]]),
        source_mask: Some(vec![vec![true; 5]]),
        prefix_ids: vec![vec![2, 40, 77]],
        prefix_mask: vec![vec![true; 3]],
        target_ids: vec![50],
        contrast: None,
    };
    for name in [
        "tiny-gpt2",
        "tiny-llama",
        "tiny-bart",
        "tiny-marian",
        "tiny-t5-gated",
        "tiny-t5-relu",
        "tiny-mt5",
    ] {
        let st = if !name.contains("gpt2") && !name.contains("llama") {
            one_row.clone()
        } else {
            step(&[vec![373, 275, 311, 389, 295]], &[364])
        };
        let (tokens, pos, logit) = lrp_totals(name, &st, 3);
        let err = (tokens + pos - logit).abs() / logit.abs();
        println!(
            "{name}: tokens {tokens:.5} + positions {pos:.5} vs logit {logit:.5}: relative error {err:.3}"
        );
        let bound = match name {
            "tiny-llama" => 0.35,
            "tiny-t5-gated" | "tiny-t5-relu" | "tiny-mt5" | "tiny-umt5" => 0.8,
            _ => 0.05,
        };
        assert!(err < bound, "{name}: relative conservation error {err}");
    }
    // Source and target relevance, per hidden dimension, padding unscored.
    for name in ENC_DEC {
        let p = load(name);
        let f = step_fn("logit");
        let out = method("attnlrp", "")
            .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), &seq2seq_step())
            .unwrap();
        let hidden = p.model.info().hidden_size;
        let src = out.source.unwrap();
        assert_eq!(src.dims(), [2, 5, hidden]);
        assert_eq!(out.target.unwrap().dims(), [2, 2, hidden]);
        let src = host(&src);
        assert!(src.iter().all(|x| x.is_finite()));
        assert!(
            src[(5 + 3) * hidden..].iter().all(|x| *x == 0.0),
            "{name}: source padding has relevance"
        );
    }
}

#[test]
fn value_zeroing_on_encoder_decoder_models() {
    for name in ENC_DEC {
        let p = load(name);
        let layers = p.model.info().num_layers;
        let f = step_fn("probability");
        let st = seq2seq_step();
        let vz = method("value_zeroing", "min_score_threshold=0");
        let out = vz
            .attribute_step(&ctx(p.model.as_ref(), &f, 3, true), &st)
            .unwrap();
        assert_eq!(out.score_dims, Some(vec![layers]));
        let src = host(out.source.as_ref().unwrap());
        let tgt = host(out.target.as_ref().unwrap());
        assert_eq!(src.len(), 2 * 5 * layers);
        assert_eq!(tgt.len(), 2 * 2 * layers);
        // Padded source tokens (row 1, positions 3 and 4) score 0; each layer's source
        // and target scores are normalised separately.
        assert!(
            src[(5 + 3) * layers..].iter().all(|x| *x == 0.0),
            "{name}: {src:?}"
        );
        for r in 0..2 {
            for l in 0..layers {
                let s: f32 = (0..5).map(|j| src[(r * 5 + j) * layers + l]).sum();
                let t: f32 = (0..2).map(|j| tgt[(r * 2 + j) * layers + l]).sum();
                let (ts, tt) = (probability_sum(5) as f32, probability_sum(2) as f32);
                assert!(
                    (s - 1.0).abs() <= ts && (t - 1.0).abs() <= tt,
                    "{name}: {s} {t}"
                );
            }
        }
        // The encoder self-attention scores (Inseq's `encoder_self_scores`).
        let enc = ValueZeroing {
            min_score_threshold: 0.0,
            ..Default::default()
        }
        .encoder_self_scores(&ctx(p.model.as_ref(), &f, 3, true), &st)
        .unwrap();
        assert_eq!(enc.dims(), [2, 5, 5, 2]);
        let enc = host(&enc);
        // Row 1: padded tokens neither scored nor measured.
        for j in 0..5 {
            for i in 0..5 {
                if j >= 3 || i >= 3 {
                    for l in 0..2 {
                        assert_eq!(enc[(((5 + j) * 5) + i) * 2 + l], 0.0);
                    }
                }
            }
        }
    }
}

/// Python Inseq 0.7.1's value-zeroing scores (`fixtures/value_zeroing_reference.py`).
#[test]
fn value_zeroing_matches_python_inseq() {
    let text = include_str!("fixtures/value_zeroing_reference.json");
    let cases: serde_json::Value = serde_json::from_str(text).unwrap();
    let value = |v: &serde_json::Value| v.as_f64().map(|x| x as f32);
    for case in cases.as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let attribute_target = case["attribute_target"].as_bool().unwrap();
        let threshold = case["min_score_threshold"].as_f64().unwrap();
        let ids = |k: &str| -> Option<Vec<usize>> {
            case[k]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect())
        };
        let (source, target) = (ids("source_ids"), ids("target_ids").unwrap());
        let start = case["attr_pos_start"].as_u64().unwrap() as usize;
        let end = case["attr_pos_end"].as_u64().unwrap() as usize;
        let p = load(name);
        let f = step_fn("probability");
        // Inseq feeds Marian doubly scaled target embeddings here too (see
        // `LanguageModel::inseq_target_embed_quirk`): without the quirk tiny-marian differs by 0.5.
        let c = MethodContext {
            inseq_compat: true,
            ..ctx(p.model.as_ref(), &f, 3, attribute_target)
        };
        let vz = method("value_zeroing", &format!("min_score_threshold={threshold}"));
        // (ours, reference) pairs.
        let mut pairs: Vec<(f32, f32)> = vec![];
        for (s, t) in (start..end).enumerate() {
            let st = StepInput {
                source_ids: source.clone().map(|s| vec![s]),
                source_mask: source.as_ref().map(|s| vec![vec![true; s.len()]]),
                prefix_ids: vec![target[..t].to_vec()],
                prefix_mask: vec![vec![true; t]],
                target_ids: vec![target[t]],
                contrast: None,
            };
            let out = vz.attribute_step(&c, &st).unwrap();
            for (ours, key) in [
                (&out.source, "source_attributions"),
                (&out.target, "target_attributions"),
            ] {
                let reference = &case[key];
                assert_eq!(ours.is_some(), !reference.is_null(), "{name}: {key}");
                let Some(ours) = ours else { continue };
                let [_, n, layers] = ours.dims();
                let ours = host(ours);
                for j in 0..n {
                    for l in 0..layers {
                        let r = value(&reference[j][s][l]).unwrap_or_else(|| {
                            panic!("{name}: {key}[{j}][{s}][{l}] is missing in the reference")
                        });
                        pairs.push((ours[j * layers + l], r));
                    }
                }
            }
        }
        if let Some(reference) = case["encoder_self_scores"].as_array() {
            let src = source.clone().unwrap();
            let st = StepInput {
                source_ids: Some(vec![src.clone()]),
                source_mask: Some(vec![vec![true; src.len()]]),
                prefix_ids: vec![target[..start].to_vec()],
                prefix_mask: vec![vec![true; start]],
                target_ids: vec![target[start]],
                contrast: None,
            };
            let ours = ValueZeroing {
                min_score_threshold: threshold,
                ..Default::default()
            }
            .encoder_self_scores(&c, &st)
            .unwrap();
            let [_, n, _, layers] = ours.dims();
            let ours = host(&ours);
            for j in 0..n {
                for i in 0..n {
                    for l in 0..layers {
                        pairs.push((
                            ours[(j * n + i) * layers + l],
                            value(&reference[j][i][l]).unwrap(),
                        ));
                    }
                }
            }
        }
        let max_ref = pairs.iter().fold(0f32, |m, (_, r)| m.max(r.abs()));
        let worst = pairs
            .iter()
            .map(|(o, r)| (o - r).abs())
            .fold(0f32, f32::max);
        println!(
            "{name} attribute_target={attribute_target} threshold={threshold}: {} values, max |ours - ref| = {worst:e} (max |ref| = {max_ref})",
            pairs.len()
        );
        // Ours against Python Inseq's torch: the parity rule.
        assert!(
            f64::from(worst) <= model_pass(max_ref.into()),
            "{name} attribute_target={attribute_target} threshold={threshold}: max |ours - ref| = {worst}"
        );
    }
}
