"""Attribute a forced target after a long prompt with Python Inseq 0.7.1 and print the time of
`model.attribute` as JSON (used by `cargo xtask bench --long`, which measures the process's peak
RSS with `/usr/bin/time -v`).

    python long_job.py --model DIR --method saliency --method-args '{}' --input-file P --target-file T
"""

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--method-args", default="{}")
    p.add_argument("--input-file", required=True, type=Path)
    p.add_argument("--target-file", required=True, type=Path)
    a = p.parse_args()

    import inseq

    t0 = time.perf_counter()
    # Eager attention: the attention method reads the weights, and the gradient methods then
    # run the same attention code as inseq-rs computes.
    model = inseq.load_model(a.model, a.method, model_kwargs={"attn_implementation": "eager"})
    load_s = time.perf_counter() - t0
    text, target = a.input_file.read_text(), a.target_file.read_text()
    t = time.perf_counter()
    out = model.attribute(
        text,
        generated_texts=target,
        show_progress=False,
        **json.loads(a.method_args),
    )
    attribute_s = time.perf_counter() - t
    seq = out.sequence_attributions[0]
    print(json.dumps({"load_s": load_s, "attribute_s": attribute_s, "target_len": len(seq.target)}))


if __name__ == "__main__":
    main()
