//! mBART (`MBartForConditionalGeneration`) and M2M100 / NLLB (`M2M100ForConditionalGeneration`):
//! the pre-norm members of the BART family ([`crate::bart`]).
//!
//! Both follow Hugging Face transformers 5.x (`modeling_mbart.py`, `modeling_m2m_100.py`):
//! - pre-norm layers (`x = x + sublayer(norm(x))`) and a layer norm after each stack's last layer;
//!   the `normalize_before` / `add_final_layer_norm` fields of their configs are not read (the
//!   modeling code is always pre-norm);
//! - the token embedding modules apply `embed_scale` (`sqrt(d_model)` with `scale_embedding`), so
//!   [`LanguageModel::embed`](crate::model::LanguageModel::embed) and `embed_source` return
//!   scaled embeddings and the forward pass uses them as they are;
//! - mBART: learned positions with an offset of 2 and a `layernorm_embedding` after them, as BART;
//! - M2M100: fairseq's sinusoidal positions from row `pad_token_id + 1`, no embedding layer norm,
//!   no `final_logits_bias`. From embeddings, Hugging Face numbers positions `0..len` in every row,
//!   as done here (from ids it skips padding tokens, which only moves the padded positions).
//!
//! Language codes: mBART-50, M2M100 and NLLB name the target language by the first generated token
//! (`forced_bos_token_id` of `generation_config.json`, applied by [`crate::generate`]) after the
//! config's `decoder_start_token_id`.

use inseq_core::Result;

use crate::bart::{
    BART_NAMES, BartConfig, Layout, NameTable, ScaleConvention, Seq2Seq, Sinusoid, seq2seq_info,
    seq2seq_language_model,
};
use crate::weights::Weights;

/// mBART's weight names: BART's, with a layer norm after each stack.
const MBART_NAMES: NameTable = NameTable {
    encoder_final_norm: Some("encoder.layer_norm"),
    decoder_final_norm: Some("decoder.layer_norm"),
    ..BART_NAMES
};

/// M2M100's weight names: mBART's, without learned positions or embedding layer norms.
const M2M100_NAMES: NameTable = NameTable {
    encoder_positions: None,
    decoder_positions: None,
    encoder_layernorm_embedding: None,
    decoder_layernorm_embedding: None,
    final_logits_bias: None,
    ..MBART_NAMES
};

/// The first decoder input as transformers' `generate` picks it: `decoder_start_token_id`, else
/// `bos_token_id` (mBART-50, M2M100 and NLLB configs set the first; others fall back to the
/// beginning-of-sequence token).
fn decoder_start(config: &BartConfig) -> Option<usize> {
    config.decoder_start_token_id.or(config.bos_token_id)
}

/// An mBART model (`MBartForConditionalGeneration`).
pub struct MBart {
    inner: Seq2Seq,
}

impl MBart {
    /// Builds the model from its config and weights (names without the `model.` prefix).
    pub fn load(config: BartConfig, w: &mut Weights) -> Result<Self> {
        let mut info = seq2seq_info(&config, "mbart", "MBartForConditionalGeneration");
        info.decoder_start_token_id = decoder_start(&config);
        let layout = Layout {
            names: MBART_NAMES,
            convention: ScaleConvention::InEmbedding,
            pre_norm: true,
            sinusoid: Sinusoid::Marian,
        };
        let inner = Seq2Seq::load(&config, w, &layout, info)?;
        Ok(Self { inner })
    }
}

seq2seq_language_model!(MBart);

/// An M2M100 or NLLB model (`M2M100ForConditionalGeneration`).
pub struct M2M100 {
    inner: Seq2Seq,
}

impl M2M100 {
    /// Builds the model from its config and weights (names without the `model.` prefix).
    pub fn load(config: BartConfig, w: &mut Weights) -> Result<Self> {
        let mut info = seq2seq_info(&config, "m2m_100", "M2M100ForConditionalGeneration");
        info.decoder_start_token_id = decoder_start(&config);
        let layout = Layout {
            names: M2M100_NAMES,
            convention: ScaleConvention::InEmbedding,
            pre_norm: true,
            sinusoid: Sinusoid::Fairseq,
        };
        let inner = Seq2Seq::load(&config, w, &layout, info)?;
        Ok(Self { inner })
    }
}

seq2seq_language_model!(M2M100);
