//! The block layer of the decoder-only architectures: norms ([`norm`]), rotary embeddings
//! ([`rope`]) or ALiBi biases ([`alibi`]), the attention core in query chunks ([`core`]) and its
//! masks ([`mask`]), the attention and feed-forward sublayers
//! ([`attention`], [`mlp`]), blocks in their residual layouts ([`block`]) and the generic
//! decoder ([`decoder`]) an architecture maps its config and weight names onto ([`spec`]).
//!
//! Each piece has one forward pass that serves both the hooked path
//! ([`crate::LanguageModel::forward`]: value zeroing, AttnLRP, layer override, Monte Carlo
//! dropout, attention recording, key/value cache) and the taped path
//! ([`crate::LanguageModel::forward_shared`]: the activations its hand-written backward pass
//! reads), and one backward pass.

pub mod alibi;
pub mod attention;
pub mod block;
pub mod config;
pub mod core;
pub mod decoder;
pub(crate) mod hooks;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod rope;
pub(crate) mod seq2seq;
pub mod spec;

use burn::tensor::{Device, Tensor};

use crate::model::ForwardOptions;
use mask::AttentionMask;

pub use decoder::Decoder;
pub use spec::{DecoderSpec, Names};

/// The state of one forward pass that every block reads: the hooks, whether activations are
/// taped, the rotary tables and attention masks of the input, and the recorded attentions.
pub struct Pass<'a> {
    /// Hooks and outputs asked for.
    pub options: &'a ForwardOptions,
    /// AttnLRP rules.
    pub lrp: bool,
    /// Keep the activations of the backward pass.
    pub taped: bool,
    /// The device of the model.
    pub device: Device,
    /// `(cos, sin)` of each of the decoder's rotary embeddings for the fed positions.
    pub rope_tables: Vec<(Tensor<4>, Tensor<4>)>,
    /// The causal mask for each sliding window in use (`None`: full attention).
    pub masks: Vec<(Option<usize>, AttentionMask)>,
    /// Attention weights per layer, when asked for.
    pub attentions: Vec<Tensor<4>>,
}

impl Pass<'_> {
    /// The causal mask of layers with sliding `window`.
    pub fn mask(&self, window: Option<usize>) -> &AttentionMask {
        self.masks
            .iter()
            .find(|(w, _)| *w == window)
            .map(|(_, m)| m)
            .expect("a mask for every window of the model")
    }
}
