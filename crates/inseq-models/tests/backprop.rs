//! The hand-written backward passes ([`SharedForward`]) against burn's autodiff through
//! the ordinary forward pass, on the tiny GPT-2 and Llama fixtures and every architecture of the
//! block layer.

use burn::tensor::{Device, Tensor, TensorData};
use inseq_fixtures::tolerance::model_pass;
use inseq_models::{ForwardOptions, LanguageModel, ModelInput, ids_tensor, load_pretrained};

fn model(name: &str) -> Box<dyn LanguageModel> {
    let dir = inseq_fixtures::model_dir(name);
    load_pretrained(dir.to_str().unwrap(), &Device::default())
        .unwrap()
        .model
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_to_vec_as::<f32>().unwrap()
}

fn assert_close(ours: &[f32], reference: &[f32], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let max = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    // The same backward pass written by hand and by autodiff: other op orders, the model-pass
    // rule.
    let tol = model_pass(max.into()) as f32;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!((a - b).abs() <= tol, "{what}[{i}]: {a} vs {b} (max {max})");
    }
}

/// Two rows, the second left-padded by two positions; for every position `p` that is real in
/// both rows, the gradient of `Σ grad ⊙ final_hidden(p)` equals autodiff's, and later
/// positions get none. (A padded query sees no real key, so its output is meaningless.)
fn check(name: &str) {
    let m = model(name);
    let device = m.device().clone();
    let ids = vec![vec![5, 17, 9, 33, 2, 41], vec![0, 0, 12, 7, 30, 8]];
    let mask = vec![vec![true; 6], vec![false, false, true, true, true, true]];
    let embeds = m.embed(ids_tensor(&ids, &device));
    let [rows, len, hidden] = embeds.dims();
    let input = |e: Tensor<3>| ModelInput {
        target_embeds: e,
        target_mask: mask.clone(),
        source_embeds: None,
        source_mask: None,
    };
    let pass = m.forward_shared(&input(embeds.clone())).unwrap();
    let full = m.forward(
        input(embeds.clone()),
        ForwardOptions {
            hidden_states: true,
            ..Default::default()
        },
    );
    let last_hidden = full.final_hidden_state.unwrap();
    let logits = full.logits;
    for position in 2..len {
        let hidden_at = last_hidden
            .clone()
            .narrow(1, position, 1)
            .reshape([rows, hidden]);
        assert_close(
            &to_vec(pass.final_hidden(position)),
            &to_vec(hidden_at),
            &format!("{name} final hidden at {position}"),
        );
        let vocab = m.info().vocab_size;
        assert_close(
            &to_vec(pass.logits(pass.final_hidden(position))),
            &to_vec(logits.clone().narrow(1, position, 1).reshape([rows, vocab])),
            &format!("{name} logits at {position}"),
        );
        let weights: Vec<f32> = (0..rows * hidden)
            .map(|i| ((i * 7 + position * 3) % 11) as f32 / 11.0 - 0.5)
            .collect();
        let grad = Tensor::<2>::from_data(TensorData::new(weights, [rows, hidden]), &device);
        let tracked = embeds.clone().detach().autodiff().require_grad();
        let out = m.forward(
            input(tracked.clone()),
            ForwardOptions {
                hidden_states: true,
                last_position_only: true,
                ..Default::default()
            },
        );
        let h = out
            .final_hidden_state
            .unwrap()
            .narrow(1, position, 1)
            .reshape([rows, hidden]);
        let grads = (h * grad.clone()).sum().backward();
        let reference = tracked.grad(&grads).unwrap();
        let ours = pass.backward(position, grad);
        assert_eq!(ours.dims(), [rows, position + 1, hidden]);
        assert_close(
            &to_vec(ours),
            &to_vec(reference.clone().narrow(1, 0, position + 1)),
            &format!("{name} gradient at {position}"),
        );
        if position + 1 < len {
            let later = to_vec(reference.narrow(1, position + 1, len - position - 1));
            assert!(later.iter().all(|&v| v == 0.0), "{name}: causal");
        }
    }
}

#[test]
fn gpt2_backward_equals_autodiff() {
    check("tiny-gpt2");
}

#[test]
fn llama_backward_equals_autodiff() {
    check("tiny-llama");
}

/// The architectures of `tests/fixtures/zoo/make_zoo.py`: 6 positions, past their sliding windows
/// (4 or 5 positions).
const ZOO: [&str; 13] = [
    "tiny-gemma",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-qwen3",
    "tiny-olmo2",
    "tiny-gpt_neox",
    "tiny-opt",
    "tiny-opt_350m",
    "tiny-falcon",
    "tiny-falcon_mq",
    "tiny-falcon_rw",
    "tiny-mistral",
];

#[test]
fn zoo_backward_equals_autodiff() {
    ZOO.into_iter().for_each(check);
}

#[test]
fn zoo_backward_each_equals_backward_one_by_one() {
    ZOO.into_iter().for_each(check_backward_each);
}

#[test]
fn encoder_decoder_models_have_no_shared_forward() {
    let m = model("tiny-bart");
    let embeds = m.embed(ids_tensor(&[vec![5, 6]], m.device()));
    let input = ModelInput {
        target_embeds: embeds,
        target_mask: vec![vec![true; 2]],
        source_embeds: None,
        source_mask: None,
    };
    assert!(m.forward_shared(&input).is_none());
}

/// `backward_each` (passes side by side on rayon's threads on flex) returns, in request order,
/// exactly what `backward` returns one request at a time, however the passes were scheduled.
fn check_backward_each(name: &str) {
    let m = model(name);
    let device = m.device().clone();
    let ids = vec![vec![5, 17, 9, 33, 2, 41, 8], vec![3, 12, 7, 30, 8, 1, 6]];
    let embeds = m.embed(ids_tensor(&ids, &device));
    let [rows, len, hidden] = embeds.dims();
    let pass = m
        .forward_shared(&ModelInput {
            target_embeds: embeds,
            target_mask: vec![vec![true; len]; rows],
            source_embeds: None,
            source_mask: None,
        })
        .unwrap();
    let requests: Vec<(usize, Tensor<2>)> = (0..len)
        .map(|position| {
            let weights: Vec<f32> = (0..rows * hidden)
                .map(|i| ((i * 5 + position * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let grad = Tensor::<2>::from_data(TensorData::new(weights, [rows, hidden]), &device);
            (position, grad)
        })
        .collect();
    let one_by_one: Vec<Vec<f32>> = requests
        .iter()
        .map(|(position, grad)| to_vec(pass.backward(*position, grad.clone())))
        .collect();
    for _ in 0..5 {
        let each = pass.backward_each(requests.clone());
        assert_eq!(each.len(), requests.len());
        for (position, (ours, reference)) in each.into_iter().zip(&one_by_one).enumerate() {
            assert_eq!(ours.dims(), [rows, position + 1, hidden]);
            assert_eq!(&to_vec(ours), reference, "{name}: gradient at {position}");
        }
    }
    assert!(pass.backward_each(vec![]).is_empty());
}

#[test]
fn gpt2_backward_each_equals_backward_one_by_one() {
    check_backward_each("tiny-gpt2");
}

#[test]
fn llama_backward_each_equals_backward_one_by_one() {
    check_backward_each("tiny-llama");
}

/// Dynamic NTK RoPE: the frequencies depend on the sequence length past
/// `max_position_embeddings`, so a sequence that long has no shared forward pass (attribution
/// then runs each step's prefix, as Inseq does); shorter ones keep it.
#[test]
fn dynamic_rope_past_its_context_has_no_shared_forward() {
    let dir = inseq_fixtures::copy_model("tiny-llama", "dynamic-rope");
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = serde_json::json!(8);
    config["rope_parameters"] =
        serde_json::json!({"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0});
    std::fs::write(&path, config.to_string()).unwrap();
    let m = load_pretrained(dir.to_str().unwrap(), &Device::default())
        .unwrap()
        .model;
    let _ = std::fs::remove_dir_all(&dir);
    let input = |len: usize| {
        let ids: Vec<usize> = (5..5 + len).collect();
        ModelInput {
            target_embeds: m.embed(ids_tensor(&[ids], m.device())),
            target_mask: vec![vec![true; len]],
            source_embeds: None,
            source_mask: None,
        }
    };
    assert!(m.forward_shared(&input(8)).is_some());
    assert!(m.forward_shared(&input(9)).is_none());
}
