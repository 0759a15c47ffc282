"""How much of the input Soft-NC/Soft-NS erase, per method, from an `inseq evaluate` work folder.

Soft-NC keeps each embedding element of a token with probability 1 - q, Soft-NS with probability q,
where q are the step's per-token scores min-max normalised to [0, 1]. The mean of q over the
attributed tokens is therefore the expected fraction of the input that Soft-NC erases (and Soft-NS
keeps). This script reduces the stored raw attributions as `inseq evaluate` does (L2 norm over the
hidden dimension for gradient methods, mean over layers and heads for attention, per-token scores as
they are) and prints, per method, the mean of q, the mean share of the top token in the step's
total normalised score, and how often the top token is the first token of the input (an attention
sink).

    python3 docs/data/score_spread.py report.json.work
"""

import json
import math
import sys
from pathlib import Path


def per_token(method, values):
    """One score per token from the trailing dimensions of one (token, step) cell."""
    if len(values) == 1:
        return values[0]
    if method == "attention":
        return sum(values) / len(values)
    return math.sqrt(sum(v * v for v in values))


def steps(record):
    """Per attributed step, the per-token scores of its attributed tokens."""
    seq = record["output"]["sequence_attributions"][0]
    att = seq["target_attributions"]
    method = record["output"]["info"]["attribution_method"]
    tokens, n_steps, *rest = att["shape"]
    cell = math.prod(rest) if rest else 1
    data = att["data"]
    for j in range(n_steps):
        end = seq["attr_pos_start"] + j
        scores = []
        for t in range(end):
            at = (t * n_steps + j) * cell
            scores.append(per_token(method, data[at : at + cell]))
        yield scores


def normalised(scores):
    lo, hi = min(scores), max(scores)
    if not all(math.isfinite(s) for s in scores):
        return None
    if hi == lo:
        return [0.5] * len(scores)
    return [(s - lo) / (hi - lo) for s in scores]


def main(folder):
    print("| method | mean q (fraction Soft-NC erases) | top token share of Σq | top token is the first |")
    print("|---|---|---|---|")
    for path in sorted(Path(folder).glob("*.jsonl")):
        if path.stem == "targets":
            continue
        means, tops, firsts = [], [], []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "output" not in record:
                continue
            for scores in steps(record):
                q = normalised(scores)
                if q is None or sum(q) == 0:
                    continue
                means.append(sum(q) / len(q))
                tops.append(max(q) / sum(q))
                firsts.append(1.0 if q.index(max(q)) == 0 else 0.0)
        if means:
            mean = lambda xs: sum(xs) / len(xs)
            print(f"| {path.stem} | {mean(means):.3f} | {mean(tops):.3f} | {mean(firsts):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
