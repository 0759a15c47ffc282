//! llama.cpp -> Hugging Face tensor names and layouts, one table per GGUF architecture, and the
//! inverses of `convert_hf_to_gguf.py`'s tensor rewrites (RoPE row permutation, fused-QKV
//! reordering, `1 + weight` norm scales).

use crate::weights::RawTensor;

/// How a tensor is changed on its way from llama.cpp's layout to Hugging Face's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fix {
    /// Used as stored.
    None,
    /// Undo `convert_hf_to_gguf.py`'s RoPE row permutation with the query head count.
    UnpermuteQ,
    /// Undo the permutation with the key/value head count.
    UnpermuteK,
    /// Swap the two dimensions (GPT-2's `Conv1D` stores `[in, out]`).
    Transpose,
    /// Subtract 1 (Gemma's norm scales, stored by `convert_hf_to_gguf.py` as `1 + weight`).
    MinusOne,
    /// Undo the fused-QKV reordering of GPT-NeoX and Falcon: llama.cpp stores all query rows,
    /// then all key rows, then all value rows; Hugging Face groups them per key/value head
    /// (the head's queries, then its key, then its value).
    Regroup,
}

/// llama.cpp -> Hugging Face tensor names for one architecture.
pub(super) struct ArchTable {
    /// `general.architecture` value.
    pub(super) arch: &'static str,
    /// Prefix of the Hugging Face base-model tensors (`model.`, `transformer.`).
    pub(super) hf_prefix: &'static str,
    /// Hugging Face prefix of a decoder block, `{i}` standing for its index.
    pub(super) hf_block: &'static str,
    /// Whole-model tensors: (llama.cpp name, Hugging Face name without `hf_prefix`).
    /// The LM head ([`ArchTable::head`]) is outside the base model and is never prefixed.
    pub(super) global: &'static [(&'static str, &'static str)],
    /// Per-block tensors: (llama.cpp suffix after `blk.{i}.`, Hugging Face suffix, fix).
    pub(super) block: &'static [(&'static str, &'static str, Fix)],
    /// Norm scales are stored as `1 + weight` (Gemma): every `*norm.weight` gets [`Fix::MinusOne`].
    pub(super) norms_plus_one: bool,
    /// Hugging Face name of the LM head (`lm_head.weight`, GPT-NeoX's `embed_out.weight`).
    pub(super) head: &'static str,
}

const LLAMA: ArchTable = ArchTable {
    arch: "llama",
    hf_prefix: "model.",
    hf_block: "layers.{i}.",
    global: &[
        ("token_embd.weight", "embed_tokens.weight"),
        ("output_norm.weight", "norm.weight"),
        ("output.weight", "lm_head.weight"),
    ],
    block: &[
        ("attn_norm.weight", "input_layernorm.weight", Fix::None),
        ("attn_q.weight", "self_attn.q_proj.weight", Fix::UnpermuteQ),
        ("attn_q.bias", "self_attn.q_proj.bias", Fix::UnpermuteQ),
        ("attn_k.weight", "self_attn.k_proj.weight", Fix::UnpermuteK),
        ("attn_k.bias", "self_attn.k_proj.bias", Fix::UnpermuteK),
        ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
        ("attn_v.bias", "self_attn.v_proj.bias", Fix::None),
        ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
        ("attn_output.bias", "self_attn.o_proj.bias", Fix::None),
        (
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            Fix::None,
        ),
        ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
        ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
        ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
    ],
    norms_plus_one: false,
    head: "lm_head.weight",
};

const GPT2: ArchTable = ArchTable {
    arch: "gpt2",
    hf_prefix: "transformer.",
    hf_block: "h.{i}.",
    global: &[
        ("token_embd.weight", "wte.weight"),
        ("position_embd.weight", "wpe.weight"),
        ("output_norm.weight", "ln_f.weight"),
        ("output_norm.bias", "ln_f.bias"),
        ("output.weight", "lm_head.weight"),
    ],
    block: &[
        ("attn_norm.weight", "ln_1.weight", Fix::None),
        ("attn_norm.bias", "ln_1.bias", Fix::None),
        ("attn_qkv.weight", "attn.c_attn.weight", Fix::Transpose),
        ("attn_qkv.bias", "attn.c_attn.bias", Fix::None),
        ("attn_output.weight", "attn.c_proj.weight", Fix::Transpose),
        ("attn_output.bias", "attn.c_proj.bias", Fix::None),
        ("ffn_norm.weight", "ln_2.weight", Fix::None),
        ("ffn_norm.bias", "ln_2.bias", Fix::None),
        ("ffn_up.weight", "mlp.c_fc.weight", Fix::Transpose),
        ("ffn_up.bias", "mlp.c_fc.bias", Fix::None),
        ("ffn_down.weight", "mlp.c_proj.weight", Fix::Transpose),
        ("ffn_down.bias", "mlp.c_proj.bias", Fix::None),
    ],
    norms_plus_one: false,
    head: "lm_head.weight",
};

/// Qwen2's tensors: Llama's names with biases, stored unpermuted (llama.cpp's NEOX RoPE).
const QWEN2_BLOCK: &[(&str, &str, Fix)] = &[
    ("attn_norm.weight", "input_layernorm.weight", Fix::None),
    ("attn_q.weight", "self_attn.q_proj.weight", Fix::None),
    ("attn_q.bias", "self_attn.q_proj.bias", Fix::None),
    ("attn_k.weight", "self_attn.k_proj.weight", Fix::None),
    ("attn_k.bias", "self_attn.k_proj.bias", Fix::None),
    ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
    ("attn_v.bias", "self_attn.v_proj.bias", Fix::None),
    ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
    ("attn_output.bias", "self_attn.o_proj.bias", Fix::None),
    ("attn_q_norm.weight", "self_attn.q_norm.weight", Fix::None),
    ("attn_k_norm.weight", "self_attn.k_norm.weight", Fix::None),
    (
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        Fix::None,
    ),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
    ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
    ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
];

const QWEN2: ArchTable = ArchTable {
    arch: "qwen2",
    block: QWEN2_BLOCK,
    ..LLAMA
};

/// Qwen3: Qwen2's names plus the per-head query/key norms.
const QWEN3: ArchTable = ArchTable {
    arch: "qwen3",
    block: QWEN2_BLOCK,
    ..LLAMA
};

/// Gemma: Qwen2's unpermuted names (NEOX RoPE), norm scales stored as `1 + weight`, tied head.
const GEMMA: ArchTable = ArchTable {
    arch: "gemma",
    block: QWEN2_BLOCK,
    norms_plus_one: true,
    ..LLAMA
};

/// Gemma 2's sandwich-norm names (stored unpermuted: NEOX RoPE); Gemma 3 adds the per-head
/// query/key norms.
const GEMMA2_BLOCK: &[(&str, &str, Fix)] = &[
    ("attn_norm.weight", "input_layernorm.weight", Fix::None),
    ("attn_q.weight", "self_attn.q_proj.weight", Fix::None),
    ("attn_k.weight", "self_attn.k_proj.weight", Fix::None),
    ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
    ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
    ("attn_q_norm.weight", "self_attn.q_norm.weight", Fix::None),
    ("attn_k_norm.weight", "self_attn.k_norm.weight", Fix::None),
    (
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
        Fix::None,
    ),
    (
        "ffn_norm.weight",
        "pre_feedforward_layernorm.weight",
        Fix::None,
    ),
    (
        "post_ffw_norm.weight",
        "post_feedforward_layernorm.weight",
        Fix::None,
    ),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
    ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
    ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
];

const GEMMA2: ArchTable = ArchTable {
    arch: "gemma2",
    block: GEMMA2_BLOCK,
    norms_plus_one: true,
    ..LLAMA
};

const GEMMA3: ArchTable = ArchTable {
    arch: "gemma3",
    ..GEMMA2
};

/// Phi-3: the fused `qkv_proj` and `gate_up_proj` are stored as they are (NEOX RoPE).
const PHI3: ArchTable = ArchTable {
    arch: "phi3",
    block: &[
        ("attn_norm.weight", "input_layernorm.weight", Fix::None),
        ("attn_qkv.weight", "self_attn.qkv_proj.weight", Fix::None),
        ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
        (
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            Fix::None,
        ),
        ("ffn_up.weight", "mlp.gate_up_proj.weight", Fix::None),
        ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
    ],
    ..LLAMA
};

/// OLMo 2: norms after the attention and the MLP, query/key norms (NEOX RoPE, unpermuted).
const OLMO2: ArchTable = ArchTable {
    arch: "olmo2",
    block: &[
        ("attn_q.weight", "self_attn.q_proj.weight", Fix::None),
        ("attn_k.weight", "self_attn.k_proj.weight", Fix::None),
        ("attn_v.weight", "self_attn.v_proj.weight", Fix::None),
        ("attn_output.weight", "self_attn.o_proj.weight", Fix::None),
        ("attn_q_norm.weight", "self_attn.q_norm.weight", Fix::None),
        ("attn_k_norm.weight", "self_attn.k_norm.weight", Fix::None),
        (
            "post_attention_norm.weight",
            "post_attention_layernorm.weight",
            Fix::None,
        ),
        (
            "post_ffw_norm.weight",
            "post_feedforward_layernorm.weight",
            Fix::None,
        ),
        ("ffn_gate.weight", "mlp.gate_proj.weight", Fix::None),
        ("ffn_up.weight", "mlp.up_proj.weight", Fix::None),
        ("ffn_down.weight", "mlp.down_proj.weight", Fix::None),
    ],
    ..LLAMA
};

/// GPT-NeoX: LayerNorms with biases, the fused `query_key_value` regrouped per head.
const GPT_NEOX: ArchTable = ArchTable {
    arch: "gptneox",
    hf_prefix: "gpt_neox.",
    hf_block: "layers.{i}.",
    global: &[
        ("token_embd.weight", "embed_in.weight"),
        ("output_norm.weight", "final_layer_norm.weight"),
        ("output_norm.bias", "final_layer_norm.bias"),
        ("output.weight", "embed_out.weight"),
    ],
    block: &[
        ("attn_norm.weight", "input_layernorm.weight", Fix::None),
        ("attn_norm.bias", "input_layernorm.bias", Fix::None),
        (
            "attn_qkv.weight",
            "attention.query_key_value.weight",
            Fix::Regroup,
        ),
        (
            "attn_qkv.bias",
            "attention.query_key_value.bias",
            Fix::Regroup,
        ),
        ("attn_output.weight", "attention.dense.weight", Fix::None),
        ("attn_output.bias", "attention.dense.bias", Fix::None),
        (
            "ffn_norm.weight",
            "post_attention_layernorm.weight",
            Fix::None,
        ),
        ("ffn_norm.bias", "post_attention_layernorm.bias", Fix::None),
        ("ffn_up.weight", "mlp.dense_h_to_4h.weight", Fix::None),
        ("ffn_up.bias", "mlp.dense_h_to_4h.bias", Fix::None),
        ("ffn_down.weight", "mlp.dense_4h_to_h.weight", Fix::None),
        ("ffn_down.bias", "mlp.dense_4h_to_h.bias", Fix::None),
    ],
    norms_plus_one: false,
    head: "embed_out.weight",
};

/// Falcon-7B style (one norm per block): `attn_norm` is `input_layernorm`.
const FALCON: ArchTable = ArchTable {
    arch: "falcon",
    hf_prefix: "transformer.",
    hf_block: "h.{i}.",
    global: &[
        ("token_embd.weight", "word_embeddings.weight"),
        ("output_norm.weight", "ln_f.weight"),
        ("output_norm.bias", "ln_f.bias"),
        ("output.weight", "lm_head.weight"),
    ],
    block: &[
        ("attn_norm.weight", "input_layernorm.weight", Fix::None),
        ("attn_norm.bias", "input_layernorm.bias", Fix::None),
        (
            "attn_qkv.weight",
            "self_attention.query_key_value.weight",
            Fix::Regroup,
        ),
        (
            "attn_qkv.bias",
            "self_attention.query_key_value.bias",
            Fix::Regroup,
        ),
        (
            "attn_output.weight",
            "self_attention.dense.weight",
            Fix::None,
        ),
        ("attn_output.bias", "self_attention.dense.bias", Fix::None),
        ("ffn_up.weight", "mlp.dense_h_to_4h.weight", Fix::None),
        ("ffn_up.bias", "mlp.dense_h_to_4h.bias", Fix::None),
        ("ffn_down.weight", "mlp.dense_4h_to_h.weight", Fix::None),
        ("ffn_down.bias", "mlp.dense_4h_to_h.bias", Fix::None),
    ],
    norms_plus_one: false,
    head: "lm_head.weight",
};

/// Falcon-40B style (`attn_norm_2` present): `attn_norm` is `ln_mlp`, `attn_norm_2` `ln_attn`
/// (gguf-py's tensor map).
const FALCON_TWO_NORMS: ArchTable = ArchTable {
    block: &[
        ("attn_norm.weight", "ln_mlp.weight", Fix::None),
        ("attn_norm.bias", "ln_mlp.bias", Fix::None),
        ("attn_norm_2.weight", "ln_attn.weight", Fix::None),
        ("attn_norm_2.bias", "ln_attn.bias", Fix::None),
        (
            "attn_qkv.weight",
            "self_attention.query_key_value.weight",
            Fix::Regroup,
        ),
        (
            "attn_qkv.bias",
            "self_attention.query_key_value.bias",
            Fix::Regroup,
        ),
        (
            "attn_output.weight",
            "self_attention.dense.weight",
            Fix::None,
        ),
        ("attn_output.bias", "self_attention.dense.bias", Fix::None),
        ("ffn_up.weight", "mlp.dense_h_to_4h.weight", Fix::None),
        ("ffn_up.bias", "mlp.dense_h_to_4h.bias", Fix::None),
        ("ffn_down.weight", "mlp.dense_4h_to_h.weight", Fix::None),
        ("ffn_down.bias", "mlp.dense_4h_to_h.bias", Fix::None),
    ],
    ..FALCON
};

const ARCHS: &[&ArchTable] = &[
    &LLAMA, &GPT2, &QWEN2, &QWEN3, &GEMMA, &GEMMA2, &GEMMA3, &PHI3, &OLMO2, &GPT_NEOX, &FALCON,
];

/// The supported `general.architecture` values, for error messages.
pub(super) fn supported() -> String {
    ARCHS.iter().map(|t| t.arch).collect::<Vec<_>>().join(", ")
}

/// Whether a tensor without a Hugging Face name is read into the config instead (Phi-3's
/// LongRoPE factors); any other such tensor is an error.
pub(super) fn read_by_config(table: &ArchTable, gguf: &str) -> bool {
    table.arch == "phi3"
        && matches!(
            gguf,
            "rope_factors_long.weight" | "rope_factors_short.weight"
        )
}

/// The table of a `general.architecture`; `has_tensor` tells which variant a file is (Falcon's
/// second block norm).
pub(super) fn table_for(
    arch: &str,
    has_tensor: impl Fn(&str) -> bool,
) -> Option<&'static ArchTable> {
    let table = ARCHS.iter().copied().find(|t| t.arch == arch)?;
    if table.arch == "falcon" && has_tensor("blk.0.attn_norm_2.weight") {
        return Some(&FALCON_TWO_NORMS);
    }
    Some(table)
}

/// The Hugging Face name (without base-model prefix) of a llama.cpp tensor.
pub(super) fn hf_name(table: &ArchTable, gguf: &str) -> Option<(String, Fix)> {
    let (hf, fix) = hf_name_as_stored(table, gguf)?;
    let plus_one = table.norms_plus_one && hf.ends_with("norm.weight");
    Some((hf, if plus_one { Fix::MinusOne } else { fix }))
}

/// [`hf_name`] before the table-wide fixes.
fn hf_name_as_stored(table: &ArchTable, gguf: &str) -> Option<(String, Fix)> {
    if let Some(&(_, hf)) = table.global.iter().find(|(g, _)| *g == gguf) {
        return Some((hf.to_string(), Fix::None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    let &(_, hf, fix) = table.block.iter().find(|(g, _, _)| *g == suffix)?;
    Some((
        format!("{}{hf}", table.hf_block.replace("{i}", &i.to_string())),
        fix,
    ))
}

/// Inverts `convert_hf_to_gguf.py`'s `LlamaModel.permute`, which reorders the rows
/// of each head from `[half0; half1]` to interleaved pairs for llama.cpp's RoPE.
pub(super) fn unpermute(t: RawTensor, heads: usize) -> std::result::Result<RawTensor, String> {
    let rows = *t.shape.first().ok_or("scalar tensor")?;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(format!(
            "{rows} rows cannot be split into {heads} heads of rotary pairs"
        ));
    }
    let cols = t.data.len().checked_div(rows).unwrap_or(0);
    let half = rows / heads / 2;
    let mut data = vec![0f32; t.data.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let src = h * 2 * half + 2 * j + s;
                let dst = h * 2 * half + s * half + j;
                data[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(RawTensor {
        shape: t.shape,
        data,
    })
}

/// Inverts the fused-QKV reordering of `convert_hf_to_gguf.py` (GPT-NeoX, Falcon): the stored rows
/// are `[q_0..q_{H-1} | k_0..k_{G-1} | v_0..v_{G-1}]` (`head_dim` rows each); Hugging Face's are,
/// per key/value group `g`, the group's `H/G` query heads, then `k_g`, then `v_g`.
pub(super) fn regroup(
    t: RawTensor,
    heads: usize,
    kv_heads: usize,
) -> std::result::Result<RawTensor, String> {
    let rows = *t.shape.first().ok_or("scalar tensor")?;
    let total = heads + 2 * kv_heads;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !rows.is_multiple_of(total) {
        return Err(format!(
            "{rows} rows cannot be split into {heads} query and 2 x {kv_heads} key/value heads"
        ));
    }
    let cols = t.data.len().checked_div(rows).unwrap_or(0);
    let (head_dim, per_group) = (rows / total, heads / kv_heads);
    let mut data = Vec::with_capacity(t.data.len());
    let mut push_head = |stored: usize| {
        let start = stored * head_dim * cols;
        data.extend_from_slice(&t.data[start..start + head_dim * cols]);
    };
    for g in 0..kv_heads {
        for j in 0..per_group {
            push_head(g * per_group + j);
        }
        push_head(heads + g);
        push_head(heads + kv_heads + g);
    }
    Ok(RawTensor {
        shape: t.shape,
        data,
    })
}
