"""Write a randomly initialised Llama-shaped model for `cargo xtask bench --7b`: a sharded bf16
safetensors directory (one shard per block, written as it is drawn: never the whole model in
memory) and, optionally, a Q4_0 GGUF of the same shape (norms in F32), both with SmolLM2's
tokenizer (its vocabulary sets the vocabulary size).

    python random_llama.py --shape 7b --tokenizer-dir SMOLLM2_F32_DIR --tokenizer-gguf SMOLLM2.gguf \
        --out DIR [--gguf FILE]

The two files hold different random draws (the GGUF is drawn again, tensor by tensor); they share
the shape, which is what the benchmark measures.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

SHAPES = {
    # Llama-2-7B's blocks.
    "7b": dict(hidden=4096, inter=11008, layers=32, heads=32, kv_heads=32),
    # TinyLlama-1.1B's blocks.
    "1b": dict(hidden=2048, inter=5632, layers=22, heads=32, kv_heads=4),
    # A small shape for trying the script.
    "tiny": dict(hidden=256, inter=512, layers=2, heads=4, kv_heads=2),
}


def block_shapes(s: dict) -> dict:
    """HF name suffix -> [out, in] (torch layout) of one block."""
    d, i, hd = s["hidden"], s["inter"], s["hidden"] // s["heads"]
    kv = s["kv_heads"] * hd
    return {
        "input_layernorm.weight": [d],
        "self_attn.q_proj.weight": [d, d],
        "self_attn.k_proj.weight": [kv, d],
        "self_attn.v_proj.weight": [kv, d],
        "self_attn.o_proj.weight": [d, d],
        "post_attention_layernorm.weight": [d],
        "mlp.gate_proj.weight": [i, d],
        "mlp.up_proj.weight": [i, d],
        "mlp.down_proj.weight": [d, i],
    }


def draw(shape, gen) -> torch.Tensor:
    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float32)
    # Scaled so that activations stay of order one through the blocks.
    return torch.randn(shape, generator=gen, dtype=torch.float32) / np.sqrt(shape[1])


def config(s: dict, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_safetensors(s: dict, vocab: int, tok_dir: Path, out: Path, seed: int) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards = [("embed", None)] + [("block", i) for i in range(s["layers"])] + [("head", None)]
    n = len(shards)
    weight_map = {}
    for k, (kind, i) in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        if kind == "embed":
            tensors = {"model.embed_tokens.weight": draw([vocab, s["hidden"]], gen)}
        elif kind == "head":
            tensors = {
                "model.norm.weight": draw([s["hidden"]], gen),
                "lm_head.weight": draw([vocab, s["hidden"]], gen),
            }
        else:
            tensors = {f"model.layers.{i}.{k2}": draw(sh, gen) for k2, sh in block_shapes(s).items()}
        tensors = {k2: v.to(torch.bfloat16).contiguous() for k2, v in tensors.items()}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k2: name for k2 in tensors})
        print(f"wrote {name}", flush=True)
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(config(s, vocab), indent=1))
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        if (tok_dir / f).is_file():
            shutil.copy(tok_dir / f, out / f)


def gguf_tensors(s: dict, vocab: int):
    """(llama.cpp name, numpy shape [rows, cols] or [n], quantize?) in file order."""
    d = s["hidden"]
    yield "token_embd.weight", [vocab, d], True
    for i in range(s["layers"]):
        names = {
            "input_layernorm.weight": "attn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.o_proj.weight": "attn_output.weight",
            "post_attention_layernorm.weight": "ffn_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        }
        for hf, shape in block_shapes(s).items():
            yield f"blk.{i}.{names[hf]}", shape, len(shape) == 2
    yield "output_norm.weight", [d], False
    yield "output.weight", [vocab, d], True


def write_gguf(s: dict, vocab: int, tok_gguf: Path, path: Path, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q

    reader = gguf.GGUFReader(str(tok_gguf))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(s["layers"])
    w.add_context_length(4096)
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["inter"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            copy_field(w, key, field)
    gen = torch.Generator().manual_seed(seed + 1)
    plan = list(gguf_tensors(s, vocab))
    for name, shape, quant in plan:
        n = int(np.prod(shape))
        if quant:
            w.add_tensor_info(name, shape, np.dtype(np.float32), n // 32 * 18, raw_dtype=Q.Q4_0)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), n * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, quant in plan:
        t = draw(shape, gen).numpy()
        data = gguf.quants.quantize(t, Q.Q4_0) if quant else t
        w.write_tensor_data(data)
    w.close()
    print(f"wrote {path}", flush=True)


def copy_field(w, key: str, field) -> None:
    import gguf

    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        sub = types[-1]
        if sub == gguf.GGUFValueType.STRING:
            vals = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        else:
            vals = [field.parts[i].tolist()[0] for i in field.data]
        w.add_key_value(key, vals, gguf.GGUFValueType.ARRAY, sub_type=sub)
    elif types[0] == gguf.GGUFValueType.STRING:
        w.add_key_value(key, bytes(field.parts[-1]).decode("utf-8"), types[0])
    else:
        w.add_key_value(key, field.parts[-1].tolist()[0], types[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--tokenizer-dir", required=True, type=Path, help="model directory with config.json and tokenizer.json")
    p.add_argument("--tokenizer-gguf", type=Path, help="GGUF whose tokenizer.* metadata is copied")
    p.add_argument("--out", required=True, type=Path, help="safetensors directory to write")
    p.add_argument("--gguf", type=Path, help="also write a Q4_0 GGUF here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    s = SHAPES[a.shape]
    # The vocabulary size of the model whose tokenizer is borrowed.
    vocab = json.loads((a.tokenizer_dir / "config.json").read_text())["vocab_size"]
    write_safetensors(s, vocab, a.tokenizer_dir, a.out, a.seed)
    if a.gguf:
        if not a.tokenizer_gguf:
            p.error("--gguf needs --tokenizer-gguf")
        write_gguf(s, vocab, a.tokenizer_gguf, a.gguf, a.seed)


if __name__ == "__main__":
    main()
