//! The generic decoder-only language model: embeddings (scaled, plus learned positions), a
//! stack of [`Block`]s, a final norm and the output head (tied or not, soft-capped or not).
//! One forward pass ([`Decoder::run`]) serves [`LanguageModel::forward`] and the taped pass of
//! [`LanguageModel::forward_shared`], whose backward pass is the blocks' own.

use burn::tensor::{Device, Int, Tensor};

use std::borrow::Cow;

use super::Pass;
use super::alibi::Alibi;
use super::block::{Block, BlockTape};
use super::hooks::{empty_output, override_layer};
use super::mask::AttentionMask;
use super::norm::{Norm, NormTape, maybe, maybe_backward};
use super::rope::Rope;
use crate::backprop::{SharedForward, Span, linear_backward, row_at};
use crate::checkpoint::{KEEP_TAPES_BYTES, Stored, backward_blockwise, run_blocks, tape_of};
use crate::model::{
    ForwardOptions, LanguageModel, LayerRef, ModelInfo, ModelInput, ModelKind, ModelOutput,
};
use crate::nn::{Act, Embedding, Linear, LmHead, ids_tensor, new_positions};

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
    /// Projections of narrower token embeddings in and out (OPT-350m).
    pub(crate) project_in: Option<Linear>,
    pub(crate) project_out: Option<Linear>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Option<Norm>,
    pub(crate) head: LmHead,
    pub(crate) final_softcap: Option<f64>,
    pub(crate) ropes: Vec<Rope>,
    /// The distinct sliding windows of the layers (`None`: full attention).
    pub(crate) windows: Vec<Option<usize>>,
    /// ALiBi position biases of every layer (Falcon with `alibi`).
    pub(crate) alibi: Option<Alibi>,
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
    masks: Vec<(Option<usize>, AttentionMask)>,
    /// Per block its tape (`None` on an untaped pass), or its input to recompute the tape from.
    blocks: Vec<Stored<Option<BlockTape>>>,
    last: Option<NormTape>,
}

impl Decoder {
    /// Runs the stack on `input`; `taped`: keeps the activations of the backward pass (the
    /// options' hooks must then be off), the blocks' tapes while they fit that many bytes, else
    /// the blocks' inputs ([`crate::checkpoint`]).
    fn run(&self, input: &ModelInput, options: &ForwardOptions, taped: Option<u64>) -> Run {
        let [_, s, _] = input.target_embeds.dims();
        let positions = new_positions(&input.target_mask, s);
        let mut x = input.target_embeds.clone();
        if let Some(p) = &self.project_in {
            x = p.forward(x);
        }
        if let Some(p) = &self.positions {
            let ids: Vec<Vec<usize>> = positions
                .iter()
                .map(|r| r.iter().map(|&i| i + p.offset).collect())
                .collect();
            x = x + p.table.forward(ids_tensor(&ids, &self.device));
        }
        let rope_tables = self
            .ropes
            .iter()
            .map(|r| r.tables(&positions, &self.device))
            .collect();
        let masks = self
            .windows
            .iter()
            .map(|&w| {
                let mask = AttentionMask::new(&input.target_mask, s, w);
                (w, mask.with_alibi(self.alibi.as_ref()))
            })
            .collect();
        let mut pass = self.pass(options, taped.is_some(), rope_tables, masks);
        let mut hidden_states = vec![];
        if options.hidden_states {
            hidden_states.push(x.clone());
        }
        let step = |i: usize, x: Tensor<3>| {
            let (y, tape) = self.blocks[i].forward(x, self.act, &mut pass, i);
            let y = override_layer(y, options.layer_override.as_ref(), LayerRef::Decoder(i));
            if options.hidden_states {
                hidden_states.push(y.clone());
            }
            (tape, y)
        };
        let floats = |t: &Option<BlockTape>| t.as_ref().map_or(0, BlockTape::floats);
        let budget = taped.unwrap_or(u64::MAX);
        let (blocks, x) = run_blocks((self.blocks.len(), budget), x, step, floats);
        let (out, last) = maybe(self.final_norm.as_ref(), x, pass.lrp, taped.is_some());
        let out = match &self.project_out {
            Some(p) => p.forward(out),
            None => out,
        };
        Run {
            out,
            attentions: pass.attentions,
            hidden_states,
            rope_tables: pass.rope_tables,
            masks: pass.masks,
            blocks,
            last,
        }
    }

    /// The state of a forward pass over an input with these rotary tables and masks.
    fn pass<'o>(
        &self,
        options: &'o ForwardOptions,
        taped: bool,
        rope_tables: Vec<(Tensor<4>, Tensor<4>)>,
        masks: Vec<(Option<usize>, AttentionMask)>,
    ) -> Pass<'o> {
        Pass {
            options,
            lrp: options.attn_lrp,
            taped,
            device: self.device.clone(),
            rope_tables,
            masks,
            attentions: vec![],
        }
    }

    /// The taped forward pass, block tapes kept while they fit `keep_bytes`.
    fn forward_taped(&self, input: &ModelInput, keep_bytes: u64) -> Tape<'_> {
        let run = self.run(input, &ForwardOptions::default(), Some(keep_bytes));
        Tape { model: self, run }
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
    /// `None` where dynamic NTK RoPE would give the whole sequence other frequencies than the
    /// prefixes a step-by-step attribution feeds (see docs/inseq-compatibility.md).
    fn forward_shared(&self, input: &ModelInput) -> Option<Box<dyn SharedForward + '_>> {
        let [_, s, _] = input.target_embeds.dims();
        let positions = new_positions(&input.target_mask, s);
        let len = positions.iter().flatten().max().map_or(0, |&p| p + 1);
        if self.ropes.iter().any(|r| r.depends_on_length(len)) {
            return None;
        }
        Some(Box::new(self.forward_taped(input, KEEP_TAPES_BYTES)))
    }
    fn forward(&self, input: ModelInput, options: ForwardOptions) -> ModelOutput {
        let run = self.run(&input, &options, None);
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
        out.attention_rows = options.attention_rows.filter(|_| options.attentions);
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
        self.backward_each(vec![(position, grad)])
            .pop()
            .expect("one request")
    }

    fn backward_each(&self, requests: Vec<(usize, Tensor<2>)>) -> Vec<Tensor<3>> {
        let (positions, grads): (Vec<usize>, Vec<Tensor<2>>) = requests.into_iter().unzip();
        let final_norm = |span: Span, r: usize| {
            let pick = |t: &Tensor<3>| span.rows(t);
            let grad = grads[r].clone().unsqueeze_dim(1);
            let grad = match &self.model.project_out {
                Some(p) => linear_backward(p, grad),
                None => grad,
            };
            maybe_backward(
                self.model.final_norm.as_ref(),
                self.run.last.as_ref(),
                pick,
                grad,
            )
        };
        let tables = &self.run.rope_tables;
        let grads = backward_blockwise(
            &positions,
            self.run.blocks.len(),
            final_norm,
            |i| self.tape(i),
            |tape, i, span, dout| {
                let tape = tape.as_ref().expect("a taped pass");
                self.model.blocks[i].backward(tape, tables, span, dout)
            },
        );
        match &self.model.project_in {
            Some(p) => grads.into_iter().map(|g| linear_backward(p, g)).collect(),
            None => grads,
        }
    }
}

impl Tape<'_> {
    /// Block `index`'s tape, kept or recomputed from its input.
    fn tape(&self, index: usize) -> Cow<'_, Option<BlockTape>> {
        tape_of(&self.run.blocks, index, |i, x| {
            let options = ForwardOptions::default();
            let (tables, masks) = (self.run.rope_tables.clone(), self.run.masks.clone());
            let mut pass = self.model.pass(&options, true, tables, masks);
            let (y, tape) = self.model.blocks[i].forward(x, self.model.act, &mut pass, i);
            (tape, y)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Decoder;
    use crate::checkpoint::tests::{assert_recompute_matches, fixture};

    fn check(m: &Decoder) {
        assert_recompute_matches(m, |input, keep| Box::new(m.forward_taped(input, keep)));
    }

    /// Recomputed block tapes give the kept tapes' gradients: Llama, GPT-2 (learned positions,
    /// fused projections), Gemma 2 (soft-capping, sliding windows, sandwich norms).
    #[test]
    fn recomputed_tapes_give_the_kept_gradients() {
        let (c, mut w) = fixture("tiny-llama", "model.");
        check(&crate::llama::load(c, &mut w).unwrap());
        let (c, mut w) = fixture("tiny-gpt2", "transformer.");
        check(&crate::gpt2::load(c, &mut w).unwrap());
        let (c, mut w) = fixture("tiny-gemma2", "model.");
        check(&crate::gemma::load(c, &mut w).unwrap());
    }
}
