//! SmolLM2's baseline token is the tokenizer's declared unk token, `<|endoftext|>` (id 0), as in
//! Hugging Face and so Inseq, not the first token named like an unk or pad token.

mod common;

use inseq::{AttributeOptions, MethodArgs, load_model};

/// Occluding a token by the baseline changes nothing when the token is the baseline itself, so
/// its occlusion score (a difference of probabilities in [0, 1], from two rows of one batch) is 0
/// up to f32 rounding (1e-6 bounds a few ulps of a probability), and only for the baseline token
/// and for the eos token `<|im_end|>` (id 2), which Inseq keeps as its own baseline. With the old
/// rule (baseline id 2) occluding `<|endoftext|>` changed the prediction.
#[test]
fn occluding_the_declared_unk_token_scores_zero_on_smollm2() {
    if !common::smollm2_present() {
        return;
    }
    let device = burn::tensor::Device::default();
    let model = load_model("smollm2", "occlusion", MethodArgs::default(), &device).unwrap();
    let input = "Paris<|endoftext|> is<|im_end|> the";
    let opts = AttributeOptions {
        targets: Some(vec![format!("{input} capital")]),
        ..Default::default()
    };
    let out = model.attribute(&[input], &opts).unwrap();
    let seq = &out.sequence_attributions[0];
    let scores = seq.target_attributions.as_ref().unwrap();
    let per_token = scores.data().len() / seq.target.len();
    for (i, token) in seq.target.iter().take(seq.target.len() - 1).enumerate() {
        let row = &scores.data()[i * per_token..(i + 1) * per_token];
        let occluded_nothing = row.iter().all(|v| v.abs() <= 1e-6);
        assert_eq!(
            occluded_nothing,
            token.id == 0 || token.id == 2,
            "token {i} {:?} (id {}): occlusion scores {row:?}",
            token.token,
            token.id
        );
    }
}
