//! Building a `tokenizers` tokenizer from the `tokenizer.ggml.*` metadata,
//! mirroring Hugging Face transformers' GGUF tokenizer conversion
//! (`integrations/gguf/gguf_tokenizer_mapping.py`): byte-level BPE for
//! `tokenizer.ggml.model = "gpt2"`, SentencePiece-style BPE for `"llama"`.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::file::{GgufFile, GgufValue};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// The split regex for a `tokenizer.ggml.pre` value; `None` means GPT-2's
/// byte-level regex (what `smollm`, `gpt2`, `default`... use).
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte -> printable character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>, String> {
    match file.get(key) {
        None => Ok(None),
        Some(GgufValue::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not an array of strings")),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

fn ints(file: &GgufFile, key: &str) -> Result<Option<Vec<i64>>, String> {
    match file.get(key) {
        None => Ok(None),
        Some(GgufValue::Array(items)) => items
            .iter()
            .map(|v| match *v {
                GgufValue::I32(x) => Some(x.into()),
                GgufValue::U32(x) => Some(x.into()),
                GgufValue::I8(x) => Some(x.into()),
                GgufValue::U8(x) => Some(x.into()),
                GgufValue::I16(x) => Some(x.into()),
                GgufValue::U16(x) => Some(x.into()),
                GgufValue::I64(x) => Some(x),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not an array of integers")),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

fn floats(file: &GgufFile, key: &str) -> Result<Option<Vec<f64>>, String> {
    match file.get(key) {
        None => Ok(None),
        Some(GgufValue::Array(items)) => items
            .iter()
            .map(GgufValue::as_f64)
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not an array of numbers")),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

fn token_id(file: &GgufFile, key: &str, vocab_len: usize) -> Option<usize> {
    file.get(key)
        .and_then(GgufValue::as_u64)
        .map(|v| v as usize)
        .filter(|&v| v < vocab_len)
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// A `TemplateProcessing` adding BOS/EOS as the flags say, or `None` when neither is added.
fn template(bos: Option<(usize, &str)>, eos: Option<(usize, &str)>) -> Option<Value> {
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let piece = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special = serde_json::Map::new();
    if let Some((id, tok)) = bos {
        single.push(piece(tok, 0));
        special.insert(tok.into(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
    }
    single.push(seq("A", 0));
    if let Some((id, tok)) = eos {
        single.push(piece(tok, 0));
        special.insert(tok.into(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
    }
    pair.extend(single.iter().cloned());
    if let Some((_, tok)) = bos {
        pair.push(piece(tok, 1));
    }
    pair.push(seq("B", 1));
    if let Some((_, tok)) = eos {
        pair.push(piece(tok, 1));
    }
    Some(
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}),
    )
}

/// Merges the vocabulary implies when the file lists none (transformers' `generate_merges`
/// with SentencePiece scores: higher score merges first).
fn generate_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f64, usize, usize)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (split, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((li, ri, score, l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        merges.extend(local);
    }
    // Stable sort, descending by (score, len(left), len(right)) like Python's `sorted(reverse=True)`.
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.3.cmp(&a.3))
            .then(b.4.cmp(&a.4))
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

/// The token strings and, if the file has them, their llama.cpp types.
type TokensAndTypes = (Vec<String>, Option<Vec<i64>>);

/// The file's tokens and token types, checked to be non-empty and of one length.
fn read_tokens(file: &GgufFile) -> Result<TokensAndTypes, String> {
    let tokens =
        strings(file, "tokenizer.ggml.tokens")?.ok_or("no `tokenizer.ggml.tokens` metadata")?;
    if tokens.is_empty() {
        return Err("`tokenizer.ggml.tokens` is empty".into());
    }
    let token_types = ints(file, "tokenizer.ggml.token_type")?;
    if token_types
        .as_ref()
        .is_some_and(|t| t.len() != tokens.len())
    {
        return Err(
            "`tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length".into(),
        );
    }
    Ok((tokens, token_types))
}

/// The file's merges (`"left right"` strings), if it lists them.
fn read_merges(file: &GgufFile) -> Result<Option<Vec<(String, String)>>, String> {
    Ok(strings(file, "tokenizer.ggml.merges")?.map(|m| {
        m.into_iter()
            .map(|s| match s.split_once(' ') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => (s, String::new()),
            })
            .collect()
    }))
}

/// The BPE vocabulary and merges of a tokenizer model.
struct BpeVocab {
    /// The tokens as the BPE model spells them.
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
    /// The byte-level alphabet (`None` for SentencePiece).
    byte_level: Option<HashSet<char>>,
}

/// Byte-level BPE (`gpt2`): tokens not spelled in the byte alphabet are respelled byte by byte.
fn byte_level_vocab(
    tokens: Vec<String>,
    merges: Option<Vec<(String, String)>>,
) -> Result<BpeVocab, String> {
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| spelling[b as usize]).collect()
            }
        })
        .collect();
    let merges = merges.ok_or("byte-level BPE tokenizer without `tokenizer.ggml.merges`")?;
    Ok(BpeVocab {
        tokens: respelled,
        merges,
        byte_level: Some(alphabet),
    })
}

/// SentencePiece BPE (`llama`): merges from the file, or generated from the token scores.
fn sentencepiece_vocab(
    file: &GgufFile,
    tokens: Vec<String>,
    merges: Option<Vec<(String, String)>>,
) -> Result<BpeVocab, String> {
    let merges = match merges {
        Some(m) => m,
        None => {
            let scores = floats(file, "tokenizer.ggml.scores")?.ok_or(
                "SentencePiece tokenizer without `tokenizer.ggml.merges` or `tokenizer.ggml.scores`",
            )?;
            if scores.len() != tokens.len() {
                return Err(
                    "`tokenizer.ggml.scores` and `tokenizer.ggml.tokens` differ in length".into(),
                );
            }
            generate_merges(&tokens, &scores)
        }
    };
    Ok(BpeVocab {
        tokens,
        merges,
        byte_level: None,
    })
}

/// Control tokens become special added tokens, user-defined ones plain added tokens.
fn added_tokens(bpe: &BpeVocab, token_types: Option<&[i64]>) -> Vec<Value> {
    let mut added = Vec::new();
    if let Some(types) = token_types {
        for (i, (t, &ty)) in bpe.tokens.iter().zip(types).enumerate() {
            if ty == TOKEN_TYPE_CONTROL
                && bpe
                    .byte_level
                    .as_ref()
                    .is_none_or(|a| t.chars().all(|c| a.contains(&c)))
            {
                added.push(added_token(i, t, true));
            }
        }
        for (i, (t, &ty)) in bpe.tokens.iter().zip(types).enumerate() {
            if ty == TOKEN_TYPE_USER_DEFINED {
                added.push(added_token(i, t, false));
            }
        }
    }
    added
}

/// What both tokenizer flavours put in their `tokenizer.json`.
struct TokenizerParts<'a> {
    file: &'a GgufFile,
    tokens: &'a [String],
    added: Vec<Value>,
    vocab: serde_json::Map<String, Value>,
    merges: Vec<Value>,
    bos: Option<usize>,
    eos: Option<usize>,
}

impl TokenizerParts<'_> {
    fn flag(&self, key: &str) -> Option<bool> {
        self.file.get(key).and_then(GgufValue::as_bool)
    }

    /// The BOS/EOS post-processor when the `add_bos`/`add_eos` flags (with these defaults) ask for one.
    fn template(&self, add_bos_default: bool) -> Option<Value> {
        let add_bos = self
            .flag("tokenizer.ggml.add_bos_token")
            .unwrap_or(add_bos_default);
        let add_eos = self.flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let special =
            |id: Option<usize>, on: bool| id.filter(|_| on).map(|i| (i, self.tokens[i].as_str()));
        template(special(self.bos, add_bos), special(self.eos, add_eos))
    }

    /// A byte-level BPE `tokenizer.json` (transformers' GPT-2 conversion).
    fn byte_level_json(self) -> Value {
        let pre = self
            .file
            .get("tokenizer.ggml.pre")
            .and_then(GgufValue::as_str)
            .unwrap_or("default");
        let pre_tokenizer = match pre_tokenizer_split(pre) {
            Some(regex) => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                ],
            }),
            None => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
        };
        let post = self.template(false)
            .unwrap_or_else(|| json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}));
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": self.vocab,
                "merges": self.merges,
            },
        })
    }

    /// A SentencePiece `tokenizer.json` (transformers' LlamaTokenizer, legacy behaviour):
    /// "▁" prefix and spaces through the normalizer, byte fallback, BOS added unless
    /// the file says otherwise.
    fn sentencepiece_json(self, unk: Option<usize>) -> Value {
        let add_prefix = self.flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
        let mut norm = Vec::new();
        if add_prefix {
            norm.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if add_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let post = self.template(true).unwrap_or(Value::Null);
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added,
            "normalizer": {"type": "Sequence", "normalizers": norm},
            "pre_tokenizer": null,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk.map(|i| self.tokens[i].clone()),
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": self.vocab,
                "merges": self.merges,
            },
        })
    }
}

/// Builds the tokenizer described by the file's metadata.
pub(super) fn build(file: &GgufFile) -> Result<tokenizers::Tokenizer, String> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or("no `tokenizer.ggml.model` metadata (the file has no tokenizer)")?;
    let (tokens, token_types) = read_tokens(file)?;
    let merges = read_merges(file)?;
    let n = tokens.len();
    let bos = token_id(file, "tokenizer.ggml.bos_token_id", n);
    let eos = token_id(file, "tokenizer.ggml.eos_token_id", n);
    let unk = token_id(file, "tokenizer.ggml.unknown_token_id", n);
    let bpe = match model {
        "gpt2" => byte_level_vocab(tokens, merges)?,
        "llama" => sentencepiece_vocab(file, tokens, merges)?,
        other => {
            return Err(format!(
                "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
            ));
        }
    };

    let mut vocab = serde_json::Map::with_capacity(n);
    for (i, t) in bpe.tokens.iter().enumerate() {
        // A duplicated token keeps its last id, like the dict transformers builds.
        vocab.insert(t.clone(), json!(i));
    }
    let parts = TokenizerParts {
        file,
        tokens: &bpe.tokens,
        added: added_tokens(&bpe, token_types.as_deref()),
        vocab,
        merges: bpe.merges.iter().map(|(a, b)| json!([a, b])).collect(),
        bos,
        eos,
    };
    let tokenizer = if bpe.byte_level.is_some() {
        parts.byte_level_json()
    } else {
        parts.sentencepiece_json(unk)
    };
    let text = serde_json::to_string(&tokenizer).map_err(|e| e.to_string())?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| format!("could not build the tokenizer: {e}"))
}
