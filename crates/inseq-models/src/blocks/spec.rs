//! What an architecture file gives the generic [`Decoder`]: its config mapped onto a
//! [`DecoderSpec`] and its weight names ([`Names`]).

use super::alibi::Alibi;
use super::attention::{Attention, FusedLayout, QkNorm, Qkv};
use super::block::{Block, Residual};
use super::core::Scoring;
use super::decoder::{Decoder, LearnedPositions};
use super::mlp::Mlp;
use super::norm::NormKind;
use super::rope::RopeSpec;
use crate::model::ModelInfo;
use crate::nn::{Act, Embedding, Linear, LmHead};
use crate::weights::Weights;
use inseq_core::{Error, Result};

/// Weight names, relative to the base model's prefix (per-layer names relative to
/// `{layers}.{i}`); `None` where the architecture has no such tensor.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub embed: &'static str,
    pub positions: Option<&'static str>,
    pub layers: &'static str,
    pub attn_norm: Option<&'static str>,
    pub attn_post: Option<&'static str>,
    pub mlp_norm: Option<&'static str>,
    pub mlp_post: Option<&'static str>,
    /// `[q, k, v]`, or one fused name.
    pub qkv: &'static [&'static str],
    pub o: &'static str,
    pub q_norm: Option<&'static str>,
    pub k_norm: Option<&'static str>,
    /// `[gate, up, down]`, `[gate_up, down]` (fused, gate first) or `[fc, proj]` (plain).
    pub mlp: &'static [&'static str],
    pub final_norm: Option<&'static str>,
    pub lm_head: &'static str,
}

/// Token embeddings narrower than the hidden size, projected in before the first block and out
/// after the final norm (OPT's `project_in`/`project_out`, `word_embed_proj_dim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projections {
    /// Width of the token embeddings (and of the tied head).
    pub dim: usize,
    /// Weight names of the bias-free projections in and out.
    pub input: &'static str,
    pub output: &'static str,
}

/// Everything that decides a decoder's computation, from its config.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    /// Facts reported by [`crate::LanguageModel::info`] (sizes, token ids, class names).
    pub info: ModelInfo,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub norm: NormKind,
    pub residual: Residual,
    /// Layout of a fused query/key/value projection (ignored for separate ones).
    pub fused_qkv: FusedLayout,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Weights stored `[in, out]` with biases everywhere (GPT-2's `Conv1D`).
    pub conv1d: bool,
    /// A gated MLP (`act(gate) ⊙ up`); with two MLP names, gate and up are fused.
    pub gated_mlp: bool,
    /// The activation's Hugging Face name (unknown names are an error).
    pub act: String,
    /// Query/key norms over each head (`Some(true)`) or the whole projection (`Some(false)`).
    pub qk_norm_per_head: Option<bool>,
    pub scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Factor of the token embeddings (Gemma: `sqrt(hidden)`), part of [`Decoder::embed`].
    pub embed_scale: Option<f64>,
    /// Learned positions: `(offset)` added to position ids (OPT: 2).
    pub learned_positions: Option<usize>,
    /// Embeddings projected in and out (OPT-350m).
    pub projections: Option<Projections>,
    pub ropes: Vec<RopeSpec>,
    /// ALiBi position biases in every layer (Falcon's `alibi`; the layers then have no rope).
    pub alibi: bool,
    /// Per layer: index into `ropes`, sliding window.
    pub layer_rope: Vec<Option<usize>>,
    pub layer_window: Vec<Option<usize>>,
    pub tied: bool,
    pub dropout: f64,
    pub names: Names,
}

impl DecoderSpec {
    /// A decoder with learned positions read at `position + offset`, LayerNorm pre-norm blocks,
    /// biases everywhere, a plain MLP, `head_dim^-½` scores, a tied head and no dropout (GPT-2's
    /// and OPT's starting point).
    pub fn learned_positions(
        info: ModelInfo,
        offset: usize,
        intermediate: usize,
        norm: NormKind,
        act: &str,
        names: Names,
    ) -> Self {
        let (heads, layers) = (info.num_heads, info.num_layers);
        let head_dim = info.hidden_size / heads.max(1);
        Self {
            heads,
            kv_heads: heads,
            head_dim,
            intermediate,
            norm,
            residual: Residual::Sequential,
            fused_qkv: FusedLayout::Blocks,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            conv1d: false,
            gated_mlp: false,
            act: act.into(),
            qk_norm_per_head: None,
            scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            learned_positions: Some(offset),
            projections: None,
            ropes: vec![],
            alibi: false,
            layer_rope: vec![None; layers],
            layer_window: vec![None; layers],
            tied: true,
            dropout: 0.0,
            names,
            info,
        }
    }

    /// The window of each layer from transformers' `layer_types` (`sliding_attention` /
    /// `full_attention`), erroring on any other type.
    pub fn windows_from_layer_types(
        types: &[String],
        window: Option<usize>,
    ) -> Result<Vec<Option<usize>>> {
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => window.map(Some).ok_or_else(|| {
                    Error::invalid_arg(
                        "sliding_window",
                        "sliding_attention layers need `sliding_window`",
                    )
                }),
                other => Err(Error::Unsupported(format!(
                    "layer type `{other}` in `layer_types`"
                ))),
            })
            .collect()
    }

    fn linear(&self, w: &mut Weights, name: &str, bias: bool, dims: [usize; 2]) -> Result<Linear> {
        if self.conv1d {
            Linear::load_conv1d(w, name, dims)
        } else {
            Linear::load_torch(w, name, bias, dims)
        }
    }

    fn attention(&self, w: &mut Weights, p: &str, layer: usize) -> Result<Attention> {
        let (h, kvh, hd, d) = (
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.info.hidden_size,
        );
        let n = &self.names;
        let qkv = match n.qkv {
            [q, k, v] => Qkv::Separate(
                self.linear(w, &format!("{p}.{q}"), self.qkv_bias, [h * hd, d])?,
                self.linear(w, &format!("{p}.{k}"), self.qkv_bias, [kvh * hd, d])?,
                self.linear(w, &format!("{p}.{v}"), self.qkv_bias, [kvh * hd, d])?,
            ),
            [fused] => {
                let out = (h + 2 * kvh) * hd;
                Qkv::Fused(
                    self.linear(w, &format!("{p}.{fused}"), self.qkv_bias, [out, d])?,
                    self.fused_qkv,
                )
            }
            _ => unreachable!("qkv names are [q, k, v] or [fused]"),
        };
        let qk_norm = match (self.qk_norm_per_head, n.q_norm, n.k_norm) {
            (Some(per_head), Some(q), Some(k)) => {
                let (qd, kd) = if per_head {
                    (hd, hd)
                } else {
                    (h * hd, kvh * hd)
                };
                let qn = self.norm.load(w, &format!("{p}.{q}"), qd)?;
                let kn = self.norm.load(w, &format!("{p}.{k}"), kd)?;
                Some(if per_head {
                    QkNorm::PerHead(qn, kn)
                } else {
                    QkNorm::Full(qn, kn)
                })
            }
            _ => None,
        };
        Ok(Attention {
            qkv,
            o: self.linear(w, &format!("{p}.{}", n.o), self.o_bias, [d, h * hd])?,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            qk_norm,
            rope: self.layer_rope[layer],
            window: self.layer_window[layer],
            scoring: Scoring {
                scale: self.scale,
                softcap: self.attn_softcap,
            },
        })
    }

    fn mlp(&self, w: &mut Weights, p: &str) -> Result<Mlp> {
        let (d, i, b) = (self.info.hidden_size, self.intermediate, self.mlp_bias);
        let name = |n: &str| format!("{p}.{n}");
        Ok(match self.names.mlp {
            [gate, up, down] => Mlp::Gated {
                gate: self.linear(w, &name(gate), b, [i, d])?,
                up: self.linear(w, &name(up), b, [i, d])?,
                down: self.linear(w, &name(down), b, [d, i])?,
            },
            [first, second] if self.gated_mlp => Mlp::FusedGated {
                gate_up: self.linear(w, &name(first), b, [2 * i, d])?,
                down: self.linear(w, &name(second), b, [d, i])?,
            },
            [fc, proj] => Mlp::Plain {
                fc: self.linear(w, &name(fc), b, [i, d])?,
                proj: self.linear(w, &name(proj), b, [d, i])?,
            },
            _ => unreachable!("mlp names are [gate, up, down], [gate_up, down] or [fc, proj]"),
        })
    }

    fn block(&self, w: &mut Weights, layer: usize) -> Result<Block> {
        let p = format!("{}.{layer}", self.names.layers);
        let d = self.info.hidden_size;
        let mut norm = |name: Option<&str>| -> Result<_> {
            name.map(|n| self.norm.load(w, &format!("{p}.{n}"), d))
                .transpose()
        };
        let n = &self.names;
        let (attn_norm, attn_post) = (norm(n.attn_norm)?, norm(n.attn_post)?);
        let (mlp_norm, mlp_post) = (norm(n.mlp_norm)?, norm(n.mlp_post)?);
        Ok(Block {
            attn_norm,
            attn: self.attention(w, &p, layer)?,
            attn_post,
            mlp_norm,
            mlp: self.mlp(w, &p)?,
            mlp_post,
            residual: self.residual,
        })
    }

    /// Builds the decoder from its weights.
    pub fn load(self, w: &mut Weights) -> Result<Decoder> {
        let (h, kvh, d, vocab) = (
            self.heads,
            self.kv_heads,
            self.info.hidden_size,
            self.info.vocab_size,
        );
        if h == 0 || kvh == 0 || !h.is_multiple_of(kvh) {
            return Err(Error::invalid_arg(
                "num_key_value_heads",
                format!("{kvh} does not divide {h} attention heads"),
            ));
        }
        let act = Act::parse(&self.act)?;
        let e = self.projections.as_ref().map_or(d, |p| p.dim);
        let embed = Embedding {
            table: w.tensor2(self.names.embed, [vocab, e])?,
        };
        let (project_in, project_out) = match &self.projections {
            Some(p) => (
                Some(Linear::load_torch(w, p.input, false, [d, e])?),
                Some(Linear::load_torch(w, p.output, false, [e, d])?),
            ),
            None => (None, None),
        };
        let positions = match (self.learned_positions, self.names.positions) {
            (Some(offset), Some(name)) => {
                let rows = self.info.max_positions + offset;
                Some(LearnedPositions {
                    table: Embedding {
                        table: w.tensor2(name, [rows, d])?,
                    },
                    offset,
                })
            }
            _ => None,
        };
        let blocks = (0..self.info.num_layers)
            .map(|i| self.block(w, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = self
            .names
            .final_norm
            .map(|n| self.norm.load(w, n, d))
            .transpose()?;
        let head = if !self.tied && w.contains(self.names.lm_head) {
            w.tensor2(self.names.lm_head, [vocab, e])?
        } else {
            embed.table.clone()
        };
        let mut windows: Vec<Option<usize>> = self.layer_window.clone();
        windows.sort();
        windows.dedup();
        Ok(Decoder {
            act,
            embed,
            embed_scale: self.embed_scale,
            positions,
            project_in,
            project_out,
            blocks,
            final_norm,
            head: LmHead::from_table(head),
            final_softcap: self.final_softcap,
            ropes: self
                .ropes
                .iter()
                .map(RopeSpec::build)
                .collect::<Result<_>>()?,
            windows,
            alibi: self.alibi.then(|| Alibi::new(h, self.scale)),
            dropout: self.dropout,
            device: w.device().clone(),
            info: self.info,
        })
    }
}
