//! The model-randomisation sanity check (Adebayo et al., 2018, "Sanity Checks for Saliency
//! Maps", NeurIPS, section 3.1, cascading randomisation): the weights of the top `k` layers are
//! re-drawn at random, top layer first, and the attribution of the same output is compared with
//! the trained model's by Spearman rank correlation over the input tokens. A method whose
//! scores reflect what the model learned should lose correlation as more layers are
//! randomised; one whose scores stay the same does not depend on the model's parameters.
//!
//! The randomised model is built from the outside of `inseq-models`: its weight file is read
//! through [`RandomisedWeights`], which re-draws every tensor of the randomised decoder blocks
//! from a normal distribution with that tensor's mean and standard deviation (seeded by the
//! tensor's name), and the architecture is built with [`inseq::models::loader::build_model`].
//! The cascade runs over the decoder stack (the only stack of decoder-only models).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use inseq::models::gguf::GgufModelFile;
use inseq::models::loader::build_model;
use inseq::models::{
    MODEL_ALIASES, Pretrained, RawTensor, SafetensorsSource, WeightSource, load_pretrained,
    models_dir,
};
use inseq::{AttributionModel, Error, MethodArgs, Registries, Result};

use crate::rng::{Rng, hash_ids};
use crate::stats::spearman;
use crate::step::EvalStep;

/// A weight source whose decoder blocks from `from_layer` on are re-drawn at random.
pub struct RandomisedWeights {
    /// The trained weights.
    pub inner: Box<dyn WeightSource>,
    /// First randomised block (blocks `from_layer..` are randomised).
    pub from_layer: usize,
    /// Seed of the new weights.
    pub seed: u64,
}

/// The decoder block a Hugging Face tensor name belongs to (`transformer.h.3.attn...`,
/// `model.layers.3...`, `model.decoder.layers.3...`, `decoder.block.3...`); `None` for
/// embeddings, final norms, heads and encoder blocks.
pub fn decoder_block_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.contains(&"encoder") {
        return None;
    }
    parts.windows(2).find_map(|w| {
        ["h", "layers", "block", "layer"]
            .contains(&w[0])
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

impl WeightSource for RandomisedWeights {
    fn read(&mut self, name: &str) -> Result<Option<RawTensor>> {
        let tensor = self.inner.read(name)?;
        match tensor {
            Some(mut t) if decoder_block_of(name).is_some_and(|b| b >= self.from_layer) => {
                let seed = hash_ids(name.bytes().map(usize::from));
                redraw(&mut t.data, Rng::derived(self.seed, &[seed]));
                Ok(Some(t))
            }
            other => Ok(other),
        }
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn origin(&self) -> PathBuf {
        self.inner.origin()
    }
}

/// Replaces `data` by normal draws with its own mean and standard deviation (Box-Muller).
fn redraw(data: &mut [f32], mut rng: Rng) {
    let n = data.len().max(1) as f64;
    let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    for v in data.iter_mut() {
        let (u1, u2) = (rng.next_f64().max(f64::MIN_POSITIVE), rng.next_f64());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        *v = (mean + std * z) as f32;
    }
}

/// The weight file of a local model (directory, `.gguf` file or alias) and its config path.
fn open_weights(name_or_path: &str) -> Result<(Box<dyn WeightSource>, PathBuf)> {
    let alias = MODEL_ALIASES.iter().find(|(a, _)| *a == name_or_path);
    let path = alias.map_or_else(
        || PathBuf::from(name_or_path),
        |(_, f)| models_dir().join(f),
    );
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok((Box::new(GgufModelFile::open(&path)?), path));
    }
    if path.is_dir() {
        let source = SafetensorsSource::open_dir(&path)?;
        return Ok((Box::new(source), path.join("config.json")));
    }
    Err(Error::Unsupported(format!(
        "model randomisation reads the weights of a local model: `{name_or_path}` is not a \
         directory, .gguf file or alias (pass a hub model's snapshot directory)"
    )))
}

/// `name_or_path` loaded with its top `top_layers` decoder blocks re-drawn (seeded).
pub fn load_randomised(
    name_or_path: &str,
    top_layers: usize,
    seed: u64,
    device: &Device,
) -> Result<Pretrained> {
    let mut pretrained = load_pretrained(name_or_path, device)?;
    let layers = pretrained.model.info().num_layers;
    let (inner, config_path) = open_weights(name_or_path)?;
    let source = RandomisedWeights {
        inner,
        from_layer: layers.saturating_sub(top_layers),
        seed,
    };
    pretrained.model = build_model(&pretrained.config, Box::new(source), &config_path, device)?;
    Ok(pretrained)
}

/// [`load_randomised`] ready to attribute with `method` (looked up in `registries`).
pub fn randomised_model(
    name_or_path: &str,
    top_layers: usize,
    seed: u64,
    device: &Device,
    registries: &Registries,
) -> Result<AttributionModel> {
    let pretrained = load_randomised(name_or_path, top_layers, seed, device)?;
    let method = registries.methods.create("dummy", MethodArgs::default())?;
    let steps = registries.steps.clone();
    Ok(
        AttributionModel::new(pretrained, method, "dummy", MethodArgs::default(), steps)
            .with_registries(registries.clone()),
    )
}

/// The numbers of top layers randomised at each of `count` cascade levels of a model of
/// `layers` blocks: evenly spaced from 1 to all (`count` 1: all layers).
///
/// ```
/// assert_eq!(inseq_eval::randomisation::cascade_levels(12, 3), vec![1, 7, 12]);
/// assert_eq!(inseq_eval::randomisation::cascade_levels(2, 5), vec![1, 2]);
/// ```
pub fn cascade_levels(layers: usize, count: usize) -> Vec<usize> {
    let (layers, count) = (layers.max(1), count.max(1));
    if count == 1 {
        return vec![layers];
    }
    let mut out: Vec<usize> = (0..count)
        .map(|i| 1 + ((layers - 1) as f64 * i as f64 / (count - 1) as f64).round() as usize)
        .collect();
    out.dedup();
    out
}

/// Mean Spearman correlation between the scores of the trained model's steps and the
/// randomised model's steps of the same output; steps whose attributed tokens differ, or whose
/// correlation is undefined (constant scores), are left out (`NaN` when none is left).
pub fn rank_correlation(trained: &[EvalStep], randomised: &[EvalStep]) -> f64 {
    let values: Vec<f64> = trained
        .iter()
        .zip(randomised)
        .filter(|(a, b)| a.attributed == b.attributed && a.prefix == b.prefix)
        .map(|(a, b)| {
            let f = |s: &EvalStep| s.scores.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            spearman(&f(a), &f(b))
        })
        .collect();
    crate::stats::mean(&values)
}

/// Whether `path` names a model [`load_randomised`] can read.
pub fn supports(name_or_path: &str) -> bool {
    MODEL_ALIASES.iter().any(|(a, _)| *a == name_or_path)
        || Path::new(name_or_path).is_dir()
        || name_or_path.ends_with(".gguf")
}
