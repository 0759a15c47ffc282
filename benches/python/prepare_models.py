"""Prepare the model directories used by `cargo xtask bench` (run once; later runs skip them).

- `smollm2-f32`: SmolLM2-135M-Instruct converted from its GGUF (what inseq-rs loads directly) to a
  float32 safetensors directory, so that Python Inseq does not dequantize the GGUF in every process
  (transformers' GGUF loading takes about a minute).
- `gpt2-small-random`: a GPT-2-small-shaped model (`GPT2Config()` defaults, 124M parameters) with
  random weights (`torch.manual_seed(0)`), with the SmolLM2 tokenizer (its 49152-token vocabulary
  fits in GPT-2's 50257 embeddings). Both inseq-rs and Python Inseq load this directory.

Each directory is written under a temporary name and renamed into place, so an interrupted run never
leaves something that looks complete.

    python prepare_models.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out DIR [--only NAME,...]
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

SMOLLM2 = "smollm2-f32"
GPT2 = "gpt2-small-random"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def complete(d: Path) -> bool:
    return all((d / f).is_file() for f in REQUIRED)


def load_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def write_smollm2(gguf: Path, tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # Recent transformers keep a GGUF "quantizer" on the model even when they dequantized every
    # weight on load, and then refuse to save it: check the weights are plain float32, drop it.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        odd = [n for n, t in model.state_dict().items() if t.dtype != torch.float32]
        if odd:
            sys.exit(f"GGUF weights not dequantized to float32: {odd[:5]}")
        quantizer.remove_quantization_config(model)
    model.save_pretrained(str(tmp), safe_serialization=True)
    load_gguf_tokenizer(gguf).save_pretrained(str(tmp))


def write_gpt2(gguf: Path, out: Path, tmp: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(torch.float32).eval()
    model.save_pretrained(str(tmp), safe_serialization=True)
    smol = out / SMOLLM2
    tok = AutoTokenizer.from_pretrained(str(smol)) if complete(smol) else load_gguf_tokenizer(gguf)
    tok.save_pretrained(str(tmp))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True, type=Path, help="SmolLM2-135M-Instruct GGUF file")
    p.add_argument("--out", required=True, type=Path, help="directory receiving the model dirs")
    p.add_argument("--only", default=f"{SMOLLM2},{GPT2}", help="comma-separated names to prepare")
    a = p.parse_args()
    wanted = [n for n in a.only.split(",") if n]
    for name in wanted:
        if name not in (SMOLLM2, GPT2):
            sys.exit(f"unknown model {name!r} (known: {SMOLLM2}, {GPT2})")
    a.out.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        dest = a.out / name
        if complete(dest):
            print(f"{dest} already present", flush=True)
            continue
        tmp = a.out / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"writing {dest} ...", flush=True)
        t0 = time.perf_counter()
        try:
            if name == SMOLLM2:
                write_smollm2(a.gguf, tmp)
            else:
                write_gpt2(a.gguf, a.out, tmp)
            if not complete(tmp):
                sys.exit(f"{name}: missing one of {REQUIRED} after saving")
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"wrote {dest} in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
