//! Compact weights (`WeightStorage::Compact`: bf16/f16 safetensors and GGUF block matrices kept as
//! stored and widened per use) give exactly the logits, hidden states and gradients of the same
//! file widened to `f32` at load time: the widened matrices hold the same values in the same layout.
//! Fixtures: `tests/fixtures/compact/make_half.py` (bf16 Llama, f16 GPT-2),
//! `tests/fixtures/gguf/` (Q8_0/F16 Llama with permuted query/key rows, transposed GPT-2), and
//! SmolLM2-135M's Q4_1 GGUF when present.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use inseq_models::{
    ForwardOptions, LanguageModel, LoadOptions, Matrix, ModelInput, SafetensorsSource,
    WeightStorage, Weights, ids_tensor, load_pretrained_with, models_dir,
};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn load(path: &Path, storage: WeightStorage) -> Box<dyn LanguageModel> {
    let options = LoadOptions {
        weights: storage,
        ..Default::default()
    };
    load_pretrained_with(path.to_str().unwrap(), &Device::default(), &options)
        .unwrap()
        .model
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_to_vec_as::<f32>().unwrap()
}

fn assert_same<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
    let (a, b) = (to_vec(a), to_vec(b));
    assert_eq!(a.len(), b.len(), "{what}: length");
    let diff = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x.to_bits() != y.to_bits());
    assert!(diff.is_none(), "{what}: differs at {diff:?}");
}

/// Embeddings, logits, final hidden states and the hand-written backward passes of the file at
/// `path` with compact and with `f32` weights are bit for bit the same, on two rows (one
/// left-padded) of `len` tokens below `vocab`.
fn check(path: &Path, len: usize) {
    let (dense, compact) = (
        load(path, WeightStorage::F32),
        load(path, WeightStorage::Compact),
    );
    let device = dense.device().clone();
    let vocab = dense.info().vocab_size;
    let row = |k: usize| (0..len).map(|i| (i * 37 + k * 11 + 5) % vocab).collect();
    let ids: Vec<Vec<usize>> = vec![row(0), row(1)];
    let mut mask = vec![vec![true; len]; 2];
    mask[1][0] = false;
    let embeds = dense.embed(ids_tensor(&ids, &device));
    assert_same(
        compact.embed(ids_tensor(&ids, &device)),
        embeds.clone(),
        "embeddings",
    );
    let input = ModelInput {
        target_embeds: embeds,
        target_mask: mask,
        source_embeds: None,
        source_mask: None,
    };
    let logits = |m: &dyn LanguageModel| m.forward(input.clone(), ForwardOptions::default()).logits;
    assert_same(logits(compact.as_ref()), logits(dense.as_ref()), "logits");
    let (a, b) = (
        dense.forward_shared(&input).unwrap(),
        compact.forward_shared(&input).unwrap(),
    );
    let hidden = dense.info().hidden_size;
    for position in [1, len - 1] {
        let h = a.final_hidden(position);
        assert_same(b.final_hidden(position), h.clone(), "final hidden");
        assert_same(b.logits(h.clone()), a.logits(h), "head logits");
        let weights: Vec<f32> = (0..2 * hidden)
            .map(|i| (i % 7) as f32 / 7.0 - 0.4)
            .collect();
        let grad = Tensor::<2>::from_data(TensorData::new(weights, [2, hidden]), &device);
        assert_same(
            b.backward(position, grad.clone()),
            a.backward(position, grad),
            "gradient",
        );
    }
}

#[test]
fn bf16_llama_compact_equals_f32() {
    check(&fixture("compact/tiny-llama-bf16"), 7);
}

#[test]
fn f16_gpt2_compact_equals_f32() {
    check(&fixture("compact/tiny-gpt2-f16"), 7);
}

#[test]
fn gguf_llama_compact_equals_f32() {
    check(&fixture("gguf/tiny-llama.gguf"), 7);
}

#[test]
fn gguf_gpt2_compact_equals_f32() {
    check(&fixture("gguf/tiny-gpt2.gguf"), 7);
}

#[test]
fn smollm2_compact_equals_f32() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        assert!(
            std::env::var("INSEQ_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{} is missing and INSEQ_REQUIRE_MODELS=1",
            path.display()
        );
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    check(&path, 12);
}

/// Half-precision matrices are kept as stored only when asked: `F32` and `Auto` (a tiny model is
/// far below the threshold) widen at load time; `Compact` keeps them, and widens them to the
/// tensor `F32` loads.
#[test]
fn storage_decides_where_matrices_live() {
    let dir = fixture("compact/tiny-llama-bf16");
    let name = "layers.0.mlp.gate_proj.weight";
    let matrix = |storage| {
        let source = SafetensorsSource::open_dir(&dir).unwrap();
        let mut w =
            Weights::new(Box::new(source), &["model."], &Device::default()).with_storage(storage);
        w.matrix_transposed(name, [64, 32]).unwrap()
    };
    assert!(matches!(matrix(WeightStorage::F32), Matrix::Dense(_)));
    assert!(matches!(matrix(WeightStorage::Auto), Matrix::Dense(_)));
    let compact = matrix(WeightStorage::Compact);
    assert!(matches!(compact, Matrix::Stored(..)));
    assert_eq!(compact.dims(), [32, 64]);
    assert_same(
        compact.dense(),
        matrix(WeightStorage::F32).dense(),
        "widened",
    );
    assert!(WeightStorage::parse("bf16").is_err());
}
