#!/usr/bin/env python3
"""Hostile run of the `inseq` CLI (issue 19): crafts hostile inputs in a temp dir, runs the
binary on each with a timeout and a peak-RSS measurement, and classifies every outcome.

Standard library only.  Usage:

    python tests/hostile/hostile_run.py --bin target/release/inseq [--results RESULTS.md]
                                        [--gguf PATH] [--only CLASS] [--timeout 60]

Outcomes (one per case):
  ok           exit 0, legitimate success (output finite where it must be, stores complete)
  clean error  exit 1/2, a one-line `error:` message naming the problem, no output file written,
               no existing store changed
  PANIC        exit 101, "panicked" in stderr, or killed by a signal (abort, segfault)
  SILENT NaN   exit 0 but an attributed slice / step score of the output is null/NaN/inf
  LOST DATA    a store or merged output misses rows or differs from an uninterrupted run,
               or an existing store was changed by a run that failed
  UNBOUNDED    timeout, peak RSS over the limit, or a failed allocation
  LATE CHECK   error, but an output file was written anyway
  WRONG WORDS  error whose message lacks the expected words (the file / field / argument)
  ACCEPTED     exit 0 where the input is invalid and an error was expected
"""
import argparse
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "models")
DEFAULT_GGUF = os.path.expanduser("~/.cache/inseq-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf")

CLASSES = ["1 corrupt models", "2 odd text", "3 extreme arguments", "4 datasets and stores"]
OUTCOMES = ["ok", "clean error", "PANIC", "SILENT NaN", "LOST DATA", "UNBOUNDED", "LATE CHECK",
            "WRONG WORDS", "ACCEPTED"]
GOOD = {"ok", "clean error"}

RSS_LIMIT_KB = 4 * 1024 * 1024          # 4 GiB: over it is UNBOUNDED
AS_LIMIT = 12 * 1024 ** 3                # address-space cap so a runaway allocation cannot take the machine


# --------------------------------------------------------------------------------------------
# running one command
# --------------------------------------------------------------------------------------------

class Run:
    def __init__(self, argv, rc, sig, stdout, stderr, rss_kb, wall, timed_out):
        self.argv, self.rc, self.sig, self.stdout, self.stderr = argv, rc, sig, stdout, stderr
        self.rss_kb, self.wall, self.timed_out = rss_kb, wall, timed_out


def _limits():
    try:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    except (ValueError, OSError):
        pass
    os.setsid()


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def spawn(argv, cwd):
    """Start argv in its own process group.  With GNU time the peak RSS is the binary's own
    (`%M`); without it, os.wait4's ru_maxrss, which also counts the forked Python before exec."""
    out = tempfile.TemporaryFile(dir=cwd)
    err = tempfile.TemporaryFile(dir=cwd)
    full = argv
    rssf = None
    if TIME:
        fd, rssf = tempfile.mkstemp(dir=cwd, prefix=".rss-")
        os.close(fd)
        full = [TIME, "-f", "%M", "-o", rssf] + argv
    p = subprocess.Popen(full, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                         preexec_fn=_limits)
    p.rssf = rssf
    return p, out, err


def reap(p, out, err, argv, t0, timeout=None):
    """Wait for p with os.wait4 (per-child rusage: ru_maxrss is the peak RSS in KiB)."""
    timed_out = [False]

    def kill():
        timed_out[0] = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.start()
    _, status, ru = os.wait4(p.pid, 0)
    if timer:
        timer.cancel()
    p.returncode = 0  # keep Popen from waiting again
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    sig = -rc if rc < 0 else None
    rss = ru.ru_maxrss
    if getattr(p, "rssf", None):
        try:
            with open(p.rssf) as f:
                txt = f.read()
            os.remove(p.rssf)
            m = re.search(r"terminated by signal (\d+)", txt)
            if m:
                sig = int(m.group(1))
                rc = -sig
            nums = re.findall(r"^(\d+)\s*$", txt, re.M)
            if nums:
                rss = int(nums[-1])
        except OSError:
            pass
    out.seek(0)
    err.seek(0)
    so = out.read().decode("utf-8", "replace")
    se = err.read().decode("utf-8", "replace")
    out.close()
    err.close()
    return Run(argv, rc, sig, so, se, rss, wall, timed_out[0])


def run(argv, cwd, timeout):
    t0 = time.time()
    p, out, err = spawn(argv, cwd)
    return reap(p, out, err, argv, t0, timeout)


# --------------------------------------------------------------------------------------------
# checks on outputs
# --------------------------------------------------------------------------------------------

def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def nonfinite_in_output(doc):
    """Non-finite values where the output must be finite: every source attribution, the target
    attributions of step j at target rows < attr_pos_start + j (the prefix known at that step), and
    every step score.  Returns a description or None."""
    problems = []
    for k, seq in enumerate(doc.get("sequence_attributions") or []):
        st = seq.get("attr_pos_start", 0)
        for name in ("source_attributions", "target_attributions"):
            a = seq.get(name)
            if not a:
                continue
            shape, data = a.get("shape"), a.get("data")
            if not shape or data is None:
                continue
            if len(shape) < 2:
                bad = sum(1 for x in data if not _finite(x))
                if bad:
                    problems.append(f"seq {k} {name}: {bad} non-finite")
                continue
            rows, steps = shape[0], shape[1]
            inner = 1
            for d in shape[2:]:
                inner *= d
            bad = 0
            for i in range(rows):
                for j in range(steps):
                    if name == "target_attributions" and i >= st + j:
                        continue
                    base = (i * steps + j) * inner
                    for x in data[base:base + inner]:
                        if not _finite(x):
                            bad += 1
            if bad:
                problems.append(f"seq {k} {name}: {bad} non-finite cells in attributed slices")
        for name, sc in (seq.get("step_scores") or {}).items():
            vals = sc.get("data") if isinstance(sc, dict) else sc
            vals = list(_flatten(vals))
            bad = sum(1 for x in vals if not _finite(x))
            if bad:
                problems.append(f"seq {k} step score {name}: {bad} non-finite")
    return "; ".join(problems) or None


def _flatten(v):
    if isinstance(v, list):
        for x in v:
            yield from _flatten(x)
    else:
        yield v


def load_json_loose(path):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def store_rows(path):
    """{row number: raw JSON text} of a store (JSONL file or directory of row-N.json)."""
    rows = {}
    if os.path.isdir(path):
        for n in sorted(os.listdir(path)):
            m = re.fullmatch(r"row-(\d+)\.json", n)
            if m:
                with open(os.path.join(path, n), "rb") as f:
                    rows[int(m.group(1))] = f.read()
    elif os.path.exists(path):
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                if line.strip():
                    try:
                        rows[json.loads(line)["row"]] = line
                    except Exception:
                        rows.setdefault("corrupt", []).append(line)
    return rows


def snapshot(path):
    """Bytes of a file, or {name: bytes} of a directory, or None."""
    if path is None or not os.path.exists(path):
        return None
    if os.path.isdir(path):
        snap = {}
        for n in sorted(os.listdir(path)):
            p = os.path.join(path, n)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    snap[n] = f.read()
        return snap
    with open(path, "rb") as f:
        return f.read()


def store_equal(a, b):
    """Compare two store snapshots, ignoring the .lock file beside them."""
    return a == b


def nan_in_store(path):
    for r, line in store_rows(path).items():
        if r == "corrupt":
            continue
        try:
            doc = json.loads(line)
        except Exception:
            continue
        p = nonfinite_in_output(doc.get("output") or doc)  # a directory row is the bare output
        if p:
            return f"row {r}: {p}"
    return None


# --------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------

def words_ok(stderr, words):
    low = stderr.lower()
    for w in words:
        alts = w if isinstance(w, (tuple, list)) else (w,)
        if not any(a.lower() in low for a in alts):
            return False, w
    return True, None


def classify(case, r, ctx):
    """Return (outcome, note)."""
    se = r.stderr
    if r.timed_out:
        return "UNBOUNDED", f"timeout after {r.wall:.0f}s"
    if "memory allocation of" in se or "capacity overflow" in se and r.rc != 1:
        return "UNBOUNDED", "allocation failure"
    if r.rss_kb > RSS_LIMIT_KB:
        return "UNBOUNDED", f"peak RSS {r.rss_kb // 1024} MB"
    if r.rc == 101 or "panicked" in se or r.sig is not None or r.rc not in (0, 1, 2):
        return "PANIC", f"rc={r.rc} sig={r.sig}"
    outs = case.get("outputs", [])
    if r.rc == 0:
        for o in outs:
            p = os.path.join(ctx, o)
            if os.path.isfile(p) and o.endswith(".json"):
                try:
                    doc = load_json_loose(p)
                except Exception as e:
                    return "SILENT NaN", f"output {o} unreadable: {e}"
                prob = nonfinite_in_output(doc)
                if prob:
                    return "SILENT NaN", prob
            elif o.endswith(".jsonl") or os.path.isdir(p):
                prob = nan_in_store(p)
                if prob:
                    return "SILENT NaN", prob
        if case.get("post"):
            res = case["post"](ctx, r)
            if res:
                return res
        if case.get("expect") == "error":
            return "ACCEPTED", "exit 0 on an invalid input"
        return "ok", ""
    # rc 1 or 2
    if case.get("post_err"):
        res = case["post_err"](ctx, r)
        if res:
            return res
    written = [o for o in outs if os.path.exists(os.path.join(ctx, o))
               and o not in case.get("preexisting", [])]
    tmp = [n for n in os.listdir(ctx) if n.endswith(".tmp")]
    if written or tmp:
        return "LATE CHECK", f"written: {written + tmp}"
    for o, before in case.get("unchanged", {}).items():
        if snapshot(os.path.join(ctx, o)) != before:
            return "LOST DATA", f"{o} changed by a failed run"
    err_lines = [l for l in se.splitlines() if l.startswith("error:") or l.startswith("Error:")]
    if not err_lines:
        return "WRONG WORDS", "no `error:` line"
    if r.rc == 1 and len(err_lines) > 1:
        return "WRONG WORDS", "several error: lines"
    ok, missing = words_ok(se, case.get("words", []))
    if not ok:
        return "WRONG WORDS", f"message lacks {missing!r}"
    if case.get("expect") == "ok":
        return "WRONG WORDS", "error on a valid input"
    return "clean error", ""


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------

class Suite:
    def __init__(self, binary, root, gguf, timeout):
        self.bin, self.root, self.gguf, self.timeout = binary, root, gguf, timeout
        self.cases = []
        self.n = 0

    def workdir(self, name):
        self.n += 1
        d = os.path.join(self.root, f"c{self.n:03d}")
        os.makedirs(d)
        return d

    def add(self, cls, name, args, words=(), expect="any", outputs=None, setup=None, post=None,
            post_err=None, custom=None, cleanup=None):
        """args: CLI arguments after the binary; `{D}` is replaced by the case's directory."""
        self.cases.append(dict(cls=cls, name=name, args=args, words=list(words), expect=expect,
                               outputs=outputs, setup=setup, post=post, post_err=post_err,
                               custom=custom, cleanup=cleanup))


def model_copy(d, model="tiny-gpt2"):
    dst = os.path.join(d, "m")
    shutil.copytree(os.path.join(FIXTURES, model), dst)
    return dst


def edit_file(path, fn):
    with open(path, "rb") as f:
        b = f.read()
    with open(path, "wb") as f:
        f.write(fn(b))


def flip_bits(b, seed, n, lo=0, hi=None):
    rnd = random.Random(seed)
    b = bytearray(b)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(n):
        i = rnd.randrange(lo, hi)
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def st_header(b):
    n = struct.unpack("<Q", b[:8])[0]
    return n, json.loads(b[8:8 + n])


def st_rewrite(b, fn_header=None, fn_data=None):
    """Rewrite a safetensors file: fn_header(header dict) edits in place; fn_data(name, meta,
    bytearray data region) may overwrite tensor bytes."""
    n, h = st_header(b)
    data = bytearray(b[8 + n:])
    if fn_data:
        for name, meta in h.items():
            if name != "__metadata__":
                fn_data(name, meta, data)
    if fn_header:
        fn_header(h)
    hb = json.dumps(h).encode()
    return struct.pack("<Q", len(hb)) + hb + bytes(data)


def fill_f32(value, which=lambda name: True):
    def fn(name, meta, data):
        if meta["dtype"] == "F32" and which(name):
            s, e = meta["data_offsets"]
            data[s:e] = struct.pack("<f", value) * ((e - s) // 4)
    return fn


# GGUF metadata: offsets of scalar values so they can be patched in place
GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
               11: "<q", 12: "<d"}


def gguf_kv_offsets(path):
    out = {}
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:4] != b"GGUF":
            return out
        n_kv = struct.unpack("<Q", head[16:24])[0]
        buf = f.read(64 << 20)
    pos = 0

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def skip_value(t):
        nonlocal pos
        if t in GGUF_SCALAR:
            pos += struct.calcsize(GGUF_SCALAR[t])
        elif t == 8:
            n = rd("<Q")
            pos += n
        elif t == 9:
            it = rd("<I")
            n = rd("<Q")
            if it in GGUF_SCALAR:
                pos += n * struct.calcsize(GGUF_SCALAR[it])
            else:
                for _ in range(n):
                    skip_value(it)

    for _ in range(n_kv):
        klen = rd("<Q")
        key = buf[pos:pos + klen].decode("utf-8", "replace")
        pos += klen
        t = rd("<I")
        out[key] = (24 + pos, t)
        skip_value(t)
    return out


def build_cases(s):
    G = "tiny-gpt2"
    cls1, cls2, cls3, cls4 = CLASSES

    def attr(model_path, *extra, inp="Hello world", new=2, save=True):
        a = ["attribute", "--model", model_path, "--input", inp, "--max-new-tokens", str(new),
             "--quiet"]
        if save:
            a += ["--save", "{D}/out.json"]
        return a + list(extra)

    # ---------------- class 1: corrupt models ----------------
    def corrupt(model, fname, fn, words, label, expect="error"):
        def setup(d):
            m = model_copy(d, model)
            edit_file(os.path.join(m, fname), fn)
        s.add(cls1, f"{model} {fname}: {label}", attr("{D}/m"), words=words, expect=expect,
              outputs=["out.json"], setup=setup)

    for model in ("tiny-gpt2", "tiny-llama", "tiny-marian", "tiny-bart"):
        corrupt(model, "config.json", lambda b: b[: len(b) // 2], ["config.json"], "truncated to half")
        corrupt(model, "config.json", lambda b: b"", ["config.json"], "empty")
        corrupt(model, "config.json", lambda b: os.urandom(0) + bytes(range(256)) * 3,
                ["config.json"], "garbage bytes")
        corrupt(model, "tokenizer.json", lambda b: b[: len(b) // 3], ["tokenizer.json"], "truncated")
        corrupt(model, "model.safetensors", lambda b: b[: len(b) // 2], ["model.safetensors"],
                "truncated to half")
    for seed in range(3):
        corrupt(G, "config.json", lambda b, seed=seed: flip_bits(b, seed, 4), ["config.json"],
                f"4 bit flips seed {seed}", expect="any")
    corrupt(G, "config.json", lambda b: b"[1,2,3]", ["config.json"], "a JSON array")
    corrupt(G, "config.json", lambda b: b"null", ["config.json"], "JSON null")
    corrupt(G, "config.json", lambda b: b'{"model_type": "gpt2"}', [("config.json", "n_embd", "missing")],
            "only model_type")
    corrupt(G, "config.json", lambda b: b"\xef\xbb\xbf" + b, ["config.json"], "UTF-8 BOM prefix",
            expect="any")
    corrupt(G, "config.json", lambda b: b.replace(b'"gpt2"', b'"gpt2\xff"'), ["config.json"],
            "invalid UTF-8 in model_type")
    corrupt(G, "tokenizer.json", lambda b: b"", ["tokenizer.json"], "empty")
    corrupt(G, "tokenizer.json", lambda b: b"{}", ["tokenizer.json"], "{}")
    corrupt(G, "tokenizer.json", lambda b: bytes(range(256)) * 10, ["tokenizer.json"], "garbage")
    corrupt(G, "tokenizer.json", lambda b: b.replace(b'"BPE"', b'"Quantum"'), ["tokenizer.json"],
            "unknown model type")
    for seed in range(3):
        corrupt(G, "tokenizer.json", lambda b, seed=seed: flip_bits(b, seed, 6), ["tokenizer.json"],
                f"6 bit flips seed {seed}", expect="any")

    def tok_big_id(b):
        t = json.loads(b)
        t["model"]["vocab"]["Z"] = 4000
        return json.dumps(t).encode()
    s.add(cls1, "tiny-gpt2 tokenizer.json: token id 4000 past vocab_size 400",
          attr("{D}/m", inp="Zebra ZZ"), words=[("vocabulary", "vocab_size")], expect="error",
          outputs=["out.json"],
          setup=lambda d: edit_file(os.path.join(model_copy(d), "tokenizer.json"), tok_big_id))

    def tok_special_big(b):
        t = json.loads(b)
        t["added_tokens"].append({"id": 99999, "content": "<boom>", "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": False,
                                  "special": True})
        return json.dumps(t).encode()
    s.add(cls1, "tiny-gpt2 tokenizer.json: added special token id 99999 used in input",
          attr("{D}/m", inp="Hello <boom> world"), words=[("vocabulary", "99999", "tokenizer")],
          expect="error", outputs=["out.json"],
          setup=lambda d: edit_file(os.path.join(model_copy(d), "tokenizer.json"), tok_special_big))

    for fname in ("config.json", "tokenizer.json", "model.safetensors"):
        s.add(cls1, f"tiny-gpt2 missing {fname}", attr("{D}/m"), words=[fname], expect="error",
              outputs=["out.json"],
              setup=lambda d, fname=fname: os.remove(os.path.join(model_copy(d), fname)))

    # safetensors
    ST = "model.safetensors"
    corrupt(G, ST, lambda b: b"", [ST], "empty")
    corrupt(G, ST, lambda b: b[:7], [ST], "7 bytes")
    corrupt(G, ST, lambda b: b[:100], [ST], "cut inside the header")
    corrupt(G, ST, lambda b: b[:-1], [ST], "last byte cut")
    corrupt(G, ST, lambda b: os.urandom(4096), [ST], "random bytes")
    corrupt(G, ST, lambda b: struct.pack("<Q", 2 ** 63) + b[8:], [ST], "header length 2^63")
    corrupt(G, ST, lambda b: struct.pack("<Q", len(b)) + b[8:], [ST], "header length = file length")
    corrupt(G, ST, lambda b: b[:8] + b"!" + b[9:], [ST], "header JSON broken")
    for seed in range(3):
        corrupt(G, ST, lambda b, seed=seed: flip_bits(b, seed, 3, 8, 8 + st_header(b)[0]), [ST],
                f"3 bit flips in the header seed {seed}", expect="any")
    corrupt(G, ST, lambda b: flip_bits(b, 7, 50, 8 + st_header(b)[0]), [(ST, "not finite")],
            "50 bit flips in the data", expect="any")

    def hdr(fn):
        return lambda b: st_rewrite(b, fn_header=fn)

    def first(h):
        return sorted(k for k in h if k != "__metadata__")[0]
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(dtype="I64")), [ST], "dtype I64")
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(dtype="F16")), [ST], "dtype F16 (size mismatch)")
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(dtype="WHAT")), [ST], "unknown dtype")
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(shape=[2 ** 40, 2 ** 40])), [ST],
            "shape 2^40 x 2^40")
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(data_offsets=[0, 2 ** 50])), [ST],
            "data offset 2^50")
    corrupt(G, ST, hdr(lambda h: h[first(h)].update(data_offsets=[100, 50])), [ST],
            "data offsets reversed")
    corrupt(G, ST, hdr(lambda h: h.update({"transformer.wte.weight_renamed": h.pop(
        "transformer.wte.weight")}) if "transformer.wte.weight" in h else h.pop(first(h))),
        [("wte", "missing weight", "missing")], "embedding tensor renamed")
    corrupt(G, ST, hdr(lambda h: [h[k].update(shape=[h[k]["shape"][-1]] + h[k]["shape"][:-1])
                                  for k in h if k != "__metadata__" and len(h[k]["shape"]) == 2]),
            [("shape", "mismatch")], "2-D shapes rotated")
    corrupt(G, ST, lambda b: st_rewrite(b, fn_data=fill_f32(float("nan"))),
            [("not finite", "numerical", "nan")], "all weights NaN")
    corrupt(G, ST, lambda b: st_rewrite(b, fn_data=fill_f32(float("inf"))),
            [("not finite", "numerical", "inf")], "all weights +inf")
    corrupt(G, ST, lambda b: st_rewrite(b, fn_data=fill_f32(float("nan"), lambda n: "ln_f" in n)),
            [("not finite", "numerical")], "final layer norm NaN")
    corrupt(G, ST, lambda b: st_rewrite(b, fn_data=fill_f32(3e38, lambda n: "wte" in n)),
            [("not finite", "numerical")], "embeddings 3e38 (overflow to inf)", expect="any")
    corrupt("tiny-llama", ST, lambda b: st_rewrite(b, fn_data=fill_f32(float("nan"))),
            [("not finite", "numerical")], "all weights NaN")
    corrupt("tiny-marian", ST, lambda b: st_rewrite(b, fn_data=fill_f32(float("nan"))),
            [("not finite", "numerical")], "all weights NaN")
    # NaN weights with --allow-non-finite must not crash
    s.add(cls1, "tiny-gpt2 NaN weights + --allow-non-finite, forced target", attr(
        "{D}/m", "--allow-non-finite", "--target", "Hello world d", save=False),
        expect="any", outputs=[],
        setup=lambda d: edit_file(os.path.join(model_copy(d), ST),
                                  lambda b: st_rewrite(b, fn_data=fill_f32(float("nan")))))
    s.add(cls1, "tiny-gpt2 NaN embeddings, integrated_gradients", attr(
        "{D}/m", "--method", "integrated_gradients", "--method-args", "n_steps=4"),
        words=[("not finite", "numerical")], expect="error", outputs=["out.json"],
        setup=lambda d: edit_file(os.path.join(model_copy(d), ST),
                                  lambda b: st_rewrite(b, fn_data=fill_f32(float("nan"), lambda n: "wte" in n))))

    # config fields
    def cfg(model, field, value, words, expect="error", nested=None):
        def setup(d):
            m = model_copy(d, model)
            p = os.path.join(m, "config.json")
            c = json.load(open(p))
            tgt = c[nested] if nested else c
            if value is DELETE:
                tgt.pop(field, None)
            else:
                tgt[field] = value
            with open(p, "w") as f:
                f.write(json.dumps(c))  # NaN/Infinity are written as JS tokens
        s.add(cls1, f"{model} config {nested + '.' if nested else ''}{field} = {value!r}",
              attr("{D}/m"), words=words, expect=expect, outputs=["out.json"], setup=setup)

    DELETE = object()
    for field in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"):
        for v in (0, -1, 2 ** 40, "12", 2.5, None):
            # a size the weights contradict may be reported as the weights' shape mismatch
            cfg(G, field, v, [(field, "config.json", "shape mismatch")],
                expect="any" if (v is None and field == "n_positions") else "error")
    for v in (0, -1e-5, "eps", float("nan"), 1e30):
        cfg(G, "layer_norm_epsilon", v, [("layer_norm_epsilon", "config.json")],
            expect="any" if v == 1e30 else "error")
    for v in ("mish", "", 42, "GELU"):
        cfg(G, "activation_function", v, [("activation", "config.json")])
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for v in (999999, -1):
            cfg(G, field, v, [field, "vocabulary"] if v == 999999 else [(field, "config.json")])
    cfg(G, "model_type", "whisper", [("whisper", "unsupported")])
    cfg(G, "model_type", DELETE, [("model_type", "config.json", "architecture")])
    L = "tiny-llama"
    for field, vals in (("num_hidden_layers", (0, 2 ** 40)), ("num_attention_heads", (0, 3)),
                        ("num_key_value_heads", (0, 3, 64)), ("hidden_size", (0, 33)),
                        ("head_dim", (0, 1000)), ("intermediate_size", (0, -5)),
                        ("max_position_embeddings", (0, 1)), ("rms_norm_eps", (0, -1.0))):
        for v in vals:
            cfg(L, field, v, [(field, "config.json", "shape mismatch", "context of")],
                expect="any" if (field == "max_position_embeddings" and v == 1) else "error")
    for v in (0, -10000.0, float("inf"), "big"):
        cfg(L, "rope_theta", v, [("rope_theta", "config.json")], nested="rope_parameters")
    cfg(L, "rope_type", "yarn-from-mars", [("rope", "config.json")], nested="rope_parameters")
    cfg(L, "hidden_act", "mish", [("activation", "mish")])
    cfg(L, "eos_token_id", [2, 999999], [("eos_token_id", "vocabulary")])
    M_ = "tiny-marian"
    cfg(M_, "decoder_start_token_id", 999999, ["decoder_start_token_id"])
    cfg(M_, "d_model", 0, [("d_model", "config.json")])
    cfg(M_, "encoder_layers", 0, [("encoder_layers", "config.json")])
    cfg(M_, "decoder_attention_heads", 5, [("decoder_attention_heads", "config.json")])
    cfg(M_, "activation_function", "mish", [("activation", "mish")])
    cfg("tiny-bart", "d_model", 64, [("shape", "mismatch")])
    cfg("tiny-bart", "decoder_layers", 2 ** 40, [("decoder_layers", "config.json")])

    # GGUF: a copy of the real model, only loaded (--max-new-tokens 1, tiny input)
    if s.gguf and os.path.exists(s.gguf):
        kv = gguf_kv_offsets(s.gguf)

        def gg(label, patch, words, expect="error", size=None):
            def setup(d):
                dst = os.path.join(d, "model.gguf")
                if size is not None:
                    with open(s.gguf, "rb") as f, open(dst, "wb") as g:
                        g.write(f.read(size))
                else:
                    shutil.copyfile(s.gguf, dst)
                if patch:
                    with open(dst, "r+b") as f:
                        patch(f)

            def cleanup(d):
                p = os.path.join(d, "model.gguf")
                if os.path.exists(p):
                    os.remove(p)
            s.add(cls1, f"GGUF {label}", attr("{D}/model.gguf", inp="Hi", new=1), words=words,
                  expect=expect, outputs=["out.json"], setup=setup, cleanup=cleanup)

        def put(off, fmt, v):
            def p(f):
                f.seek(off)
                f.write(struct.pack(fmt, v))
            return p

        def meta(key, v):
            if key not in kv:
                return None
            off, t = kv[key]
            return put(off, GGUF_SCALAR[t], v)

        size = os.path.getsize(s.gguf)
        for cut in (0, 3, 20, 4096, 1 << 20, size // 2, size - 1):
            gg(f"truncated to {cut} bytes", None, ["model.gguf"], size=cut)
        gg("magic GGUF -> GGUG", put(3, "<B", ord("G")), ["model.gguf"])
        gg("version 999", put(4, "<I", 999), ["model.gguf"])
        gg("tensor count 2^62", put(8, "<Q", 2 ** 62), ["model.gguf"])
        gg("kv count 2^62", put(16, "<Q", 2 ** 62), ["model.gguf"])
        gg("kv count 0", put(16, "<Q", 0), ["model.gguf"])
        gg("first key length 2^60", put(24, "<Q", 2 ** 60), ["model.gguf"])
        for key, v, w in (("llama.block_count", 0, "block_count"),
                          ("llama.block_count", 2 ** 31, "block_count"),
                          ("llama.embedding_length", 0, "embedding_length"),
                          ("llama.attention.head_count", 0, "head_count"),
                          ("llama.attention.head_count", 7, "head_count"),
                          ("llama.context_length", 0, "context_length"),
                          ("llama.attention.head_count_kv", 0, "head_count"),
                          ("llama.feed_forward_length", 0, "feed_forward_length"),
                          ("llama.vocab_size", 2 ** 31, "vocab"),
                          ("llama.rope.freq_base", float("nan"), ("rope", "freq_base")),
                          ("llama.rope.freq_base", 0.0, ("rope", "freq_base")),
                          ("llama.rope.freq_base", -1.0, ("rope", "freq_base")),
                          ("llama.rope.freq_base", float("inf"), ("rope", "freq_base")),
                          ("llama.attention.layer_norm_rms_epsilon", -1.0, "epsilon"),
                          ("tokenizer.ggml.eos_token_id", 10 ** 9, "eos_token_id"),
                          ("tokenizer.ggml.bos_token_id", 10 ** 9, "bos_token_id")):
            p = meta(key, v)
            if p:
                alts = w if isinstance(w, tuple) else (w,)
                gg(f"{key} = {v}", p, [alts + ("model.gguf",)])
        if "tokenizer.ggml.tokens" in kv:
            off, _ = kv["tokenizer.ggml.tokens"]
            gg("tokenizer token array count 2^40", put(off + 4, "<Q", 2 ** 40), ["model.gguf"])
        for seed in range(3):
            def flips(f, seed=seed):
                f.seek(0)
                b = f.read(65536)
                f.seek(0)
                f.write(flip_bits(b, seed, 8, 24))
            gg(f"8 bit flips in the first 64 KiB seed {seed}", flips, ["model.gguf"], expect="any")

    # ---------------- class 2: odd text ----------------
    texts = [
        ("empty", "", "error", ["empty"]),
        ("one space", " ", "error", ["empty"]),
        ("tabs and newlines", "\t\n\r\n", "error", ["empty"]),
        ("control chars", "a\x01\x02\x1b[31mred\x7f", "any", []),
        ("escape sequences only", "\x1b[2J\x1b[H", "any", []),
        ("emoji ZWJ family", "👩‍👩‍👧‍👦 🔥🔥", "any", []),
        ("RTL Arabic", "مرحبا بالعالم", "any", []),
        ("bidi override", "abc \u202e fed \u202c ghi", "any", []),
        ("zero-width only", "\u200b\u200b\u200c", "any", []),
        ("BOM", "\ufeffHello", "any", []),
        ("zalgo", "Z̴̡̪̈́a̷̧͉͝l̶̰̇g̵̣̔o̴̱͑", "any", []),
        ("CJK", "你好，世界。", "any", []),
        ("lone combining mark", "\u0301", "any", []),
        ("private use", "\ue000\U000f0000", "any", []),
        ("special token <s>", "<s>", "any", []),
        ("special tokens only", "<s></s><pad><unk>", "any", []),
        ("eos in the middle", "Hello</s> world", "any", []),
        ("long line 2000 chars", "ab " * 700, "error", [("context", "longer")]),
        ("100 KB of text", "word " * 20000, "error", [("context", "longer")]),
        ("just beyond context ~130 tokens", "a " * 130, "error", [("context", "longer")]),
        ("one word repeated 60", "hi " * 60, "any", []),
        ("backslashes and quotes", "\\\"'`${x}%s%n", "any", []),
        ("JSON-looking", '{"text": null}', "any", []),
        ("HTML/script", "<script>alert(1)</script>&amp;", "any", []),
    ]
    for model in ("tiny-gpt2", "tiny-llama", "tiny-marian"):
        for label, t, exp, words in texts:
            if model != "tiny-gpt2" and label in ("escape sequences only", "zalgo", "private use",
                                                  "backslashes and quotes", "JSON-looking",
                                                  "HTML/script", "one word repeated 60", "CJK",
                                                  "lone combining mark", "BOM"):
                continue
            s.add(cls2, f"{model} input: {label}",
                  attr(os.path.join(FIXTURES, model), "--viz", "html:{D}/v.html", inp=t),
                  words=words, expect=exp, outputs=["out.json", "v.html"])
    # NUL bytes cannot be in argv: through a dataset file instead (class 2 content)
    GP = os.path.join(FIXTURES, G)

    def data_case(label, content, words, expect="any", model=GP, ext="jsonl", extra=()):
        def setup(d):
            with open(os.path.join(d, "data." + ext), "wb") as f:
                f.write(content)
        s.add(cls2, f"dataset text: {label}",
              ["attribute-dataset", "--model", model, "--data", "{D}/data." + ext, "--save",
               "{D}/store.jsonl", "--max-new-tokens", "2", *extra],
              words=words, expect=expect, outputs=["store.jsonl"], setup=setup)
    data_case("NUL bytes in text (JSONL)", b'{"text": "a\\u0000b\\u0000"}\n', [])
    data_case("only NUL (JSONL)", b'{"text": "\\u0000"}\n', [])
    data_case("invalid UTF-8 bytes in JSONL", b'{"text": "caf\xe9 \xff\xfe"}\n', [("utf", "data.jsonl")])
    data_case("invalid UTF-8 bytes in CSV", b'text\ncaf\xe9 \xff\n', [("utf", "data.csv")], ext="csv")
    data_case("lone surrogate escape in JSONL", b'{"text": "a\\ud800b"}\n', [])
    data_case("empty text row (JSONL)", b'{"text": ""}\n', [], extra=("--on-error", "fail"))
    data_case("empty text row, skip", b'{"text": ""}\n{"text": "Hello"}\n', [])
    data_case("whitespace rows only", b'{"text": "   "}\n{"text": "\\n"}\n', [])
    data_case("text beyond context", json.dumps({"text": "ab " * 700}).encode() + b"\n",
              [], extra=("--on-error", "skip"))
    data_case("text beyond context, --on-error fail", json.dumps({"text": "ab " * 700}).encode()
              + b"\n", [("context", "longer")], expect="error", extra=("--on-error", "fail"))
    data_case("CRLF JSONL", b'{"text": "Hello"}\r\n{"text": "world"}\r\n', [])
    data_case("BOM-prefixed JSONL", b'\xef\xbb\xbf{"text": "Hello"}\n', [])
    data_case("BOM-prefixed CSV", b'\xef\xbb\xbftext\nHello\n', [], ext="csv")
    data_case("emoji/RTL rows", ('{"text": "🔥 مرحبا"}\n{"text": "\u202eabc"}\n').encode(), [])

    # invalid UTF-8 through argv
    s.add(cls2, "input: invalid UTF-8 in argv", attr(GP, inp=b"caf\xe9 \xff".decode("utf-8", "surrogateescape")),
          words=[("utf", "invalid")], expect="any", outputs=["out.json"])
    # targets
    for label, tgt, exp, words in (
            ("empty target", "", "error", [("target", "empty", "nothing")]),
            ("target not starting with input", "Bye", "error", ["target must start"]),
            ("target = input", "Hello world", "error", [("nothing to attribute", "target")]),
            ("target beyond context", "Hello world" + " x" * 300, "error", [("context", "longer")]),
            ("target with NUL-free control chars", "Hello world\x01\x02", "any", []),
            ("target with emoji", "Hello world 🔥", "any", [])):
        s.add(cls2, f"tiny-gpt2 {label}", attr(GP, "--target", tgt), words=words, expect=exp,
              outputs=["out.json"])
    MP = os.path.join(FIXTURES, "tiny-marian")
    for label, tgt, exp, words in (("empty target", "", "error", [("nothing to attribute", "empty")]),
                                   ("whitespace target", "   ", "any", []),
                                   ("special-token target", "</s>", "any", []),
                                   ("target beyond context", "x " * 300, "error", [("context", "longer")])):
        s.add(cls2, f"tiny-marian {label}", attr(MP, "--target", tgt), words=words, expect=exp,
              outputs=["out.json"])
    s.add(cls2, "tiny-gpt2 contrast target empty",
          attr(GP, "--target", "Hello world d", "--contrast-target", "",
               "--attributed-fn", "contrast_prob_diff"), words=[("contrast", "empty")], expect="any",
          outputs=["out.json"])
    s.add(cls2, "tiny-gpt2 contrast target emoji only",
          attr(GP, "--target", "Hello world d", "--contrast-target", "🔥",
               "--attributed-fn", "contrast_prob_diff"), words=[("contrast", "prefix")], expect="any",
          outputs=["out.json"])

    # ---------------- class 3: extreme arguments ----------------
    def arg(label, extra, words, expect="error", inp="Hello world", new=2, outputs=("out.json",),
            model=GP, save=True, setup=None):
        s.add(cls3, label, attr(model, *extra, inp=inp, new=new, save=save), words=words,
              expect=expect, outputs=list(outputs), setup=setup)

    def margs(method, a, words, expect="error"):
        arg(f"{method} {a}", ["--method", method, "--method-args", a], words, expect)

    for v in ("0", "-1", "abc", "NaN", "1e9", "99999999999999999999999", "10001", ""):
        margs("integrated_gradients", f"n_steps={v}", ["n_steps"])
    margs("integrated_gradients", "n_steps=10000,internal_batch_size=1", [], expect="any")
    for v in ("0", "-4", "abc", "1000000000"):
        margs("integrated_gradients", f"n_steps=4,internal_batch_size={v}", ["internal_batch_size"],
              expect="any" if v == "1000000000" else "error")
    margs("integrated_gradients", "n_steps=4,method=bogus", [("method", "bogus")])
    margs("integrated_gradients", "n_steps=2,n_steps=3", ["n_steps"], expect="any")
    margs("integrated_gradients", "n_steps", ["n_steps"])
    margs("integrated_gradients", "=4", [("argument", "=4")])
    margs("integrated_gradients", ",,,", [], expect="any")
    margs("integrated_gradients", "baselines=zeros", [("baselines", "argument")], expect="any")
    margs("integrated_gradients", "baselines=[1,2", [("baselines", "argument")])
    for v in ("0", "-1", "1000000000", "NaN", "abc"):
        margs("gradient_shap", f"n_samples={v}", ["n_samples"])
    for v in ("-1", "NaN", "inf", "1e38", "0"):
        margs("gradient_shap", f"n_samples=2,stdevs={v}", [("stdevs", "not finite", "numerical")],
              expect="any" if v == "0" else "error")
    for v in ("0", "1000000000", "-3"):
        margs("lime", f"n_samples={v}", ["n_samples"])
    margs("occlusion", "sliding_window_shapes=0", [("sliding_window", "argument")], expect="any")
    margs("occlusion", "internal_batch_size=0", ["internal_batch_size"])
    margs("reagent", "num_probes=1000000000", ["num_probes"])
    margs("reagent", "max_probe_steps=0", ["max_probe_steps"], expect="any")
    margs("reagent", "keep_top_n=-1", ["keep_top_n"], expect="any")
    for m, a in (("layer_integrated_gradients", "layer=99"), ("layer_gradient_x_activation", "layer=-1"),
                 ("layer_deeplift", "layer=encoder.0"), ("layer_gradient_x_activation", "layer=🔥")):
        margs(m, a, ["layer"])
    margs("sequential_integrated_gradients", "n_steps=0", ["n_steps"])
    for m in ("discretized_integrated_gradients", "sequential_integrated_gradients",
              "layer_integrated_gradients"):
        margs(m, "n_steps=100000", ["n_steps"])
    margs("discretized_integrated_gradients", "n_steps=10001", ["n_steps"])
    margs("value_zeroing", "internal_batch_size=0", [], expect="any")
    margs("attention", "n_steps=4", [("not an argument", "n_steps")])
    margs("saliency", "abs=maybe", ["abs"])
    for mth in ("magic", "", "SALIENCY", "saliency "):
        arg(f"unknown method {mth!r}", ["--method", mth], [("method", "unknown")],
            expect="any" if mth in ("SALIENCY", "saliency ") else "error")
    for ss in ("nope", "probability,nope", ",", "probability,probability"):
        arg(f"--step-scores {ss!r}", ["--step-scores", ss], [("step function", "nope", "step")],
            expect="any" if ss in (",", "probability,probability") else "error")
    for a in ("top_p=NaN", "top_p=inf", "top_p=0", "top_p=lots"):
        arg(f"--step-scores top_p_size --step-scores-args {a}",
            ["--step-scores", "top_p_size", "--step-scores-args", a], ["top_p"])
    arg("--attributed-fn surprise", ["--attributed-fn", "surprise"], ["surprise"])
    arg("--attributed-fn-args logprob=maybe", ["--attributed-fn-args", "logprob=maybe"], ["logprob"])
    for agg in ("words", "subwords:sum,,vnorm", "spans:[0", ":::"):
        arg(f"--aggregation {agg!r}", ["--aggregation", agg], [("aggregat", agg.split(":")[0] or "aggregat")])
    for v in ("0", "-1", "many", "99999999999999999999", "1000000"):
        arg(f"--max-new-tokens {v}", [], ["max_new_tokens" if v == "0" else "max-new-tokens"],
            expect="any" if v == "1000000" else "error", new=v)
    arg("--min-new-tokens 1000 > max", ["--min-new-tokens", "1000"], [("min_new_tokens", "min-new-tokens")],
        expect="any")
    for a, b in (("9999", None), ("-9999", None), ("0", "0"), ("3", "1"), (None, "9999"), (None, "-9999")):
        ex = []
        if a is not None:
            ex += ["--attr-pos-start", a]
        if b is not None:
            ex += ["--attr-pos-end", b]
        arg(f"attr positions start={a} end={b}", ex + ["--target", "Hello world d g"],
            [("attr_pos", "nothing to attribute", "position")])
    for dev in ("tpu", "cuda:99", ""):
        arg(f"--device {dev!r}", ["--device", dev], [("device", dev or "device")])
    for ga in ("{not json", "[]", '{"num_beams": 0}', '{"max_new_tokens": -1}', '{"temperature": -1, "do_sample": true}',
               '{"top_k": 1e20, "do_sample": true}', '{"bogus_arg": 1}', '{"num_beams": 100000}'):
        arg(f"--generation-args {ga}", ["--generation-args", ga],
            [("generation", "generation_args", "num_beams", "max_new_tokens", "temperature", "top_k",
              "bogus")], expect="any" if "bogus" in ga else "error")
    for flag, v in (("--temperature", "NaN"), ("--temperature", "0"), ("--temperature", "-1"),
                    ("--top-p", "0"), ("--top-p", "2"), ("--top-p", "NaN"), ("--top-k", "-1"),
                    ("--num-beams", "0"), ("--num-beams", "100000"), ("--seed", "-1"),
                    ("--seed", "18446744073709551615")):
        arg(f"{flag} {v} (sampling)", ["--do-sample", flag, v],
            [(flag.strip("-").replace("-", "_"), flag)],
            expect="any" if v == "18446744073709551615" else "error")
    for al in ("99-99", "a-b", "0-0,0-0", "-"):
        arg(f"--contrast-alignments {al!r}",
            ["--target", "Hello world d", "--contrast-target", "Hello world g",
             "--attributed-fn", "contrast_prob_diff", "--contrast-alignments", al],
            [("alignment", "contrast")], expect="any" if al == "0-0,0-0" else "error")
    arg("--contrast-source on a decoder-only model", ["--contrast-source", "x"], [("contrast", "source")],
        expect="any")
    # output paths
    arg("--viz html into missing dir", ["--viz", "html:{D}/nodir/v.html"], ["nodir"],
        outputs=["out.json"])
    arg("--viz svg into missing dir", ["--viz", "svg:{D}/nodir/v"], ["nodir"], outputs=["out.json"])
    arg("--viz bogus kind", ["--viz", "pdf:{D}/v.pdf"], [("kind", "pdf")], outputs=["out.json", "v.pdf"])
    arg("--viz html: empty path", ["--viz", "html:"], [("viz", "path", "empty")], outputs=["out.json"])
    arg("--viz with no colon", ["--viz", "html"], [("viz", "kind", "html")], outputs=["out.json"])
    arg("--save into missing dir", ["--save", "{D}/nodir/out.json"], ["nodir"], save=False, outputs=[])
    arg("--save under a regular file", ["--save", "{D}/afile/out.json"], ["afile"], save=False,
        outputs=[], setup=lambda d: open(os.path.join(d, "afile"), "w").close())
    arg("--save onto an existing directory", ["--save", "{D}/adir"], ["adir"], save=False, outputs=[],
        setup=lambda d: os.mkdir(os.path.join(d, "adir")))
    arg("--save empty path", ["--save", ""], [("save", "path", "empty")], save=False, outputs=[])
    arg("--save to /proc (unwritable)", ["--save", "/proc/inseq-hostile.json"], ["/proc"], save=False,
        outputs=[])
    arg("--save-inseq into missing dir", ["--save-inseq", "{D}/nodir/x.json"], ["nodir"],
        outputs=["out.json"])
    arg("--save and --save-inseq the same path", ["--save-inseq", "{D}/out.json"], [], expect="any",
        outputs=["out.json"])
    arg("--target count != --input count", ["--target", "Hello world d", "--target", "Hello world g"],
        ["--target"])
    arg("10 identical inputs in a batch", ["--input", "Hello world"] * 9, [], expect="any")
    arg("model path empty", [], [("model", "empty")], model="")
    arg("model path is a file", [], [("config.json", "model", "README")], model=os.path.join(REPO, "README.md"))
    arg("model: unknown alias/hub id offline", [], [("nobody/no-such-model", "model")],
        model="nobody/no-such-model", expect="error")

    # ---------------- class 4: datasets and stores ----------------
    def ds(label, files, extra, words, expect="error", model=GP, outputs=("store.jsonl",),
           post=None, data="{D}/data.jsonl", setup2=None):
        def setup(d):
            for name, content in files.items():
                p = os.path.join(d, name)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(content)
            if setup2:
                setup2(d)
        s.add(cls4, label, ["attribute-dataset", "--model", model, "--data", data, "--save",
                            "{D}/store.jsonl", "--max-new-tokens", "2", *extra],
              words=words, expect=expect, outputs=list(outputs), setup=setup, post=post)

    J = b'{"text": "Hello world", "target": "Hello world d"}\n{"text": "The cat"}\n'
    ds("--input-field absent from every row", {"data.jsonl": J}, ["--input-field", "txt"], ["txt", "data.jsonl"])
    ds("--target-field absent from every row", {"data.jsonl": J}, ["--target-field", "tgt"], ["tgt", "data.jsonl"])
    ds("--target-field present in some rows", {"data.jsonl": J}, ["--target-field", "target"], [], expect="ok")
    ds("--input-field empty string", {"data.jsonl": J}, ["--input-field", ""], [("input-field", "field")])
    ds("input field is a number", {"data.jsonl": b'{"text": 5}\n'}, ["--on-error", "fail"], [("text", "string")])
    ds("input field is null", {"data.jsonl": b'{"text": null}\n'}, ["--on-error", "fail"], [("text", "string", "null")])
    ds("input field is an array", {"data.jsonl": b'{"text": ["a"]}\n'}, ["--on-error", "fail"], [("text", "string")])
    ds("empty JSONL", {"data.jsonl": b""}, [], [("empty", "no row", "data.jsonl")], expect="any")
    ds("JSONL of blank lines", {"data.jsonl": b"\n\n\n"}, [], [("empty", "no row", "data.jsonl")], expect="any")
    for fail in (False, True):
        ex, exp, tag = (["--on-error", "fail"], "error", ", --on-error fail") if fail else ([], "any", "")
        ds("JSONL garbage line" + tag, {"data.jsonl": b'{"text": "a"}\n{oops\n{"text": "b"}\n'}, ex,
           [("data.jsonl", "row 1"), ("json",)], expect=exp)
        ds("JSONL of arrays" + tag, {"data.jsonl": b"[1,2]\n[3]\n"}, ex, [("data.jsonl", "row 0"), "object"],
           expect=exp)
        ds("JSONL binary garbage" + tag, {"data.jsonl": os.urandom(2048)}, ex, [("data.jsonl", "row 0")],
           expect=exp)
    ds("JSONL 10 MB single line", {"data.jsonl": b'{"text": "' + b"a" * (10 << 20) + b'"}\n'},
       ["--on-error", "skip"], [], expect="any")
    ds("empty CSV", {"data.csv": b""}, [], [("data.csv", "empty", "no row")], data="{D}/data.csv", expect="any")
    ds("CSV header only", {"data.csv": b"text,target\n"}, [], [("data.csv", "no row")], data="{D}/data.csv",
       expect="any")
    ds("CSV garbage binary", {"data.csv": bytes(range(256)) * 8}, [], ["data.csv"], data="{D}/data.csv")
    ds("CSV unclosed quote", {"data.csv": b'text\n"Hello world\n'}, [], ["data.csv"], data="{D}/data.csv",
       expect="any")
    ds("CSV ragged rows", {"data.csv": b"text,a\nHello,1,2,3\nworld\n"}, [], ["data.csv"], data="{D}/data.csv",
       expect="any")
    ds("CSV without the field", {"data.csv": b"a,b\n1,2\n"}, [], ["text", "data.csv"], data="{D}/data.csv")
    ds("Parquet garbage", {"data.parquet": os.urandom(4096)}, [], ["data.parquet"], data="{D}/data.parquet")
    ds("Parquet empty file", {"data.parquet": b""}, [], ["data.parquet"], data="{D}/data.parquet")
    ds("Parquet magic only", {"data.parquet": b"PAR1PAR1"}, [], ["data.parquet"], data="{D}/data.parquet")
    ds("Parquet magic + huge footer length", {"data.parquet": b"PAR1" + b"\0" * 16 + struct.pack("<I", 2 ** 31) + b"PAR1"},
       [], ["data.parquet"], data="{D}/data.parquet")
    ds("missing data file", {}, [], ["nope.jsonl"], data="{D}/nope.jsonl")
    ds("data dir with no data files", {"dd/readme.txt": b"hi"}, [], ["dd"], data="{D}/dd")
    ds("data of unknown extension .txt", {"data.txt": b"Hello\n"}, [], [("data.txt", "extension", "format")],
       data="{D}/data.txt", expect="any")
    for sp in ("train[abc]", "train[5:2]", "train[:-999]", "test", "train[99999:]"):
        ds(f"--split {sp}", {"data.jsonl": J}, ["--split", sp], [("split", sp)], expect="any")
    for sh in ("3/2", "0/0", "abc", "1/", "-1/2"):
        ds(f"--shard {sh}", {"data.jsonl": J}, ["--shard", sh], [("shard",)])
    for bs in ("0", "-1", "1000000000"):
        ds(f"--batch-size {bs}", {"data.jsonl": J}, ["--batch-size", bs], [("batch", "batch-size")],
           expect="any" if bs == "1000000000" else "error")
    ds("--on-error bogus", {"data.jsonl": J}, ["--on-error", "bogus"], [("on-error", "bogus")])
    s.add(cls4, "--save into missing dir",
          ["attribute-dataset", "--model", GP, "--data", "{D}/data.jsonl", "--save", "{D}/nodir/s.jsonl"],
          words=["nodir"], expect="error", outputs=[],
          setup=lambda d: open(os.path.join(d, "data.jsonl"), "wb").write(J))
    ds("--viz-path into missing dir", {"data.jsonl": J}, ["--viz-path", "{D}/nodir/v.html"], ["nodir"])
    ds("--save is an existing regular non-JSONL file", {"data.jsonl": J, "store.jsonl": b"not a store\n"}, [],
       ["store.jsonl"], outputs=[])

    add_store_cases(s, GP)


# the slow dataset used for interruptions
KILL_ROWS = 12


def kill_data():
    return "".join(json.dumps({"text": f"The quick brown fox number {i} jumps"}) + "\n"
                   for i in range(KILL_ROWS)).encode()


def ds_argv(bin_, data, store, batch=1, extra=()):
    return [bin_, "attribute-dataset", "--model", os.path.join(FIXTURES, "tiny-gpt2"), "--data", data,
            "--save", store, "--max-new-tokens", "4", "--method", "integrated_gradients",
            "--method-args", "n_steps=200", "--batch-size", str(batch), *extra]


def add_store_cases(s, GP):
    cls4 = CLASSES[3]
    refs = {}

    def ref(d, kind, batch=1):
        """Uninterrupted run into the shared reference folder (once per kind and batch)."""
        key = (kind, batch)
        if key not in refs:
            rd = os.path.join(s.root, f"ref-{kind}-{batch}")
            os.makedirs(rd, exist_ok=True)
            data = os.path.join(rd, "data.jsonl")
            with open(data, "wb") as f:
                f.write(kill_data())
            store = os.path.join(rd, "store.jsonl" if kind == "jsonl" else "store")
            r = run(ds_argv(s.bin, data, store, batch), rd, 300)
            if r.rc != 0:
                raise RuntimeError(f"reference run failed: {r.stderr}")
            refs[key] = (store, snapshot(store))
        return refs[key]

    def prep(d):
        with open(os.path.join(d, "data.jsonl"), "wb") as f:
            f.write(kill_data())
        return os.path.join(d, "data.jsonl")

    # kill -9 at random moments, then resume; the store must equal the uninterrupted run byte for byte
    def kill_case(seed, kind, batch, kills):
        def custom(d):
            _, want = ref(d, kind, batch)
            data = prep(d)
            store = os.path.join(d, "store.jsonl" if kind == "jsonl" else "store")
            rnd = random.Random(seed)
            log = []
            for _ in range(kills):
                t0 = time.time()
                p, o, e = spawn(ds_argv(s.bin, data, store, batch), d)
                time.sleep(rnd.uniform(0.05, 3.0))
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                rr = reap(p, o, e, [], t0)
                log.append(f"killed at {rr.wall:.2f}s rc={rr.rc} rows={len(store_rows(store))}")
                if rr.rc not in (0, -9) or "panicked" in rr.stderr:
                    return rr, ("PANIC", f"interrupted run: rc={rr.rc} {rr.stderr[:200]}")
            r = run(ds_argv(s.bin, data, store, batch), d, s.timeout)
            if r.rc != 0:
                return r, None
            got = snapshot(store)
            if kind == "dir" and isinstance(got, dict):
                got = {k: v for k, v in got.items() if not k.endswith(".lock")}
                want2 = {k: v for k, v in want.items() if not k.endswith(".lock")}
            else:
                want2 = want
            if got != want2:
                return r, ("LOST DATA", f"resumed store differs from the uninterrupted run ({'; '.join(log)})")
            return r, ("ok", "; ".join(log))
        s.add(cls4, f"kill -9 x{kills} then resume ({kind}, batch {batch}, seed {seed})",
              ["(custom)"], custom=custom)

    for seed, kind, batch, kills in ((1, "jsonl", 1, 1), (2, "jsonl", 1, 3), (3, "jsonl", 2, 2),
                                     (4, "dir", 1, 2), (5, "dir", 3, 2), (6, "jsonl", 3, 1)):
        kill_case(seed, kind, batch, kills)

    # corrupt store contents, then resume
    def store_edit_case(label, kind, edit, expect, words=()):
        def custom(d):
            rstore, want = ref(d, kind, 1)
            data = prep(d)
            store = os.path.join(d, "store.jsonl" if kind == "jsonl" else "store")
            if kind == "jsonl":
                shutil.copyfile(rstore, store)
            else:
                shutil.copytree(rstore, store)
            edit(store)
            before = snapshot(store)
            r = run(ds_argv(s.bin, data, store), d, s.timeout)
            after = snapshot(store)
            if r.rc == 0:
                rows = store_rows(store)
                missing = [i for i in range(KILL_ROWS) if i not in rows]
                if missing or "corrupt" in rows:
                    return r, ("LOST DATA", f"after resume rows missing {missing} / corrupt lines kept")
                if expect == "error":
                    return r, ("ACCEPTED", "exit 0 on a corrupt store")
                return r, None
            if after != before:
                return r, ("LOST DATA", "the failed run changed the store")
            return r, None
        s.add(cls4, f"store ({kind}): {label}, resume", ["(custom)"], words=words, expect=expect,
              custom=custom)

    def lines_edit(fn):
        def e(store):
            with open(store, "rb") as f:
                lines = f.read().split(b"\n")
            lines = fn(lines)
            with open(store, "wb") as f:
                f.write(b"\n".join(lines))
        return e

    def drop_tail_and(fn):
        return lines_edit(lambda ls: fn(ls[:6] + [b""]))

    store_edit_case("corrupt line 3 of 6 stored", "jsonl",
                    drop_tail_and(lambda ls: ls[:2] + [b"{garbage"] + ls[3:]), "error", ["line 3"])
    store_edit_case("line 3 valid JSON without fields", "jsonl",
                    drop_tail_and(lambda ls: ls[:2] + [b'{"hello": 1}'] + ls[3:]), "error", ["line 3"])
    store_edit_case("line 3 with row 999", "jsonl",
                    drop_tail_and(lambda ls: ls[:2] + [ls[2].replace(b'"row":2', b'"row":999')] + ls[3:]),
                    "any", [("999", "line 3")])
    store_edit_case("line 3 duplicated", "jsonl", drop_tail_and(lambda ls: ls[:3] + [ls[2]] + ls[3:]), "any",
                    [("row", "line")])
    store_edit_case("blank line in the middle", "jsonl", drop_tail_and(lambda ls: ls[:3] + [b""] + ls[3:]),
                    "any", [("line",)])
    store_edit_case("NUL bytes line in the middle", "jsonl",
                    drop_tail_and(lambda ls: ls[:3] + [b"\0" * 40] + ls[3:]), "error", ["line 4"])
    store_edit_case("last line cut short (no newline)", "jsonl",
                    lines_edit(lambda ls: ls[:5] + [ls[5][: len(ls[5]) // 2]]), "ok")
    store_edit_case("last line cut short + newline", "jsonl",
                    lines_edit(lambda ls: ls[:5] + [ls[5][: len(ls[5]) // 2], b""]), "error", ["line 6"])
    store_edit_case("invalid UTF-8 in line 2", "jsonl",
                    drop_tail_and(lambda ls: ls[:1] + [ls[1][:50] + b"\xff\xfe" + ls[1][52:]] + ls[2:]),
                    "error", ["line 2"])

    def rm_rows(store, keep=6):
        for n in os.listdir(store):
            m = re.fullmatch(r"row-(\d+)\.json", n)
            if m and int(m.group(1)) >= keep:
                os.remove(os.path.join(store, n))

    def dir_edit(fn):
        def e(store):
            rm_rows(store)
            fn(store)
        return e

    def write(p, b):
        with open(p, "wb") as f:
            f.write(b)
    store_edit_case("empty row-000003.json", "dir",
                    dir_edit(lambda st: write(os.path.join(st, "row-000003.json"), b"")), "error",
                    ["row-000003.json"])
    store_edit_case("garbage row-000002.json", "dir",
                    dir_edit(lambda st: write(os.path.join(st, "row-000002.json"), b"\x00{bad")), "error",
                    ["row-000002.json"])
    store_edit_case("unrelated notes.txt in the store dir", "dir",
                    dir_edit(lambda st: write(os.path.join(st, "notes.txt"), b"hi")), "any")
    store_edit_case("row-000999.json of a row that does not exist", "dir",
                    dir_edit(lambda st: shutil.copyfile(os.path.join(st, "row-000001.json"),
                                                        os.path.join(st, "row-000999.json"))), "any",
                    [("999",)])
    store_edit_case("row-000004.json holding row 1's content", "dir",
                    dir_edit(lambda st: shutil.copyfile(os.path.join(st, "row-000001.json"),
                                                        os.path.join(st, "row-000004.json"))), "any",
                    [("row-000004", "row")])

    # two concurrent writers
    def concurrent(kind, delay):
        def custom(d):
            _, want = ref(d, kind, 1)
            data = prep(d)
            store = os.path.join(d, "store.jsonl" if kind == "jsonl" else "store")
            t0 = time.time()
            p1 = spawn(ds_argv(s.bin, data, store), d)
            time.sleep(delay)
            t1 = time.time()
            p2 = spawn(ds_argv(s.bin, data, store), d)
            r2 = reap(*p2, ds_argv(s.bin, data, store), t1, s.timeout)
            r1 = reap(*p1, ds_argv(s.bin, data, store), t0, s.timeout)
            for r in (r1, r2):
                if r.rc == 101 or "panicked" in r.stderr or r.sig:
                    return r, ("PANIC", f"rc={r.rc}")
            losers = [r for r in (r1, r2) if r.rc != 0]
            for r in losers:
                if "another inseq process" not in r.stderr and "lock" not in r.stderr.lower():
                    return r, ("WRONG WORDS", "second writer's message lacks the lock")
            if len(losers) == 2:
                return r1, ("LOST DATA", "both writers failed")
            # finish if the loser was the one that would have completed
            rf = run(ds_argv(s.bin, data, store), d, s.timeout)
            got = snapshot(store)
            w = want
            if kind == "dir":
                got = {k: v for k, v in (got or {}).items() if not k.endswith(".lock")}
                w = {k: v for k, v in want.items() if not k.endswith(".lock")}
            if got != w:
                return rf, ("LOST DATA", "store after two writers differs from the uninterrupted run")
            note = "second writer refused" if losers else "both exited 0 (no overlap?)"
            return (losers[0] if losers else r1), ("ok" if not losers else "clean error", note)
        s.add(cls4, f"two concurrent writers ({kind}, second after {delay}s)", ["(custom)"], custom=custom)
    concurrent("jsonl", 0.0)
    concurrent("jsonl", 0.5)
    concurrent("dir", 0.2)

    # merge
    def merge_case(label, inputs_fn, expect, words=(), out_name="merged.jsonl", check=None):
        def custom(d):
            rstore, want = ref(d, "jsonl", 1)
            inputs = inputs_fn(d, rstore)
            out = os.path.join(d, out_name)
            before = {i: snapshot(i) for i in inputs if os.path.exists(i)}
            r = run([s.bin, "merge", "--output", out, *inputs], d, s.timeout)
            for i, b in before.items():
                if i != out and snapshot(i) != b:
                    return r, ("LOST DATA", f"merge changed its input {os.path.basename(i)}")
            if r.rc == 0:
                rows = store_rows(out)
                if check:
                    res = check(d, rows, store_rows(rstore))
                    if res:
                        return r, res
                if expect == "error":
                    return r, ("ACCEPTED", "merge accepted bad inputs")
                return r, None
            if os.path.exists(out) and out not in before:
                return r, ("LATE CHECK", "merge failed but wrote its output")
            if out in before and snapshot(out) != before[out]:
                return r, ("LOST DATA", "failed merge changed the output store")
            return r, None
        s.add(cls4, f"merge: {label}", ["(custom)"], words=words, expect=expect, custom=custom)

    def f32(x):
        """Values as f32: JSONL rows print an f32 with f64 digits, directory rows with f32 digits."""
        if isinstance(x, float):
            return struct.unpack("<f", struct.pack("<f", x))[0] if math.isfinite(x) else repr(x)
        if isinstance(x, list):
            return [f32(v) for v in x]
        if isinstance(x, dict):
            return {k: f32(v) for k, v in x.items()}
        return x

    def full_check(d, rows, refrows):
        if sorted(k for k in rows if k != "corrupt") != sorted(refrows) or "corrupt" in rows:
            return ("LOST DATA", f"merged rows {sorted(k for k in rows if k != 'corrupt')}")
        for k, v in refrows.items():
            got = json.loads(rows[k])
            got = got.get("output", got) if "row" in got else got  # a directory row is the bare output
            if f32(got) != f32(json.loads(v)["output"]):
                return ("LOST DATA", f"row {k} differs from the reference")
        return None

    def shards(d, rstore):
        with open(rstore, "rb") as f:
            lines = [l for l in f.read().split(b"\n") if l]
        a, b = os.path.join(d, "a.jsonl"), os.path.join(d, "b.jsonl")
        write(a, b"\n".join(lines[0::2]) + b"\n")
        write(b, b"\n".join(lines[1::2]) + b"\n")
        return [a, b]

    merge_case("two halves", shards, "ok", check=full_check)
    merge_case("same file twice", lambda d, r: [r, r], "ok", check=full_check)
    merge_case("missing input", lambda d, r: [r, os.path.join(d, "missing.jsonl")], "error", ["missing.jsonl"])
    merge_case("no rows at all (empty file)", lambda d, r: [write(os.path.join(d, "e.jsonl"), b"")
                                                           or os.path.join(d, "e.jsonl")], "any")

    def corrupt_mid(d, r):
        a, b = shards(d, r)
        lines = open(a, "rb").read().split(b"\n")
        lines[2] = b"{broken"
        write(a, b"\n".join(lines))
        return [a, b]
    merge_case("corrupt line in one input", corrupt_mid, "error", ["a.jsonl", "line 3"])

    def cut_last(d, r):
        a, b = shards(d, r)
        x = open(a, "rb").read().rstrip(b"\n")
        write(a, x[:-30])
        return [a, b]
    merge_case("cut-short last line", cut_last, "error", ["a.jsonl"])

    def conflict(d, r):
        a, b = shards(d, r)
        lines = open(b, "rb").read().split(b"\n")
        row0 = open(a, "rb").read().split(b"\n")[0]
        doc = json.loads(row0)
        doc["output"]["info"]["input_texts"] = ["something else"]
        write(b, b"\n".join(lines[:-1] + [json.dumps(doc).encode(), b""]))
        return [a, b]
    merge_case("same row, different results", conflict, "error", [("row 0", "differ", "conflict")])

    def to_dir(d, r):
        a, b = shards(d, r)
        return [a, b]
    merge_case("output is a directory store", to_dir, "ok", out_name="mdir",
               check=lambda d, rows, ref: full_check(d, rows, ref))
    merge_case("output in a missing directory", shards, "error", ["nodir"], out_name="nodir/m.jsonl")

    def out_is_input(d, r):
        a, b = shards(d, r)
        shutil.copyfile(a, os.path.join(d, "merged.jsonl"))
        return [os.path.join(d, "merged.jsonl"), b]
    merge_case("output is also an input", out_is_input, "any", check=full_check)
    merge_case("garbage input file", lambda d, r: [write(os.path.join(d, "g.jsonl"), os.urandom(500))
                                                  or os.path.join(d, "g.jsonl"), r], "error", ["g.jsonl"])
    merge_case("input is a data file, not a store", lambda d, r: [write(os.path.join(d, "x.jsonl"),
                                                                        b'{"text": "hi"}\n')
                                                                  or os.path.join(d, "x.jsonl")], "error",
               ["x.jsonl"])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def shell_quote(a):
    if re.fullmatch(r"[A-Za-z0-9_./:=,@+-]+", a):
        return a
    return "'" + a.replace("'", "'\\''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("INSEQ_BIN"), help="the inseq binary (or env INSEQ_BIN)")
    ap.add_argument("--gguf", default=DEFAULT_GGUF, help="a real GGUF model to corrupt copies of ('' to skip)")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--results", help="write the Markdown result table here")
    ap.add_argument("--json", help="write every case's outcome as JSON here")
    ap.add_argument("--only", help="run only cases whose class or name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    if not a.bin:
        ap.error("give --bin or INSEQ_BIN")
    binary = os.path.abspath(a.bin)
    root = tempfile.mkdtemp(prefix="inseq-hostile-")
    s = Suite(binary, root, a.gguf, a.timeout)
    build_cases(s)
    cases = [c for c in s.cases if not a.only or a.only in c["cls"] or a.only in c["name"]]
    results = []
    t_start = time.time()
    for i, c in enumerate(cases):
        d = s.workdir(c["name"])
        try:
            if c["setup"]:
                c["setup"](d)
            if c["custom"]:
                r, res = c["custom"](d)
                argv = r.argv
                if res is None:
                    res = classify(dict(c, outputs=[]), r, d)
            else:
                argv = [binary] + [x.replace("{D}", d) for x in c["args"]]
                outs = c["outputs"] if c["outputs"] is not None else []
                r = run(argv, d, a.timeout)
                res = classify(dict(c, outputs=outs), r, d)
        except Exception as e:  # a bug of this script, not of the CLI
            r = Run([], None, None, "", f"harness exception: {e!r}", 0, 0, False)
            res = ("HARNESS", repr(e))
            argv = []
        if c.get("cleanup"):
            c["cleanup"](d)
        outcome, note = res
        first = next((l for l in r.stderr.splitlines() if l.strip()), "")
        rec = dict(cls=c["cls"], name=c["name"], outcome=outcome, note=note, rc=r.rc,
                   rss_mb=round(r.rss_kb / 1024, 1), wall=round(r.wall, 2),
                   cmd=" ".join(shell_quote(x) for x in argv), stderr=r.stderr[-1500:], first=first)
        results.append(rec)
        flag = "" if outcome in GOOD else "  <-- FINDING"
        print(f"[{i + 1:3d}/{len(cases)}] {outcome:12s} rc={r.rc!s:>4} {rec['rss_mb']:7.1f}MB "
              f"{r.wall:5.1f}s  {c['cls'][:1]} {c['name']}{flag}", flush=True)
        if outcome not in GOOD:
            print(f"        {note} | {first[:200]}", flush=True)
        # the work folders of passed cases are dropped to save disk
        if outcome in GOOD and not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    total = time.time() - t_start
    print(f"\n{len(results)} cases in {total:.0f}s")
    table = render(results, total, binary)
    print(table)
    if a.results:
        with open(a.results, "w") as f:
            f.write(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work dir kept: {root}")
    return 1 if any(r["outcome"] not in GOOD for r in results) else 0


def render(results, total, binary):
    outs = [o for o in OUTCOMES if any(r["outcome"] == o for r in results)]
    extra = sorted({r["outcome"] for r in results} - set(OUTCOMES))
    outs += extra
    lines = ["| class | cases | " + " | ".join(outs) + " |",
             "|---|---:|" + "---:|" * len(outs)]
    for c in CLASSES:
        rs = [r for r in results if r["cls"] == c]
        if not rs:
            continue
        lines.append(f"| {c} | {len(rs)} | " + " | ".join(str(sum(r['outcome'] == o for r in rs)) for o in outs) + " |")
    lines.append(f"| **all** | **{len(results)}** | " +
                 " | ".join(f"**{sum(r['outcome'] == o for r in results)}**" for o in outs) + " |")
    peak = max((r["rss_mb"] for r in results), default=0)
    out = ["## Counts per class", "", f"Binary: `{binary}`; {len(results)} cases in {total:.0f} s; "
           f"largest peak RSS of one case {peak:.0f} MB.", "", *lines, "", "## Finding cases as run (commands use the run's temp dir)", ""]
    finds = [r for r in results if r["outcome"] not in GOOD]
    if not finds:
        out.append("None.")
    for r in finds:
        out += [f"### {r['outcome']}: {r['name']} ({r['cls']})", "",
                f"* note: {r['note']}", f"* exit code: {r['rc']}, peak RSS {r['rss_mb']} MB, {r['wall']} s",
                f"* command: `{r['cmd'][:600]}`",
                "* stderr (first lines):", "", "```"] + \
               [l[:300] for l in r["stderr"].splitlines()[:6]] + ["```", ""]
    out += ["## Every case", "", "| class | case | outcome | rc | peak RSS MB | s |", "|---|---|---|---:|---:|---:|"]
    for r in results:
        name = r["name"].replace("|", "\\|").replace("\n", "\\n")
        out.append(f"| {r['cls'][:1]} | {name} | {r['outcome']} | {r['rc']} | {r['rss_mb']} | {r['wall']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
