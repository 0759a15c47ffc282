//! ReAGent (Zhao & Shan, 2024, "ReAGent: A Model-agnostic Feature Attribution
//! Method for Generative Language Models", <https://arxiv.org/abs/2402.00794>),
//! as Python Inseq 0.7.1 runs it (`inseq/attr/feat/ops/reagent.py` and
//! `reagent_core/`).

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData, activation};
use inseq_core::{Error, Result};
use inseq_models::{ForwardOptions, ModelInput, ModelKind, ids_tensor};
use inseq_steps::gather_ids;

use crate::gradient::embed_target;
use crate::gradient_shap::SplitMix64;
use crate::{AttributionMethod, MethodArgs, MethodContext, StepAttribution, StepInput};

/// How replacement tokens are drawn for a token being replaced.
#[derive(Debug, Clone, Default)]
pub enum TokenSampler {
    /// Uniformly from the whole vocabulary (`0..vocab_size`), the default.
    #[default]
    Uniform,
    /// Uniformly from the group of the token being replaced (Inseq's
    /// `POSTagTokenSampler` with the groups its nltk POS tagger assigns to the
    /// vocabulary); ids in no group are replaced uniformly from the vocabulary.
    Grouped(Arc<TokenGroups>),
}

/// A partition of (part of) the vocabulary into groups of interchangeable ids,
/// e.g. Inseq's `pos2ids` mapping from POS tags to token ids.
#[derive(Debug, Clone)]
pub struct TokenGroups {
    groups: Vec<Vec<usize>>,
    id2group: Vec<Option<usize>>,
}

impl TokenGroups {
    /// Builds the mapping from groups of token ids. Every group must be
    /// non-empty and an id may belong to one group only.
    pub fn new(groups: Vec<Vec<usize>>) -> Result<Self> {
        let max = groups.iter().flatten().copied().max().map_or(0, |m| m + 1);
        let mut id2group = vec![None; max];
        for (g, ids) in groups.iter().enumerate() {
            if ids.is_empty() {
                return Err(Error::invalid_arg(
                    "token groups",
                    format!("group {g} is empty"),
                ));
            }
            for &id in ids {
                if id2group[id].replace(g).is_some() {
                    return Err(Error::invalid_arg(
                        "token groups",
                        format!("token id {id} is in more than one group"),
                    ));
                }
            }
        }
        Ok(Self { groups, id2group })
    }
}

impl TokenSampler {
    /// A replacement for token `id` from a vocabulary of `vocab` ids.
    fn sample(&self, id: usize, vocab: usize, rng: &mut SplitMix64) -> usize {
        let pick =
            |n: usize, rng: &mut SplitMix64| ((rng.uniform() * n as f64) as usize).min(n - 1);
        match self {
            Self::Grouped(g) => match g.id2group.get(id).copied().flatten() {
                Some(k) => g.groups[k][pick(g.groups[k].len(), rng)],
                None => pick(vocab, rng),
            },
            Self::Uniform => pick(vocab, rng),
        }
    }
}

/// ReAGent, the recursive attribution generator (Zhao & Shan, 2024,
/// <https://arxiv.org/abs/2402.00794>), with Inseq 0.7.1's argument names and
/// defaults.
///
/// For every batch row, `num_probes` independent probes each start from
/// uniform random importance logits `s ~ U(0, 1)` over the attributed tokens and
/// repeat, for at most `max_probe_steps` rounds:
///
/// 1. *update*: every token is replaced, independently with probability
///    `replacing_ratio`, by a token drawn from the [`TokenSampler`]; with `p` the
///    probability of the target token on the original input and `p̂` on the
///    perturbed one, `δ = p - p̂`, and each token's logit grows by
///    `logit((±δ + 1) / 2)`, `+δ` for replaced tokens and `-δ` for kept ones
///    (Inseq's `DeltaProbImportanceScoreEvaluator`);
/// 2. *stopping condition*: with the importance `softmax(s)`, every token but
///    the `keep_top_n` most important ones (or the `ceil(keep_ratio · n)` most
///    important when `keep_top_n = 0`) is replaced; the probe stops once the
///    target is among the model's `stopping_condition_top_k` most likely next
///    tokens on that input (Inseq's `TopKStoppingConditionEvaluator`). A stopped
///    probe keeps its scores.
///
/// A token's score is `softmax(s)` averaged over the probes that stopped
/// (Inseq's `AggregateRationalizer`): one score per token
/// ([`StepAttribution::score_dims`] `Some(vec![])`), summing to 1 over the
/// attributed tokens of a row. Decoder-only models attribute the target
/// prefix; encoder-decoder models the source, or, with `attribute_target`, the
/// source and target prefix jointly (replacements and the softmax span both).
///
/// As in Inseq, the explained quantity is the probability of the target token
/// (other attributed functions and contrastive inputs give an
/// [`Error::Unsupported`], where Inseq silently ignores them), and the
/// model sees token ids (no Inseq-compatibility embedding scaling).
///
/// Deviations from Python Inseq 0.7.1 (see `docs/inseq-compatibility.md`):
/// replacement tokens come from [`TokenSampler::Uniform`] unless a grouping is
/// given ([`Reagent::with_token_groups`]), since Inseq's POS-tag sampler needs
/// nltk's tagger; draws come from SplitMix64 generators seeded by `seed` and
/// the row's token ids, not torch's, so values differ from Inseq's but the same
/// seed and input give the same scores, alone or in any batch; when no probe
/// stops within `max_probe_steps`, scores average over all probes (Inseq
/// divides by zero and returns NaN); `invert_keep` replaces only the selected
/// top tokens, as documented (Inseq's mask replaces every token); and
/// encoder-decoder models can be attributed on the source alone (Inseq 0.7.1
/// fails there).
#[derive(Debug, Clone)]
pub struct Reagent {
    /// Tokens kept (not replaced) by the stopping condition (default 5); 0: use `keep_ratio`.
    pub keep_top_n: usize,
    /// Share of the tokens kept when `keep_top_n` is 0 (default none).
    pub keep_ratio: Option<f64>,
    /// Replace the top tokens in the stopping condition instead of keeping them (default `false`).
    pub invert_keep: bool,
    /// The stopping condition holds when the target is among this many top predictions (default 3).
    pub stopping_condition_top_k: usize,
    /// Probability that a token is replaced in an update (default 0.3).
    pub replacing_ratio: f64,
    /// Most update rounds per probe (default 3000).
    pub max_probe_steps: usize,
    /// Probes run in parallel per batch row (default 16).
    pub num_probes: usize,
    /// Seed of the random draws (default 42).
    pub seed: u64,
    /// Most perturbed rows per forward pass (default 256; not in Inseq).
    pub internal_batch_size: usize,
    /// How replacement tokens are drawn (default: uniformly from the vocabulary).
    pub sampler: TokenSampler,
}

impl Default for Reagent {
    fn default() -> Self {
        Self {
            keep_top_n: 5,
            keep_ratio: None,
            invert_keep: false,
            stopping_condition_top_k: 3,
            replacing_ratio: 0.3,
            max_probe_steps: 3000,
            num_probes: 16,
            seed: 42,
            internal_batch_size: 256,
            sampler: TokenSampler::Uniform,
        }
    }
}

impl Reagent {
    /// Builds from arguments (`keep_top_n`, `keep_ratio`, `invert_keep`,
    /// `stopping_condition_top_k`, `replacing_ratio`, `max_probe_steps`,
    /// `num_probes`, `seed`, `internal_batch_size`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let r = Self {
            keep_top_n: args.take("keep_top_n", d.keep_top_n)?,
            keep_ratio: args.take_opt("keep_ratio")?,
            invert_keep: args.take("invert_keep", d.invert_keep)?,
            stopping_condition_top_k: args
                .take("stopping_condition_top_k", d.stopping_condition_top_k)?,
            replacing_ratio: args.take("replacing_ratio", d.replacing_ratio)?,
            max_probe_steps: args.take_size(
                "max_probe_steps",
                d.max_probe_steps,
                MAX_PROBE_STEPS,
            )?,
            num_probes: args.take_size("num_probes", d.num_probes, MAX_PROBES)?,
            seed: args.take("seed", d.seed)?,
            internal_batch_size: args.take("internal_batch_size", d.internal_batch_size)?,
            sampler: d.sampler,
        };
        args.finish("reagent")?;
        r.validate()?;
        Ok(r)
    }

    /// Draws replacement tokens from `groups` (e.g. Inseq's POS-tag groups) instead of the whole vocabulary.
    pub fn with_token_groups(mut self, groups: TokenGroups) -> Self {
        self.sampler = TokenSampler::Grouped(Arc::new(groups));
        self
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("stopping_condition_top_k", self.stopping_condition_top_k),
            ("max_probe_steps", self.max_probe_steps),
            ("num_probes", self.num_probes),
            ("internal_batch_size", self.internal_batch_size),
        ] {
            if v == 0 {
                return Err(Error::invalid_arg(name, "must be at least 1"));
            }
        }
        if !(0.0..=1.0).contains(&self.replacing_ratio) {
            return Err(Error::invalid_arg("replacing_ratio", "must be in [0, 1]"));
        }
        match self.keep_ratio {
            Some(k) if !(0.0..=1.0).contains(&k) => {
                Err(Error::invalid_arg("keep_ratio", "must be in [0, 1]"))
            }
            None if self.keep_top_n == 0 => Err(Error::invalid_arg(
                "keep_ratio",
                "is required when keep_top_n is 0",
            )),
            _ => Ok(()),
        }
    }

    /// How many of `n` tokens the stopping condition keeps (or replaces, with `invert_keep`).
    fn top_n(&self, n: usize) -> usize {
        let k = if self.keep_top_n > 0 {
            self.keep_top_n
        } else {
            (self.keep_ratio.unwrap_or(0.0) * n as f64).ceil() as usize
        };
        k.min(n)
    }
}

/// An attributed token: in the source (`true`) or the target prefix, at a padded position.
type Feature = (bool, usize);

/// One perturbed input: the batch row it comes from and its ids at the row's features.
struct Request {
    row: usize,
    ids: Vec<usize>,
}

/// The most probes (`num_probes`) a step runs: each holds a perturbed copy of the input.
pub const MAX_PROBES: usize = 10_000;

/// The most rounds (`max_probe_steps`) a probe runs before it stops without meeting its condition.
pub const MAX_PROBE_STEPS: usize = 1_000_000;

/// One probe's state.
struct Probe {
    row: usize,
    rng: SplitMix64,
    logits: Vec<f64>,
    stopped: bool,
}

/// A seed for `row` that depends only on `seed` and the row's real tokens, so a
/// row gets the same draws alone or in any batch.
fn row_seed(seed: u64, feature_ids: &[usize], context: &[usize], target: usize) -> u64 {
    let mut h = SplitMix64::new(seed).next_u64();
    let mut mix = |v: u64| h = SplitMix64::new(h ^ v).next_u64();
    for &id in feature_ids {
        mix(id as u64);
    }
    mix(u64::MAX);
    for &id in context {
        mix(id as u64);
    }
    mix(u64::MAX - 1);
    mix(target as u64);
    h
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// `torch.logit`, clamped away from 0 and 1 so a saturated probability stays finite.
fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    (p / (1.0 - p)).ln()
}

impl Reagent {
    /// Runs the model on perturbed inputs; per request, the target probability
    /// and whether the target is among the `stopping_condition_top_k` most likely tokens.
    fn evaluate(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        features: &[Vec<Feature>],
        requests: &[Request],
    ) -> Result<Vec<(f64, bool)>> {
        let model = ctx.model;
        let device = model.device();
        let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(self.internal_batch_size) {
            let n = chunk.len();
            let mut prefix = Vec::with_capacity(n);
            let mut prefix_mask = Vec::with_capacity(n);
            let mut source = Vec::with_capacity(n);
            let mut source_mask = Vec::with_capacity(n);
            for req in chunk {
                let mut p = step.prefix_ids[req.row].clone();
                let mut s = step
                    .source_ids
                    .as_ref()
                    .filter(|_| encoder_decoder)
                    .map(|s| s[req.row].clone());
                for (&(is_src, j), &id) in features[req.row].iter().zip(&req.ids) {
                    match (&mut s, is_src) {
                        (Some(s), true) => s[j] = id,
                        _ => p[j] = id,
                    }
                }
                prefix.push(p);
                prefix_mask.push(step.prefix_mask[req.row].clone());
                if let (Some(s), Some(m)) = (s, &step.source_mask) {
                    source.push(s);
                    source_mask.push(m[req.row].clone());
                }
            }
            let input = ModelInput {
                target_embeds: embed_target(model, &prefix, false),
                target_mask: prefix_mask,
                source_embeds: (encoder_decoder && !source.is_empty())
                    .then(|| model.embed_source(ids_tensor(&source, device))),
                source_mask: (encoder_decoder && !source.is_empty()).then_some(source_mask),
            };
            let logits = model
                .forward(
                    input,
                    ForwardOptions {
                        last_position_only: true,
                        ..Default::default()
                    },
                )
                .last_logits()
                .detach();
            let [rows, vocab] = logits.dims();
            let targets: Vec<usize> = chunk.iter().map(|r| step.target_ids[r.row]).collect();
            let prob = gather_ids(activation::softmax(logits.clone(), 1), &targets)?;
            let target_logit = gather_ids(logits.clone(), &targets)?
                .reshape([rows, 1])
                .expand([rows, vocab]);
            let above = logits
                .greater(target_logit)
                .float()
                .sum_dim(1)
                .reshape([rows]);
            let prob = host(prob)?;
            let above = host(above)?;
            out.extend(
                prob.iter()
                    .zip(&above)
                    .map(|(&p, &a)| (f64::from(p), (a as usize) < self.stopping_condition_top_k)),
            );
        }
        Ok(out)
    }

    /// The ids of a stopping-condition input for `probe`: all but the top tokens replaced
    /// (only the top ones with `invert_keep`).
    fn stopping_input(&self, probe: &mut Probe, ids: &[usize], vocab: usize) -> Vec<usize> {
        let importance = softmax(&probe.logits);
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]));
        let mut top = vec![false; ids.len()];
        for &i in &order[..self.top_n(ids.len())] {
            top[i] = true;
        }
        ids.iter()
            .zip(&top)
            .map(|(&id, &is_top)| {
                if is_top == self.invert_keep {
                    self.sampler.sample(id, vocab, &mut probe.rng)
                } else {
                    id
                }
            })
            .collect()
    }
}

/// Moves a 1-D tensor to the host.
fn host(t: Tensor<1>) -> Result<Vec<f32>> {
    t.try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))
}

impl Reagent {
    /// Fails unless `step` is a probability step ReAGent can attribute.
    fn check_step(ctx: &MethodContext, step: &StepInput, vocab: usize) -> Result<()> {
        let batch = step.prefix_ids.len();
        if vocab == 0 {
            return Err(Error::InvalidInput(
                "reagent: the model has no vocabulary".into(),
            ));
        }
        if step.target_ids.len() != batch || step.prefix_mask.len() != batch {
            return Err(Error::InvalidInput(
                "reagent: prefix, mask and target rows differ in number".into(),
            ));
        }
        let attributed = ctx.attributed_fn.function.id();
        if attributed != "probability" || step.contrast.is_some() {
            return Err(Error::Unsupported(format!(
                "reagent explains the target token's probability (its scores are probability \
                 changes under token replacement, as in Inseq); attributed function `{attributed}`{} \
                 is not supported: use `probability` or another method",
                if step.contrast.is_some() {
                    " with contrastive inputs"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// The probes of row `row`, with `n_features` attributed tokens and the row's `seed`.
    fn row_probes(&self, row: usize, seed: u64, n_features: usize) -> impl Iterator<Item = Probe> {
        let n_probes = if n_features == 0 { 0 } else { self.num_probes };
        (0..n_probes).map(move |p| {
            let mut rng = SplitMix64::new(seed ^ (p as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            // Inseq's initial importance logits: `torch.rand`.
            let logits = (0..n_features).map(|_| rng.uniform()).collect();
            Probe {
                row,
                rng,
                logits,
                stopped: false,
            }
        })
    }

    /// The update perturbation of every running probe: each token replaced with
    /// probability `replacing_ratio`; per probe, its index, which tokens were replaced and the input.
    fn draw_updates(
        &self,
        probes: &mut [Probe],
        rows: &RowFeatures,
        vocab: usize,
    ) -> Vec<(usize, Vec<bool>, Request)> {
        let mut updates = Vec::new();
        for (i, probe) in probes.iter_mut().enumerate().filter(|(_, p)| !p.stopped) {
            let ids = &rows.ids[probe.row];
            let mut replaced = Vec::with_capacity(ids.len());
            let new_ids = ids
                .iter()
                .map(|&id| {
                    let replace = probe.rng.uniform() < self.replacing_ratio;
                    replaced.push(replace);
                    if replace {
                        self.sampler.sample(id, vocab, &mut probe.rng)
                    } else {
                        id
                    }
                })
                .collect();
            updates.push((
                i,
                replaced,
                Request {
                    row: probe.row,
                    ids: new_ids,
                },
            ));
        }
        updates
    }

    /// Grows the logits of every still running probe of `updates` by its
    /// perturbation's probability change from `p0`; returns the stopping-condition
    /// input each updated probe is to be checked on.
    fn apply_updates(
        &self,
        probes: &mut [Probe],
        updates: Vec<(usize, Vec<bool>)>,
        results: &[(f64, bool)],
        p0: &[f64],
        rows: &RowFeatures,
        vocab: usize,
    ) -> Vec<(usize, Request)> {
        let mut pending_stop = Vec::new();
        for ((i, replaced), &(p_hat, _)) in updates.into_iter().zip(results) {
            let probe = &mut probes[i];
            if probe.stopped {
                continue;
            }
            let delta = p0[probe.row] - p_hat;
            for (s, &rep) in probe.logits.iter_mut().zip(&replaced) {
                let d = if rep { delta } else { -delta };
                *s += logit(d * 0.5 + 0.5);
            }
            let row = probe.row;
            let ids = self.stopping_input(probe, &rows.ids[row], vocab);
            pending_stop.push((i, Request { row, ids }));
        }
        pending_stop
    }

    /// Runs update rounds until every probe has stopped or `max_probe_steps`
    /// rounds are done. Each round evaluates the stopping condition of the previous
    /// update together with the next update's perturbations, so one forward pass serves both.
    fn run_probes(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        rows: &RowFeatures,
        probes: &mut [Probe],
        vocab: usize,
    ) -> Result<()> {
        let p0 = self.original_probabilities(ctx, step, rows)?;
        let mut pending_stop: Vec<(usize, Request)> = Vec::new();
        let mut rounds = 0;
        loop {
            let updates = if rounds < self.max_probe_steps {
                self.draw_updates(probes, rows, vocab)
            } else {
                Vec::new()
            };
            if updates.is_empty() && pending_stop.is_empty() {
                return Ok(());
            }
            let n_stop = pending_stop.len();
            let mut requests: Vec<Request> = Vec::with_capacity(n_stop + updates.len());
            let mut stop_probes = Vec::with_capacity(n_stop);
            for (i, req) in pending_stop.drain(..) {
                stop_probes.push(i);
                requests.push(req);
            }
            let mut update_probes = Vec::with_capacity(updates.len());
            for (i, replaced, req) in updates {
                update_probes.push((i, replaced));
                requests.push(req);
            }
            let results = self.evaluate(ctx, step, &rows.features, &requests)?;
            for (&i, &(_, hit)) in stop_probes.iter().zip(&results[..n_stop]) {
                probes[i].stopped |= hit;
            }
            pending_stop =
                self.apply_updates(probes, update_probes, &results[n_stop..], &p0, rows, vocab);
            rounds += 1;
        }
    }

    /// Probability of the target on the original inputs, per row.
    fn original_probabilities(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        rows: &RowFeatures,
    ) -> Result<Vec<f64>> {
        let originals: Vec<Request> = (0..rows.ids.len())
            .map(|row| Request {
                row,
                ids: rows.ids[row].clone(),
            })
            .collect();
        Ok(self
            .evaluate(ctx, step, &rows.features, &originals)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
}

/// The mask of the attributed source, checked against the step: `None` for decoder-only models.
fn checked_source_mask(encoder_decoder: bool, step: &StepInput) -> Result<Option<&Vec<Vec<bool>>>> {
    let batch = step.prefix_ids.len();
    match (encoder_decoder, &step.source_ids, &step.source_mask) {
        (false, _, _) => Ok(None),
        (true, Some(ids), Some(m)) if ids.len() == batch && m.len() == batch => Ok(Some(m)),
        (true, Some(_), None) => Err(Error::InvalidInput(
            "reagent: the source has no mask".into(),
        )),
        (true, Some(_), Some(_)) => Err(Error::InvalidInput(
            "reagent: source and prefix rows differ in number".into(),
        )),
        (true, None, _) => Err(Error::InvalidInput(
            "reagent: an encoder-decoder step needs a source".into(),
        )),
    }
}

/// The attributed tokens of every batch row.
struct RowFeatures {
    /// Per row, the attributed positions (source first, as Inseq concatenates them).
    features: Vec<Vec<Feature>>,
    /// Per row, the ids at those positions.
    ids: Vec<Vec<usize>>,
    /// Per row, the seed of its probes.
    seeds: Vec<u64>,
}

/// Padded lengths of the attributed sequences and what is attributed.
struct StepLayout<'a> {
    source_mask: Option<&'a Vec<Vec<bool>>>,
    attribute_target: bool,
    src_len: usize,
    tgt_len: usize,
}

impl RowFeatures {
    /// Collects the attributed tokens of every row of `step`, and the rows' seeds.
    fn collect(step: &StepInput, layout: &StepLayout, seed: u64) -> Self {
        let batch = step.prefix_ids.len();
        let mut rows = Self {
            features: Vec::with_capacity(batch),
            ids: Vec::with_capacity(batch),
            seeds: Vec::with_capacity(batch),
        };
        for r in 0..batch {
            let mut f: Vec<Feature> = Vec::new();
            let mut context = Vec::new();
            if let Some(m) = layout.source_mask {
                f.extend((0..layout.src_len).filter(|&j| m[r][j]).map(|j| (true, j)));
            }
            let prefix_real = (0..layout.tgt_len).filter(|&j| step.prefix_mask[r][j]);
            if layout.attribute_target {
                f.extend(prefix_real.map(|j| (false, j)));
            } else {
                context.extend(prefix_real.map(|j| step.prefix_ids[r][j]));
            }
            let ids: Vec<usize> = f
                .iter()
                .map(|&(is_src, j)| match (&step.source_ids, is_src) {
                    (Some(s), true) => s[r][j],
                    _ => step.prefix_ids[r][j],
                })
                .collect();
            rows.seeds
                .push(row_seed(seed, &ids, &context, step.target_ids[r]));
            rows.features.push(f);
            rows.ids.push(ids);
        }
        rows
    }
}

/// Per row, the mean importance over the probes that stopped (all probes if
/// none did), laid out as flat `[batch, src_len]` and `[batch, tgt_len]` scores.
fn mean_importance(
    rows: &RowFeatures,
    probes: &[Probe],
    layout: &StepLayout,
) -> (Vec<f32>, Vec<f32>) {
    let (batch, src_len, tgt_len) = (rows.features.len(), layout.src_len, layout.tgt_len);
    let mut src_out = vec![0f32; batch * src_len];
    let mut tgt_out = vec![0f32; batch * tgt_len];
    for (r, feats) in rows.features.iter().enumerate() {
        let row_probes: Vec<&Probe> = probes.iter().filter(|p| p.row == r).collect();
        let stopped: Vec<&Probe> = row_probes.iter().copied().filter(|p| p.stopped).collect();
        let used = if stopped.is_empty() {
            row_probes
        } else {
            stopped
        };
        if used.is_empty() {
            continue;
        }
        let mut mean = vec![0f64; feats.len()];
        for p in &used {
            for (m, v) in mean.iter_mut().zip(softmax(&p.logits)) {
                *m += v;
            }
        }
        for (&(is_src, j), m) in feats.iter().zip(mean) {
            let v = (m / used.len() as f64) as f32;
            if is_src {
                src_out[r * src_len + j] = v;
            } else {
                tgt_out[r * tgt_len + j] = v;
            }
        }
    }
    (src_out, tgt_out)
}

impl AttributionMethod for Reagent {
    fn id(&self) -> &str {
        "reagent"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let model = ctx.model;
        let batch = step.prefix_ids.len();
        let vocab = model.info().vocab_size;
        Self::check_step(ctx, step, vocab)?;
        let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
        let source_mask = checked_source_mask(encoder_decoder, step)?;
        let layout = StepLayout {
            source_mask,
            attribute_target: ctx.attribute_target || !encoder_decoder,
            src_len: source_mask.and_then(|m| m.first()).map_or(0, Vec::len),
            tgt_len: step.prefix_mask.first().map_or(0, Vec::len),
        };
        let rows = RowFeatures::collect(step, &layout, self.seed);
        let mut probes: Vec<Probe> = Vec::with_capacity(batch * self.num_probes);
        for (r, ids) in rows.ids.iter().enumerate() {
            probes.extend(self.row_probes(r, rows.seeds[r], ids.len()));
        }
        self.run_probes(ctx, step, &rows, &mut probes, vocab)?;

        let (src_out, tgt_out) = mean_importance(&rows, &probes, &layout);
        let device = model.device();
        let to_t = |v: Vec<f32>, len: usize| {
            Tensor::<3>::from_data(TensorData::new(v, [batch, len, 1]), device)
        };
        Ok(StepAttribution {
            source: source_mask.map(|_| to_t(src_out, layout.src_len)),
            target: layout
                .attribute_target
                .then(|| to_t(tgt_out, layout.tgt_len)),
            deltas: None,
            score_dims: Some(vec![]),
        })
    }
}
