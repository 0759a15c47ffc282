//! Marian (`MarianMTModel`): the BART-family post-norm encoder-decoder with
//! fixed sinusoidal positions, no embedding layer norm, and embeddings scaled by
//! `sqrt(d_model)` when `scale_embedding`.
//!
//! Embedding convention (Hugging Face transformers 5.x, `modeling_marian.py`):
//! the token embedding module is a plain `nn.Embedding`, so
//! `model.get_input_embeddings()(ids)` is **unscaled**. The encoder multiplies by
//! `embed_scale` only when it is given ids (given `inputs_embeds`, it uses them
//! as they are), while the decoder multiplies `decoder_inputs_embeds` by
//! `embed_scale` in every case. Accordingly:
//! - [`LanguageModel::embed`] returns the unscaled decoder embeddings `E[ids]`,
//!   and [`LanguageModel::forward`] multiplies the target embeddings by `embed_scale`;
//! - [`LanguageModel::embed_source`] returns `E[ids] * embed_scale` (what the
//!   encoder computes from ids), and the forward pass uses the source
//!   embeddings unchanged.
//!
//! With these, `forward(embed_source(src), embed(tgt))` equals Hugging Face's
//! `model(input_ids=src, decoder_input_ids=tgt)`.

use burn::tensor::{Device, Int, Tensor};

use crate::bart::{
    BART_NAMES, BartConfig, Layout, NameTable, ScaleConvention, Seq2Seq, Sinusoid, seq2seq_info,
};
use crate::model::{ForwardOptions, LanguageModel, ModelInfo, ModelInput, ModelKind, ModelOutput};
use crate::weights::Weights;
use inseq_core::Result;

/// Marian's weight names: BART's, without learned positions or embedding layer norms.
const MARIAN_NAMES: NameTable = NameTable {
    encoder_positions: None,
    decoder_positions: None,
    encoder_layernorm_embedding: None,
    decoder_layernorm_embedding: None,
    ..BART_NAMES
};

/// A Marian translation model (`MarianMTModel`).
pub struct Marian {
    inner: Seq2Seq,
}

impl Marian {
    /// Builds the model from its config (a Marian `config.json`, read as a
    /// [`BartConfig`]) and weights (names without the `model.` prefix).
    pub fn load(config: BartConfig, w: &mut Weights) -> Result<Self> {
        let mut info = seq2seq_info(&config, "marian", "MarianMTModel");
        info.decoder_start_token_id = config.decoder_start_token_id.or(config.pad_token_id);
        let layout = Layout {
            names: MARIAN_NAMES,
            convention: ScaleConvention::MarianDecoderScales,
            pre_norm: false,
            sinusoid: Sinusoid::Marian,
        };
        let inner = Seq2Seq::load(&config, w, &layout, info)?;
        Ok(Self { inner })
    }

    /// The embedding scale (`sqrt(d_model)` with `scale_embedding`, else 1):
    /// included in [`LanguageModel::embed_source`], applied by
    /// [`LanguageModel::forward`] to the target embeddings.
    pub fn embed_scale(&self) -> f64 {
        self.inner.embed_scale
    }
}

impl LanguageModel for Marian {
    fn inseq_target_embed_quirk(&self) -> f64 {
        self.embed_scale()
    }

    fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    fn kind(&self) -> ModelKind {
        ModelKind::EncoderDecoder
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.inner.embed(ids)
    }

    fn embed_source(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.inner.embed_source(ids)
    }

    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        self.inner.forward(input, options)
    }

    fn supports_internal_hooks(&self) -> bool {
        true
    }

    fn num_encoder_layers(&self) -> usize {
        self.inner.num_encoder_layers()
    }

    fn dropout_probability(&self) -> f64 {
        self.inner.dropout_probability()
    }
}
