"""Run one attribution job through Python Inseq 0.7.1 and print its timings as JSON.

Used by `cargo xtask bench`; the Rust side is `inseq-bench-job` (benches/job.rs). Both time the same
call: generation of `--max-new-tokens` tokens followed by the attribution of every generated step
(model loading is excluded and reported separately), repeated `--repeats` times after one warm-up.

    python inseq_job.py --model DIR [--gguf FILE] --method saliency --input TEXT --max-new-tokens 10
"""

import argparse
import json
import resource
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--matmul", type=int, help="measure [N, N] x [N, N] f32 matmul GFLOP/s instead")
    p.add_argument("--gguf")
    p.add_argument("--method")
    p.add_argument("--method-args", default="{}")
    p.add_argument("--input")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.matmul:
        n = a.matmul
        x, y = torch.rand(n, n), torch.rand(n, n)
        rates = []
        for _ in range(a.repeats + 1):
            t = time.perf_counter()
            torch.mm(x, y)
            rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
        gflops = statistics.median(rates[1:])
        print(json.dumps({"impl": "torch", "matmul_n": n, "gflops": gflops, "threads": torch.get_num_threads()}))
        return
    if not (a.model and a.method and a.input):
        p.error("--model, --method and --input are required for a job")

    import inseq  # after torch settings

    t0 = time.perf_counter()
    kwargs = {}
    if a.gguf:
        kwargs = {"model_kwargs": {"gguf_file": a.gguf}, "tokenizer_kwargs": {"gguf_file": a.gguf}}
    model = inseq.load_model(a.model, a.method, **kwargs)
    load_s = time.perf_counter() - t0
    method_args = json.loads(a.method_args)
    gen = {"max_new_tokens": a.max_new_tokens, "min_new_tokens": a.max_new_tokens, "do_sample": False}

    # Inseq 0.7.1 refuses step scores with its final-step methods (attention: one forward pass
    # at the last step), so those jobs record none, on both sides.
    step_scores = [] if model.attribution_method.is_final_step_method else ["probability"]

    def job():
        return model.attribute(
            a.input,
            generation_args=gen,
            step_scores=step_scores,
            show_progress=False,
            **method_args,
        )

    times = []
    out = None
    for i in range(a.warmup + a.repeats):
        t = time.perf_counter()
        out = job()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    seq = out.sequence_attributions[0]
    print(
        json.dumps(
            {
                "impl": "python-inseq",
                "load_s": load_s,
                "times_s": times,
                "median_s": statistics.median(times),
                "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "input_tokens": seq.attr_pos_start,
                "generated_tokens": seq.attr_pos_end - seq.attr_pos_start,
                "threads": torch.get_num_threads(),
                "target": [t.token for t in seq.target],
            }
        )
    )


if __name__ == "__main__":
    main()
