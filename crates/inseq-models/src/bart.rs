//! BART (`BartForConditionalGeneration`) and the encoder-decoder Transformer it shares with
//! Marian ([`crate::marian`]), mBART and M2M100 ([`crate::mbart`]): one `Seq2Seq` core whose
//! `Layout` says the weight names, where the layer norms sit and which position table is used.
//!
//! All follow Hugging Face transformers 5.x:
//! - post-norm layers (`x = norm(x + sublayer(x))`; BART, Marian) or pre-norm layers with a
//!   norm after each stack (`x = x + sublayer(norm(x))`; mBART, M2M100), biased q/k/v/out
//!   projections, attention scaled by `head_dim^-0.5`, `final_logits_bias` added to the logits;
//! - positions are `0..len` for every row (as Hugging Face computes them, whatever
//!   the padding), added after the token embeddings;
//! - BART: learned positions with an offset of 2 and a `layernorm_embedding`
//!   after the positions; its token embedding module (`BartScaledWordEmbedding`)
//!   applies `embed_scale` itself, so [`LanguageModel::embed`] and
//!   [`LanguageModel::embed_source`] return scaled embeddings and the forward
//!   pass uses them as they are.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::nn::Act;
use serde::Deserialize;

use crate::blocks::mask::AttentionMask;
use crate::blocks::seq2seq::{Attn, Record, Site};
use crate::gpt2::{empty_output, identity_rule, layer_norm, lm_head, override_layer, zero_values};
#[allow(unused_imports)] // named by the doc links
use crate::model::LanguageModel;
use crate::model::{AttentionKind, ForwardOptions, LayerRef, ModelInfo, ModelInput, ModelOutput};
use crate::nn::{Embedding, LayerNorm, Linear, LmHead, ids_tensor, mc_dropout};

/// First Monte Carlo dropout slot of the encoder sublayers (the decoder's start at 0), so that
/// every dropout site of a forward pass draws its own mask.
pub(crate) const ENCODER_DROPOUT_SLOTS: u64 = 1 << 32;
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// The fields of a BART or Marian `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BartConfig {
    /// `bart` or `marian`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size (encoder and, when shared, decoder).
    pub vocab_size: usize,
    /// Decoder vocabulary size (Marian with unshared embeddings).
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
    /// Hidden size.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder feed-forward inner size.
    pub encoder_ffn_dim: usize,
    /// Decoder feed-forward inner size.
    pub decoder_ffn_dim: usize,
    /// Feed-forward activation (`gelu`, `relu`, `swish`/`silu`, `gelu_new`, `tanh`).
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// Longest sequence (rows of the position table).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Multiply token embeddings by `sqrt(d_model)`.
    #[serde(default)]
    pub scale_embedding: bool,
    /// Marian: encoder and decoder share one embedding table (`model.shared`).
    #[serde(default = "yes")]
    pub share_encoder_decoder_embeddings: bool,
    /// Pre-norm layers (mBART); not supported, rejected when `true`.
    #[serde(default)]
    pub normalize_before: bool,
    /// Final layer norm after the layer stacks (mBART); not supported, rejected when `true`.
    #[serde(default)]
    pub add_final_layer_norm: bool,
    /// Residual dropout probability (used by Monte Carlo dropout; Hugging Face's default 0.1).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id (the first, where the config lists several).
    #[serde(default, deserialize_with = "crate::special_tokens::first_token_id")]
    pub eos_token_id: Option<usize>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: Option<usize>,
}

fn default_model_type() -> String {
    "bart".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    1024
}
fn yes() -> bool {
    true
}

/// Hugging Face tensor names of a BART-family checkpoint (after the `model.`
/// prefix, which [`Weights`] tries first). `{i}` stands for the layer index.
/// This is the only place the architectures' weight names are spelled out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NameTable {
    /// Shared token embeddings.
    pub shared: &'static str,
    /// Encoder token embeddings (when not shared).
    pub encoder_embed: &'static str,
    /// Decoder token embeddings (when not shared).
    pub decoder_embed: &'static str,
    /// Learned encoder positions (`None`: sinusoidal, not stored).
    pub encoder_positions: Option<&'static str>,
    /// Learned decoder positions.
    pub decoder_positions: Option<&'static str>,
    /// Encoder layer norm after the embeddings (`None`: absent).
    pub encoder_layernorm_embedding: Option<&'static str>,
    /// Decoder layer norm after the embeddings.
    pub decoder_layernorm_embedding: Option<&'static str>,
    /// Encoder layer norm after the last layer (pre-norm models: mBART, M2M100).
    pub encoder_final_norm: Option<&'static str>,
    /// Decoder layer norm after the last layer.
    pub decoder_final_norm: Option<&'static str>,
    /// Encoder layer `{i}`.
    pub encoder_layer: &'static str,
    /// Decoder layer `{i}`.
    pub decoder_layer: &'static str,
    /// Self-attention inside a layer.
    pub self_attn: &'static str,
    /// Norm after self-attention.
    pub self_attn_norm: &'static str,
    /// Cross-attention inside a decoder layer.
    pub cross_attn: &'static str,
    /// Norm after cross-attention.
    pub cross_attn_norm: &'static str,
    /// Query, key, value and output projections inside an attention block.
    pub qkvo: [&'static str; 4],
    /// Feed-forward input projection.
    pub fc1: &'static str,
    /// Feed-forward output projection.
    pub fc2: &'static str,
    /// Norm after the feed-forward block.
    pub final_norm: &'static str,
    /// Output projection (falls back to the decoder embeddings when absent).
    pub lm_head: &'static str,
    /// Logit bias (zeros when absent or `None`).
    pub final_logits_bias: Option<&'static str>,
}

/// BART's weight names.
pub(crate) const BART_NAMES: NameTable = NameTable {
    shared: "shared.weight",
    encoder_embed: "encoder.embed_tokens.weight",
    decoder_embed: "decoder.embed_tokens.weight",
    encoder_positions: Some("encoder.embed_positions.weight"),
    decoder_positions: Some("decoder.embed_positions.weight"),
    encoder_layernorm_embedding: Some("encoder.layernorm_embedding"),
    decoder_layernorm_embedding: Some("decoder.layernorm_embedding"),
    encoder_final_norm: None,
    decoder_final_norm: None,
    encoder_layer: "encoder.layers.{i}",
    decoder_layer: "decoder.layers.{i}",
    self_attn: "self_attn",
    self_attn_norm: "self_attn_layer_norm",
    cross_attn: "encoder_attn",
    cross_attn_norm: "encoder_attn_layer_norm",
    qkvo: ["q_proj", "k_proj", "v_proj", "out_proj"],
    fc1: "fc1",
    fc2: "fc2",
    final_norm: "final_layer_norm",
    lm_head: "lm_head.weight",
    final_logits_bias: Some("final_logits_bias"),
};

/// Offset of BART's learned position ids.
const BART_POSITION_OFFSET: usize = 2;

/// `nn.LayerNorm` default epsilon.
const LN_EPS: f64 = 1e-5;

/// Loads a biased multi-head attention (BART family) from `{prefix}.{q,k,v,o}` (`names.qkvo`).
fn load_attn(
    w: &mut Weights,
    prefix: &str,
    names: &NameTable,
    d: usize,
    heads: usize,
) -> Result<Attn> {
    let scale = 1.0 / ((d / heads) as f64).sqrt();
    Attn::load(w, (prefix, names.qkvo), [d, d], (heads, true, scale))
}

struct EncoderLayer {
    self_attn: Attn,
    self_attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

struct DecoderLayer {
    self_attn: Attn,
    self_attn_norm: LayerNorm,
    cross_attn: Attn,
    cross_attn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

impl EncoderLayer {
    /// Loads encoder layer `i` (`names.encoder_layer` with `{i}` filled in).
    fn load(w: &mut Weights, names: &NameTable, config: &BartConfig, i: usize) -> Result<Self> {
        let d = config.d_model;
        let p = names.encoder_layer.replace("{i}", &i.to_string());
        let ff = config.encoder_ffn_dim;
        Ok(Self {
            self_attn: load_attn(
                w,
                &format!("{p}.{}", names.self_attn),
                names,
                d,
                config.encoder_attention_heads,
            )?,
            self_attn_norm: LayerNorm::load(
                w,
                &format!("{p}.{}", names.self_attn_norm),
                d,
                LN_EPS,
            )?,
            fc1: Linear::load_torch(w, &format!("{p}.{}", names.fc1), true, [ff, d])?,
            fc2: Linear::load_torch(w, &format!("{p}.{}", names.fc2), true, [d, ff])?,
            final_norm: LayerNorm::load(w, &format!("{p}.{}", names.final_norm), d, LN_EPS)?,
        })
    }
}

impl DecoderLayer {
    /// Loads decoder layer `i` (`names.decoder_layer` with `{i}` filled in).
    fn load(w: &mut Weights, names: &NameTable, config: &BartConfig, i: usize) -> Result<Self> {
        let d = config.d_model;
        let p = names.decoder_layer.replace("{i}", &i.to_string());
        let ff = config.decoder_ffn_dim;
        let h = config.decoder_attention_heads;
        Ok(Self {
            self_attn: load_attn(w, &format!("{p}.{}", names.self_attn), names, d, h)?,
            self_attn_norm: LayerNorm::load(
                w,
                &format!("{p}.{}", names.self_attn_norm),
                d,
                LN_EPS,
            )?,
            cross_attn: load_attn(w, &format!("{p}.{}", names.cross_attn), names, d, h)?,
            cross_attn_norm: LayerNorm::load(
                w,
                &format!("{p}.{}", names.cross_attn_norm),
                d,
                LN_EPS,
            )?,
            fc1: Linear::load_torch(w, &format!("{p}.{}", names.fc1), true, [ff, d])?,
            fc2: Linear::load_torch(w, &format!("{p}.{}", names.fc2), true, [d, ff])?,
            final_norm: LayerNorm::load(w, &format!("{p}.{}", names.final_norm), d, LN_EPS)?,
        })
    }
}

/// Position embeddings of the BART family.
pub(crate) enum Positions {
    /// Learned tables (BART), looked up at `position + offset`.
    Learned {
        /// Encoder and decoder tables.
        tables: Box<[Embedding; 2]>,
        /// Added to each position id.
        offset: usize,
    },
    /// Marian's fixed sinusoidal table: sines in the first half, cosines in the second.
    Sinusoidal,
    /// fairseq's sinusoidal table (M2M100, NLLB), looked up at `position + first`
    /// (`padding_idx + 1`), computed for any length.
    Fairseq {
        /// Row of position 0.
        first: usize,
    },
}

/// Which fixed position table a BART-family model without learned positions uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sinusoid {
    /// [`sinusoidal_positions`] (Marian).
    Marian,
    /// [`fairseq_sinusoidal_positions`] from row `pad_token_id + 1` (M2M100).
    Fairseq,
}

/// How a BART-family architecture is put together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// Its weight names.
    pub names: NameTable,
    /// Where the embedding scale is applied.
    pub convention: ScaleConvention,
    /// Layer norm before each sublayer, inside the residual branch (mBART, M2M100), instead of
    /// after the residual sum (BART, Marian).
    pub pre_norm: bool,
    /// The position table when `names` has no learned positions.
    pub sinusoid: Sinusoid,
}

/// fairseq's sinusoidal positions (`M2M100SinusoidalPositionalEmbedding.get_embedding`) for rows
/// `first..first + len`: with `half = dim / 2` and `f_j = exp(-j * ln(10000) / (half - 1))`, row
/// `r` is `[sin(r f_0) .. sin(r f_{half-1}), cos(r f_0) .. cos(r f_{half-1})]` (a zero column
/// appended when `dim` is odd), computed in `f32` as torch does; `[len, dim]`. Needs `dim >= 4`.
pub fn fairseq_sinusoidal_positions(first: usize, len: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = -(10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|j| (j as f32 * step).exp()).collect();
    let mut out = vec![0f32; len * dim];
    for (p, row) in out.chunks_exact_mut(dim).enumerate() {
        let pos = (first + p) as f32;
        for (j, f) in freqs.iter().enumerate() {
            let angle = pos * f;
            row[j] = angle.sin();
            row[half + j] = angle.cos();
        }
    }
    out
}

/// Marian's sinusoidal position table (`MarianSinusoidalPositionalEmbedding`):
/// angle `pos / 10000^(2*(j//2)/dim)`, sines of the even `j` in the first
/// `ceil(dim/2)` columns, cosines of the odd `j` after them; `[len, dim]`.
pub fn sinusoidal_positions(len: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut out = vec![0f32; len * dim];
    for pos in 0..len {
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            if j % 2 == 0 {
                row[j / 2] = angle.sin() as f32;
            } else {
                row[sentinel + j / 2] = angle.cos() as f32;
            }
        }
    }
    out
}

/// How a BART-family model's embeddings are scaled (Hugging Face 5.x conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleConvention {
    /// BART: both embedding modules return `E[ids] * embed_scale`; `inputs_embeds`
    /// and `decoder_inputs_embeds` are used unchanged.
    InEmbedding,
    /// Marian: the encoder takes `inputs_embeds` already scaled (what it computes from
    /// ids), the decoder multiplies `decoder_inputs_embeds` by `embed_scale` itself.
    MarianDecoderScales,
}

/// Replaces a missing or malformed `[batch][len]` padding mask by an all-true one.
pub(crate) fn mask_or_all(
    mask: Option<&Vec<Vec<bool>>>,
    batch: usize,
    len: usize,
) -> Vec<Vec<bool>> {
    match mask {
        Some(m) if m.len() == batch && m.iter().all(|r| r.len() == len) => m.clone(),
        _ => vec![vec![true; len]; batch],
    }
}

/// The encoder-decoder Transformer shared by BART, Marian, mBART and M2M100.
pub(crate) struct Seq2Seq {
    pub(crate) info: ModelInfo,
    act: Act,
    encoder_embed: Embedding,
    decoder_embed: Embedding,
    positions: Positions,
    layernorm_embedding: Option<(LayerNorm, LayerNorm)>,
    /// Encoder and decoder norms after the last layer (pre-norm models).
    final_norms: Option<(LayerNorm, LayerNorm)>,
    pre_norm: bool,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    lm_head: LmHead,
    final_logits_bias: Tensor<1>,
    pub(crate) embed_scale: f64,
    convention: ScaleConvention,
    d_model: usize,
    dropout: f64,
    device: Device,
}

/// Fails on head counts that do not divide `d_model` and, for the post-norm layouts, on
/// pre-norm (mBART-style) layers.
fn check_config(config: &BartConfig, layout: &Layout) -> Result<()> {
    let d = config.d_model;
    for (what, heads) in [
        ("encoder_attention_heads", config.encoder_attention_heads),
        ("decoder_attention_heads", config.decoder_attention_heads),
    ] {
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::invalid_arg(
                what,
                format!("{heads} does not divide d_model {d}"),
            ));
        }
    }
    if !layout.pre_norm && (config.normalize_before || config.add_final_layer_norm) {
        return Err(Error::Unsupported(format!(
            "{} with pre-norm layers (normalize_before/add_final_layer_norm, mBART style)",
            config.model_type
        )));
    }
    Ok(())
}

/// The decoder's vocabulary size (the encoder's when the embeddings are shared).
fn decoder_vocab_size(config: &BartConfig) -> usize {
    if config.share_encoder_decoder_embeddings {
        config.vocab_size
    } else {
        config.decoder_vocab_size.unwrap_or(config.vocab_size)
    }
}

/// The encoder and decoder token embeddings: one shared table, or one each.
fn load_token_embeddings(
    config: &BartConfig,
    w: &mut Weights,
    names: &NameTable,
) -> Result<(Embedding, Embedding)> {
    let (d, vocab) = (config.d_model, config.vocab_size);
    if config.share_encoder_decoder_embeddings {
        let name = if w.contains(names.shared) {
            names.shared
        } else {
            names.encoder_embed
        };
        let table = Embedding {
            table: w.matrix(name, [vocab, d])?,
        };
        Ok((table.clone(), table))
    } else {
        Ok((
            Embedding {
                table: w.matrix(names.encoder_embed, [vocab, d])?,
            },
            Embedding {
                table: w.matrix(names.decoder_embed, [decoder_vocab_size(config), d])?,
            },
        ))
    }
}

/// Learned position tables when `names` has them, the layout's sinusoidal positions otherwise.
fn load_positions(config: &BartConfig, w: &mut Weights, layout: &Layout) -> Result<Positions> {
    let names = &layout.names;
    Ok(match (names.encoder_positions, names.decoder_positions) {
        (Some(e), Some(dp)) => {
            let rows = config.max_position_embeddings + BART_POSITION_OFFSET;
            let encoder = Embedding {
                table: w.tensor2(e, [rows, config.d_model])?.into(),
            };
            let decoder = Embedding {
                table: w.tensor2(dp, [rows, config.d_model])?.into(),
            };
            Positions::Learned {
                tables: Box::new([encoder, decoder]),
                offset: BART_POSITION_OFFSET,
            }
        }
        _ if layout.sinusoid == Sinusoid::Marian => Positions::Sinusoidal,
        _ => {
            let pad = config.pad_token_id.ok_or_else(|| {
                Error::invalid_arg(
                    "pad_token_id",
                    format!(
                        "{} needs it: its positions start at pad_token_id + 1",
                        config.model_type
                    ),
                )
            })?;
            if config.d_model < 4 {
                return Err(Error::invalid_arg(
                    "d_model",
                    format!(
                        "{} sinusoidal positions need d_model >= 4",
                        config.model_type
                    ),
                ));
            }
            Positions::Fairseq { first: pad + 1 }
        }
    })
}

/// A pair of encoder/decoder layer norms named by `names`, when it has both.
fn load_norm_pair(
    w: &mut Weights,
    names: (Option<&str>, Option<&str>),
    d: usize,
) -> Result<Option<(LayerNorm, LayerNorm)>> {
    match names {
        (Some(e), Some(dn)) => Ok(Some((
            LayerNorm::load(w, e, d, LN_EPS)?,
            LayerNorm::load(w, dn, d, LN_EPS)?,
        ))),
        _ => Ok(None),
    }
}

/// The LM head (the decoder embeddings unless stored) and the final logits bias (zeros unless stored).
fn load_head(
    w: &mut Weights,
    names: &NameTable,
    decoder_embed: &Embedding,
    dec_vocab: usize,
    d: usize,
) -> Result<(LmHead, Tensor<1>)> {
    // Transformers 5.x keeps a stored `lm_head.weight` even when it is declared tied.
    let lm_head = LmHead::from_table(if w.contains(names.lm_head) {
        w.matrix(names.lm_head, [dec_vocab, d])?
    } else {
        decoder_embed.table.clone()
    });
    let final_logits_bias = if let Some(name) = names.final_logits_bias.filter(|n| w.contains(n)) {
        w.tensor1(name, dec_vocab)?
    } else {
        Tensor::zeros([dec_vocab], w.device())
    };
    Ok((lm_head, final_logits_bias))
}

impl Seq2Seq {
    /// Loads the weights named by `names`.
    pub(crate) fn load(
        config: &BartConfig,
        w: &mut Weights,
        layout: &Layout,
        info: ModelInfo,
    ) -> Result<Self> {
        check_config(config, layout)?;
        let names = &layout.names;
        let d = config.d_model;
        let act = Act::parse(&config.activation_function)?;
        let (encoder_embed, decoder_embed) = load_token_embeddings(config, w, names)?;
        let positions = load_positions(config, w, layout)?;
        let layernorm_embedding = load_norm_pair(
            w,
            (
                names.encoder_layernorm_embedding,
                names.decoder_layernorm_embedding,
            ),
            d,
        )?;
        let final_norms =
            load_norm_pair(w, (names.encoder_final_norm, names.decoder_final_norm), d)?;
        let encoder = (0..config.encoder_layers)
            .map(|i| EncoderLayer::load(w, names, config, i))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..config.decoder_layers)
            .map(|i| DecoderLayer::load(w, names, config, i))
            .collect::<Result<Vec<_>>>()?;
        let (lm_head, final_logits_bias) =
            load_head(w, names, &decoder_embed, decoder_vocab_size(config), d)?;
        let embed_scale = if config.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        Ok(Self {
            info,
            act,
            encoder_embed,
            decoder_embed,
            positions,
            layernorm_embedding,
            final_norms,
            pre_norm: layout.pre_norm,
            encoder,
            decoder,
            lm_head,
            final_logits_bias,
            embed_scale,
            convention: layout.convention,
            d_model: d,
            dropout: config.dropout.unwrap_or(0.1),
            device: w.device().clone(),
        })
    }

    /// `[1, len, d]` position embeddings for positions `0..len` of the encoder or decoder.
    fn positions(&self, len: usize, decoder: bool) -> Tensor<3> {
        let d = self.d_model;
        match &self.positions {
            Positions::Learned { tables, offset } => {
                let table = &tables[usize::from(decoder)];
                let last = table.vocab_size().saturating_sub(1);
                // Positions past the table reuse its last row rather than panicking.
                let ids: Vec<usize> = (0..len).map(|p| (p + offset).min(last)).collect();
                table.forward(ids_tensor(&[ids], &self.device))
            }
            Positions::Sinusoidal => Tensor::from_data(
                TensorData::new(sinusoidal_positions(len, d), [1, len, d]),
                &self.device,
            ),
            Positions::Fairseq { first } => Tensor::from_data(
                TensorData::new(fairseq_sinusoidal_positions(*first, len, d), [1, len, d]),
                &self.device,
            ),
        }
    }

    /// Token embeddings of target ids as `get_input_embeddings()` returns them.
    pub(crate) fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let e = self.decoder_embed.forward(ids);
        match self.convention {
            ScaleConvention::InEmbedding if self.embed_scale != 1.0 => e * self.embed_scale,
            _ => e,
        }
    }

    /// Encoder input embeddings: `E[ids] * embed_scale`, what the encoder computes from ids.
    pub(crate) fn embed_source(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let e = self.encoder_embed.forward(ids);
        if self.embed_scale != 1.0 {
            e * self.embed_scale
        } else {
            e
        }
    }

    /// The feed-forward block `fc2(act(fc1(x)))`; with `lrp`, the activation follows
    /// AttnLRP's identity rule.
    fn feed_forward(&self, fc1: &Linear, fc2: &Linear, x: Tensor<3>, lrp: bool) -> Tensor<3> {
        let h = fc1.forward(x);
        let h = if lrp {
            identity_rule(h, |t| self.act.apply(t))
        } else {
            self.act.apply(h)
        };
        fc2.forward(h)
    }

    /// One residual sublayer: `norm(x + drop(f(x)))` post-norm, `x + drop(f(norm(x)))` pre-norm.
    fn residual(
        &self,
        norm: &LayerNorm,
        x: Tensor<3>,
        options: &ForwardOptions,
        slot: u64,
        f: impl FnOnce(Tensor<3>) -> Tensor<3>,
    ) -> Tensor<3> {
        let (lrp, drop) = (options.attn_lrp, options.dropout.as_ref());
        if self.pre_norm {
            let h = f(layer_norm(norm, x.clone(), lrp));
            x + mc_dropout(h, drop, slot)
        } else {
            let h = f(x.clone());
            layer_norm(norm, x + mc_dropout(h, drop, slot), lrp)
        }
    }

    /// The final layer norm of the encoder (`decoder: false`) or decoder, where the model has one.
    fn final_norm(&self, x: Tensor<3>, decoder: bool, lrp: bool) -> Tensor<3> {
        match &self.final_norms {
            Some((e, d)) => layer_norm(if decoder { d } else { e }, x, lrp),
            None => x,
        }
    }

    /// Runs the encoder on `[batch, len, d]` embeddings: its stages ([`Seq2Seq::encoder_stage`])
    /// in turn, recording hidden states when asked.
    fn encode(
        &self,
        mut x: Tensor<3>,
        mask: &[Vec<bool>],
        out: &mut ModelOutput,
        options: &ForwardOptions,
    ) -> Tensor<3> {
        let mask = AttentionMask::full(mask);
        let last = self.encoder.len() + 1;
        for k in 0..=last {
            x = self.encoder_stage(k, x, &mask, options, out);
            if options.hidden_states && k < last {
                out.encoder_hidden_states.push(x.clone());
            }
        }
        if options.hidden_states {
            out.encoder_final_hidden_state = Some(x.clone());
        }
        x
    }

    /// Encoder stage `k` (see [`LanguageModel::encoder_stages`]): the positions and embedding
    /// norm (0), layer `k - 1`, or the final norm (`layers + 1`).
    fn encoder_stage(
        &self,
        k: usize,
        x: Tensor<3>,
        mask: &AttentionMask,
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        let lrp = options.attn_lrp;
        match k.checked_sub(1).map(|i| (i, self.encoder.get(i))) {
            None => {
                let x = x.clone() + self.positions(x.dims()[1], false);
                match &self.layernorm_embedding {
                    Some((ln, _)) => layer_norm(ln, x, lrp),
                    None => x,
                }
            }
            Some((i, Some(layer))) => self.encoder_layer((i, layer), x, mask, options, out),
            Some((_, None)) => self.final_norm(x, false, lrp),
        }
    }

    /// Encoder layer `i`: self-attention, feed-forward, layer override.
    fn encoder_layer(
        &self,
        (i, layer): (usize, &EncoderLayer),
        x: Tensor<3>,
        mask: &AttentionMask,
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        let (lrp, zero) = (options.attn_lrp, options.zero_value.as_ref());
        let slot = ENCODER_DROPOUT_SLOTS + 2 * i as u64;
        let x = self.residual(&layer.self_attn_norm, x, options, slot, |n| {
            let site = Site {
                mask,
                bias: None,
                lrp,
                record: Record::encoder(options),
            };
            let (a, weights) = layer.self_attn.forward(n.clone(), n, site, |v| {
                zero_values(v, zero, AttentionKind::EncoderSelf, i, &self.device)
            });
            out.encoder_attentions.extend(weights);
            a
        });
        let x = self.residual(&layer.final_norm, x, options, slot + 1, |n| {
            self.feed_forward(&layer.fc1, &layer.fc2, n, lrp)
        });
        override_layer(x, options.layer_override.as_ref(), LayerRef::Encoder(i))
    }

    /// Decoder layer `i`: self-attention, cross-attention to `memory` (the encoder output and its
    /// bias) when there is a source, feed-forward; records what `options` asks for in `out`.
    #[allow(clippy::too_many_arguments)]
    fn decoder_layer(
        &self,
        i: usize,
        layer: &DecoderLayer,
        y: Tensor<3>,
        self_mask: &AttentionMask,
        memory: Option<&(Tensor<3>, AttentionMask)>,
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        let (lrp, zero, slot) = (options.attn_lrp, options.zero_value.as_ref(), 3 * i as u64);
        let site = |mask| Site {
            mask,
            bias: None,
            lrp,
            record: Record::decoder(options),
        };
        let mut y = self.residual(&layer.self_attn_norm, y, options, slot, |n| {
            let (a, weights) = layer.self_attn.forward(n.clone(), n, site(self_mask), |v| {
                zero_values(v, zero, AttentionKind::DecoderSelf, i, &self.device)
            });
            out.attentions.extend(weights);
            a
        });
        if let Some((enc, cross_mask)) = memory {
            y = self.residual(&layer.cross_attn_norm, y, options, slot + 1, |n| {
                let (a, weights) =
                    layer
                        .cross_attn
                        .forward(n, enc.clone(), site(cross_mask), |v| {
                            zero_values(v, zero, AttentionKind::Cross, i, &self.device)
                        });
                out.cross_attentions.extend(weights);
                a
            });
        }
        y = self.residual(&layer.final_norm, y, options, slot + 2, |n| {
            self.feed_forward(&layer.fc1, &layer.fc2, n, lrp)
        });
        y = override_layer(y, options.layer_override.as_ref(), LayerRef::Decoder(i));
        if options.hidden_states {
            out.hidden_states.push(y.clone());
        }
        y
    }

    /// Forward pass on embeddings (see the module docs for the conventions).
    pub(crate) fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let mut out = empty_output(&self.device);
        let lrp = options.attn_lrp;
        let [b, t, _] = input.target_embeds.dims();
        let target_mask = mask_or_all(Some(&input.target_mask), b, t);
        let memory = input.source_embeds.map(|src| {
            let [sb, s, _] = src.dims();
            let mask = mask_or_all(input.source_mask.as_ref(), sb, s);
            let enc = match &options.encoder_output {
                Some(enc) => enc.clone(),
                None => self.encode(src, &mask, &mut out, &options),
            };
            (enc, AttentionMask::full(&mask))
        });
        let mut y = input.target_embeds;
        if self.convention == ScaleConvention::MarianDecoderScales && self.embed_scale != 1.0 {
            y = y * self.embed_scale;
        }
        y = y + self.positions(t, true);
        if let Some((_, ln)) = &self.layernorm_embedding {
            y = layer_norm(ln, y, lrp);
        }
        if options.hidden_states {
            out.hidden_states.push(y.clone());
        }
        let self_mask = AttentionMask::new(&target_mask, t, None);
        for (i, layer) in self.decoder.iter().enumerate() {
            y = self.decoder_layer(i, layer, y, &self_mask, memory.as_ref(), &options, &mut out);
        }
        out.attention_rows = options
            .attention_rows
            .clone()
            .filter(|_| options.attentions);
        let y = self.final_norm(y, true, lrp);
        if options.hidden_states {
            out.final_hidden_state = Some(y.clone());
        }
        let logits = lm_head(y, &self.lm_head, &options);
        out.logits = logits + self.final_logits_bias.clone().unsqueeze::<3>();
        out
    }

    /// Number of encoder layers.
    pub(crate) fn num_encoder_layers(&self) -> usize {
        self.encoder.len()
    }

    /// See [`LanguageModel::encoder_stage`].
    pub(crate) fn run_encoder_stage(
        &self,
        k: usize,
        x: Tensor<3>,
        mask: &[Vec<bool>],
        options: &ForwardOptions,
    ) -> Tensor<3> {
        let mut out = empty_output(&self.device);
        self.encoder_stage(k, x, &AttentionMask::full(mask), options, &mut out)
    }

    /// The residual dropout probability of the config.
    pub(crate) fn dropout_probability(&self) -> f64 {
        self.dropout
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }
}

/// A BART sequence-to-sequence model (`BartForConditionalGeneration`).
///
/// [`LanguageModel::embed`] / [`LanguageModel::embed_source`] return
/// `shared[ids] * embed_scale` (as `BartScaledWordEmbedding` does; the scale is 1
/// unless `scale_embedding`), and [`LanguageModel::forward`] uses the given
/// embeddings unchanged as `decoder_inputs_embeds` / `inputs_embeds`.
/// `hidden_states` are the decoder's: after `layernorm_embedding`, then each layer.
pub struct Bart {
    inner: Seq2Seq,
}

impl Bart {
    /// Builds the model from its config and weights (names without the `model.` prefix).
    pub fn load(config: BartConfig, w: &mut Weights) -> Result<Self> {
        let info = seq2seq_info(&config, "bart", "BartForConditionalGeneration");
        let layout = Layout {
            names: BART_NAMES,
            convention: ScaleConvention::InEmbedding,
            pre_norm: false,
            sinusoid: Sinusoid::Marian,
        };
        let inner = Seq2Seq::load(&config, w, &layout, info)?;
        Ok(Self { inner })
    }

    /// The embedding scale (`sqrt(d_model)` with `scale_embedding`, else 1),
    /// already included in what [`LanguageModel::embed`] returns.
    pub fn embed_scale(&self) -> f64 {
        self.inner.embed_scale
    }
}

/// The [`ModelInfo`] of a BART-family model: decoder sizes, and the decoder start token of the
/// config, else its end-of-sequence token (Hugging Face's BART-family default).
pub(crate) fn seq2seq_info(config: &BartConfig, architecture: &str, hf_class: &str) -> ModelInfo {
    ModelInfo {
        architecture: architecture.into(),
        hf_class: hf_class.into(),
        vocab_size: decoder_vocab_size(config),
        hidden_size: config.d_model,
        num_layers: config.decoder_layers,
        num_heads: config.decoder_attention_heads,
        max_positions: config.max_position_embeddings,
        bos_token_id: config.bos_token_id,
        eos_token_id: config.eos_token_id,
        pad_token_id: config.pad_token_id,
        decoder_start_token_id: config.decoder_start_token_id.or(config.eos_token_id),
    }
}

/// Implements [`LanguageModel`] for a wrapper `{ inner: Seq2Seq }` by delegation.
macro_rules! seq2seq_language_model {
    ($ty:ty) => {
        impl $crate::model::LanguageModel for $ty {
            fn info(&self) -> &$crate::model::ModelInfo {
                &self.inner.info
            }
            fn kind(&self) -> $crate::model::ModelKind {
                $crate::model::ModelKind::EncoderDecoder
            }
            fn device(&self) -> &burn::tensor::Device {
                self.inner.device()
            }
            fn embed(
                &self,
                ids: burn::tensor::Tensor<2, burn::tensor::Int>,
            ) -> burn::tensor::Tensor<3> {
                self.inner.embed(ids)
            }
            fn embed_source(
                &self,
                ids: burn::tensor::Tensor<2, burn::tensor::Int>,
            ) -> burn::tensor::Tensor<3> {
                self.inner.embed_source(ids)
            }
            fn forward(
                &self,
                input: $crate::model::ModelInput,
                options: $crate::model::ForwardOptions,
            ) -> $crate::model::ModelOutput {
                self.inner.forward(input, options)
            }
            fn supports_internal_hooks(&self) -> bool {
                true
            }
            fn num_encoder_layers(&self) -> usize {
                self.inner.num_encoder_layers()
            }
            fn encoder_stages(&self) -> usize {
                self.inner.num_encoder_layers() + 2
            }
            fn encoder_stage(
                &self,
                k: usize,
                x: burn::tensor::Tensor<3>,
                mask: &[Vec<bool>],
                options: &$crate::model::ForwardOptions,
            ) -> burn::tensor::Tensor<3> {
                self.inner.run_encoder_stage(k, x, mask, options)
            }
            fn dropout_probability(&self) -> f64 {
                self.inner.dropout_probability()
            }
        }
    };
}
pub(crate) use seq2seq_language_model;

seq2seq_language_model!(Bart);
