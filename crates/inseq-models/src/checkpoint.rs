//! Block tapes of a [`crate::SharedForward`] pass, kept or recomputed (activation
//! checkpointing), and backward passes that run every request block by block.
//!
//! A block's tape (the activations its backward pass reads) is a dozen hidden-size vectors per
//! token. When the tapes of every block fit [`KEEP_TAPES_BYTES`], they are kept; otherwise only
//! each block's input is kept and its tape is recomputed when the backward pass reaches it, once
//! for all the requests of [`backward_blockwise`], so that memory stays one hidden-size vector
//! per token and block plus one block's tape, at the cost of one more forward pass.

use std::borrow::Cow;

use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::backprop::Span;
use crate::nn::computed_on_host_cores;

/// Bytes of block tapes kept whole (2 GiB); above it, tapes are recomputed from the block inputs
/// (one more forward pass). SmolLM2's tapes take about 0.62 GB per 1,000 tokens: kept up to about
/// 3,400 tokens. At 1 GiB, `integrated_gradients` (50 steps, 10 tokens) on SmolLM2 recomputed its
/// tapes and ran 22 % slower than keeping them (`cargo xtask bench` job, 38.9 s against 31.9 s).
pub const KEEP_TAPES_BYTES: u64 = 2 << 30;

/// One block's tape, or its input to recompute it from.
// One per block: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Stored<T> {
    /// The tape.
    Kept(T),
    /// `[rows, len, hidden]` input of the block.
    Input(Tensor<3>),
}

/// The tapes of a stack of blocks: runs `block(index, input) -> (tape, output)` over every
/// block from `x` and keeps the tapes where `blocks` tapes of `floats(tape)` floats (the first
/// block's) fit `keep_bytes` (models pass [`KEEP_TAPES_BYTES`]), else the blocks' inputs.
/// Returns the stored tapes and the last block's output.
pub(crate) fn run_blocks<T>(
    (blocks, keep_bytes): (usize, u64),
    mut x: Tensor<3>,
    mut block: impl FnMut(usize, Tensor<3>) -> (T, Tensor<3>),
    floats: impl Fn(&T) -> usize,
) -> (Vec<Stored<T>>, Tensor<3>) {
    let mut stored = Vec::with_capacity(blocks);
    let mut keep = true;
    for index in 0..blocks {
        let (tape, out) = block(index, x.clone());
        if index == 0 {
            let bytes = (floats(&tape) as u64).saturating_mul(4 * blocks as u64);
            keep = bytes <= keep_bytes;
        }
        stored.push(if keep {
            Stored::Kept(tape)
        } else {
            Stored::Input(x)
        });
        x = out;
    }
    (stored, x)
}

/// Block `index`'s tape: the kept one, or recomputed by `block`.
pub(crate) fn tape_of<'a, T: Clone>(
    stored: &'a [Stored<T>],
    index: usize,
    block: impl Fn(usize, Tensor<3>) -> (T, Tensor<3>),
) -> Cow<'a, T> {
    match &stored[index] {
        Stored::Kept(tape) => Cow::Borrowed(tape),
        Stored::Input(x) => Cow::Owned(block(index, x.clone()).0),
    }
}

/// Backward passes from the final hidden state at each request's position through `blocks`
/// blocks, last first, every request through one block before the next (so a recomputed tape
/// serves them all): `final_norm(span, request)` gives request `request`'s gradient of the last
/// block's output at its position (`[rows, 1, dim]`); `tape(index)` gives block `index`'s tape;
/// `block(tape, span, dout)` runs its backward pass. Results in request order, each `[rows,
/// position + 1, dim]`; the gradient of the last block's output is non-zero at the position only, the other blocks' at
/// every position up to it. On CPU
/// backends the requests of one block run side by side on rayon's threads.
pub(crate) fn backward_blockwise<'a, T: Clone + Sync + 'a>(
    positions: &[usize],
    blocks: usize,
    final_norm: impl Fn(Span, usize) -> Tensor<3>,
    tape: impl Fn(usize) -> Cow<'a, T>,
    block: impl Fn(&T, usize, Span, Tensor<3>) -> Tensor<3> + Sync,
) -> Vec<Tensor<3>> {
    let mut spans: Vec<Span> = positions
        .iter()
        .map(|&p| Span {
            start: p,
            len: p + 1,
        })
        .collect();
    let mut grads: Vec<Tensor<3>> = spans
        .iter()
        .enumerate()
        .map(|(r, &span)| final_norm(span, r))
        .collect();
    let parallel = grads.len() > 1 && computed_on_host_cores(&grads[0].device());
    for index in (0..blocks).rev() {
        let t = tape(index);
        let one = |(span, dout): (&Span, Tensor<3>)| block(&t, index, *span, dout);
        grads = if parallel {
            spans
                .par_iter()
                .zip(grads)
                .with_max_len(1)
                .map(one)
                .collect()
        } else {
            spans.iter().zip(grads).map(one).collect()
        };
        spans.iter_mut().for_each(|s| s.start = 0);
    }
    grads
}

/// Checks shared by the models' tests: recomputed tapes give the kept tapes' gradients.
#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use burn::tensor::Device;

    use crate::{LanguageModel, ModelInput, SharedForward, Weights, ids_tensor};

    /// The weights of the fixture model `name` (`tests/fixtures/models/`) and its config.
    pub(crate) fn fixture<C: serde::de::DeserializeOwned>(
        name: &str,
        prefix: &str,
    ) -> (C, Weights) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models")
            .join(name);
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let source = crate::SafetensorsSource::open_dir(&dir).unwrap();
        let w = Weights::new(Box::new(source), &[prefix], &Device::flex());
        (serde_json::from_str(&text).unwrap(), w)
    }

    /// `pass(input, keep_bytes)` with every tape kept and with every tape recomputed give the
    /// same gradients, on a batch with a left-padded row.
    #[allow(clippy::needless_lifetimes)] // `'m` bounds the boxed pass too.
    pub(crate) fn assert_recompute_matches<'m>(
        model: &'m dyn LanguageModel,
        pass: impl Fn(&ModelInput, u64) -> Box<dyn SharedForward + 'm>,
    ) {
        let ids = vec![vec![5, 6, 7, 8, 9, 10], vec![0, 0, 7, 3, 9, 4]];
        let input = ModelInput {
            target_embeds: model.embed(ids_tensor(&ids, model.device())),
            target_mask: vec![vec![true; 6], vec![false, false, true, true, true, true]],
            source_embeds: None,
            source_mask: None,
        };
        let (kept, recomputed) = (pass(&input, u64::MAX), pass(&input, 0));
        let requests = |p: &dyn SharedForward| {
            vec![
                (3, p.final_hidden(3).ones_like()),
                (5, p.final_hidden(5).ones_like()),
            ]
        };
        let a = kept.backward_each(requests(kept.as_ref()));
        let b = recomputed.backward_each(requests(recomputed.as_ref()));
        for (a, b) in a.into_iter().zip(b) {
            let diff = (a - b).abs().max().into_scalar::<f32>();
            assert!(diff <= 1e-6, "{diff}");
        }
    }
}
