//! The model-randomisation check: which weights are re-drawn, and the correlations it gives.

use inseq::MethodArgs;
use inseq::models::{ForwardOptions, ModelInput, ids_tensor};
use inseq_eval::EvalStep;
use inseq_eval::randomisation::{
    cascade_levels, decoder_block_of, load_randomised, rank_correlation,
};

#[test]
fn decoder_blocks_are_found_in_every_naming_scheme() {
    assert_eq!(
        decoder_block_of("transformer.h.3.attn.c_attn.weight"),
        Some(3)
    );
    assert_eq!(decoder_block_of("h.1.mlp.c_fc.bias"), Some(1));
    assert_eq!(
        decoder_block_of("model.layers.11.self_attn.q_proj.weight"),
        Some(11)
    );
    assert_eq!(
        decoder_block_of("model.decoder.layers.2.fc1.weight"),
        Some(2)
    );
    assert_eq!(
        decoder_block_of("decoder.block.4.layer.1.EncDecAttention.q.weight"),
        Some(4)
    );
    assert_eq!(decoder_block_of("model.encoder.layers.2.fc1.weight"), None);
    assert_eq!(decoder_block_of("transformer.wte.weight"), None);
    assert_eq!(decoder_block_of("model.norm.weight"), None);
    assert_eq!(cascade_levels(30, 3), vec![1, 16, 30]);
}

fn last_logits(model: &dyn inseq::models::LanguageModel, ids: &[usize]) -> Vec<f32> {
    let embeds = model.embed(ids_tensor(&[ids.to_vec()], model.device()));
    let input = ModelInput {
        target_embeds: embeds,
        target_mask: vec![vec![true; ids.len()]],
        source_embeds: None,
        source_mask: None,
    };
    model
        .forward(input, ForwardOptions::default())
        .last_logits()
        .try_to_vec_as::<f32>()
        .unwrap()
}

#[test]
fn randomised_layers_change_the_model_and_the_seed_fixes_them() {
    let device = inseq::default_device().unwrap();
    let path = inseq_fixtures::model_path("tiny-gpt2");
    let trained = inseq::load_model(&path, "dummy", MethodArgs::default(), &device).unwrap();
    let ids = [1, 5, 9, 2];
    let base = last_logits(trained.model(), &ids);
    let none = load_randomised(&path, 0, 1, &device).unwrap();
    assert_eq!(
        last_logits(none.model.as_ref(), &ids),
        base,
        "0 layers randomised: the trained model"
    );
    let top = load_randomised(&path, 1, 1, &device).unwrap();
    let top_again = load_randomised(&path, 1, 1, &device).unwrap();
    let changed = last_logits(top.model.as_ref(), &ids);
    assert_ne!(changed, base);
    assert_eq!(
        last_logits(top_again.model.as_ref(), &ids),
        changed,
        "seeded"
    );
}

#[test]
fn rank_correlation_of_steps() {
    let s = |scores: Vec<f32>| EvalStep {
        source: None,
        prefix: vec![1, 2, 3],
        target: 4,
        attributed: vec![0, 1, 2],
        scores,
        seed: 0,
    };
    let a = [s(vec![0.1, 0.5, 0.9])];
    assert!((rank_correlation(&a, &[s(vec![1.0, 2.0, 3.0])]) - 1.0).abs() < 1e-12);
    assert!((rank_correlation(&a, &[s(vec![3.0, 2.0, 1.0])]) + 1.0).abs() < 1e-12);
    assert!(
        rank_correlation(&a, &[s(vec![1.0, 1.0, 1.0])]).is_nan(),
        "constant: undefined"
    );
}
