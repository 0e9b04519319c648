"""Time the inter-member top-p Jensen-Shannon disagreement alone, by implementation.

One ``DisagreementAccumulator.update`` of ``--positions`` x ``--vocab`` logits per member
(``--members`` members, 11 top-p levels), as the audit calls it, through each path:

  sparse            the CPU default (``_SPARSE_ON_CPU``), CPU only
  per-level         the dense path: every member truncated per level, each pair in the ratio form
                    (the accelerator default)
  fused             the pair's 11 levels in one ``torch.compile`` kernel (``_FUSED_DEVICES``),
                    as the library compiles it: for one shape, fed blocks of ``_FUSED_ROWS``
  fused-dynamic     the same function compiled for dynamic shapes (on an H100, for a whole
                    batch: 4.6x as long as compiled for its exact shape)
  fused-by-level    the same function compiled for one level, called once per level

It prints seconds per update (median of ``--repeats``, after a warm-up that includes
compiling), positions per second and each path's largest difference from the first path's
mean JS distances (all paths compute the same sums; float rounding apart).

    python benchmarks/js_bench.py --device cuda --positions 2432 --json
    python benchmarks/js_bench.py --device cpu --positions 64 --vocab 500 --repeats 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

LEVELS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PATHS = ("sparse", "per-level", "fused", "fused-dynamic", "fused-by-level")


def _by_level(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A fused-kernel stand-in that calls ``fn`` once per level (one-level slices)."""
    import torch

    def per_level(p, entry_p, mass_p, q, entry_q, mass_q, place):
        return torch.cat([fn(p, entry_p, mass_p[:, c : c + 1], q, entry_q, mass_q[:, c : c + 1],
                             place[c : c + 1]) for c in range(place.numel())])
    return per_level


def _select(path: str, device_type: str) -> None:
    """Set the disagreement module's switches so ``update`` takes ``path``."""
    import torch

    from fmaudit.metrics import disagreement as d

    d._SPARSE_ON_CPU = path == "sparse"
    d._FUSED_DEVICES = (device_type,) if path.startswith("fused") else ()
    d._compiled.pop(device_type, None)
    if path == "fused-dynamic":
        d._compiled[device_type] = torch.compile(d._fused_pair_js, dynamic=True)
    elif path == "fused-by-level":
        d._compiled[device_type] = _by_level(torch.compile(d._fused_pair_js, dynamic=False))


def _logits(members: int, positions: int, vocab: int, spread: float, device: Any) -> list[Any]:
    """Members' logits around one shared base (seeded): near-uniform rows for small spread."""
    import torch

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(positions, vocab, generator=gen) * spread
    return [(base + 0.5 * spread * torch.randn(positions, vocab, generator=gen)).to(device)
            for _ in range(members)]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_path(path: str, logits: list[Any], repeats: int) -> dict:
    """Seconds per update through ``path`` (warm-up first) and the resulting mean distances."""
    from fmaudit.metrics import disagreement as d
    from fmaudit.metrics.disagreement import DisagreementAccumulator

    device = logits[0].device
    _select(path, device.type)
    warm = DisagreementAccumulator(len(logits), LEVELS)
    _sync(device)
    t0 = time.perf_counter()
    warm.update(logits)  # compiles where the path compiles
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        acc = DisagreementAccumulator(len(logits), LEVELS)
        _sync(device)
        t0 = time.perf_counter()
        acc.update(logits)
        _sync(device)
        times.append(time.perf_counter() - t0)
    means = [row["mean"] for row in acc.compute()["js_distance"]]
    seconds = statistics.median(times)
    # a fused path whose compilation failed falls back to per-level (with a warning): say so
    compiled = d._compiled.get(device.type) is not None if path.startswith("fused") else None
    return {"path": path, "seconds": seconds, "warmup_s": warmup_s, "compiled": compiled,
            "positions_per_s": logits[0].shape[0] / seconds, "js_means": means}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--positions", type=int, default=2432,
                        help="positions per update (default: one bert-90m audit batch, 32 x 76)")
    parser.add_argument("--vocab", type=int, default=4101)
    parser.add_argument("--spread", type=float, default=1.0,
                        help="logit scale: small = near-uniform rows (DNA-like)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paths", default=None,
                        help=f"comma-separated subset of {','.join(PATHS)} (default: all that "
                             "apply to the device)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    paths = args.paths.split(",") if args.paths else [
        p for p in PATHS if p != "sparse" or device.type == "cpu"]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or ("sparse" in paths and device.type != "cpu"):
        print(f"--paths: unknown or not for {device.type}: {unknown or ['sparse']}",
              file=sys.stderr)
        return 2
    logits = _logits(args.members, args.positions, args.vocab, args.spread, device)
    runs = [time_path(p, logits, args.repeats) for p in paths]
    reference = runs[0]["js_means"]
    for r in runs:
        r["max_abs_diff_from_first"] = max(abs(a - b) for a, b in zip(r["js_means"], reference,
                                                                       strict=True))
    out = {"device": str(device), "members": args.members, "positions": args.positions,
           "vocab": args.vocab, "levels": LEVELS, "spread": args.spread, "runs": runs}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from tabulate import tabulate

    print(f"{args.members} members, {args.positions} x {args.vocab}, {len(LEVELS)} levels, "
          f"device {device}")
    print(tabulate([[r["path"] + (" (NOT compiled)" if r["compiled"] is False else ""),
                     f"{r['seconds'] * 1e3:.2f}", f"{r['positions_per_s']:,.0f}",
                     f"{r['warmup_s']:.2f}", f"{r['max_abs_diff_from_first']:.1e}"]
                    for r in runs],
                   headers=["path", "ms / update", "positions/s", "warm-up s", "max |diff|"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
