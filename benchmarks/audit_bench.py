"""Benchmark the audit against the models' own compute, and its peak memory.

In one run on the same data it times
  (a) the members' bare forward passes under inference mode,
  (b) the prediction + disagreement audit (fmaudit's prediction pass),
  (c) a bare forward + backward of each member,
  (d) the Fisher pass (per-token estimator),
  (e) the static-embedding metrics (all pairs, and one row-permuted null per member),
  (f) training through fmaudit's loop and through ``transformers.Trainer`` on the same batches
      (benchmarks/train_vs_trainer.py),
and prints the ratios b/a, d/c and f (fmaudit tokens/s over Trainer tokens/s), plus the peak
resident memory of the audit at each ``--samples`` size, every size in a fresh process.

    python benchmarks/audit_bench.py --size bert-4m --members 5 --samples 64,256
    python benchmarks/audit_bench.py --size tiny --members 2 --samples 8,32 --json   # seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

SIZES = {  # hidden, layers, heads, intermediate (the shipped recipes)
    "tiny": (64, 2, 2, 128),
    "bert-4m": (256, 6, 8, 512),
    "bert-20m": (512, 8, 8, 1024),
    "bert-90m": (768, 12, 12, 3072),
}


def _models(size: str, members: int, vocab: int, seq_len: int, device: Any) -> list[Any]:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    hidden, layers, heads, inter = SIZES[size]
    out = []
    for seed in range(members):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=inter,
                         max_position_embeddings=seq_len, attn_implementation="sdpa")
        out.append(BertForMaskedLM(cfg).eval().to(device))
    return out


def _batches(tok: Any, samples: int, seq_len: int, batch_size: int) -> list[Any]:
    from fmaudit.corpus import bundled, open_corpus
    from fmaudit.passes.eval_data import batches
    from fmaudit.tokenizer import window_chars

    corpus = open_corpus(bundled("dna"), None)
    length = window_chars(tok, seq_len, corpus)
    texts = [w.text for w in corpus.windows("all", length=length, n=samples, seed=0,
                                            allow_fewer=True)]
    while len(texts) < samples:  # the bundled genome is small: reuse windows for large runs
        texts += texts[: samples - len(texts)]
    return list(batches(texts, tok, seq_len, "mlm", 0, 0.15, batch_size))


def _timed(fn: Any, device: Any) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def audit_child(args: dict, queue: Any) -> None:
    """One ``--samples`` size in a fresh process: timings (a)-(d) and the peak RSS."""
    import torch

    from fmaudit.models.flops import forward_flops_per_token
    from fmaudit.passes.device import autocast
    from fmaudit.passes.fisher import pick_targets, run_fisher_pass
    from fmaudit.passes.predictions import run_prediction_pass
    from fmaudit.tokenizer import build_tokenizer

    torch.set_num_threads(args["threads"]) if args["threads"] else None
    device = torch.device(args["device"])
    dtype = torch.bfloat16 if args["bf16"] else None
    tok = build_tokenizer("kmer:6")
    models = _models(args["size"], args["members"], len(tok), args["seq_len"], device)
    # the audit gets CPU batches, as in `fmaudit report` (it pins and copies them itself); the
    # bare forward gets them already on the device, so (a) is the models' compute alone
    cpu_data = _batches(tok, args["samples"], args["seq_len"], args["batch_size"])
    data = [b.to(device) for b in cpu_data]
    # as the audit: no attention mask for unpadded batches (decided here, on the host)
    masks = [None if bool(b.attention_mask.all()) else d.attention_mask
             for b, d in zip(cpu_data, data, strict=True)]
    # the Fisher pass has its own, fixed window budget (--fisher-samples in the CLI)
    fisher_data = [b.to(device) for b in _batches(tok, args["fisher_windows"], args["seq_len"],
                                                  args["batch_size"])]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def bare_forward() -> None:
        with torch.inference_mode():
            for b, mask in zip(data, masks, strict=True):
                for m in models:
                    with autocast(device, dtype):
                        m(input_ids=b.input_ids, attention_mask=mask)

    def audit(batches: list[Any] = cpu_data) -> None:
        run_prediction_pass(models, [str(i) for i in range(len(models))], batches, len(tok),
                            [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                            "nucleus", device, dtype)

    def bare_backward(batches: list[Any] = fisher_data) -> None:
        for b in batches:
            rows, cols, lab = pick_targets(b, 0)
            for m in models:
                m.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    logits = m(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                loss = torch.nn.functional.cross_entropy(
                    logits[rows.to(device), cols.to(device)].float(), b.labels[lab.to(device)])
                loss.backward()

    def fisher(batches: list[Any] = fisher_data) -> None:
        for m in models:
            run_fisher_pass(m, batches, device=device, dtype=dtype)

    # warm-ups (allocator, kernels, lazy initialisation), each step on its first batch; the
    # backward ones only after the audit's peak memory is read (per-sample gradients are large)
    bare_forward()
    audit(cpu_data[:1])
    result = {
        "samples": args["samples"],
        "positions": int(sum(b.labels.numel() for b in data)),
        "a_forward_s": _timed(bare_forward, device),
        "b_audit_s": _timed(audit, device),
    }
    # peak memory of the audit (prediction + disagreement pass), before the Fisher pass
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["js_path"] = _js_path(device)  # after the warm-up compiled it, where it compiles
    if args["alt_js"]:
        # (b) again through the top-p JS path the device does not take by default: per-level
        # where the fused kernel is the default (CUDA), else the fused kernel (the CPU's default
        # is the sparse path); compiling is its warm-up
        from fmaudit.metrics import disagreement

        saved = disagreement._FUSED_DEVICES, disagreement._SPARSE_ON_CPU
        if result["js_path"] == "fused":
            disagreement._FUSED_DEVICES = ()
        else:
            disagreement._FUSED_DEVICES, disagreement._SPARSE_ON_CPU = (device.type,), False
        result["alt_js_warmup_s"] = _timed(lambda: audit(cpu_data[:1]), device)
        result["alt_js_path"] = _js_path(device)
        result["b_audit_alt_js_s"] = _timed(audit, device)
        disagreement._FUSED_DEVICES, disagreement._SPARSE_ON_CPU = saved
    if args["profile"]:  # where the audit's time goes, by operator (device time on a GPU)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            audit(cpu_data[: args["profile"]])
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = prof.key_averages().table(sort_by=sort_by, row_limit=25)
    bare_backward(fisher_data[:1])
    fisher(fisher_data[:1])
    result |= {
        "c_forward_backward_s": _timed(bare_backward, device),
        "d_fisher_s": _timed(fisher, device),
        "fisher_windows": int(sum(b.window_ids.numel() for b in fisher_data)),
    }
    tokens = sum(int(b.attention_mask.sum()) for b in data) * len(models)
    fisher_tokens = sum(int(b.attention_mask.sum()) for b in fisher_data) * len(models)
    result["audit_tokens_per_s"] = tokens / result["b_audit_s"]
    result["fisher_tokens_per_s"] = fisher_tokens / result["d_fisher_s"]
    # model FLOPs (fmaudit.models.flops): the audit is a forward with the head at the predicted
    # positions; the Fisher pass a forward + backward (3x) with the head at one token a window
    audit_flops = forward_flops_per_token(models[0], args["seq_len"],
                                          result["positions"] * len(models) / tokens)
    fisher_flops = 3 * forward_flops_per_token(models[0], args["seq_len"],
                                               result["fisher_windows"] * len(models)
                                               / fisher_tokens)
    peak = args["peak_flops"]
    result["audit_mfu"] = audit_flops * result["audit_tokens_per_s"] / peak if peak else None
    result["fisher_mfu"] = fisher_flops * result["fisher_tokens_per_s"] / peak if peak else None
    result["rss_before_passes_mb"] = rss_before / 1024
    result["peak_rss_with_fisher_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def _js_path(device: Any) -> str:
    """The top-p JS implementation the disagreement accumulator takes on ``device`` now:
    "sparse", "fused" (compiled) or "per-level" (also where the fused kernel fell back)."""
    from fmaudit.metrics import disagreement

    if device.type == "cpu" and disagreement._SPARSE_ON_CPU:
        return "sparse"
    fused = (device.type in disagreement._FUSED_DEVICES
             and disagreement._compiled.get(device.type) is not None)
    return "fused" if fused else "per-level"


def static_embeddings(members: int, vocab: int, hidden: int, workers: int | None = None) -> float:
    """(e): all pairwise static metrics (+ null) for ``members`` random [vocab, hidden] matrices,
    through the function the report uses (``workers``: its threads; None: its default)."""
    import torch

    from fmaudit.metrics import EmbeddingGeometry, compare_members

    gen = torch.Generator().manual_seed(0)
    mats = [torch.randn(vocab, hidden, generator=gen) for _ in range(members)]
    t0 = time.perf_counter()
    compare_members([EmbeddingGeometry(m) for m in mats], [1, 3, 5, 10, 20, 50, 100, 1000],
                    null_generator=gen, workers=workers)
    return time.perf_counter() - t0


def training(recipe: str, steps: int, peak_flops: float | None) -> dict:
    """(f): fmaudit's loop vs transformers.Trainer on the same batches (its own script, in a
    fresh process so the audit's allocations don't colour it)."""
    import subprocess

    peak = ["--peak-tflops", str(peak_flops / 1e12)] if peak_flops else []
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "train_vs_trainer.py"),
                           "--recipe", recipe, "--steps", str(steps), "--json", *peak],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"recipe": recipe, "steps": steps, "error": lines[-1] if lines else "failed"}
    out = json.loads(proc.stdout)
    return {"recipe": recipe, "steps": steps, "ratio": out["ratio"],
            "fmaudit_tokens_per_s": out["fmaudit"]["tokens_per_s"],
            "fmaudit_mfu": out["fmaudit"]["mfu"], "corpus": out["corpus"],
            "trainer_tokens_per_s": out["trainer"]["tokens_per_s"],
            "max_abs_weight_diff": out["max_abs_weight_diff"]}


def _counts(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]`` (argparse type: a bad value is a usage error, exit 2)."""
    try:
        counts = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4,8, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="bert-4m")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--samples", default="64,256", help="two window counts")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fisher-windows", type=int, default=16)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="Peak dense TFLOP/s for MFU (default: known GPUs with --bf16).")
    parser.add_argument("--static-shape", default="4101x768",
                        help="(e): vocabulary x hidden of the static-embedding matrices")
    parser.add_argument("--static-workers", default="", type=_counts,
                        help="(e) also with these thread counts, e.g. 1,4,8 (default: only the "
                             "library's default)")
    parser.add_argument("--train-recipe", default="tiny")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="BATCHES",
                        help="profile the audit over this many batches (first --samples size) "
                             "and print the operators that take the most time")
    parser.add_argument("--alt-js", action="store_true",
                        help="also time (b) through the other top-p JS path: per-level on a "
                             "GPU (fused kernel by default), the fused kernel on the CPU "
                             "(sparse path by default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.samples.split(",")]
    static_vocab, static_hidden = (int(x) for x in args.static_shape.lower().split("x"))
    peak = _peak_flops(args)
    runs = []
    ctx = mp.get_context("spawn")
    for samples in sizes:
        queue = ctx.Queue()
        child = ctx.Process(target=audit_child, args=({
            "size": args.size, "members": args.members, "samples": samples,
            "seq_len": args.seq_len, "batch_size": args.batch_size,
            "fisher_windows": args.fisher_windows, "device": args.device, "bf16": args.bf16,
            "threads": args.threads, "peak_flops": peak, "alt_js": args.alt_js,
            "profile": args.profile if samples == sizes[0] else 0}, queue))
        child.start()
        result = _result_of(child, queue)
        child.join()
        if result is None or child.exitcode != 0:
            print(f"benchmark child failed for --samples {samples}", file=sys.stderr)
            return 1
        runs.append(result)
    out = {
        "size": args.size, "members": args.members, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "device": args.device, "bf16": args.bf16,
        "peak_flops": peak, "runs": runs,
        "ratio_audit_over_forward": [r["b_audit_s"] / r["a_forward_s"] for r in runs],
        "ratio_fisher_over_backward": [r["d_fisher_s"] / r["c_forward_backward_s"]
                                       for r in runs],
        "peak_rss_growth": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"] - 1.0,
        "ratio_audit_alt_js_over_forward": [r["b_audit_alt_js_s"] / r["a_forward_s"]
                                            for r in runs if "b_audit_alt_js_s" in r],
        "static_shape": [static_vocab, static_hidden],
        "static_embeddings_s": static_embeddings(args.members, static_vocab, static_hidden),
    }
    if args.static_workers:
        out["static_embeddings_s_by_workers"] = {
            w: static_embeddings(args.members, static_vocab, static_hidden, w)
            for w in args.static_workers}
    if not args.skip_training:
        out["training"] = training(args.train_recipe, args.train_steps, peak)
    if args.json:
        print(json.dumps(out, indent=2))
        if "profile" in runs[0]:  # readable beside the JSON
            print(f"profile of the audit, {args.profile} batches:\n{runs[0]['profile']}",
                  file=sys.stderr)
        return 0
    from tabulate import tabulate

    rows = [[r["samples"], r["positions"], f"{r['a_forward_s']:.3f}", f"{r['b_audit_s']:.3f}",
             f"{r['b_audit_s'] / r['a_forward_s']:.2f}", f"{r['c_forward_backward_s']:.3f}",
             f"{r['d_fisher_s']:.3f}", f"{r['d_fisher_s'] / r['c_forward_backward_s']:.2f}",
             f"{r['peak_rss_mb']:.0f}"] for r in runs]
    print(f"{args.size}, {args.members} members, seq_len {args.seq_len}, device {args.device}")
    print(tabulate(rows, headers=["samples", "positions", "(a) fwd s", "(b) audit s", "b/a",
                                  "(c) fwd+bwd s", "(d) fisher s", "d/c", "peak RSS MB"]))
    print(f"peak RSS growth from {sizes[0]} to {sizes[-1]} samples: "
          f"{out['peak_rss_growth']:+.1%}")
    for r in runs:
        mfu = (f", MFU audit {r['audit_mfu']:.1%}, Fisher {r['fisher_mfu']:.1%}"
               if r["audit_mfu"] is not None else "")
        print(f"{r['samples']} samples: audit {r['audit_tokens_per_s']:,.0f} tokens/s, Fisher "
              f"{r['fisher_tokens_per_s']:,.0f} tokens/s{mfu}")
    for r in runs:
        if "b_audit_alt_js_s" in r:
            print(f"{r['samples']} samples, top-p JS {r['alt_js_path']} instead of "
                  f"{r['js_path']}: audit {r['b_audit_alt_js_s']:.3f} s, b/a "
                  f"{r['b_audit_alt_js_s'] / r['a_forward_s']:.2f} (warm-up, compiling "
                  f"included: {r['alt_js_warmup_s']:.1f} s)")
    if "profile" in runs[0]:
        print(f"profile of the audit, {args.profile} batches:\n{runs[0]['profile']}")
    print(f"(e) static-embedding metrics, {args.members} members x {static_vocab} x "
          f"{static_hidden}: {out['static_embeddings_s']:.2f} s")
    for workers, seconds in out.get("static_embeddings_s_by_workers", {}).items():
        print(f"    with {workers} worker thread(s): {seconds:.2f} s")
    tr = out.get("training")
    if tr and "error" in tr:
        print(f"(f) training comparison failed: {tr['error']}")
    elif tr:
        print(f"(f) training tokens/s: fmaudit {tr['fmaudit_tokens_per_s']:.0f}, Trainer "
              f"{tr['trainer_tokens_per_s']:.0f}, ratio {tr['ratio']:.2f}")
    return 0


def _result_of(child: Any, queue: Any) -> dict | None:
    """The child's result, or None once it has died without one (no wait on a dead child)."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=1.0)
        except queues.Empty:
            if not child.is_alive():
                return None


def _peak_flops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    if not args.device.startswith("cuda"):
        return None
    import torch

    from fmaudit.models.flops import peak_flops

    return peak_flops(torch.cuda.get_device_name(), "bfloat16" if args.bf16 else "float32")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
