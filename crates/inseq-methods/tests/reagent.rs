//! ReAGent: seeding, shapes against Python Inseq 0.7.1 (fixture written by
//! `fixtures/reagent_reference.py`), batching, its defining property on a model
//! whose output one token decides, and argument checks.

mod common;

use common::{ctx, load, step, step_fn};

use burn::tensor::{Device, Int, Tensor, TensorData};
use inseq_fixtures::tolerance::{max_abs, model_pass, probability_sum};
use inseq_methods::{
    AttributionMethod, MethodArgs, MethodContext, MethodRegistry, Reagent, StepAttribution,
    StepInput, TokenGroups,
};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInfo, ModelInput, ModelKind, ModelOutput, ids_tensor,
};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/reagent_reference.json");
/// The `unk` id of the tiny fixtures' tokenizers.
const UNK: usize = 3;
const PREFIX: [usize; 5] = [373, 275, 311, 389, 295];
const SHORT: [usize; 3] = [311, 389, 295];
/// Quick settings for the tiny models (greedy targets stop within a few rounds).
const QUICK: &str = "num_probes=4,max_probe_steps=40";

fn method(args: &str) -> Box<dyn AttributionMethod> {
    MethodRegistry::with_defaults()
        .create("reagent", MethodArgs::parse(args).unwrap())
        .unwrap()
}

fn host(t: &Tensor<3>) -> (Vec<f32>, [usize; 3]) {
    (t.clone().try_to_vec_as::<f32>().unwrap(), t.dims())
}

/// The model's most likely next token after each row of `step` (its prefix and source).
fn greedy(model: &dyn LanguageModel, step: &StepInput) -> Vec<usize> {
    let device = model.device();
    let input = ModelInput {
        target_embeds: model.embed(ids_tensor(&step.prefix_ids, device)),
        target_mask: step.prefix_mask.clone(),
        source_embeds: step
            .source_ids
            .as_ref()
            .map(|s| model.embed_source(ids_tensor(s, device))),
        source_mask: step.source_mask.clone(),
    };
    let logits = model
        .forward(
            input,
            ForwardOptions {
                last_position_only: true,
                ..Default::default()
            },
        )
        .last_logits();
    let [_, v] = logits.dims();
    let flat = logits.try_to_vec_as::<f32>().unwrap();
    flat.chunks(v)
        .map(|row| (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
        .collect()
}

/// A decoder-only step whose targets are the model's greedy predictions.
fn greedy_step(model: &dyn LanguageModel, prefixes: &[Vec<usize>]) -> StepInput {
    let mut st = step(prefixes, &vec![0; prefixes.len()]);
    st.target_ids = greedy(model, &st);
    st
}

/// An encoder-decoder step: sources right-padded, decoder prefixes left-padded (with `pad`).
fn seq2seq_step(
    sources: &[Vec<usize>],
    prefixes: &[Vec<usize>],
    targets: &[usize],
    pad: usize,
) -> StepInput {
    let sw = sources.iter().map(Vec::len).max().unwrap();
    let mut st = step(prefixes, targets);
    st.source_ids = Some(
        sources
            .iter()
            .map(|s| {
                s.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, sw - s.len()))
                    .collect()
            })
            .collect(),
    );
    st.source_mask = Some(
        sources
            .iter()
            .map(|s| (0..sw).map(|j| j < s.len()).collect())
            .collect(),
    );
    st
}

fn assert_distribution(v: &[f32], what: &str) {
    let sum: f32 = v.iter().sum();
    let tol = probability_sum(v.len()) as f32;
    assert!((sum - 1.0).abs() <= tol, "{what}: sums to {sum}: {v:?}");
    assert!(
        v.iter().all(|x| (0.0..=1.0).contains(x)),
        "{what}: out of [0, 1]: {v:?}"
    );
}

#[test]
fn same_seed_same_scores_other_seed_other_scores() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let st = greedy_step(p.model.as_ref(), &[PREFIX.to_vec()]);
    let run = |args: &str| {
        let out = method(args).attribute_step(&c, &st).unwrap();
        assert_eq!(out.score_dims, Some(vec![]));
        assert!(out.source.is_none());
        host(out.target.as_ref().unwrap())
    };
    let (a, dims) = run(&format!("{QUICK},seed=7"));
    assert_eq!(dims, [1, 5, 1]);
    assert_distribution(&a, "seed 7");
    let (b, _) = run(&format!("{QUICK},seed=7"));
    assert_eq!(a, b, "same seed, different scores");
    let (c2, _) = run(&format!("{QUICK},seed=8"));
    assert_ne!(a, c2, "different seeds, same scores");
    // The default seed is fixed too.
    assert_eq!(run(QUICK).0, run(QUICK).0);
}

#[test]
fn batched_rows_score_as_alone_and_padding_scores_zero() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let m = method(QUICK);
    let both = greedy_step(p.model.as_ref(), &[PREFIX.to_vec(), SHORT.to_vec()]);
    let long = greedy_step(p.model.as_ref(), &[PREFIX.to_vec()]);
    let short = greedy_step(p.model.as_ref(), &[SHORT.to_vec()]);
    let (b, dims) = host(
        m.attribute_step(&c, &both)
            .unwrap()
            .target
            .as_ref()
            .unwrap(),
    );
    assert_eq!(dims, [2, 5, 1]);
    let (l, _) = host(
        m.attribute_step(&c, &long)
            .unwrap()
            .target
            .as_ref()
            .unwrap(),
    );
    let (s, _) = host(
        m.attribute_step(&c, &short)
            .unwrap()
            .target
            .as_ref()
            .unwrap(),
    );
    // The same search on probabilities from passes that sum in other orders: the model-pass rule
    // on the scores (a distribution, <= 1).
    let tol = model_pass(max_abs(&l).max(max_abs(&s))) as f32;
    for (i, x) in l.iter().enumerate() {
        assert!((b[i] - x).abs() <= tol, "row 0, {i}: {} vs {x}", b[i]);
    }
    assert_eq!(&b[5..7], &[0.0, 0.0], "padding");
    for (i, x) in s.iter().enumerate() {
        assert!(
            (b[7 + i] - x).abs() <= tol,
            "row 1, {i}: {} vs {x}",
            b[7 + i]
        );
    }
    assert_distribution(&b[..5], "row 0");
    assert_distribution(&b[7..], "row 1");
}

/// Inseq's `[len, steps, hidden]` shape and, per step, the first hidden slice (`None`: NaN).
type InseqAttributions = (Vec<usize>, Vec<Vec<Option<f64>>>);

/// One fixture case of Inseq's attributions.
struct InseqCase {
    source_ids: Option<Vec<usize>>,
    target_ids: Vec<usize>,
    start: usize,
    max_probe_steps: usize,
    source: Option<InseqAttributions>,
    target: Option<InseqAttributions>,
}

fn inseq_case(name: &str) -> InseqCase {
    let all: Value = serde_json::from_str(FIXTURE).unwrap();
    let c = &all[name];
    let ids = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let attributions = |v: &Value| {
        (!v.is_null()).then(|| {
            assert!(v["repeated_over_hidden"].as_bool().unwrap());
            let steps = v["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|col| col.as_array().unwrap().iter().map(Value::as_f64).collect())
                .collect();
            (ids(&v["shape"]), steps)
        })
    };
    InseqCase {
        source_ids: (!c["source_ids"].is_null()).then(|| ids(&c["source_ids"])),
        target_ids: ids(&c["target_ids"]),
        start: c["attr_pos_start"].as_u64().unwrap() as usize,
        max_probe_steps: c["max_probe_steps"].as_u64().unwrap() as usize,
        source: attributions(&c["source_attributions"]),
        target: attributions(&c["target_attributions"]),
    }
}

/// The finite (attributed) entries of Inseq's step `s`, which must be a distribution (or all NaN
/// where no probe stopped).
fn inseq_step(steps: &[Vec<Option<f64>>], s: usize) -> Vec<f64> {
    let col: Vec<f64> = steps[s].iter().flatten().copied().collect();
    if !col.is_empty() {
        let sum: f64 = col.iter().sum();
        let tol = probability_sum(col.len()); // Inseq's f32 normalization, summed in f64
        assert!((sum - 1.0).abs() <= tol, "Inseq step {s} sums to {sum}");
    }
    col
}

#[test]
fn decoder_only_shapes_match_inseq() {
    let case = inseq_case("gpt2");
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let (shape, steps) = case.target.as_ref().unwrap();
    assert!(case.source.is_none());
    let n_steps = case.target_ids.len() - case.start;
    assert_eq!(shape[..2], [case.target_ids.len(), n_steps]);
    assert_eq!(shape[2], p.model.info().hidden_size);
    let m = method(&format!("max_probe_steps={}", case.max_probe_steps));
    for s in 0..n_steps {
        let pos = case.start + s;
        let st = step(&[case.target_ids[..pos].to_vec()], &[case.target_ids[pos]]);
        let out = m.attribute_step(&c, &st).unwrap();
        let (v, dims) = host(out.target.as_ref().unwrap());
        // Inseq scores the same prefix tokens at this step (the rest of the column is NaN).
        let theirs = inseq_step(steps, s);
        assert_eq!(dims, [1, pos, 1]);
        assert_eq!(theirs.len(), pos, "step {s}");
        assert_eq!(steps[s].len(), case.target_ids.len());
        assert_distribution(&v, &format!("step {s}"));
        // The same range: the tiny model's probabilities move little, so both stay near uniform.
        let n = pos as f64;
        for x in v
            .iter()
            .map(|&x| f64::from(x))
            .chain(theirs.iter().copied())
        {
            assert!(
                x > 0.5 / n && x < 2.0 / n,
                "step {s}: {x} (ours {v:?}, Inseq {theirs:?})"
            );
        }
    }
}

#[test]
fn encoder_decoder_shapes_match_inseq() {
    let case = inseq_case("bart");
    let p = load("tiny-bart");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, true);
    let source = case.source_ids.clone().unwrap();
    let (src_shape, src_steps) = case.source.as_ref().unwrap();
    let (tgt_shape, tgt_steps) = case.target.as_ref().unwrap();
    let n_steps = case.target_ids.len() - case.start;
    assert_eq!(src_shape[..2], [source.len(), n_steps]);
    assert_eq!(tgt_shape[..2], [case.target_ids.len(), n_steps]);
    let m = method(&format!("max_probe_steps={}", case.max_probe_steps));
    for s in 0..n_steps {
        let pos = case.start + s;
        let st = seq2seq_step(
            std::slice::from_ref(&source),
            &[case.target_ids[..pos].to_vec()],
            &[case.target_ids[pos]],
            1,
        );
        let out = m.attribute_step(&c, &st).unwrap();
        let (sv, sdims) = host(out.source.as_ref().unwrap());
        let (tv, tdims) = host(out.target.as_ref().unwrap());
        assert_eq!(sdims, [1, source.len(), 1]);
        assert_eq!(tdims, [1, pos, 1]);
        // Inseq: one distribution over source + target prefix (NaN where no probe stopped).
        let theirs_src = inseq_step_joint(src_steps, tgt_steps, s);
        if let Some((ns, nt)) = theirs_src {
            assert_eq!((ns, nt), (source.len(), pos), "step {s}");
        }
        let joint: Vec<f32> = sv.iter().chain(&tv).copied().collect();
        assert_distribution(&joint, &format!("step {s}"));
    }
}

/// Numbers of finite source and target entries of Inseq's step `s` (a joint distribution), or
/// `None` when the whole step is NaN.
fn inseq_step_joint(
    src: &[Vec<Option<f64>>],
    tgt: &[Vec<Option<f64>>],
    s: usize,
) -> Option<(usize, usize)> {
    let a: Vec<f64> = src[s].iter().flatten().copied().collect();
    let b: Vec<f64> = tgt[s].iter().flatten().copied().collect();
    if a.is_empty() && b.is_empty() {
        return None;
    }
    let sum: f64 = a.iter().chain(&b).sum();
    let tol = probability_sum(a.len() + b.len()); // as in `inseq_step`
    assert!((sum - 1.0).abs() <= tol, "Inseq step {s} sums to {sum}");
    Some((a.len(), b.len()))
}

#[test]
fn marian_source_only_and_with_target() {
    let p = load("tiny-marian");
    let f = step_fn("probability");
    let model = p.model.as_ref();
    let sources = [vec![12, 57, 33, 9, 2], vec![40, 21, 2]];
    let start = model.info().decoder_start_token_id.unwrap();
    let prefixes = [vec![start, 17], vec![start]];
    let mut st = seq2seq_step(&sources, &prefixes, &[0, 0], 1);
    st.target_ids = greedy(model, &st);
    let m = method(QUICK);
    let src_only = m.attribute_step(&ctx(model, &f, UNK, false), &st).unwrap();
    assert!(src_only.target.is_none());
    let (v, dims) = host(src_only.source.as_ref().unwrap());
    assert_eq!(dims, [2, 5, 1]);
    assert_distribution(&v[..5], "row 0");
    assert_distribution(&v[5..8], "row 1");
    assert_eq!(&v[8..], &[0.0, 0.0], "source padding");
    let joint = m.attribute_step(&ctx(model, &f, UNK, true), &st).unwrap();
    let (sv, sdims) = host(joint.source.as_ref().unwrap());
    let (tv, tdims) = host(joint.target.as_ref().unwrap());
    assert_eq!((sdims, tdims), ([2, 5, 1], [2, 2, 1]));
    let row0: Vec<f32> = sv[..5].iter().chain(&tv[..2]).copied().collect();
    let row1: Vec<f32> = sv[5..8].iter().chain(&tv[3..4]).copied().collect();
    assert_distribution(&row0, "joint row 0");
    assert_distribution(&row1, "joint row 1");
    assert_eq!(tv[2], 0.0, "prefix padding");
}

/// The target token of [`KeyModel`] and the token deciding it.
const TARGET: usize = 7;
const KEY: usize = 42;

/// A "model" whose next token is decided by one input token: the target has logit +6 when the
/// key token is anywhere in the attributed input (the source of encoder-decoder models, the prefix
/// of decoder-only ones) and -6 otherwise; every other token has logit 0. One-dimensional
/// embeddings `e(i) = i`.
struct KeyModel {
    inner: Box<dyn LanguageModel>,
    info: ModelInfo,
    kind: ModelKind,
}

impl KeyModel {
    fn new(kind: ModelKind) -> Self {
        let inner = load("tiny-gpt2").model;
        let mut info = inner.info().clone();
        info.vocab_size = 4096;
        Self { inner, info, kind }
    }
}

impl LanguageModel for KeyModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn kind(&self) -> ModelKind {
        self.kind
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        ids.float().reshape([b, s, 1])
    }
    fn forward(&self, input: ModelInput, _options: ForwardOptions) -> ModelOutput {
        let (embeds, mask) = match self.kind {
            ModelKind::DecoderOnly => (input.target_embeds, input.target_mask),
            ModelKind::EncoderDecoder => (input.source_embeds.unwrap(), input.source_mask.unwrap()),
        };
        let [b, _, _] = embeds.dims();
        let e = embeds.try_to_vec_as::<f32>().unwrap();
        let s = e.len() / b;
        let v = self.info.vocab_size;
        let mut logits = vec![0f32; b * v];
        for r in 0..b {
            let present = (0..s).any(|j| mask[r][j] && (e[r * s + j] - KEY as f32).abs() < 0.5);
            logits[r * v + TARGET] = if present { 6.0 } else { -6.0 };
        }
        // The inner model only supplies an output struct; its logits are replaced.
        let dummy = ModelInput {
            target_embeds: self
                .inner
                .embed(ids_tensor(&vec![vec![0]; b], self.device())),
            target_mask: vec![vec![true]; b],
            source_embeds: None,
            source_mask: None,
        };
        let mut out = self.inner.forward(
            dummy,
            ForwardOptions {
                last_position_only: true,
                ..Default::default()
            },
        );
        out.logits = Tensor::from_data(TensorData::new(logits, [b, 1, v]), self.device());
        out
    }
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// A probe stops once the `keep_top_n` tokens it ranks highest, kept while every other token is
/// replaced, keep the target among the top predictions. With `keep_top_n=1` and a model whose
/// output one token decides, that happens when the deciding token ranks first (the updates raise
/// it: replacing it is the only change that lowers the target's probability), so the average over
/// stopped probes ranks it first.
#[test]
fn the_token_that_decides_the_output_scores_highest() {
    let f = step_fn("probability");
    // Decoder-only: the key sits at position 3 of row 0 and 1 of (left-padded) row 1.
    let model = KeyModel::new(ModelKind::DecoderOnly);
    let c = ctx(&model, &f, UNK, false);
    let rows = [vec![11, 12, 13, KEY, 15, 16, 17, 18], vec![21, KEY, 23, 24]];
    let st = step(&rows, &[TARGET, TARGET]);
    for seed in 1u64..=8 {
        let out = method(&format!("keep_top_n=1,seed={seed}"))
            .attribute_step(&c, &st)
            .unwrap();
        let (v, dims) = host(out.target.as_ref().unwrap());
        assert_eq!(dims, [2, 8, 1]);
        assert_eq!(argmax(&v[..8]), 3, "seed {seed}: {v:?}");
        assert_eq!(argmax(&v[8..]), 4 + 1, "seed {seed}: {v:?}");
        assert_distribution(&v[..8], "row 0");
        assert_distribution(&v[12..], "row 1");
        // The key stands out from the runner-up.
        let mut rest = v[..8].to_vec();
        rest.remove(3);
        let second = rest.iter().copied().fold(0f32, f32::max);
        assert!(v[3] > 1.2 * second, "seed {seed}: {v:?}");
    }
    // Encoder-decoder, source only and jointly with the target prefix: the key is in the source.
    let model = KeyModel::new(ModelKind::EncoderDecoder);
    let st = seq2seq_step(
        &[vec![31, 32, 33, 34, KEY, 36], vec![KEY, 52, 53]],
        &[vec![2, 60, 61], vec![2, 70, 71]],
        &[TARGET, TARGET],
        0,
    );
    let out = method("keep_top_n=1")
        .attribute_step(&ctx(&model, &f, UNK, false), &st)
        .unwrap();
    let (v, _) = host(out.source.as_ref().unwrap());
    assert_eq!(argmax(&v[..6]), 4, "{v:?}");
    assert_eq!(argmax(&v[6..9]), 0, "{v:?}");
    let out = method("keep_top_n=1")
        .attribute_step(&ctx(&model, &f, UNK, true), &st)
        .unwrap();
    let (sv, _) = host(out.source.as_ref().unwrap());
    let (tv, _) = host(out.target.as_ref().unwrap());
    let row0: Vec<f32> = sv[..6].iter().chain(&tv[..3]).copied().collect();
    assert_eq!(argmax(&row0), 4, "{row0:?}");
    assert_distribution(&row0, "joint row 0");
}

#[test]
fn singleton_token_groups_leave_scores_at_their_random_start() {
    // Each token can only be replaced by itself: no update changes the probability, so the
    // scores do not depend on how many rounds run.
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c = ctx(p.model.as_ref(), &f, UNK, false);
    let st = greedy_step(p.model.as_ref(), &[PREFIX.to_vec()]);
    let groups =
        TokenGroups::new((0..p.model.info().vocab_size).map(|i| vec![i]).collect()).unwrap();
    let run = |steps: usize| {
        let m = Reagent {
            max_probe_steps: steps,
            num_probes: 4,
            keep_top_n: 1,
            ..Reagent::default()
        }
        .with_token_groups(groups.clone());
        host(m.attribute_step(&c, &st).unwrap().target.as_ref().unwrap()).0
    };
    let (a, b) = (run(1), run(6));
    // Each round at most renormalizes the same scores: within probability_sum per round.
    let tol = 6.0 * probability_sum(PREFIX.len()) as f32;
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
    assert!(TokenGroups::new(vec![vec![1, 2], vec![2]]).is_err());
    assert!(TokenGroups::new(vec![vec![]]).is_err());
}

#[test]
fn bad_arguments_are_errors() {
    let reg = MethodRegistry::with_defaults();
    for args in [
        "num_probes=0",
        "max_probe_steps=0",
        "stopping_condition_top_k=0",
        "replacing_ratio=1.5",
        "replacing_ratio=-0.1",
        "keep_top_n=0",
        "keep_top_n=0,keep_ratio=1.2",
        "keep_ratio=abc",
        "internal_batch_size=0",
        "invert_keep_ratio=true",
        "keep_top_n=-1",
    ] {
        let err = reg.create("reagent", MethodArgs::parse(args).unwrap());
        assert!(err.is_err(), "{args} accepted");
    }
    let ok = reg.create(
        "reagent",
        MethodArgs::parse("keep_top_n=0,keep_ratio=0.5,invert_keep=true,seed=1").unwrap(),
    );
    assert!(ok.is_ok());
    assert!(reg.describe().iter().any(|(id, _)| id == "reagent"));
}

#[test]
fn keep_ratio_and_invert_keep_give_distributions() {
    let p = load("tiny-gpt2");
    let f = step_fn("probability");
    let c: MethodContext = ctx(p.model.as_ref(), &f, UNK, false);
    let st = greedy_step(p.model.as_ref(), &[PREFIX.to_vec()]);
    for args in [
        "keep_top_n=0,keep_ratio=0.4",
        "invert_keep=true,keep_top_n=1",
    ] {
        let out: StepAttribution = method(&format!("{QUICK},{args}"))
            .attribute_step(&c, &st)
            .unwrap();
        let (v, _) = host(out.target.as_ref().unwrap());
        assert_distribution(&v, args);
    }
}

#[test]
fn other_attributed_functions_are_refused_clearly() {
    let m = load("tiny-gpt2");
    let f = step_fn("logit");
    let ctx = ctx(m.model.as_ref(), &f, 3, true);
    let r = inseq_methods::Reagent::from_args(inseq_methods::MethodArgs::default()).unwrap();
    let err = r
        .attribute_step(&ctx, &step(&[vec![10, 11, 12]], &[13]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`logit`"), "{err}");
}
