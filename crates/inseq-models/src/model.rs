//! The architecture-independent model interface used by attribution methods.

use burn::tensor::{Device, Int, Tensor};

use crate::backprop::SharedForward;

/// Whether a model is decoder-only (GPT-2, Llama) or encoder-decoder (Marian, BART, T5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal language model: the prompt is the target prefix.
    DecoderOnly,
    /// A sequence-to-sequence model with a separate source.
    EncoderDecoder,
}

/// Facts about a loaded model that attribution needs.
#[derive(Debug, Clone, PartialEq, Default)]
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

/// An attention sublayer kind of a model: which attention a [`ValueZeroing`] hook targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// The (decoder's) causal self-attention; the only kind decoder-only models have.
    #[default]
    DecoderSelf,
    /// The encoder's self-attention (encoder-decoder models; positions are source positions).
    EncoderSelf,
    /// The decoder's cross-attention over the encoder output (encoder-decoder models;
    /// positions are source positions, the keys and values of the cross-attention).
    Cross,
}

/// Zeroes the value vector of one token per batch row in one attention layer
/// (value zeroing, Mohebbi et al., 2023), in every head. Only honoured by models whose
/// [`LanguageModel::supports_internal_hooks`] is `true`.
///
/// `attention` picks the attention sublayer: the decoder self-attention by
/// default (positions index the target), or, in encoder-decoder models, the encoder
/// self-attention or the decoder cross-attention (positions index the source).
/// `layer` indexes the blocks of that stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueZeroing {
    /// The layer (block) of the stack `attention` names whose attention values are zeroed.
    pub layer: usize,
    /// Per batch row, the position whose value vector is zeroed (`None`: none).
    pub positions: Vec<Option<usize>>,
    /// Which attention sublayer is hooked.
    pub attention: AttentionKind,
}

/// A block of a model: decoder block `k` (the only stack of decoder-only models) or, in
/// encoder-decoder models, encoder block `k` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRef {
    /// Block `k` of the decoder (of the model, for decoder-only models).
    Decoder(usize),
    /// Block `k` of the encoder (encoder-decoder models).
    Encoder(usize),
}

impl LayerRef {
    /// The position of this block's output in [`ModelOutput::hidden_states`] (decoder) or
    /// [`ModelOutput::encoder_hidden_states`] (encoder): `k + 1`.
    pub fn hidden_state_index(self) -> usize {
        match self {
            LayerRef::Decoder(k) | LayerRef::Encoder(k) => k + 1,
        }
    }
}

/// What [`LayerOverride`] does to the block output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideMode {
    /// The block output is replaced by the given tensor (the block's own output is discarded),
    /// as Captum's layer methods do when they feed interpolated layer activations.
    Replace,
    /// The given tensor is added to the block output; with a zero tensor that requires
    /// gradients, the gradient of the output with respect to the block output can be read.
    Add,
}

/// Replaces (or shifts) the output of one block during a forward pass, so that layer
/// attribution methods can differentiate with respect to, or interpolate, a hidden layer.
/// The following blocks (and, for an encoder block, the decoder's cross-attention) use
/// the new value; [`ModelOutput::hidden_states`] / [`ModelOutput::encoder_hidden_states`]
/// report it. Only honoured by models whose [`LanguageModel::supports_internal_hooks`] is
/// `true`; an override of a block that does not exist is ignored.
#[derive(Debug, Clone)]
pub struct LayerOverride {
    /// The block whose output is changed.
    pub layer: LayerRef,
    /// `[batch, positions, hidden]`, shaped like the block output (`positions`: the
    /// target length for decoder blocks, the source length for encoder blocks).
    pub value: Tensor<3>,
    /// Replace the block output or add to it.
    pub mode: OverrideMode,
}

/// Monte Carlo dropout for one forward pass: each block's attention and MLP outputs (GPT-2's
/// residual dropout positions; in encoder-decoder models every self-attention, cross-attention
/// and feed-forward output of both stacks) are dropped with probability `p` and the rest scaled
/// by `1 / (1 - p)`, with masks drawn from `seed`. Honoured by models whose
/// [`LanguageModel::supports_internal_hooks`] is `true`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McDropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    /// Seed of the masks.
    pub seed: u64,
}

/// Keys and values of the positions a decoder has already run, per layer, so that greedy
/// generation feeds only the new token at each step (incremental decoding). Cloning shares the
/// cache. Honoured by models whose [`LanguageModel::supports_kv_cache`] is `true`.
///
/// ```
/// use inseq_models::KvCache;
/// let cache = KvCache::default();
/// assert_eq!(cache.len(), 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: std::sync::Arc<std::sync::Mutex<Vec<(Tensor<4>, Tensor<4>)>>>,
}

impl KvCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.lock().first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Tensor<4>, Tensor<4>)>> {
        self.layers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the batch rows `rows` of every layer's keys and values, in that order (beam search
    /// reorders its beams this way).
    pub fn select_rows(&self, rows: Tensor<1, Int>) {
        for (k, v) in self.lock().iter_mut() {
            *k = k.clone().select(0, rows.clone());
            *v = v.clone().select(0, rows.clone());
        }
    }

    /// Appends layer `layer`'s `[batch, heads, new, head_dim]` keys and values and returns
    /// the keys and values of every position so far.
    pub fn append(&self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let mut layers = self.lock();
        let (k, v) = match layers.get(layer) {
            Some((pk, pv)) => (
                Tensor::cat(vec![pk.clone(), k], 2),
                Tensor::cat(vec![pv.clone(), v], 2),
            ),
            None => (k, v),
        };
        if layer < layers.len() {
            layers[layer] = (k.clone(), v.clone());
        } else {
            layers.push((k.clone(), v.clone()));
        }
        (k, v)
    }
}

/// What [`LanguageModel::forward`] should return besides logits.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Return per-layer attention weights.
    pub attentions: bool,
    /// With `attentions`: the weights of these query positions only (`[batch, heads,
    /// rows.len(), k]` per layer, in this order), computed in query chunks so that a long input
    /// never holds `[heads, q, k]`. Models that honour it say so in
    /// [`ModelOutput::attention_rows`]; the others return every query's weights. Encoder-decoder
    /// models apply the rows to decoder self- and cross-attention and record no encoder
    /// self-attention.
    pub attention_rows: Option<Vec<usize>>,
    /// Return per-layer hidden states.
    pub hidden_states: bool,
    /// Compute logits at the last position only (saves the LM head on long prefixes).
    pub last_position_only: bool,
    /// Compute logits only from this position on (`None`: every position); ignored with
    /// `last_position_only`. Attributing every step of a sequence from one forward pass needs
    /// the logits of the generated positions only.
    pub logits_from: Option<usize>,
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
    /// Incremental decoding: `target_embeds` holds only the positions after the cached ones,
    /// `target_mask` covers cached and new positions, and the new keys and values are appended
    /// to the cache. Only honoured when [`LanguageModel::supports_kv_cache`].
    pub kv_cache: Option<KvCache>,
    /// Replace or shift one block's output (see [`LayerOverride`]).
    pub layer_override: Option<LayerOverride>,
    /// Encoder-decoder models: the encoder's output for [`ModelInput::source_embeds`], computed
    /// beforehand ([`LanguageModel::encoder_stage`]); the encoder is then not run, and the
    /// source embeddings only give the source length.
    pub encoder_output: Option<Tensor<3>>,
}

impl ForwardOptions {
    /// The first position whose logits are computed, for a sequence of `len` positions.
    ///
    /// ```
    /// use inseq_models::ForwardOptions;
    /// let from_three = ForwardOptions { logits_from: Some(3), ..Default::default() };
    /// assert_eq!(from_three.first_logit_position(10), 3);
    /// let last = ForwardOptions { last_position_only: true, ..Default::default() };
    /// assert_eq!(last.first_logit_position(10), 9);
    /// ```
    pub fn first_logit_position(&self, len: usize) -> usize {
        let last = len.saturating_sub(1);
        if self.last_position_only {
            last
        } else {
            self.logits_from.unwrap_or(0).min(last)
        }
    }
}

/// Output of [`LanguageModel::forward`].
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// `[batch, positions, vocab]` logits from [`ForwardOptions::first_logit_position`] on
    /// (`positions` is 1 with `last_position_only`).
    pub logits: Tensor<3>,
    /// Per decoder layer `[batch, heads, q, k]` self-attention weights (`[batch, heads, rows,
    /// k]` when [`ModelOutput::attention_rows`] is set).
    pub attentions: Vec<Tensor<4>>,
    /// The query positions whose weights [`ModelOutput::attentions`] (and
    /// [`ModelOutput::cross_attentions`]) hold, where the model
    /// honoured [`ForwardOptions::attention_rows`]; `None`: every query's.
    pub attention_rows: Option<Vec<usize>>,
    /// Per decoder layer `[batch, heads, q, k_source]` cross-attention weights (`[batch, heads,
    /// rows, k_source]` when [`ModelOutput::attention_rows`] is set).
    pub cross_attentions: Vec<Tensor<4>>,
    /// Per encoder layer `[batch, heads, k_source, k_source]` self-attention weights; none when
    /// [`ModelOutput::attention_rows`] is set (its rows name decoder positions).
    pub encoder_attentions: Vec<Tensor<4>>,
    /// With [`ForwardOptions::hidden_states`]: the (decoder) embedding output then each
    /// (decoder) block's output, `[batch, positions, hidden]`; entry `k + 1` is block `k`'s
    /// output, before any final normalisation of the stack.
    pub hidden_states: Vec<Tensor<3>>,
    /// Encoder-decoder models, with [`ForwardOptions::hidden_states`]: the encoder's
    /// embedding output then each encoder block's output, `[batch, source_len, hidden]`.
    pub encoder_hidden_states: Vec<Tensor<3>>,
    /// With [`ForwardOptions::hidden_states`]: the (decoder) stack's output after its final
    /// normalisation where the architecture has one (GPT-2's `ln_f`, Llama's and T5's final
    /// norms; equal to the last entry of `hidden_states` for BART and Marian), what Hugging
    /// Face reports as the last hidden state.
    pub final_hidden_state: Option<Tensor<3>>,
    /// Encoder-decoder models, with [`ForwardOptions::hidden_states`]: the encoder's output
    /// after its final normalisation where it has one (T5), the memory the decoder attends to.
    pub encoder_final_hidden_state: Option<Tensor<3>>,
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
    /// Whether [`ForwardOptions::kv_cache`] is implemented (`false` by default).
    fn supports_kv_cache(&self) -> bool {
        false
    }
    /// Whether [`ForwardOptions::zero_value`], [`ForwardOptions::attn_lrp`] and
    /// [`ForwardOptions::layer_override`] are implemented (`false` by default: a model
    /// ignores them).
    fn supports_internal_hooks(&self) -> bool {
        false
    }
    /// Runs a forward pass on `input` (decoder-only models: target embeddings and mask) that
    /// keeps its activations, so that the gradients of functions of several positions'
    /// outputs come from one forward pass and hand-written backward passes (see
    /// [`SharedForward`]). `None` (the default) where the architecture has no hand-written
    /// backward pass; callers then use autodiff through [`LanguageModel::forward`].
    fn forward_shared(&self, _input: &ModelInput) -> Option<Box<dyn SharedForward + '_>> {
        None
    }
    /// Number of encoder blocks (0 for decoder-only models); the decoder's is
    /// [`ModelInfo::num_layers`].
    fn num_encoder_layers(&self) -> usize {
        0
    }
    /// Encoder-decoder models: the number of stages of the encoder ([`LanguageModel::encoder_stage`]);
    /// 0 (the default) where the encoder cannot be run stage by stage.
    fn encoder_stages(&self) -> usize {
        0
    }
    /// Encoder stage `k` on `x` (`[batch, source_len, hidden]`) under the source `mask`, with the
    /// hooks of `options`: stage 0 maps the source embeddings to the first layer's input, stage
    /// `i + 1` is encoder layer `i`, the last stage maps the last layer's output to the memory
    /// the decoder attends to ([`ForwardOptions::encoder_output`]). Running the stages in turn
    /// is the encoder of [`LanguageModel::forward`]; a caller back-propagates through one stage
    /// at a time from the saved stage inputs, so that autodiff holds one layer's graph.
    fn encoder_stage(
        &self,
        _k: usize,
        x: Tensor<3>,
        _mask: &[Vec<bool>],
        _options: &ForwardOptions,
    ) -> Tensor<3> {
        x
    }
}
