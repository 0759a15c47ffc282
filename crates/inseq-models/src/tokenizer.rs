//! A thin wrapper over a `tokenizers` tokenizer with the operations attribution needs.

use std::path::Path;

use inseq_core::{Error, Result};

/// A Hugging Face tokenizer plus the special-token ids the model uses.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The tokenizer of target texts where it differs (Marian's `target.spm`).
    target: Option<tokenizers::Tokenizer>,
    /// Why target texts cannot be encoded (an M2M100 tokenizer without `tgt_lang`).
    no_target: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl TextTokenizer {
    /// Wraps an existing tokenizer.
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            target: None,
            no_target: None,
        }
    }

    /// A tokenizer that encodes target texts with `target` (same vocabulary, another
    /// segmentation: Marian's `target.spm`) and everything else with `inner`.
    pub fn with_target(inner: tokenizers::Tokenizer, target: tokenizers::Tokenizer) -> Self {
        Self {
            inner,
            target: Some(target),
            no_target: None,
        }
    }

    /// A tokenizer whose [`Self::encode_target`] is an error saying `reason`.
    pub fn without_target(inner: tokenizers::Tokenizer, reason: String) -> Self {
        Self {
            inner,
            target: None,
            no_target: Some(reason),
        }
    }

    /// Encodes a target text: as [`Self::encode`], with the target tokenizer where there is one
    /// (as transformers' `tokenizer(text_target=...)`).
    pub fn encode_target(&self, text: &str, special: bool) -> Result<Vec<usize>> {
        if let Some(reason) = &self.no_target {
            return Err(Error::Tokenizer(reason.clone()));
        }
        let enc = self
            .target
            .as_ref()
            .unwrap_or(&self.inner)
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i as usize).collect())
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "the tokenizer (tokenizer.json)".into(),
            });
        }
        tokenizers::Tokenizer::from_file(path)
            .map(Self::new)
            .map_err(|e| Error::CorruptFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// The tokenizer of a model directory: its `tokenizer.json`, else one built from
    /// SentencePiece files: a Marian repository's `source.spm` and `vocab.json`
    /// ([`crate::marian_spm`]), an M2M100 one's `sentencepiece.bpe.model` and `vocab.json`
    /// ([`crate::m2m100_spm`]), or a T5 / mT5 repository's `spiece.model` ([`crate::t5_spm`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if !json.exists() && crate::marian_spm::is_marian_spm_dir(dir) {
            let (source, target) = crate::marian_spm::marian_tokenizers(dir)?;
            return Ok(Self::with_target(source, target));
        }
        if !json.exists() && crate::m2m100_spm::is_m2m100_spm_dir(dir) {
            return Ok(match crate::m2m100_spm::m2m100_tokenizers(dir)? {
                (source, Some(target)) => Self::with_target(source, target),
                (source, None) => Self::without_target(
                    source,
                    format!(
                        "{}: M2M100 target texts need `tgt_lang` in tokenizer_config.json",
                        dir.display()
                    ),
                ),
            });
        }
        if !json.exists() && crate::t5_spm::is_t5_spm_dir(dir) {
            return crate::t5_spm::t5_tokenizer(dir).map(Self::new);
        }
        Self::from_file(&json)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` (special tokens added as the tokenizer's post-processor says when `special`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<usize>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i as usize).collect())
    }

    /// The strings of the tokenizer's special tokens (its added tokens marked special, as
    /// `transformers`' `all_special_tokens`), longest first.
    pub fn special_token_strings(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .map(|t| t.content)
            .collect();
        tokens.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        tokens
    }

    /// Decodes ids to text, optionally skipping special tokens.
    pub fn decode(&self, ids: &[usize], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The token string of each id (`<unk>`-like placeholder for unknown ids).
    pub fn id_to_token(&self, id: usize) -> String {
        self.inner
            .id_to_token(id as u32)
            .unwrap_or_else(|| format!("<id:{id}>"))
    }

    /// The id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<usize> {
        self.inner.token_to_id(token).map(|i| i as usize)
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
