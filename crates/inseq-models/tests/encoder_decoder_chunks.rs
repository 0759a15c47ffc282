//! Encoder-decoder attention in query chunks: with chunks of a few queries (forced through
//! `with_chunk_floats`), every architecture's logits, attention weights and input gradients (plain
//! and under AttnLRP's rules) equal those of one chunk, and `attention_rows` records the rows of
//! the full weights. (One chunk is what every fixture-sized input takes; the comparisons with
//! transformers are in `encoder_decoder.rs` and `cargo xtask parity`.)

use burn::tensor::{Device, Tensor};
use inseq_fixtures::tolerance::{max_abs, model_pass};
use inseq_models::{
    ForwardOptions, LanguageModel, ModelInput, ModelOutput, ids_tensor, load_pretrained,
    with_chunk_floats,
};

const MODELS: [&str; 6] = [
    "tiny-bart",
    "tiny-marian",
    "tiny-mbart",
    "tiny-m2m100",
    "tiny-mt5",
    "tiny-umt5",
];

/// Scores per chunk: two rows × 4 heads × 23 source keys take 3 queries per chunk.
const SMALL_CHUNK: usize = 600;

/// Two rows (a source of 23 tokens, the second's last 4 padding; a target of 9, the second's
/// first 2 padding), embedded; `track`: embeddings that take gradients.
fn input(model: &dyn LanguageModel, track: bool) -> ModelInput {
    let dev = model.device();
    let vocab = model.info().vocab_size.min(300);
    let ids = |len: usize, seed: usize| -> Vec<usize> {
        (0..len)
            .map(|i| 4 + (i * 37 + seed * 11) % (vocab - 4))
            .collect()
    };
    let (s, t) = (23, 9);
    let mut source_mask = vec![vec![true; s]; 2];
    source_mask[1][s - 4..].fill(false);
    let mut target_mask = vec![vec![true; t]; 2];
    target_mask[1][..2].fill(false);
    let prepare = |x: Tensor<3>| {
        if track {
            x.autodiff().require_grad()
        } else {
            x
        }
    };
    ModelInput {
        target_embeds: prepare(model.embed(ids_tensor(&[ids(t, 1), ids(t, 2)], dev))),
        target_mask,
        source_embeds: Some(prepare(
            model.embed_source(ids_tensor(&[ids(s, 3), ids(s, 4)], dev)),
        )),
        source_mask: Some(source_mask),
    }
}

fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.try_to_vec_as::<f32>().expect("f32");
    let want = want.try_to_vec_as::<f32>().expect("f32");
    let tol = model_pass(max_abs(&want));
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    assert!(diff <= tol, "{what}: max abs diff {diff} > {tol}");
}

fn assert_all_close(what: &str, got: &[Tensor<4>], want: &[Tensor<4>]) {
    assert_eq!(got.len(), want.len(), "{what}: layers");
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what} layer {l}"), g.clone(), w.clone());
    }
}

fn every_weight(model: &dyn LanguageModel) -> ModelOutput {
    let options = ForwardOptions {
        attentions: true,
        ..Default::default()
    };
    model.forward(input(model, false), options)
}

#[test]
fn chunked_attention_equals_one_chunk() {
    for name in MODELS {
        let dir = inseq_fixtures::model_dir(name);
        let m = load_pretrained(dir.to_str().expect("utf-8"), &Device::default()).expect(name);
        let model = m.model.as_ref();
        let whole = every_weight(model);
        let chunked = with_chunk_floats(SMALL_CHUNK, || every_weight(model));
        assert_close(name, chunked.logits, whole.logits.clone());
        assert_all_close(name, &chunked.attentions, &whole.attentions);
        assert_all_close(name, &chunked.cross_attentions, &whole.cross_attentions);
        assert_all_close(name, &chunked.encoder_attentions, &whole.encoder_attentions);
        check_rows(name, model, &whole);
        for lrp in [false, true] {
            let want = gradients(model, lrp);
            let got = with_chunk_floats(SMALL_CHUNK, || gradients(model, lrp));
            assert_close(&format!("{name} source gradient, lrp {lrp}"), got.0, want.0);
            assert_close(&format!("{name} target gradient, lrp {lrp}"), got.1, want.1);
        }
    }
}

/// `attention_rows` records those rows of the decoder's self- and cross-attention weights, in
/// chunks, and no encoder weights.
fn check_rows(name: &str, model: &dyn LanguageModel, whole: &ModelOutput) {
    let rows = vec![8, 3, 8];
    let options = ForwardOptions {
        attentions: true,
        attention_rows: Some(rows.clone()),
        ..Default::default()
    };
    let out = with_chunk_floats(SMALL_CHUNK, || model.forward(input(model, false), options));
    assert_eq!(out.attention_rows.as_deref(), Some(&rows[..]), "{name}");
    assert!(out.encoder_attentions.is_empty(), "{name}");
    let pick = |w: &[Tensor<4>]| -> Vec<Tensor<4>> {
        w.iter()
            .map(|w| {
                let parts = rows.iter().map(|&r| w.clone().narrow(2, r, 1)).collect();
                Tensor::cat(parts, 2)
            })
            .collect()
    };
    assert_all_close(name, &out.attentions, &pick(&whole.attentions));
    assert_all_close(name, &out.cross_attentions, &pick(&whole.cross_attentions));
}

/// Gradients of the summed last-position logits with respect to the source and target
/// embeddings (AttnLRP's graph with `lrp`).
fn gradients(model: &dyn LanguageModel, lrp: bool) -> (Tensor<3>, Tensor<3>) {
    let input = input(model, true);
    let (source, target) = (
        input.source_embeds.clone().expect("source"),
        input.target_embeds.clone(),
    );
    let options = ForwardOptions {
        attn_lrp: lrp,
        last_position_only: true,
        ..Default::default()
    };
    let grads = model.forward(input, options).logits.sum().backward();
    let grad = |x: &Tensor<3>| x.grad(&grads).expect("gradient");
    (grad(&source), grad(&target))
}
