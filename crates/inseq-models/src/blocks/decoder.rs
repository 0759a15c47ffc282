//! The generic decoder-only language model: embeddings (scaled, plus learned positions), a
//! stack of [`Block`]s, a final norm and the output head (tied or not, soft-capped or not).
//! One forward pass ([`Decoder::run`]) serves [`LanguageModel::forward`] and the taped pass of
//! [`LanguageModel::forward_shared`], whose backward pass is the blocks' own.

use burn::tensor::{Device, Int, Tensor};

use super::Pass;
use super::block::{Block, BlockTape};
use super::core::causal_bias;
use super::hooks::{empty_output, override_layer};
use super::norm::{Norm, NormTape, maybe, maybe_backward};
use super::rope::Rope;
use crate::backprop::{SharedForward, Span, backward_through_blocks, row_at};
use crate::model::{
    ForwardOptions, LanguageModel, LayerRef, ModelInfo, ModelInput, ModelKind, ModelOutput,
};
use crate::nn::{Act, Embedding, LmHead, ids_tensor, new_positions};

/// A learned position table, read at `position + offset`.
#[derive(Debug, Clone)]
pub struct LearnedPositions {
    pub table: Embedding,
    pub offset: usize,
}

/// A decoder-only language model built from a [`super::DecoderSpec`].
pub struct Decoder {
    pub(crate) info: ModelInfo,
    pub(crate) act: Act,
    pub(crate) embed: Embedding,
    pub(crate) embed_scale: Option<f64>,
    pub(crate) positions: Option<LearnedPositions>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Option<Norm>,
    pub(crate) head: LmHead,
    pub(crate) final_softcap: Option<f64>,
    pub(crate) ropes: Vec<Rope>,
    /// The distinct sliding windows of the layers (`None`: full attention).
    pub(crate) windows: Vec<Option<usize>>,
    pub(crate) dropout: f64,
    pub(crate) device: Device,
}

/// The result of [`Decoder::run`].
struct Run {
    /// Output of the final norm `[b, s, hidden]`.
    out: Tensor<3>,
    attentions: Vec<Tensor<4>>,
    hidden_states: Vec<Tensor<3>>,
    rope_tables: Vec<(Tensor<4>, Tensor<4>)>,
    blocks: Vec<BlockTape>,
    last: Option<NormTape>,
}

impl Decoder {
    /// Runs the stack on `input`; `taped` keeps the activations of the backward pass (the
    /// options' hooks must then be off).
    fn run(&self, input: &ModelInput, options: &ForwardOptions, taped: bool) -> Run {
        let [_, s, _] = input.target_embeds.dims();
        let positions = new_positions(&input.target_mask, s);
        let mut x = input.target_embeds.clone();
        if let Some(p) = &self.positions {
            let ids: Vec<Vec<usize>> = positions
                .iter()
                .map(|r| r.iter().map(|&i| i + p.offset).collect())
                .collect();
            x = x + p.table.forward(ids_tensor(&ids, &self.device));
        }
        let mut pass = Pass {
            options,
            lrp: options.attn_lrp,
            taped,
            device: self.device.clone(),
            rope_tables: self
                .ropes
                .iter()
                .map(|r| r.tables(&positions, &self.device))
                .collect(),
            biases: self
                .windows
                .iter()
                .map(|&w| (w, causal_bias(&input.target_mask, s, w, &self.device)))
                .collect(),
            attentions: vec![],
        };
        let mut hidden_states = vec![];
        if options.hidden_states {
            hidden_states.push(x.clone());
        }
        let mut tapes = Vec::with_capacity(if taped { self.blocks.len() } else { 0 });
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, tape) = block.forward(x, self.act, &mut pass, i);
            tapes.extend(tape);
            x = override_layer(y, options.layer_override.as_ref(), LayerRef::Decoder(i));
            if options.hidden_states {
                hidden_states.push(x.clone());
            }
        }
        let (out, last) = maybe(self.final_norm.as_ref(), x, pass.lrp, taped);
        Run {
            out,
            attentions: pass.attentions,
            hidden_states,
            rope_tables: pass.rope_tables,
            blocks: tapes,
            last,
        }
    }

    /// `[rows, hidden]` -> `[rows, vocab]` logits, soft-capped where configured.
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let logits = self.head.forward(x);
        match self.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
}

impl LanguageModel for Decoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn kind(&self) -> ModelKind {
        ModelKind::DecoderOnly
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.embed.forward(ids);
        match self.embed_scale {
            Some(scale) => x * scale,
            None => x,
        }
    }
    fn supports_internal_hooks(&self) -> bool {
        true
    }
    fn supports_kv_cache(&self) -> bool {
        true
    }
    fn dropout_probability(&self) -> f64 {
        self.dropout
    }
    fn forward_shared(&self, input: &ModelInput) -> Option<Box<dyn SharedForward + '_>> {
        let run = self.run(input, &ForwardOptions::default(), true);
        Some(Box::new(Tape { model: self, run }))
    }
    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let run = self.run(&input, &options, false);
        let mut out = empty_output(&self.device);
        let [b, s, d] = run.out.dims();
        let first = options.first_logit_position(s);
        let x = run
            .out
            .clone()
            .narrow(1, first, s - first)
            .reshape([b * (s - first), d]);
        let logits = self.logits(x);
        let vocab = logits.dims()[1];
        out.logits = logits.reshape([b, s - first, vocab]);
        out.attentions = run.attentions;
        out.hidden_states = run.hidden_states;
        if options.hidden_states {
            out.final_hidden_state = Some(run.out);
        }
        out
    }
}

/// A taped forward pass of a [`Decoder`].
struct Tape<'a> {
    model: &'a Decoder,
    run: Run,
}

impl SharedForward for Tape<'_> {
    fn final_hidden(&self, position: usize) -> Tensor<2> {
        row_at(&self.run.out, position)
    }

    fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.model.logits(hidden)
    }

    fn backward(&self, position: usize, grad: Tensor<2>) -> Tensor<3> {
        let final_norm = |span: Span| {
            let pick = |t: &Tensor<3>| span.rows(t);
            maybe_backward(
                self.model.final_norm.as_ref(),
                self.run.last.as_ref(),
                pick,
                grad.unsqueeze_dim(1),
            )
        };
        let tables = &self.run.rope_tables;
        backward_through_blocks(
            position,
            self.run.blocks.len(),
            final_norm,
            |i, span, dout| self.model.blocks[i].backward(&self.run.blocks[i], tables, span, dout),
        )
    }
}
