//! Discretized Integrated Gradients: parity with Python Inseq 0.7.1 (fixture written by
//! `fixtures/dig_reference.py`), completeness, batching and argument checks.

mod common;

use common::{PREFIX, SHORT, assert_batch_matches_rows, ctx, host, load, step, step_fn};

use burn::tensor::{Device, Int, Tensor, TensorData};
use inseq_fixtures::tolerance::{MODEL_PASS_ABSOLUTE, MODEL_PASS_RELATIVE, gamma, model_pass};
use inseq_methods::{
    AttributionMethod, MethodArgs, MethodContext, MethodRegistry, StepAttribution, StepInput,
    embed_step, forward_scores,
};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInfo, ModelInput, ModelKind, ModelOutput, Pretrained,
};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/dig_reference.json");
/// The `unk` id of the tiny fixtures' tokenizers (Inseq's baseline).
const UNK: usize = 3;

fn method(args: &str) -> Box<dyn AttributionMethod> {
    MethodRegistry::with_defaults()
        .create(
            "discretized_integrated_gradients",
            MethodArgs::parse(args).unwrap(),
        )
        .unwrap()
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// `raw[position][step]` (a hidden-size vector, `None` where Inseq has NaN).
fn raw(v: &Value) -> Vec<Vec<Option<Vec<f64>>>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|pos| {
            pos.as_array()
                .unwrap()
                .iter()
                .map(|st| {
                    let h: Vec<Option<f64>> =
                        st.as_array().unwrap().iter().map(Value::as_f64).collect();
                    h.iter().copied().collect::<Option<Vec<f64>>>()
                })
                .collect()
        })
        .collect()
}

fn all_true(len: usize) -> Vec<Vec<bool>> {
    vec![vec![true; len]]
}

/// The step of generating `target_ids[pos]` (one row).
fn fixture_step(kind: ModelKind, source: &[usize], target: &[usize], pos: usize) -> StepInput {
    let encoder_decoder = kind == ModelKind::EncoderDecoder;
    StepInput {
        source_ids: encoder_decoder.then(|| vec![source.to_vec()]),
        source_mask: encoder_decoder.then(|| all_true(source.len())),
        prefix_ids: vec![target[..pos].to_vec()],
        prefix_mask: all_true(pos),
        target_ids: vec![target[pos]],
        contrast: None,
    }
}

/// `f(x) - f(baseline)` per row with the unk baseline (straight-line ends of the path).
fn f_x_minus_f_b(c: &MethodContext, st: &StepInput) -> Vec<f32> {
    let x = embed_step(c, st, false);
    let mut b = embed_step(c, st, true);
    if !(c.attribute_target || c.model.kind() == ModelKind::DecoderOnly) {
        b.target = x.target.clone();
    }
    let fx = forward_scores(c, st, &x, 1).unwrap();
    let fb = forward_scores(c, st, &b, 1).unwrap();
    (fx - fb).try_to_vec_as::<f32>().unwrap()
}

fn total(t: &Option<Tensor<3>>) -> f32 {
    t.as_ref().map_or(0.0, |t| host(t).0.iter().sum())
}

/// Largest |ours - golden| and largest |golden| over the positions of one step.
fn compare(ours: &Tensor<3>, golden: &[Vec<Option<Vec<f64>>>], s: usize, what: &str) -> (f64, f64) {
    let (v, [_, len, h]) = host(ours);
    let (mut diff, mut scale) = (0f64, 0f64);
    for (i, pos) in golden.iter().enumerate().take(len) {
        let g = pos[s]
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: golden NaN at position {i}, step {s}"));
        assert_eq!(g.len(), h);
        for (d, gv) in g.iter().enumerate() {
            diff = diff.max((f64::from(v[i * h + d]) - gv).abs());
            scale = scale.max(gv.abs());
        }
    }
    (diff, scale)
}

#[test]
fn matches_python_inseq() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = load(case["model"].as_str().unwrap());
        let model = p.model.as_ref();
        let f = step_fn("probability");
        let attribute_target = case["attribute_target"].as_bool().unwrap();
        let c = MethodContext {
            inseq_compat: true,
            ..ctx(model, &f, UNK, attribute_target)
        };
        let args = format!(
            "n_steps={},method={},return_convergence_delta=true",
            case["args"]["n_steps"],
            case["strategy"].as_str().unwrap()
        );
        let m = method(&args);
        let source = ids(&case["source_ids"]);
        let target = ids(&case["target_ids"]);
        let start = case["attr_pos_start"].as_u64().unwrap() as usize;
        let end = case["attr_pos_end"].as_u64().unwrap() as usize;
        let golden_source = (!case["raw_source_attributions"].is_null())
            .then(|| raw(&case["raw_source_attributions"]));
        let golden_target = (!case["raw_target_attributions"].is_null())
            .then(|| raw(&case["raw_target_attributions"]));
        let inseq_deltas: Vec<f64> = case["step_scores"]["deltas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (mut worst, mut worst_scale) = (0f64, 0f64);
        for (s, pos) in (start..end).enumerate() {
            let st = fixture_step(model.kind(), &source, &target, pos);
            let out = m.attribute_step(&c, &st).unwrap();
            for (ours, golden, what) in [
                (&out.source, &golden_source, "source"),
                (&out.target, &golden_target, "target"),
            ] {
                let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
                // Inseq stores prefix attributions for decoder-only models as "target".
                let expected = what == "source" && encoder_decoder
                    || what == "target" && (attribute_target || !encoder_decoder);
                assert_eq!(ours.is_some(), expected, "{name}: {what} presence");
                let (Some(ours), true) = (ours, expected) else {
                    continue;
                };
                let golden = golden.as_ref().unwrap();
                let (diff, scale) = compare(ours, golden, s, what);
                // Ours against Python Inseq's torch: the parity rule.
                assert!(
                    diff <= model_pass(scale),
                    "{name} step {s} {what}: max |ours - golden| = {diff:e}, max |golden| = {scale:e}"
                );
                worst = worst.max(diff / scale.max(1e-30));
                worst_scale = worst_scale.max(scale);
            }
            // Inseq's `deltas` are Σ attributions + (f(x) - f(b)) (start and end of the path
            // swapped in `compute_convergence_delta`); ours are Σ attributions - (f(x) - f(b)).
            let ours_delta = f64::from(out.deltas.as_ref().unwrap()[0]);
            let sum = f64::from(total(&out.source) + total(&out.target));
            let fx_fb = sum - ours_delta;
            let expected_inseq = sum + fx_fb;
            // The parity rule on f(x) - f(b), with the absolute floor of each side (Inseq's, ours).
            let tol = model_pass(fx_fb.abs()) + MODEL_PASS_ABSOLUTE;
            assert!(
                (inseq_deltas[s] - expected_inseq).abs() <= tol,
                "{name} step {s}: Inseq delta {} vs Σattr + (f(x) - f(b)) = {expected_inseq}",
                inseq_deltas[s]
            );
            println!(
                "{name} step {s}: Σattr = {sum:.4e}, f(x) - f(b) = {fx_fb:.4e}, delta = {ours_delta:.3e} (Inseq's: {:.3e})",
                inseq_deltas[s]
            );
        }
        println!("{name}: max relative error {worst:.3e} (max |golden| {worst_scale:.3e})");
    }
}

/// tiny-gpt2's embeddings and vocabulary (so real paths are built) under a linear head:
/// every logit is `Σ_{j,d} w(j, d) · e_{j,d}` over the target prefix embeddings.
struct LinearHead(Pretrained);

fn linear_weights(len: usize, hidden: usize) -> Tensor<3> {
    let w: Vec<f32> = (0..len * hidden)
        .map(|i| ((i / hidden) as f32 * 1.3 + (i % hidden) as f32 * 0.7).sin())
        .collect();
    Tensor::from_data(TensorData::new(w, [1, len, hidden]), &Device::default())
}

impl LanguageModel for LinearHead {
    fn info(&self) -> &ModelInfo {
        self.0.model.info()
    }
    fn kind(&self) -> ModelKind {
        ModelKind::DecoderOnly
    }
    fn device(&self) -> &Device {
        self.0.model.device()
    }
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.0.model.embed(ids)
    }
    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let [b, s, h] = input.target_embeds.dims();
        let total = (input.target_embeds.clone() * linear_weights(s, h))
            .sum_dim(2)
            .sum_dim(1); // [b, 1, 1]
        let mut out = self.0.model.forward(input, options);
        out.logits = total.repeat_dim(2, self.info().vocab_size);
        debug_assert_eq!(out.logits.dims()[0], b);
        out
    }
}

#[test]
fn is_exactly_complete_for_a_linear_function() {
    // The left Riemann sum telescopes when the gradient is constant: every token's scores
    // sum to w_j · (x_j - b_j), whatever the path, so the path starts at the baseline and
    // ends at the input.
    let model = LinearHead(load("tiny-gpt2"));
    let f = step_fn("logit");
    let c = ctx(&model, &f, UNK, false);
    let st = step(&[PREFIX.to_vec(), SHORT.to_vec()], &[364, 287]);
    for args in ["n_steps=7", "n_steps=7,method=maxcount"] {
        let out = method(&format!("{args},return_convergence_delta=true"))
            .attribute_step(&c, &st)
            .unwrap();
        let (v, [batch, len, h]) = host(out.target.as_ref().unwrap());
        let x = embed_step(&c, &st, false);
        let b = embed_step(&c, &st, true);
        let want = host(&((x.target - b.target) * linear_weights(len, h))).0;
        for r in 0..batch {
            for j in 0..len {
                let at = (r * len + j) * h;
                let got: f32 = v[at..at + h].iter().sum();
                let expected: f32 = if st.prefix_mask[r][j] {
                    want[at..at + h].iter().sum()
                } else {
                    0.0
                };
                // A telescoping f32 sum over 8 path segments × h = 32 dims: γ(256) ~ 1.5e-5 of
                // its terms, which the path between words (embeddings of the same size as x and
                // b) keeps within a few |w·(x - b)|: 1e-4 relative; 1e-5 absolute for tokens
                // whose w·(x - b) is ~0 (where the terms are small too).
                assert!(
                    (got - expected).abs() <= 1e-4 * expected.abs() + 1e-5,
                    "{args}: row {r} token {j}: {got} vs {expected}"
                );
            }
        }
        let deltas = out.deltas.unwrap();
        // Σ attributions − (f(x) − f(b)): three f32 sums of len·h = 160 products of the same
        // kind as above, each within γ(256) of a few times their magnitudes.
        assert!(deltas.iter().all(|d| d.abs() < 1e-4), "{args}: {deltas:?}");
    }
}

#[test]
fn sums_to_the_output_difference_up_to_the_discretisation_error() {
    // DIG's path hops between words: its segments do not shrink with more points, so unlike
    // integrated gradients the error does not vanish; the delta reports it.
    let p = load("tiny-gpt2");
    let model = p.model.as_ref();
    for f_id in ["probability", "logit"] {
        let f = step_fn(f_id);
        let c = ctx(model, &f, UNK, false);
        let st = step(&[PREFIX.to_vec()], &[364]);
        let expected = f_x_minus_f_b(&c, &st)[0];
        for n in [10, 50, 200] {
            let out = method(&format!("n_steps={n},return_convergence_delta=true"))
                .attribute_step(&c, &st)
                .unwrap();
            let sum = total(&out.target);
            let delta = out.deltas.unwrap()[0];
            // The reported delta is Σ attributions - (f(x) - f(b)).
            // The delta's f(x) - f(b) against ours from another forward pass: the model-pass
            // rule (f(x), f(b) of the tiny model are of the order of their difference).
            assert!(
                f64::from((delta - (sum - expected)).abs()) <= model_pass(expected.abs().into()),
                "{f_id} n_steps={n}: delta {delta} vs {}",
                sum - expected
            );
            println!(
                "{f_id} n_steps={n}: Σattr = {sum:.5e}, f(x) - f(b) = {expected:.5e}, delta = {delta:.3e} ({:.1}%)",
                100.0 * delta.abs() / expected.abs()
            );
            // DIG's discretisation error (not rounding), measured well below 20 %.
            assert!(
                delta.abs() <= 0.2 * expected.abs(),
                "{f_id} n_steps={n}: Σattr = {sum}, f(x) - f(b) = {expected}"
            );
        }
    }
}

/// Batched results equal per-row results on real positions, and padding scores 0.
#[test]
fn batches_match_single_rows() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let rel_tol = MODEL_PASS_RELATIVE as f32;
    assert_batch_matches_rows(method("n_steps=12").as_ref(), &c, "dig", rel_tol);
}

/// Encoder-decoder: right-padded sources in a batch, with and without target attribution.
/// (Target prefixes have the same length, as the driver builds them for encoder-decoder models.)
#[test]
fn encoder_decoder_batches_match_single_rows() {
    let p = load("tiny-marian");
    let f = step_fn("probability");
    let rows: [(&[usize], &[usize], usize); 2] = [
        (&[373, 275, 268, 332, 79, 2], &[0, 43, 281], 275),
        (&[311, 389, 2], &[0, 58, 87], 324),
    ];
    let batch_step = |rows: &[(&[usize], &[usize], usize)]| {
        let sw = rows.iter().map(|r| r.0.len()).max().unwrap();
        let tw = rows.iter().map(|r| r.1.len()).max().unwrap();
        StepInput {
            source_ids: Some(
                rows.iter()
                    .map(|r| {
                        let mut v = r.0.to_vec();
                        v.resize(sw, 0);
                        v
                    })
                    .collect(),
            ),
            source_mask: Some(
                rows.iter()
                    .map(|r| (0..sw).map(|j| j < r.0.len()).collect())
                    .collect(),
            ),
            prefix_ids: rows
                .iter()
                .map(|r| {
                    std::iter::repeat_n(0, tw - r.1.len())
                        .chain(r.1.iter().copied())
                        .collect()
                })
                .collect(),
            prefix_mask: rows
                .iter()
                .map(|r| (0..tw).map(|j| j >= tw - r.1.len()).collect())
                .collect(),
            target_ids: rows.iter().map(|r| r.2).collect(),
            contrast: None,
        }
    };
    for attribute_target in [false, true] {
        let c = ctx(p.model.as_ref(), &f, UNK, attribute_target);
        let m = method("n_steps=8");
        let both = m.attribute_step(&c, &batch_step(&rows)).unwrap();
        assert_eq!(both.target.is_some(), attribute_target);
        for (r, row) in rows.iter().enumerate() {
            let single = m.attribute_step(&c, &batch_step(&[*row])).unwrap();
            let (bs, [_, sw, h]) = host(both.source.as_ref().unwrap());
            let (ss, _) = host(single.source.as_ref().unwrap());
            let scale = ss.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0);
            // The batch and the single row: other matrix shapes, the model-pass rule.
            let tol = model_pass(scale.into()) as f32;
            for j in 0..sw {
                for d in 0..h {
                    let y = bs[(r * sw + j) * h + d];
                    if j < row.0.len() {
                        let x = ss[j * h + d];
                        assert!((y - x).abs() <= tol, "source row {r} pos {j}: {y} vs {x}");
                    } else {
                        assert_eq!(y, 0.0, "source padding row {r} pos {j}");
                    }
                }
            }
            if attribute_target {
                let (bt, [_, tw, h]) = host(both.target.as_ref().unwrap());
                let (st, _) = host(single.target.as_ref().unwrap());
                let pad = tw - row.1.len();
                for j in 0..tw {
                    for d in 0..h {
                        let y = bt[(r * tw + j) * h + d];
                        if j >= pad {
                            let x = st[(j - pad) * h + d];
                            assert!((y - x).abs() <= tol, "target row {r} pos {j}: {y} vs {x}");
                        } else {
                            assert_eq!(y, 0.0, "target padding row {r} pos {j}");
                        }
                    }
                }
                // The decoder start token is its own baseline: a constant path, no attribution.
                assert!(st[..h].iter().all(|x| *x == 0.0));
            }
            // The end-of-sequence token is its own baseline too.
            let eos = row.0.len() - 1;
            assert!(ss[eos * h..(eos + 1) * h].iter().all(|x| *x == 0.0));
        }
    }
}

#[test]
fn internal_batching_and_strategies() {
    let p = load("tiny-llama");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    // Llama starts with <s>, a special token: its path jumps from the baseline at once.
    let st = step(&[vec![1, 373, 275, 311]], &[389]);
    let get = |args: &str| -> StepAttribution { method(args).attribute_step(&c, &st).unwrap() };
    let all = host(get("n_steps=9").target.as_ref().unwrap()).0;
    let chunked = host(
        get("n_steps=9,internal_batch_size=3")
            .target
            .as_ref()
            .unwrap(),
    )
    .0;
    let scale = all.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0);
    // The same points in chunks of 3: other batch shapes, the model-pass rule.
    let tol = model_pass(scale.into()) as f32;
    assert!(all.iter().zip(&chunked).all(|(a, b)| (a - b).abs() <= tol));
    let maxcount = host(get("n_steps=9,method=maxcount").target.as_ref().unwrap()).0;
    assert!(maxcount.iter().all(|x| x.is_finite()));
    assert_ne!(maxcount, all);
    // multiply_by_inputs multiplies by x - baseline.
    let x = embed_step(&c, &st, false);
    let b = embed_step(&c, &st, true);
    let diff = host(&(x.target - b.target)).0;
    let times = host(
        get("n_steps=9,multiply_by_inputs=true")
            .target
            .as_ref()
            .unwrap(),
    )
    .0;
    // The same gradient (same shapes, same order) times x - baseline: one product rounded on
    // each side.
    for ((t, a), d) in times.iter().zip(&all).zip(&diff) {
        assert!(f64::from((t - a * d).abs()) <= gamma(2) * f64::from((a * d).abs()));
    }
}

#[test]
fn rejects_bad_arguments_and_inputs() {
    let reg = MethodRegistry::with_defaults();
    let create = |a: &str| {
        reg.create(
            "discretized_integrated_gradients",
            MethodArgs::parse(a).unwrap(),
        )
    };
    assert!(create("").is_ok());
    for bad in [
        "n_steps=1",
        "n_steps=0",
        "method=straight",
        "internal_batch_size=0",
        "n_neighbors=0",
        "steps=5",
    ] {
        assert!(create(bad).is_err(), "{bad}");
    }
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let vocab = p.model.info().vocab_size;
    let m = method("n_steps=4");
    assert!(
        m.attribute_step(&c, &step(&[vec![373, vocab]], &[1]))
            .is_err()
    );
    let bad_baseline = ctx(p.model.as_ref(), &f, vocab + 7, false);
    assert!(
        m.attribute_step(&bad_baseline, &step(&[vec![373]], &[1]))
            .is_err()
    );
    let empty = StepInput {
        prefix_ids: vec![],
        prefix_mask: vec![],
        target_ids: vec![],
        ..step(&[vec![373]], &[1])
    };
    assert!(m.attribute_step(&c, &empty).is_err());
}
