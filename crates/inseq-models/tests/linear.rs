//! `Linear::forward` computes one-row products against large weights in blocks of the input
//! dimension, in parallel; these give the plain product `x W + b`, and under autodiff (which
//! takes the plain product) the same input gradient.

use burn::tensor::{Device, Distribution, Tensor};
use inseq_fixtures::tolerance::gamma;
use inseq_models::nn::Linear;

/// `max |a - b| / max |b|`: blocking only changes the order of the summation.
fn relative_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>();
    (a - b).abs().max().into_scalar::<f32>() / scale
}

fn layer(inputs: usize, outputs: usize, device: &Device) -> Linear {
    Linear {
        weight: Tensor::random([inputs, outputs], Distribution::Default, device).into(),
        bias: Some(Tensor::random([outputs], Distribution::Default, device)),
    }
}

fn plain(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, s, i] = x.dims();
    let out = layer.weight.dims()[1];
    let y = x.reshape([b * s, i]).matmul(layer.weight.dense())
        + layer.bias.clone().unwrap().unsqueeze::<2>();
    y.reshape([b, s, out])
}

#[test]
fn one_row_products_equal_the_plain_product() {
    let device = Device::default();
    // Blocked (GPT-2's and SmolLM2's shapes), below the size where blocking starts, an input
    // dimension that 4 does not divide, and several rows (never blocked).
    for (rows, inputs, outputs) in [
        (1, 768, 3072),
        (1, 3072, 768),
        (1, 768, 2304),
        (1, 576, 576),
        (1, 1536, 576),
        (1, 576, 192),
        (1, 1026, 3072),
        (1, 1023, 257),
        (3, 768, 3072),
    ] {
        let l = layer(inputs, outputs, &device);
        let x = Tensor::<3>::random([1, rows, inputs], Distribution::Default, &device);
        let diff = relative_diff(l.forward(x.clone()), plain(&l, x));
        // Uniform [0, 1) inputs and weights: no cancellation, so each output's sum of `inputs`
        // products and the bias is within γ(inputs + 1) of itself, on each side.
        assert!(
            f64::from(diff) <= 2.0 * gamma(inputs + 1),
            "[{rows}, {inputs}] x [{inputs}, {outputs}]: {diff}"
        );
    }
}

#[test]
fn one_row_gradient_under_autodiff_equals_the_plain_gradient() {
    let device = Device::default();
    let l = layer(768, 3072, &device);
    let x = Tensor::<3>::random([1, 1, 768], Distribution::Default, &device);
    let cotangent = Tensor::<3>::random([1, 1, 3072], Distribution::Default, &device);
    let grad = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let tracked = x.clone().detach().autodiff().require_grad();
        let score = (f(tracked.clone()) * cotangent.clone()).sum();
        tracked.grad(&score.backward()).unwrap()
    };
    let diff = relative_diff(grad(&|x| l.forward(x)), grad(&|x| plain(&l, x)));
    // Positive cotangent and weights: sums of 3072 products without cancellation, as above.
    assert!(f64::from(diff) <= 2.0 * gamma(3072 + 1), "{diff}");
}

#[test]
fn one_row_blocks_are_summed_in_a_fixed_order() {
    let device = Device::default();
    let l = layer(1536, 576, &device);
    let x = Tensor::<3>::random([1, 1, 1536], Distribution::Default, &device);
    let first = l.forward(x.clone()).into_data();
    for _ in 0..20 {
        assert_eq!(l.forward(x.clone()).into_data(), first);
    }
}
