//! Transformer language models for attribution, on burn's backend-agnostic tensors.
//!
//! - [`LanguageModel`]: the interface attribution methods use (embed, forward on
//!   embeddings, attention weights and hidden states on request).
//! - Architectures: decoder-only models on one block layer (GPT-2, Llama, Mistral, Qwen2/3,
//!   Gemma 1/2/3, Phi-3, OLMo 2, GPT-NeoX, OPT, Falcon), [`marian::Marian`], [`bart::Bart`],
//!   [`mbart::MBart`], [`mbart::M2M100`], [`t5::T5`] (T5, mT5, UMT5).
//! - Loading: [`load_pretrained`] from a `save_pretrained` directory
//!   (config.json; model.safetensors, pytorch_model.bin ([`torch_bin`]) or their sharded
//!   indexes; tokenizer.json or a Marian repository's SentencePiece files ([`marian_spm`])),
//!   a GGUF file, or a Hugging Face id through hf-hub (offline cache honoured).
//! - [`generate_greedy`]: greedy decoding.
//!
//! ```no_run
//! use inseq_models::{load_pretrained, generate_greedy, GenerationOptions};
//! let device = burn::tensor::Device::default();
//! let m = load_pretrained("tests/fixtures/models/tiny-gpt2", &device).unwrap();
//! let prompt = m.tokenizer.encode("Hello ladies and", true).unwrap();
//! let new = generate_greedy(m.model.as_ref(), None, &prompt, GenerationOptions::default()).unwrap();
//! println!("{}", m.tokenizer.decode(&new, true).unwrap());
//! ```
#![warn(missing_docs)]

pub mod backprop;
pub mod bart;
pub mod beam;
pub(crate) mod blocks;
pub mod checkpoint;
pub mod compact;
pub mod falcon;
pub mod gemma;
pub mod generate;
pub mod generation_config;
pub mod gguf;
pub mod gpt2;
pub mod gpt_neox;
pub mod hub;
pub mod llama;
pub mod loader;
pub mod m2m100_spm;
pub mod marian;
pub mod marian_spm;
pub mod mbart;
pub mod model;
pub mod nn;
pub mod olmo2;
pub mod opt;
pub mod phi3;
pub mod qwen3;
pub mod special_tokens;
pub mod spm;
pub mod t5;
pub mod t5_spm;
pub mod tokenizer;
pub mod torch_bin;
pub mod weights;

pub use backprop::SharedForward;
pub use beam::{BeamHypothesis, EarlyStopping};
pub use blocks::core::CHUNK_FLOATS;
#[doc(hidden)]
pub use blocks::core::with_chunk_floats;
pub use compact::{Matrix, WeightStorage};
pub use generate::{
    GenerationOptions, RecordedAttentions, beam_search, generate_greedy, generate_greedy_recording,
};
pub use generation_config::GenerationConfig;
pub use loader::{
    LoadOptions, MODEL_ALIASES, Pretrained, SUPPORTED_ARCHITECTURES, load_dir, load_dir_with,
    load_pretrained, load_pretrained_with, models_dir,
};
pub use model::{
    AttentionKind, ForwardOptions, KvCache, LanguageModel, LayerOverride, LayerRef, McDropout,
    ModelInfo, ModelInput, ModelKind, ModelOutput, OverrideMode, ValueZeroing,
};
pub use nn::ids_tensor;
pub use special_tokens::SpecialTokens;
pub use tokenizer::{LanguageOptions, TextTokenizer};
pub use torch_bin::TorchBinSource;
pub use weights::{RawTensor, SafetensorsSource, WeightSource, Weights, open_weights_dir};
