//! T5 (`T5ForConditionalGeneration`, also T5 v1.1 / Flan-T5): pre-norm blocks
//! with RMS layer norm, bucketed relative position bias (computed by the first
//! block of each stack and shared by the others), unscaled attention, a ReLU or
//! gated (`gated-gelu`, `gated-silu`...) feed-forward, and a final layer norm.
//!
//! Conventions (Hugging Face transformers 5.x, `modeling_t5.py`): token
//! embeddings are a plain unscaled `nn.Embedding`, so [`LanguageModel::embed`]
//! and [`LanguageModel::embed_source`] return `shared[ids]` and the forward pass
//! uses them unchanged. The decoder output is multiplied by `d_model^-0.5`
//! before the LM head when the config says `scale_decoder_outputs: true`, or,
//! in configs saved before transformers 5 that lack that key, unless it says
//! `tie_word_embeddings: false` (T5 v1.1 / Flan-T5). The LM head is
//! `lm_head.weight` when stored, else the shared embeddings.
//!
//! The same code runs mT5 (`MT5ForConditionalGeneration`: T5 v1.1 whose decoder output is never
//! rescaled, whatever its config says) and UMT5 (`UMT5ForConditionalGeneration`: every block's
//! self-attention has its own relative position bias table; the rescale follows T5's rule).

use std::cell::RefCell;
use std::ops::Range;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::bart::{ENCODER_DROPOUT_SLOTS, mask_or_all};
use crate::blocks::mask::AttentionMask;
use crate::blocks::seq2seq::{Attn, Record, Site};
use crate::gpt2::{
    empty_output, identity_rule, lm_head, override_layer, uniform_rule, zero_values,
};
use crate::llama::rms_norm;
use crate::model::{
    AttentionKind, ForwardOptions, LanguageModel, LayerRef, ModelInfo, ModelInput, ModelKind,
    ModelOutput,
};
use crate::nn::Act;
use crate::nn::{Embedding, Linear, LmHead, RmsNorm, mc_dropout};
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// The fields of a T5 `config.json` this implementation uses.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    /// `t5`, `mt5` or `umt5`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Per-head size.
    pub d_kv: usize,
    /// Feed-forward inner size.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (default `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative position buckets.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gelu`, `gated-gelu`, `gated-silu`...
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// `false` for T5 v1.1 / Flan-T5 (no `d_model^-0.5` rescale of the decoder output).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Multiply the decoder output by `d_model^-0.5` (written by transformers 5.x;
    /// when absent: unless `tie_word_embeddings` is `false`).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// Residual dropout probability (used by Monte Carlo dropout; Hugging Face's default 0.1).
    #[serde(default)]
    pub dropout_rate: Option<f64>,
    /// Context length used to bound generation (T5 itself has no limit; default 512).
    #[serde(default)]
    pub n_positions: Option<usize>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id (the first, where the config lists several).
    #[serde(
        default = "default_eos",
        deserialize_with = "crate::special_tokens::first_token_id"
    )]
    pub eos_token_id: Option<usize>,
    /// Padding id.
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<usize>,
    /// First decoder input (default: the padding id).
    #[serde(default)]
    pub decoder_start_token_id: Option<usize>,
}

fn default_model_type() -> String {
    "t5".into()
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn default_eos() -> Option<usize> {
    Some(1)
}
fn default_pad() -> Option<usize> {
    Some(0)
}

/// The members of the T5 family this module runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    T5,
    MT5,
    UMT5,
}

impl T5Config {
    fn variant(&self) -> Result<Variant> {
        match self.model_type.as_str() {
            "t5" => Ok(Variant::T5),
            "mt5" => Ok(Variant::MT5),
            "umt5" => Ok(Variant::UMT5),
            other => Err(Error::UnsupportedArchitecture(format!(
                "{other} is not in the T5 family (t5, mt5, umt5)"
            ))),
        }
    }

    /// Whether the decoder output is multiplied by `d_model^-0.5` before the LM head: never for
    /// mT5; for T5 and UMT5, `scale_decoder_outputs` when saved, else unless
    /// `tie_word_embeddings: false`.
    fn scales_decoder_outputs(&self) -> Result<bool> {
        Ok(match self.variant()? {
            Variant::MT5 => false,
            Variant::T5 | Variant::UMT5 => self
                .scale_decoder_outputs
                .unwrap_or(self.tie_word_embeddings != Some(false)),
        })
    }

    /// `(architecture, Hugging Face class)`.
    fn names(&self) -> Result<(&'static str, &'static str)> {
        Ok(match self.variant()? {
            Variant::T5 => ("t5", "T5ForConditionalGeneration"),
            Variant::MT5 => ("mt5", "MT5ForConditionalGeneration"),
            Variant::UMT5 => ("umt5", "UMT5ForConditionalGeneration"),
        })
    }

    /// The feed-forward activation and whether the feed-forward is gated, as
    /// `T5Config` derives them from `feed_forward_proj`.
    fn activation(&self) -> Result<(Act, bool)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, name) = match parts.as_slice() {
            [name] => (false, *name),
            ["gated", name] => (true, *name),
            _ => {
                return Err(Error::invalid_arg(
                    "feed_forward_proj",
                    format!("`{}` is not `ACT` or `gated-ACT`", self.feed_forward_proj),
                ));
            }
        };
        // Hugging Face maps `gated-gelu` to the tanh approximation for backward compatibility.
        let name = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            name
        };
        Ok((Act::parse(name)?, gated))
    }
}

/// T5's weight names (no prefix). `{s}` is the stack (`encoder`/`decoder`),
/// `{i}` the block index. The only place T5 weight names are spelled out.
struct T5Names {
    shared: &'static str,
    stack_embed: &'static str,
    relative_bias: &'static str,
    /// UMT5: the table of block `{i}`.
    block_relative_bias: &'static str,
    self_attn: &'static str,
    self_attn_norm: &'static str,
    cross_attn: &'static str,
    cross_attn_norm: &'static str,
    /// Feed-forward sublayer in encoder blocks (`layer.1`) and decoder blocks (`layer.2`).
    ff: [&'static str; 2],
    wi: &'static str,
    wi_0: &'static str,
    wi_1: &'static str,
    wo: &'static str,
    ff_norm: &'static str,
    qkvo: [&'static str; 4],
    final_norm: &'static str,
    lm_head: &'static str,
}

const T5_NAMES: T5Names = T5Names {
    shared: "shared.weight",
    stack_embed: "{s}.embed_tokens.weight",
    relative_bias: "{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    block_relative_bias: "{s}.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    self_attn: "{s}.block.{i}.layer.0.SelfAttention",
    self_attn_norm: "{s}.block.{i}.layer.0.layer_norm",
    cross_attn: "{s}.block.{i}.layer.1.EncDecAttention",
    cross_attn_norm: "{s}.block.{i}.layer.1.layer_norm",
    ff: ["{s}.block.{i}.layer.1", "{s}.block.{i}.layer.2"],
    wi: "DenseReluDense.wi",
    wi_0: "DenseReluDense.wi_0",
    wi_1: "DenseReluDense.wi_1",
    wo: "DenseReluDense.wo",
    ff_norm: "layer_norm",
    qkvo: ["q", "k", "v", "o"],
    final_norm: "{s}.final_layer_norm.weight",
    lm_head: "lm_head.weight",
};

fn name(template: &str, stack: &str, i: usize) -> String {
    template
        .replace("{s}", stack)
        .replace("{i}", &i.to_string())
}

/// Loads a T5 attention (bias-free projections, no score scaling) from `{prefix}.{q,k,v,o}`.
fn load_attn(w: &mut Weights, prefix: &str, d: usize, heads: usize, d_kv: usize) -> Result<Attn> {
    Attn::load(
        w,
        (prefix, T5_NAMES.qkvo),
        [d, heads * d_kv],
        (heads, false, 1.0),
    )
}

/// One relative position table's bias for `q_len` queries, looked up chunk by chunk
/// ([`RelativeBias::chunk`]) from the bias of each distance `key - query`, so that no
/// `[heads, q, k]` table is held.
struct RelativeBias {
    /// `[heads, q_len + k_len - 1]`: the bias of distance `d` in column `d + q_len - 1`.
    by_distance: Tensor<2>,
    q_len: usize,
    /// The last chunk's bias, which the next block reuses when the input takes one chunk (the
    /// blocks of T5 and mT5 share one table).
    last: RefCell<Option<(Range<usize>, usize, Tensor<4>)>>,
}

impl RelativeBias {
    /// `[1, heads, queries.len(), keys]` bias of the queries `queries` over keys `0..keys`.
    fn chunk(&self, queries: &Range<usize>, keys: usize) -> Tensor<4> {
        let mut last = self.last.borrow_mut();
        match &*last {
            Some((r, k, bias)) if r == queries && *k == keys => bias.clone(),
            _ => {
                let bias = self.compute(queries, keys);
                *last = Some((queries.clone(), keys, bias.clone()));
                bias
            }
        }
    }

    /// [`RelativeBias::chunk`], computed.
    fn compute(&self, queries: &Range<usize>, keys: usize) -> Tensor<4> {
        let device = self.by_distance.device();
        let [h, _] = self.by_distance.dims();
        let m = queries.len();
        // Column of key j for query i: j - i + q_len - 1.
        let last = (self.q_len - 1) as i64;
        let rows = (last - queries.end as i64 + 1)..(last - queries.start as i64 + 1);
        let firsts = Tensor::<1, Int>::arange(rows, &device).flip([0]);
        let ids = Tensor::<1, Int>::arange(0..keys as i64, &device).unsqueeze_dim::<2>(0)
            + firsts.unsqueeze_dim::<2>(1);
        self.by_distance
            .clone()
            .select(1, ids.reshape([m * keys]))
            .reshape([1, h, m, keys])
    }
}

/// T5 feed-forward: `wo(act(wi_0 x) * wi_1 x)` when gated, else `wo(act(wi x))`
/// (`wi` stored in `wi_0`).
struct FeedForward {
    wi_0: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
}

struct T5Block {
    self_attn: Attn,
    self_attn_norm: RmsNorm,
    cross: Option<(Attn, RmsNorm)>,
    ff: FeedForward,
    ff_norm: RmsNorm,
}

struct Stack {
    blocks: Vec<T5Block>,
    /// `[buckets, heads]` tables: one shared by every block (T5, mT5), or one per block (UMT5).
    relative_bias: Vec<Tensor<2>>,
    final_norm: RmsNorm,
}

/// T5's relative position bucket (`T5Attention._relative_position_bucket`),
/// with the logarithmic part computed in `f32` as PyTorch does.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let rp = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = (num_buckets / 2).max(1);
    if rp < max_exact {
        bucket += rp;
    } else {
        let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let large = ((rp as f32 / max_exact as f32).ln() / log_ratio
            * (num_buckets - max_exact) as f32) as i64;
        bucket += (max_exact + large).min(num_buckets - 1);
    }
    bucket.max(0) as usize
}

/// A T5 sequence-to-sequence model (`T5ForConditionalGeneration`).
pub struct T5 {
    info: ModelInfo,
    config: T5Config,
    act: Act,
    encoder_embed: Embedding,
    decoder_embed: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: LmHead,
    scale_decoder_outputs: bool,
    device: Device,
}

impl T5 {
    /// Builds the model from its config and weights.
    pub fn load(config: T5Config, w: &mut Weights) -> Result<Self> {
        let d = config.d_model;
        if config.num_heads == 0 || config.d_kv == 0 {
            return Err(Error::invalid_arg(
                "num_heads",
                "T5 needs at least one head of non-zero size",
            ));
        }
        if config.relative_attention_num_buckets < 2 {
            return Err(Error::invalid_arg(
                "relative_attention_num_buckets",
                "must be at least 2",
            ));
        }
        let (act, gated) = config.activation()?;
        let vocab = config.vocab_size;
        let shared = if w.contains(T5_NAMES.shared) {
            Embedding {
                table: w.matrix(T5_NAMES.shared, [vocab, d])?,
            }
        } else {
            Embedding {
                table: w.matrix(&name(T5_NAMES.stack_embed, "encoder", 0), [vocab, d])?,
            }
        };
        let encoder = Self::load_stack(&config, w, "encoder", config.num_layers, gated)?;
        let decoder_layers = config.num_decoder_layers.unwrap_or(config.num_layers);
        let decoder = Self::load_stack(&config, w, "decoder", decoder_layers, gated)?;
        let lm_head = LmHead::from_table(if w.contains(T5_NAMES.lm_head) {
            w.matrix(T5_NAMES.lm_head, [vocab, d])?
        } else {
            shared.table.clone()
        });
        let (architecture, hf_class) = config.names()?;
        let info = ModelInfo {
            architecture: architecture.into(),
            hf_class: hf_class.into(),
            vocab_size: vocab,
            hidden_size: d,
            num_layers: decoder_layers,
            num_heads: config.num_heads,
            max_positions: config.n_positions.unwrap_or(512),
            bos_token_id: config.bos_token_id,
            eos_token_id: config.eos_token_id,
            pad_token_id: config.pad_token_id,
            decoder_start_token_id: config.decoder_start_token_id.or(config.pad_token_id),
        };
        Ok(Self {
            info,
            scale_decoder_outputs: config.scales_decoder_outputs()?,
            config,
            act,
            encoder_embed: shared.clone(),
            decoder_embed: shared,
            encoder,
            decoder,
            lm_head,
            device: w.device().clone(),
        })
    }

    /// Block `i` of `stack` (`encoder`/`decoder`).
    fn load_block(
        config: &T5Config,
        w: &mut Weights,
        stack: &str,
        i: usize,
        gated: bool,
    ) -> Result<T5Block> {
        let (d, h, dkv, ff, eps) = (
            config.d_model,
            config.num_heads,
            config.d_kv,
            config.d_ff,
            config.layer_norm_epsilon,
        );
        let decoder = stack == "decoder";
        let n = &T5_NAMES;
        let ffp = name(n.ff[usize::from(decoder)], stack, i);
        let cross = if decoder {
            Some((
                load_attn(w, &name(n.cross_attn, stack, i), d, h, dkv)?,
                RmsNorm::load(w, &name(n.cross_attn_norm, stack, i), d, eps)?,
            ))
        } else {
            None
        };
        let linear = |w: &mut Weights, part: &str, dims| {
            Linear::load_torch(w, &format!("{ffp}.{part}"), false, dims)
        };
        let feed = FeedForward {
            wi_0: linear(w, if gated { n.wi_0 } else { n.wi }, [ff, d])?,
            wi_1: if gated {
                Some(linear(w, n.wi_1, [ff, d])?)
            } else {
                None
            },
            wo: linear(w, n.wo, [d, ff])?,
        };
        Ok(T5Block {
            self_attn: load_attn(w, &name(n.self_attn, stack, i), d, h, dkv)?,
            self_attn_norm: RmsNorm::load(w, &name(n.self_attn_norm, stack, i), d, eps)?,
            cross,
            ff: feed,
            ff_norm: RmsNorm::load(w, &format!("{ffp}.{}", n.ff_norm), d, eps)?,
        })
    }

    fn load_stack(
        config: &T5Config,
        w: &mut Weights,
        stack: &str,
        layers: usize,
        gated: bool,
    ) -> Result<Stack> {
        let (d, h, eps) = (config.d_model, config.num_heads, config.layer_norm_epsilon);
        let n = &T5_NAMES;
        let blocks = (0..layers)
            .map(|i| Self::load_block(config, w, stack, i, gated))
            .collect::<Result<Vec<_>>>()?;
        let table = [config.relative_attention_num_buckets, h];
        let relative_bias = if config.variant()? == Variant::UMT5 {
            (0..layers)
                .map(|i| w.tensor2(&name(n.block_relative_bias, stack, i), table))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![w.tensor2(&name(n.relative_bias, stack, 0), table)?]
        };
        let final_norm = RmsNorm {
            gamma: w.tensor1(&name(n.final_norm, stack, 0), d)?,
            eps,
        };
        Ok(Stack {
            blocks,
            relative_bias,
            final_norm,
        })
    }

    /// The relative position biases of a stack's blocks (one shared, or one per block) for
    /// `q_len` queries over `k_len` keys.
    fn relative_biases(
        &self,
        stack: &Stack,
        (q_len, k_len): (usize, usize),
        bidirectional: bool,
    ) -> Vec<RelativeBias> {
        let first = 1 - q_len.max(1) as i64;
        let buckets: Vec<i64> = (first..k_len as i64)
            .map(|d| {
                relative_position_bucket(
                    d,
                    bidirectional,
                    self.config.relative_attention_num_buckets,
                    self.config.relative_attention_max_distance,
                ) as i64
            })
            .collect();
        let n = buckets.len();
        let ids: Tensor<1, Int> = Tensor::from_data(TensorData::new(buckets, [n]), &self.device);
        (stack.relative_bias.iter())
            .map(|table| RelativeBias {
                by_distance: table.clone().select(0, ids.clone()).transpose(),
                q_len: q_len.max(1),
                last: RefCell::new(None),
            })
            .collect()
    }

    /// The feed-forward block; with `lrp`, the activation follows AttnLRP's identity rule
    /// and the gated product its uniform rule.
    fn feed_forward(&self, ff: &FeedForward, x: Tensor<3>, lrp: bool) -> Tensor<3> {
        let pre = ff.wi_0.forward(x.clone());
        let hidden = if lrp {
            identity_rule(pre, |t| self.act.apply(t))
        } else {
            self.act.apply(pre)
        };
        let hidden = match &ff.wi_1 {
            Some(wi_1) if lrp => uniform_rule(hidden * wi_1.forward(x)),
            Some(wi_1) => hidden * wi_1.forward(x),
            None => hidden,
        };
        ff.wo.forward(hidden)
    }

    /// Runs the encoder on `[batch, len, d]` embeddings: its stages ([`T5::encoder_stage_with`]) in
    /// turn, recording hidden states when asked.
    fn encode(
        &self,
        mut x: Tensor<3>,
        mask: &[Vec<bool>],
        out: &mut ModelOutput,
        options: &ForwardOptions,
    ) -> Tensor<3> {
        let mask = AttentionMask::full(mask);
        let s = x.dims()[1];
        let biases = self.relative_biases(&self.encoder, (s, s), true);
        let last = self.encoder.blocks.len() + 1;
        for k in 0..=last {
            x = self.encoder_stage_with(k, x, (&mask, &biases), options, out);
            if options.hidden_states && k < last {
                out.encoder_hidden_states.push(x.clone());
            }
        }
        if options.hidden_states {
            out.encoder_final_hidden_state = Some(x.clone());
        }
        x
    }

    /// Encoder stage `k` (see [`LanguageModel::encoder_stages`]): the embeddings unchanged (0),
    /// block `k - 1`, or the final norm (`blocks + 1`), under the source mask and the stack's
    /// relative position biases.
    fn encoder_stage_with(
        &self,
        k: usize,
        x: Tensor<3>,
        (mask, biases): (&AttentionMask, &[RelativeBias]),
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        match k.checked_sub(1).map(|i| (i, self.encoder.blocks.get(i))) {
            None => x,
            Some((i, Some(block))) => {
                let relative = &biases[i.min(biases.len() - 1)];
                self.encoder_block((i, block), x, (mask, relative), options, out)
            }
            Some((_, None)) => rms_norm(&self.encoder.final_norm, x, options.attn_lrp),
        }
    }

    /// Encoder block `i`: self-attention under `mask` and `relative` positions, feed-forward,
    /// layer override.
    fn encoder_block(
        &self,
        (i, block): (usize, &T5Block),
        x: Tensor<3>,
        (mask, relative): (&AttentionMask, &RelativeBias),
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        let (lrp, zero) = (options.attn_lrp, options.zero_value.as_ref());
        let n = rms_norm(&block.self_attn_norm, x.clone(), lrp);
        let bias = |r: &Range<usize>, keys| relative.chunk(r, keys);
        let site = Site {
            mask,
            bias: Some(&bias),
            lrp,
            record: Record::encoder(options),
        };
        let (a, weights) = block.self_attn.forward(n.clone(), n, site, |v| {
            zero_values(v, zero, AttentionKind::EncoderSelf, i, &self.device)
        });
        out.encoder_attentions.extend(weights);
        let drop = options.dropout.as_ref();
        let slot = ENCODER_DROPOUT_SLOTS + 2 * i as u64;
        let x = x + mc_dropout(a, drop, slot);
        let ff = self.feed_forward(&block.ff, rms_norm(&block.ff_norm, x.clone(), lrp), lrp);
        let x = x + mc_dropout(ff, drop, slot + 1);
        override_layer(x, options.layer_override.as_ref(), LayerRef::Encoder(i))
    }

    /// Decoder block `i`: self-attention under `self_mask` and `relative` positions,
    /// cross-attention to `memory` (the encoder output and its mask) when there is a source,
    /// feed-forward; records what `options` asks for in `out`.
    #[allow(clippy::too_many_arguments)]
    fn decoder_block(
        &self,
        (i, block): (usize, &T5Block),
        y: Tensor<3>,
        (self_mask, relative): (&AttentionMask, &RelativeBias),
        memory: Option<&(Tensor<3>, AttentionMask)>,
        options: &ForwardOptions,
        out: &mut ModelOutput,
    ) -> Tensor<3> {
        let (lrp, zero) = (options.attn_lrp, options.zero_value.as_ref());
        let (drop, slot) = (options.dropout.as_ref(), 3 * i as u64);
        let bias = |r: &Range<usize>, keys| relative.chunk(r, keys);
        let site = |mask, bias| Site {
            mask,
            bias,
            lrp,
            record: Record::decoder(options),
        };
        let n = rms_norm(&block.self_attn_norm, y.clone(), lrp);
        let (a, weights) =
            block
                .self_attn
                .forward(n.clone(), n, site(self_mask, Some(&bias)), |v| {
                    zero_values(v, zero, AttentionKind::DecoderSelf, i, &self.device)
                });
        out.attentions.extend(weights);
        let mut y = y + mc_dropout(a, drop, slot);
        if let (Some((attn, norm)), Some((enc, cross_mask))) = (&block.cross, memory) {
            let n = rms_norm(norm, y.clone(), lrp);
            let (a, weights) = attn.forward(n, enc.clone(), site(cross_mask, None), |v| {
                zero_values(v, zero, AttentionKind::Cross, i, &self.device)
            });
            out.cross_attentions.extend(weights);
            y = y + mc_dropout(a, drop, slot + 1);
        }
        let ff = self.feed_forward(&block.ff, rms_norm(&block.ff_norm, y.clone(), lrp), lrp);
        y = y + mc_dropout(ff, drop, slot + 2);
        y = override_layer(y, options.layer_override.as_ref(), LayerRef::Decoder(i));
        if options.hidden_states {
            out.hidden_states.push(y.clone());
        }
        y
    }
}

impl LanguageModel for T5 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn kind(&self) -> ModelKind {
        ModelKind::EncoderDecoder
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.decoder_embed.forward(ids)
    }

    fn embed_source(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.encoder_embed.forward(ids)
    }

    fn supports_internal_hooks(&self) -> bool {
        true
    }

    fn num_encoder_layers(&self) -> usize {
        self.encoder.blocks.len()
    }

    fn dropout_probability(&self) -> f64 {
        self.config.dropout_rate.unwrap_or(0.1)
    }

    fn encoder_stages(&self) -> usize {
        self.encoder.blocks.len() + 2
    }

    fn encoder_stage(
        &self,
        k: usize,
        x: Tensor<3>,
        mask: &[Vec<bool>],
        options: &ForwardOptions,
    ) -> Tensor<3> {
        let s = x.dims()[1];
        let biases = self.relative_biases(&self.encoder, (s, s), true);
        let mut out = empty_output(&self.device);
        let mask = AttentionMask::full(mask);
        self.encoder_stage_with(k, x, (&mask, &biases), options, &mut out)
    }

    /// Decoder `hidden_states`: the input embeddings, then each block's output
    /// (before the final layer norm).
    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let mut out = empty_output(&self.device);
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
        let self_mask = AttentionMask::new(&target_mask, t, None);
        let biases = self.relative_biases(&self.decoder, (t, t), false);
        let mut y = input.target_embeds;
        if options.hidden_states {
            out.hidden_states.push(y.clone());
        }
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let relative = &biases[i.min(biases.len() - 1)];
            let masks = (&self_mask, relative);
            y = self.decoder_block((i, block), y, masks, memory.as_ref(), &options, &mut out);
        }
        out.attention_rows = options
            .attention_rows
            .clone()
            .filter(|_| options.attentions);
        let mut y = rms_norm(&self.decoder.final_norm, y, options.attn_lrp);
        if options.hidden_states {
            out.final_hidden_state = Some(y.clone());
        }
        if self.scale_decoder_outputs {
            y = y * (self.config.d_model as f64).powf(-0.5);
        }
        out.logits = lm_head(y, &self.lm_head, &options);
        out
    }
}
