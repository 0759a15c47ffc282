//! Discretized Integrated Gradients (Sanyal & Ren, 2021, "Discretized Integrated Gradients
//! for Explaining Language Models", EMNLP, <https://arxiv.org/abs/2108.13654>): integrated
//! gradients along a non-linear path that hops between (monotonised) embeddings of real
//! vocabulary words, instead of the straight line from the baseline to the input.
//!
//! The path of every token is built as Inseq 0.7.1's `MonotonicPathBuilder` builds it (itself
//! adapted from the authors' code): a k-nearest-neighbour graph over the vocabulary embedding
//! matrix (50 neighbours, Euclidean distance, as `sklearn.neighbors.kneighbors_graph`) is
//! walked from the input word towards the baseline word; each anchor word is then
//! *monotonised* (dimensions not lying between the previous point and the baseline are moved
//! `1/n_steps` of the way towards the baseline) so that the path is monotonic in every
//! dimension.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use burn::tensor::{Tensor, TensorData};
use inseq_core::{Error, Result};
use inseq_models::{LanguageModel, ModelKind, ids_tensor};

use crate::gradient::baseline_ids;
use crate::{
    AttributionMethod, Embedded, MethodArgs, MethodContext, StepAttribution, StepInput, embed_step,
    forward_scores, gradients,
};

/// How the next anchor word of a monotonic path is chosen among the current word's neighbours
/// (Inseq's `PathBuildingStrategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStrategy {
    /// `greedy`: the neighbour closest (Euclidean) to its own monotonised version.
    Greedy,
    /// `maxcount`: the neighbour with the most dimensions already monotonic.
    MaxCount,
}

impl FromStr for PathStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "greedy" => Ok(Self::Greedy),
            "maxcount" => Ok(Self::MaxCount),
            other => Err(Error::invalid_arg(
                "method",
                format!("unknown path building strategy `{other}` (greedy, maxcount)"),
            )),
        }
    }
}

/// Discretized Integrated Gradients on the input embeddings (Sanyal & Ren, 2021), as Inseq
/// 0.7.1's `discretized_integrated_gradients`.
///
/// For every token a path of `n_steps` points runs from the baseline embedding (the `unk`
/// token; end-of-sequence tokens and, for encoder-decoder targets, the decoder start token keep
/// their own embedding) to the token's embedding through monotonised embeddings of
/// neighbouring vocabulary words. Special tokens (beginning/end of sequence, padding, `unk`,
/// decoder start) jump straight from the baseline to themselves. With `p_0 … p_{n-1}` the
/// points of all tokens moved together, the attribution is the left Riemann sum
/// `Σ_{k<n-1} ∇f(p_k) ⊙ (p_{k+1} − p_k)`, additionally multiplied by `x − baseline` when
/// `multiply_by_inputs` (default `false`, as in Inseq).
///
/// Arguments (Inseq's names and defaults): `n_steps=50` (points per path, at least 2),
/// `method=greedy` (path strategy: `greedy` or `maxcount`), `internal_batch_size` (path
/// points × batch rows per forward pass; all at once when absent), `multiply_by_inputs=false`,
/// `return_convergence_delta=false`; and `n_neighbors=50` (size of the nearest-neighbour
/// graph, fixed to 50 in Inseq).
///
/// The scores of a row sum to `f(x) − f(baseline)` up to the discretisation error, reported
/// as the `deltas` step score (`Σ attributions − (f(x) − f(baseline))`) with
/// `return_convergence_delta=true`.
///
/// The nearest-neighbour graph over the vocabulary is built on first use and kept (for the
/// last few embedding tables seen) inside the method, as Inseq builds it once per model.
#[derive(Debug)]
pub struct DiscretizedIntegratedGradients {
    /// Points per path, baseline and input included.
    pub n_steps: usize,
    /// Path building strategy (Inseq's `method` argument).
    pub method: PathStrategy,
    /// Rows per forward pass (path points × batch); all at once when `None`.
    pub internal_batch_size: Option<usize>,
    /// Multiply the path-integrated gradients by `x - baseline` (default `false`).
    pub multiply_by_inputs: bool,
    /// Compute the convergence delta (two extra forward passes).
    pub return_convergence_delta: bool,
    /// Neighbours per word in the vocabulary graph.
    pub n_neighbors: usize,
    graphs: Mutex<Vec<Arc<Vocabulary>>>,
}

impl Default for DiscretizedIntegratedGradients {
    fn default() -> Self {
        Self {
            n_steps: 50,
            method: PathStrategy::Greedy,
            internal_batch_size: None,
            multiply_by_inputs: false,
            return_convergence_delta: false,
            n_neighbors: 50,
            graphs: Mutex::new(Vec::new()),
        }
    }
}

impl Clone for DiscretizedIntegratedGradients {
    fn clone(&self) -> Self {
        let graphs = self.graphs.lock().map(|g| g.clone()).unwrap_or_default();
        Self {
            n_steps: self.n_steps,
            method: self.method,
            internal_batch_size: self.internal_batch_size,
            multiply_by_inputs: self.multiply_by_inputs,
            return_convergence_delta: self.return_convergence_delta,
            n_neighbors: self.n_neighbors,
            graphs: Mutex::new(graphs),
        }
    }
}

/// Embedding tables whose neighbour graphs are kept.
const CACHED_GRAPHS: usize = 4;
/// Vocabulary ids embedded per call when reading the embedding table.
const EMBED_CHUNK: usize = 4096;
/// Table rows compared to recognise a cached embedding table.
const PROBES: usize = 8;

/// A vocabulary embedding table and its nearest-neighbour graph.
struct Vocabulary {
    vocab: usize,
    hidden: usize,
    /// `[vocab, hidden]`, row-major.
    table: Vec<f32>,
    n_neighbors: usize,
    /// Per word, its nearest neighbours (itself excluded), closest first.
    neighbors: Vec<Vec<u32>>,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("vocab", &self.vocab)
            .field("hidden", &self.hidden)
            .field("n_neighbors", &self.n_neighbors)
            .finish_non_exhaustive()
    }
}

impl Vocabulary {
    fn row(&self, id: usize) -> &[f32] {
        &self.table[id * self.hidden..(id + 1) * self.hidden]
    }
}

impl DiscretizedIntegratedGradients {
    /// Builds from arguments (`n_steps`, `method`, `internal_batch_size`,
    /// `multiply_by_inputs`, `return_convergence_delta`, `n_neighbors`).
    pub fn from_args(mut args: MethodArgs) -> Result<Self> {
        let d = Self::default();
        let m = Self {
            n_steps: args.take_size("n_steps", d.n_steps, crate::quadrature::MAX_STEPS)?,
            method: args.take("method", d.method)?,
            internal_batch_size: args.take_opt("internal_batch_size")?,
            multiply_by_inputs: args.take("multiply_by_inputs", d.multiply_by_inputs)?,
            return_convergence_delta: args
                .take("return_convergence_delta", d.return_convergence_delta)?,
            n_neighbors: args.take("n_neighbors", d.n_neighbors)?,
            graphs: d.graphs,
        };
        args.finish("discretized_integrated_gradients")?;
        if m.n_steps < 2 {
            return Err(Error::invalid_arg(
                "n_steps",
                "must be at least 2 (the path includes the baseline and the input)",
            ));
        }
        if m.internal_batch_size == Some(0) {
            return Err(Error::invalid_arg(
                "internal_batch_size",
                "must be at least 1",
            ));
        }
        if m.n_neighbors == 0 {
            return Err(Error::invalid_arg("n_neighbors", "must be at least 1"));
        }
        Ok(m)
    }

    /// The vocabulary graph of the source (`source`) or target embedding table multiplied by
    /// `scale`, from the cache when the table was seen before.
    fn vocabulary(
        &self,
        model: &dyn LanguageModel,
        source: bool,
        scale: f32,
    ) -> Result<Arc<Vocabulary>> {
        let vocab = model.info().vocab_size;
        if vocab < 2 {
            return Err(Error::InvalidInput(format!(
                "discretized_integrated_gradients needs a vocabulary of at least 2 tokens, the model has {vocab}"
            )));
        }
        let probe_ids: Vec<usize> = (0..PROBES.min(vocab))
            .map(|i| i * (vocab - 1) / (PROBES.min(vocab) - 1).max(1))
            .collect();
        let probe = embed_ids(model, &probe_ids, source, scale)?;
        let k = self.n_neighbors.min(vocab - 1);
        let cached = self
            .graphs
            .lock()
            .map_err(|_| Error::Numerical("vocabulary graph cache poisoned".into()))?
            .iter()
            .find(|g| {
                g.vocab == vocab
                    && g.n_neighbors == k
                    && probe.len() == probe_ids.len() * g.hidden
                    && probe_ids.iter().enumerate().all(|(i, &id)| {
                        g.row(id)
                            .iter()
                            .zip(&probe[i * g.hidden..(i + 1) * g.hidden])
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    })
            })
            .cloned();
        if let Some(g) = cached {
            return Ok(g);
        }
        let all: Vec<usize> = (0..vocab).collect();
        let mut table = Vec::new();
        for chunk in all.chunks(EMBED_CHUNK) {
            table.extend(embed_ids(model, chunk, source, scale)?);
        }
        let hidden = table.len() / vocab;
        if hidden == 0 || table.len() != vocab * hidden {
            return Err(Error::Numerical(format!(
                "embedding table of {} values for a vocabulary of {vocab}",
                table.len()
            )));
        }
        let neighbors = knn(&table, vocab, hidden, k, model.device())?;
        let g = Arc::new(Vocabulary {
            vocab,
            hidden,
            table,
            n_neighbors: k,
            neighbors,
        });
        let mut graphs = self
            .graphs
            .lock()
            .map_err(|_| Error::Numerical("vocabulary graph cache poisoned".into()))?;
        if graphs.len() >= CACHED_GRAPHS {
            graphs.remove(0);
        }
        graphs.push(g.clone());
        Ok(g)
    }

    /// The word path from `word` towards `baseline` (`n_steps - 1` words, `word` first),
    /// as Inseq's `MonotonicPathBuilder.find_path`.
    fn word_path(&self, v: &Vocabulary, word: usize, baseline: usize, special: bool) -> Vec<usize> {
        if special {
            return vec![word; self.n_steps - 1];
        }
        let mut path = vec![word];
        let mut current = word;
        for _ in 0..self.n_steps - 2 {
            current = self.closest_word(v, current, baseline, &path);
            path.push(current);
        }
        path
    }

    /// The next anchor after `word` (Inseq's `get_closest_word`): among the neighbours of
    /// `word` that are neither the baseline nor already on the path, the best by the
    /// strategy, ties going to the nearer neighbour; the baseline when none is left.
    fn closest_word(&self, v: &Vocabulary, word: usize, baseline: usize, path: &[usize]) -> usize {
        if word == baseline {
            return baseline;
        }
        let (b, w) = (v.row(baseline), v.row(word));
        let mut best: Option<(f64, usize)> = None;
        for &anchor in &v.neighbors[word] {
            let anchor = anchor as usize;
            if anchor == baseline || path.contains(&anchor) {
                continue;
            }
            let a = v.row(anchor);
            let score = match self.method {
                PathStrategy::Greedy => {
                    let m = monotonic_vec(a, b, w, self.n_steps);
                    a.iter()
                        .zip(&m)
                        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                        .sum::<f64>()
                        .sqrt()
                }
                PathStrategy::MaxCount => {
                    let monotonic = a
                        .iter()
                        .zip(b)
                        .zip(w)
                        .filter(|((x, y), z)| is_monotonic(**x, **y, **z))
                        .count();
                    -(monotonic as f64)
                }
            };
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, anchor));
            }
        }
        best.map_or(baseline, |(_, a)| a)
    }

    /// The `n_steps` points of one token's path, baseline first and input last
    /// (Inseq's `build_monotonic_path_embedding`).
    fn path_points(&self, v: &Vocabulary, word_path: &[usize], baseline: usize) -> Vec<Vec<f32>> {
        let b = v.row(baseline);
        let mut points: Vec<Vec<f32>> = Vec::with_capacity(word_path.len() + 1);
        points.push(v.row(word_path[0]).to_vec());
        for &anchor in &word_path[1..] {
            let next = monotonic_vec(v.row(anchor), b, &points[points.len() - 1], self.n_steps);
            points.push(next);
        }
        points.push(b.to_vec());
        points.reverse();
        points
    }

    /// Path points of one attributed input, `[n_steps, batch, len, hidden]` row-major.
    fn input_paths(
        &self,
        v: &Vocabulary,
        ids: &[Vec<usize>],
        mask: &[Vec<bool>],
        baselines: &[Vec<usize>],
        special: &[usize],
    ) -> Result<Vec<f32>> {
        let n = self.n_steps;
        let (batch, len, h) = (ids.len(), ids.first().map_or(0, Vec::len), v.hidden);
        let mut out = vec![0f32; n * batch * len * h];
        for (r, row) in ids.iter().enumerate() {
            if row.len() != len || mask.get(r).is_none_or(|m| m.len() != len) {
                return Err(Error::InvalidInput(
                    "ragged ids or mask in the step batch".into(),
                ));
            }
            for (j, &word) in row.iter().enumerate() {
                let baseline = baselines[r][j];
                for id in [word, baseline] {
                    if id >= v.vocab {
                        return Err(Error::InvalidInput(format!(
                            "token id {id} is outside the vocabulary of {} tokens",
                            v.vocab
                        )));
                    }
                }
                let points = if mask[r][j] {
                    let path = self.word_path(v, word, baseline, special.contains(&word));
                    self.path_points(v, &path, baseline)
                } else {
                    // Padding: a constant path, so no attribution and no effect on real tokens.
                    vec![v.row(word).to_vec(); n]
                };
                for (k, p) in points.iter().enumerate() {
                    let at = ((k * batch + r) * len + j) * h;
                    out[at..at + h].copy_from_slice(p);
                }
            }
        }
        Ok(out)
    }
}

/// Whether `anchor` lies between `input` and `baseline` in one dimension (Inseq's
/// `get_monotonic_dims`).
fn is_monotonic(anchor: f32, baseline: f32, input: f32) -> bool {
    (baseline > input && baseline >= anchor && anchor >= input)
        || (baseline < input && baseline <= anchor && anchor <= input)
        || (baseline == input && baseline == anchor && anchor == input)
}

/// `anchor` with its non-monotonic dimensions replaced by `input - (input - baseline) / n_steps`
/// (Inseq's `make_monotonic_vec`, in `f32` as there).
fn monotonic_vec(anchor: &[f32], baseline: &[f32], input: &[f32], n_steps: usize) -> Vec<f32> {
    let step = (1.0 / n_steps as f64) as f32;
    anchor
        .iter()
        .zip(baseline)
        .zip(input)
        .map(|((&a, &b), &i)| {
            if is_monotonic(a, b, i) {
                a
            } else {
                i - step * (i - b)
            }
        })
        .collect()
}

/// `[ids.len() * hidden]` embeddings of `ids` (source or target table), times `scale`.
fn embed_ids(
    model: &dyn LanguageModel,
    ids: &[usize],
    source: bool,
    scale: f32,
) -> Result<Vec<f32>> {
    let t = ids_tensor(&[ids.to_vec()], model.device());
    let e = if source {
        model.embed_source(t)
    } else {
        model.embed(t)
    };
    let mut v = e
        .try_to_vec_as::<f32>()
        .map_err(|e| Error::Numerical(format!("{e:?}")))?;
    if scale != 1.0 {
        v.iter_mut().for_each(|x| *x *= scale);
    }
    Ok(v)
}

/// The `k` nearest neighbours (Euclidean, itself excluded) of every row of `table`, closest
/// first, ties by id: squared distances from a matrix product on the model's device pick
/// candidates, which are then ranked by their exact distance.
fn knn(
    table: &[f32],
    vocab: usize,
    hidden: usize,
    k: usize,
    device: &burn::tensor::Device,
) -> Result<Vec<Vec<u32>>> {
    let norms: Vec<f64> = table
        .chunks(hidden)
        .map(|r| r.iter().map(|&x| f64::from(x).powi(2)).sum())
        .collect();
    let exact = |i: usize, j: usize| -> f64 {
        table[i * hidden..(i + 1) * hidden]
            .iter()
            .zip(&table[j * hidden..(j + 1) * hidden])
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum()
    };
    let all = Tensor::<2>::from_data(TensorData::new(table.to_vec(), [vocab, hidden]), device);
    let all_t = all.clone().transpose();
    let candidates = (2 * k + 8).min(vocab - 1);
    let rows_per_chunk = (4_000_000 / vocab).clamp(1, vocab);
    let mut neighbors = Vec::with_capacity(vocab);
    let mut start = 0;
    while start < vocab {
        let end = (start + rows_per_chunk).min(vocab);
        let dots = all
            .clone()
            .slice([start..end, 0..hidden])
            .matmul(all_t.clone())
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))?;
        for i in start..end {
            let row = &dots[(i - start) * vocab..(i - start + 1) * vocab];
            let mut approx: Vec<(f64, usize)> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, &d)| (norms[i] + norms[j] - 2.0 * f64::from(d), j))
                .collect();
            if candidates < approx.len() {
                approx.select_nth_unstable_by(candidates, |a, b| a.0.total_cmp(&b.0));
                approx.truncate(candidates);
            }
            let mut ranked: Vec<(f64, usize)> =
                approx.into_iter().map(|(_, j)| (exact(i, j), j)).collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            neighbors.push(ranked.into_iter().take(k).map(|(_, j)| j as u32).collect());
        }
        start = end;
    }
    Ok(neighbors)
}

/// `[k * batch, len, hidden]` rows `from..from + k` (point-major) of `[n, batch, len, hidden]` paths.
fn points_tensor(
    paths: &[f32],
    from: usize,
    k: usize,
    [batch, len, h]: [usize; 3],
    device: &burn::tensor::Device,
) -> Tensor<3> {
    let size = batch * len * h;
    let data = paths[from * size..(from + k) * size].to_vec();
    Tensor::from_data(TensorData::new(data, [k * batch, len, h]), device)
}

/// `Σ_k grad_k ⊙ (p_{k+1} − p_k)` over the `k` points `from..from + k`.
fn path_sum(
    grads: Tensor<3>,
    paths: &[f32],
    from: usize,
    k: usize,
    [batch, len, h]: [usize; 3],
) -> Tensor<3> {
    let size = batch * len * h;
    let steps: Vec<f32> = paths[(from + 1) * size..(from + k + 1) * size]
        .iter()
        .zip(&paths[from * size..(from + k) * size])
        .map(|(next, cur)| next - cur)
        .collect();
    let steps =
        Tensor::<3>::from_data(TensorData::new(steps, [k * batch, len, h]), &grads.device());
    (grads * steps)
        .reshape([k, batch, len, h])
        .sum_dim(0)
        .reshape([batch, len, h])
}

/// Paths of one attributed input and their shape.
struct InputPaths {
    points: Vec<f32>,
    dims: [usize; 3],
}

/// Fails when a token id of `step` (or the baseline token) is outside the vocabulary.
fn check_in_vocabulary(ctx: &MethodContext, step: &StepInput, vocab: usize) -> Result<()> {
    let out_of_vocab = step
        .source_ids
        .iter()
        .flatten()
        .chain(&step.prefix_ids)
        .flatten()
        .chain(&step.target_ids)
        .chain([&ctx.baseline_token_id])
        .find(|&&id| id >= vocab);
    match out_of_vocab {
        Some(id) => Err(Error::InvalidInput(format!(
            "token id {id} is outside the vocabulary of {vocab} tokens"
        ))),
        None => Ok(()),
    }
}

/// The special tokens of the model and the run, which keep a straight path.
fn special_ids(ctx: &MethodContext) -> Vec<usize> {
    let info = ctx.model.info();
    [
        info.bos_token_id,
        info.eos_token_id,
        info.pad_token_id,
        info.decoder_start_token_id,
        ctx.eos_token_id,
        Some(ctx.baseline_token_id),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Adds `t` to the running sum `acc`.
fn accumulate(acc: &mut Option<Tensor<3>>, t: Tensor<3>) {
    *acc = Some(match acc.take() {
        Some(a) => a + t,
        None => t,
    });
}

/// `[batch, len, hidden]` path point `at` of `p`.
fn path_end(p: &InputPaths, at: usize, device: &burn::tensor::Device) -> Tensor<3> {
    points_tensor(&p.points, at, 1, p.dims, device)
}

/// `[batch]` sum of the scores of `t`, if any.
fn total(t: &Option<Tensor<3>>, batch: usize) -> Option<Tensor<1>> {
    t.as_ref()
        .map(|t| t.clone().sum_dim(2).sum_dim(1).reshape([batch]))
}

/// The paths of a step's attributed inputs and the embedded prefix.
struct StepPaths {
    source: Option<InputPaths>,
    target: Option<InputPaths>,
    /// The embedded prefix, used as is when the target is not attributed.
    prefix: Tensor<3>,
}

impl StepPaths {
    /// The inputs at path point `at` (0: the baseline, `n_steps - 1`: the input).
    fn ends(&self, at: usize, device: &burn::tensor::Device) -> Embedded {
        Embedded {
            source: self.source.as_ref().map(|p| path_end(p, at, device)),
            target: self
                .target
                .as_ref()
                .map_or_else(|| self.prefix.clone(), |p| path_end(p, at, device)),
        }
    }
}

impl DiscretizedIntegratedGradients {
    /// The source paths of an encoder-decoder step (`None` for decoder-only models).
    fn source_paths(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        special: &[usize],
    ) -> Result<Option<InputPaths>> {
        let model = ctx.model;
        let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
        match (encoder_decoder, &step.source_ids, &step.source_mask) {
            (true, Some(ids), Some(mask)) => {
                let v = self.vocabulary(model, true, 1.0)?;
                let baselines = baseline_ids(ctx, ids, Some(mask), false);
                let points = self.input_paths(&v, ids, mask, &baselines, special)?;
                let len = ids.first().map_or(0, Vec::len);
                Ok(Some(InputPaths {
                    points,
                    dims: [step.prefix_ids.len(), len, v.hidden],
                }))
            }
            (true, _, _) => Err(Error::InvalidInput(
                "encoder-decoder step without source ids and mask".into(),
            )),
            _ => Ok(None),
        }
    }

    /// The paths of the target prefix.
    fn target_paths(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        special: &[usize],
    ) -> Result<InputPaths> {
        let model = ctx.model;
        let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
        // Target embeddings as attributed (see `embed_target`): in Inseq-compatibility mode
        // with Python Inseq's extra scaling, so paths are built on the table Inseq uses.
        let scale = if ctx.inseq_compat {
            model.inseq_target_embed_quirk() as f32
        } else {
            1.0
        };
        let v = self.vocabulary(model, false, scale)?;
        let baselines = baseline_ids(
            ctx,
            &step.prefix_ids,
            Some(&step.prefix_mask),
            encoder_decoder,
        );
        let points =
            self.input_paths(&v, &step.prefix_ids, &step.prefix_mask, &baselines, special)?;
        let len = step.prefix_ids.first().map_or(0, Vec::len);
        Ok(InputPaths {
            points,
            dims: [step.prefix_ids.len(), len, v.hidden],
        })
    }

    /// `Σ_k grad_k ⊙ (p_{k+1} − p_k)` along the source and target paths, in
    /// chunks of at most `internal_batch_size` rows. The last point's step is
    /// zero: its gradient is not needed.
    fn integrate(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        paths: &StepPaths,
    ) -> Result<(Option<Tensor<3>>, Option<Tensor<3>>)> {
        let device = ctx.model.device();
        let batch = step.prefix_ids.len();
        let n = self.n_steps;
        let per_chunk = self
            .internal_batch_size
            .map_or(n - 1, |ibs| (ibs / batch).max(1));
        let mut acc_source: Option<Tensor<3>> = None;
        let mut acc_target: Option<Tensor<3>> = None;
        let mut from = 0;
        while from < n - 1 {
            let k = per_chunk.min(n - 1 - from);
            let embedded = Embedded {
                source: paths
                    .source
                    .as_ref()
                    .map(|p| points_tensor(&p.points, from, k, p.dims, device)),
                target: match &paths.target {
                    Some(p) => points_tensor(&p.points, from, k, p.dims, device),
                    None => paths.prefix.clone().repeat_dim(0, k),
                },
            };
            let (gs, gt, _) = gradients(ctx, step, embedded, k)?;
            if let (Some(g), Some(p)) = (gs, &paths.source) {
                accumulate(&mut acc_source, path_sum(g, &p.points, from, k, p.dims));
            }
            if let (Some(g), Some(p)) = (gt, &paths.target) {
                accumulate(&mut acc_target, path_sum(g, &p.points, from, k, p.dims));
            }
            from += k;
        }
        Ok((acc_source, acc_target))
    }

    /// Integrated gradients times `input − baseline` with `multiply_by_inputs`.
    fn scale_by_inputs(
        &self,
        acc: Option<Tensor<3>>,
        p: Option<&InputPaths>,
        device: &burn::tensor::Device,
    ) -> Option<Tensor<3>> {
        acc.map(|g| match (self.multiply_by_inputs, p) {
            (true, Some(p)) => g * (path_end(p, self.n_steps - 1, device) - path_end(p, 0, device)),
            _ => g,
        })
    }

    /// Per row, the attributions' sum minus `f(input) − f(baseline)`.
    fn convergence_deltas(
        &self,
        ctx: &MethodContext,
        step: &StepInput,
        paths: &StepPaths,
        attributions: [&Option<Tensor<3>>; 2],
    ) -> Result<Vec<f32>> {
        let device = ctx.model.device();
        let batch = step.prefix_ids.len();
        let fx = forward_scores(ctx, step, &paths.ends(self.n_steps - 1, device), 1)?;
        let fb = forward_scores(ctx, step, &paths.ends(0, device), 1)?;
        let [source_attr, target_attr] = attributions;
        let sum_attr = match (total(source_attr, batch), total(target_attr, batch)) {
            (Some(s), Some(t)) => s + t,
            (Some(s), None) => s,
            (None, Some(t)) => t,
            (None, None) => return Err(Error::Numerical("nothing attributed".into())),
        };
        (sum_attr - (fx - fb))
            .try_to_vec_as::<f32>()
            .map_err(|e| Error::Numerical(format!("{e:?}")))
    }
}

impl AttributionMethod for DiscretizedIntegratedGradients {
    fn needs_gradients(&self) -> bool {
        true
    }

    fn id(&self) -> &str {
        "discretized_integrated_gradients"
    }

    fn attribute_step(&self, ctx: &MethodContext, step: &StepInput) -> Result<StepAttribution> {
        let model = ctx.model;
        let device = model.device();
        if step.prefix_ids.is_empty() {
            return Err(Error::InvalidInput("empty step batch".into()));
        }
        let encoder_decoder = model.kind() == ModelKind::EncoderDecoder;
        let attribute_target = ctx.attribute_target || !encoder_decoder;
        check_in_vocabulary(ctx, step, model.info().vocab_size)?;
        let special = special_ids(ctx);
        let source = self.source_paths(ctx, step, &special)?;
        let prefix = embed_step(ctx, step, false).target;
        let target = if attribute_target {
            Some(self.target_paths(ctx, step, &special)?)
        } else {
            None
        };
        let paths = StepPaths {
            source,
            target,
            prefix,
        };
        let (acc_source, acc_target) = self.integrate(ctx, step, &paths)?;
        let source_attr = self.scale_by_inputs(acc_source, paths.source.as_ref(), device);
        let target_attr = self.scale_by_inputs(acc_target, paths.target.as_ref(), device);
        let deltas = if self.return_convergence_delta {
            Some(self.convergence_deltas(ctx, step, &paths, [&source_attr, &target_attr])?)
        } else {
            None
        };
        Ok(StepAttribution {
            source: source_attr,
            target: target_attr,
            deltas,
            score_dims: None,
        })
    }
}
