//! The `wgpu` backend gives the same attributions and step scores as the CPU (`flex`) backend.
//!
//! Runs with `cargo test --workspace --features inseq/wgpu --test wgpu_backend`; without a GPU,
//! Mesa's software Vulkan driver (llvmpipe, Debian package `mesa-vulkan-drivers`) serves. Where no
//! Vulkan adapter exists at all the test says so and passes, unless `INSEQ_REQUIRE_WGPU=1` (set by
//! `.ci/run`), which makes it fail instead.
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, DeviceKind};
use inseq::{AttributeOptions, AttributionOutput, MethodArgs, load_model};
use inseq_fixtures::tolerance::model_pass;

fn run(device: &Device, model: &str, method: &str, args: &str, input: &str) -> AttributionOutput {
    let m = load_model(
        &common::model_dir(model),
        method,
        MethodArgs::parse(args).unwrap(),
        device,
    )
    .unwrap();
    let opts = AttributeOptions {
        generation: inseq::GenerationOptions {
            max_new_tokens: 4,
            min_new_tokens: 4,
            ..Default::default()
        },
        step_scores: vec!["probability".into()],
        ..Default::default()
    };
    m.attribute(&[input], &opts).unwrap()
}

/// `|a - b| <= 1e-3 * max|b| + 1e-6` over the whole tensor: the model-pass rule (other kernels,
/// other summation orders), as `cargo xtask parity`.
fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tol = model_pass(scale.into()) as f32;
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!("{what}: max |wgpu - cpu| = {worst:.3e} (max |cpu| = {scale:.3e})");
    assert!(worst <= tol, "{what}: {worst} > tolerance {tol:e}");
}

fn wgpu_available() -> bool {
    let ok = std::panic::catch_unwind(|| {
        let d = Device::wgpu(DeviceKind::DefaultDevice);
        burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &d)
            .sum()
            .into_scalar::<f32>()
    })
    .is_ok_and(|v| v == 3.0);
    if !ok {
        assert!(
            std::env::var("INSEQ_REQUIRE_WGPU").as_deref() != Ok("1"),
            "INSEQ_REQUIRE_WGPU=1 but no Vulkan/Metal/DX12 adapter works (install mesa-vulkan-drivers)"
        );
        eprintln!("no wgpu adapter; skipping");
    }
    ok
}

#[test]
fn wgpu_matches_cpu() {
    if !wgpu_available() {
        return;
    }
    let cpu = Device::flex();
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let cases = [
        ("tiny-gpt2", "saliency", "", "Hello ladies and"),
        (
            "tiny-llama",
            "integrated_gradients",
            "n_steps=8",
            "Hello ladies and",
        ),
        ("tiny-llama", "attention", "", "Hello ladies and"),
        (
            "tiny-bart",
            "input_x_gradient",
            "",
            "Hello world, this is a test.",
        ),
    ];
    for (model, method, args, input) in cases {
        let a = run(&gpu, model, method, args, input);
        let b = run(&cpu, model, method, args, input);
        let (sa, sb) = (&a.sequence_attributions[0], &b.sequence_attributions[0]);
        assert_eq!(sa.target, sb.target, "{model} {method}: same generation");
        for (name, x, y) in [
            ("source", &sa.source_attributions, &sb.source_attributions),
            ("target", &sa.target_attributions, &sb.target_attributions),
        ] {
            assert_eq!(x.is_some(), y.is_some());
            if let (Some(x), Some(y)) = (x, y) {
                assert_eq!(x.shape(), y.shape());
                assert_close(&format!("{model} {method} {name}"), x.data(), y.data());
            }
        }
        let (pa, pb) = (
            &sa.step_scores["probability"],
            &sb.step_scores["probability"],
        );
        // The parity rule for step scores: 1e-4 absolute plus 1e-4 relative.
        for (x, y) in pa.iter().zip(pb) {
            assert!(
                (x - y).abs() <= 1e-4 + 1e-4 * y.abs(),
                "{model} {method}: probability {x} vs {y}"
            );
        }
    }
}
