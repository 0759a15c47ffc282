"""Times the forward passes of greedy decoding with torch and transformers (key/value cache): the
prompt pass and the median one-token pass of each run, as `inseq-bench-job --generation-passes`
does for inseq-rs (docs/performance.md, "Where the margin is thin").

    python generation_passes.py MODEL_DIR [--input TEXT] [--max-new-tokens 10] [--repeats 4]
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument(
        "--input",
        default="The Eiffel Tower was built in 1889 for the World Fair in Paris. "
        "It was designed by Gustave Eiffel and it is",
    )
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    ids = tok(a.input, return_tensors="pt").input_ids
    prompt_ms, one_token_ms, generate_ms = [], [], []
    with torch.no_grad():
        for _ in range(a.repeats):
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            prompt_ms.append((time.perf_counter() - t) * 1e3)
            steps = []
            for _ in range(a.max_new_tokens - 1):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                t = time.perf_counter()
                out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                steps.append((time.perf_counter() - t) * 1e3)
            one_token_ms.append(statistics.median(steps))
            t = time.perf_counter()
            model.generate(
                ids,
                max_new_tokens=a.max_new_tokens,
                min_new_tokens=a.max_new_tokens,
                do_sample=False,
            )
            generate_ms.append((time.perf_counter() - t) * 1e3)
    print(
        json.dumps(
            {
                "impl": "torch",
                "threads": torch.get_num_threads(),
                "prompt_tokens": ids.shape[1],
                "prompt_pass_ms": prompt_ms,
                "one_token_pass_median_ms": one_token_ms,
                "generate_ms": generate_ms,
            }
        )
    )


if __name__ == "__main__":
    main()
