//! The memory check before attribution: a job whose activations cannot fit its budget fails at
//! once with `Error::OutOfMemory` saying how to proceed, and nothing is attributed.

mod common;

use inseq::{AttributeOptions, Error, MethodArgs, activation_bytes};

fn model(method: &str, args: &str) -> inseq::AttributionModel {
    let device = burn::tensor::Device::default();
    let args = MethodArgs::parse(args).unwrap();
    inseq::load_model(&common::model_dir("tiny-gpt2"), method, args, &device).unwrap()
}

fn forced(budget: Option<u64>) -> AttributeOptions {
    AttributeOptions {
        targets: Some(vec!["Hello ladies and gentlemen".into(); 2]),
        memory_budget: budget,
        ..Default::default()
    }
}

#[test]
fn over_budget_is_an_error_that_says_how_to_proceed() {
    let ig = model("integrated_gradients", "n_steps=8,internal_batch_size=4");
    let inputs = ["Hello ladies and"; 2];
    let err = ig.attribute(&inputs, &forced(Some(1000))).unwrap_err();
    let Error::OutOfMemory { needed, budget, .. } = &err else {
        panic!("expected OutOfMemory, got {err}");
    };
    assert_eq!(*budget, 1000);
    // Two rows of 4 copies, all layers kept: the estimate of the formula, exactly.
    let info = ig.model().info();
    let len = ig
        .tokenizer()
        .encode("Hello ladies and gentlemen", true)
        .unwrap()
        .len();
    assert_eq!(*needed, activation_bytes(info, len, 2 * 4, true));
    let message = err.to_string();
    for advice in [
        "not enough memory",
        "internal_batch_size (now 4",
        "fewer inputs",
        "--memory-budget",
    ] {
        assert!(message.contains(advice), "{advice}: {message}");
    }
    // Within its budget the same job runs.
    let enough = Some(needed + 1);
    assert!(ig.attribute(&inputs, &forced(enough)).is_ok());
}

#[test]
fn forward_only_methods_count_one_layer() {
    let attention = model("attention", "");
    let err = attention
        .attribute(&["Hello ladies and"; 2], &forced(Some(1)))
        .unwrap_err();
    let Error::OutOfMemory { needed, .. } = err else {
        panic!("expected OutOfMemory, got {err}");
    };
    let info = attention.model().info();
    let len = attention
        .tokenizer()
        .encode("Hello ladies and gentlemen", true)
        .unwrap()
        .len();
    assert_eq!(needed, activation_bytes(info, len, 2, false));
    assert!(!err_mentions_gradients(&attention));
}

fn err_mentions_gradients(m: &inseq::AttributionModel) -> bool {
    let err = m
        .attribute(&["Hello ladies and"; 2], &forced(Some(1)))
        .unwrap_err();
    err.to_string().contains("without gradients")
}
