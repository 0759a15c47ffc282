//! The architecture-independent model interface used by attribution methods.

use burn::tensor::{Device, Int, Tensor};

/// Whether a model is decoder-only (GPT-2, Llama) or encoder-decoder (Marian, BART, T5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal language model: the prompt is the target prefix.
    DecoderOnly,
    /// A sequence-to-sequence model with a separate source.
    EncoderDecoder,
}

/// Facts about a loaded model that attribution needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Architecture id (`gpt2`, `llama`, ...).
    pub architecture: String,
    /// The class name Hugging Face would use (`GPT2LMHeadModel`...).
    pub hf_class: String,
    /// Vocabulary size of the output layer.
    pub vocab_size: usize,
    /// Hidden (embedding) size.
    pub hidden_size: usize,
    /// Number of layers (decoder layers for encoder-decoder models).
    pub num_layers: usize,
    /// Number of attention heads.
    pub num_heads: usize,
    /// Longest sequence the model accepts.
    pub max_positions: usize,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id.
    pub eos_token_id: Option<usize>,
    /// Padding id.
    pub pad_token_id: Option<usize>,
    /// First decoder input of encoder-decoder models.
    pub decoder_start_token_id: Option<usize>,
}

/// Input to [`LanguageModel::forward`]. Embeddings are the model's own token
/// embeddings (as returned by [`LanguageModel::embed`]), so attribution methods
/// can differentiate with respect to them or interpolate them.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// `[batch, target_len, hidden]` decoder (target) token embeddings.
    pub target_embeds: Tensor<3>,
    /// Per row, which target positions are real tokens (`false` = left padding).
    pub target_mask: Vec<Vec<bool>>,
    /// `[batch, source_len, hidden]` encoder embeddings (encoder-decoder only).
    pub source_embeds: Option<Tensor<3>>,
    /// Per row, which source positions are real tokens.
    pub source_mask: Option<Vec<Vec<bool>>>,
}

/// Zeroes the value vector of one token per batch row in one self-attention
/// layer (value zeroing, Mohebbi et al., 2023). Only honoured by models whose
/// [`LanguageModel::supports_internal_hooks`] is `true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueZeroing {
    /// The (decoder) layer whose attention values are zeroed.
    pub layer: usize,
    /// Per batch row, the position whose value vector is zeroed (`None`: none).
    pub positions: Vec<Option<usize>>,
}

/// Monte Carlo dropout for one forward pass: each block's attention and MLP outputs (GPT-2's
/// residual dropout positions) are dropped with probability `p` and the rest scaled by
/// `1 / (1 - p)`, with masks drawn from `seed`. Honoured by models whose
/// [`LanguageModel::supports_internal_hooks`] is `true`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McDropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    /// Seed of the masks.
    pub seed: u64,
}

/// What [`LanguageModel::forward`] should return besides logits.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Return per-layer attention weights.
    pub attentions: bool,
    /// Return per-layer hidden states.
    pub hidden_states: bool,
    /// Compute logits at the last position only (saves the LM head on long prefixes).
    pub last_position_only: bool,
    /// Zero one token's attention value vector in one layer (see [`ValueZeroing`]).
    pub zero_value: Option<ValueZeroing>,
    /// Build the forward graph so that Gradient × Input on it equals AttnLRP
    /// relevance (Achtibat et al., 2024), as the authors' efficient
    /// implementation does: normalisation denominators detached, identity rule
    /// on element-wise activations, uniform rule (half gradient to each factor)
    /// on the attention matrix products and gated products. The forward values
    /// are unchanged. Only honoured when [`LanguageModel::supports_internal_hooks`].
    pub attn_lrp: bool,
    /// Monte Carlo dropout (see [`McDropout`]); `None` for the usual deterministic forward pass.
    pub dropout: Option<McDropout>,
}

/// Output of [`LanguageModel::forward`].
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `[batch, positions, vocab]` logits (`positions` is 1 with `last_position_only`).
    pub logits: Tensor<3>,
    /// Per decoder layer `[batch, heads, q, k]` self-attention weights.
    pub attentions: Vec<Tensor<4>>,
    /// Per decoder layer `[batch, heads, q, k_source]` cross-attention weights.
    pub cross_attentions: Vec<Tensor<4>>,
    /// Per encoder layer `[batch, heads, k_source, k_source]` self-attention weights.
    pub encoder_attentions: Vec<Tensor<4>>,
    /// Embedding output then each layer's output, `[batch, positions, hidden]`.
    pub hidden_states: Vec<Tensor<3>>,
}

impl ModelOutput {
    /// Logits at the last position, `[batch, vocab]`.
    pub fn last_logits(&self) -> Tensor<2> {
        let [b, s, v] = self.logits.dims();
        self.logits
            .clone()
            .slice([0..b, s - 1..s, 0..v])
            .reshape([b, v])
    }
}

/// A Transformer language model that attribution methods can drive.
///
/// Implemented by every architecture in this crate; methods only see this trait.
pub trait LanguageModel: Send + Sync {
    /// Architecture facts.
    fn info(&self) -> &ModelInfo;
    /// Decoder-only or encoder-decoder.
    fn kind(&self) -> ModelKind;
    /// The device the weights live on.
    fn device(&self) -> &Device;
    /// Token embeddings of `[batch, seq]` target ids (scaled as the model scales them).
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3>;
    /// Token embeddings of source ids (encoder-decoder; decoder-only models use [`LanguageModel::embed`]).
    fn embed_source(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed(ids)
    }
    /// Runs the model on embeddings.
    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput;
    /// The factor Python Inseq 0.7.1 multiplies *target* embeddings by before
    /// the forward pass, reproduced only in Inseq-compatibility mode. It is 1
    /// except for Marian: Inseq scales the decoder embeddings by `sqrt(d_model)`
    /// and Hugging Face's Marian decoder scales `decoder_inputs_embeds` again,
    /// so Inseq's Marian results come from doubly scaled target embeddings.
    fn inseq_target_embed_quirk(&self) -> f64 {
        1.0
    }
    /// The dropout probability the model was trained with (0 when none is configured).
    fn dropout_probability(&self) -> f64 {
        0.0
    }
    /// Whether [`ForwardOptions::zero_value`] and [`ForwardOptions::attn_lrp`]
    /// are implemented (`false` by default: a model ignores them).
    fn supports_internal_hooks(&self) -> bool {
        false
    }
}
