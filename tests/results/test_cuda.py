"""The audit and training on a CUDA device. Skipped without a GPU; run them where one is
(``pytest tests/results/test_cuda.py tests/metrics/test_device.py``).

- float32 on the GPU gives the CPU's report (same windows, masks and Fisher targets);
- ``--dtype auto`` is bf16 autocast there, recorded in the report and close to float32;
- the prediction pass adds no host synchronisation per batch to the models' own forwards, and
  the Fisher pass none in fmaudit's code; the fused top-p JS kernel compiles and gives the
  CPU's sums;
- ``fmaudit train`` on the GPU defaults to bf16, and its checkpoints load and audit on the CPU.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.cliutil import run_main
from tests.jsontree import numbers
from tests.tinymodels import random_dna, save_family, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SEQ = 32
AUDIT = ["--seq-len", str(SEQ), "--batch-size", "5", "--fisher-samples", "6",
         "--k", "1,5,10"]


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "g.fa"
    path.write_text("".join(f">chr{i}\n{random_dna(6000, i)}\n" for i in (1, 2)))
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> list[str]:
    return [str(p) for p in save_family(tmp_path_factory.mktemp("fam"), "bert", seeds=(0, 1, 2))]


def _audit(members: list[str], genome: Path, out: Path, capsys, *extra: str,
           samples: int = 12) -> dict:
    code, _, err = run_main(["--quiet", "report", *members, "--corpus", genome, *AUDIT,
                             "--samples", samples, "--out", out, *extra], capsys)
    assert code == 0, err
    return json.loads((out / "report.json").read_text())


def test_float32_on_cuda_equals_cpu(tmp_path, genome, family, capsys):
    cpu = _audit(family, genome, tmp_path / "cpu", capsys, "--device", "cpu")
    gpu = _audit(family, genome, tmp_path / "gpu", capsys, "--device", "cuda", "--dtype", "float32")
    assert gpu["settings"]["device"] == "cuda" and gpu["settings"]["dtype"] == "float32"
    a, b = numbers(cpu["ensembles"]), numbers(gpu["ensembles"])
    assert a.keys() == b.keys() and len(a) > 100
    # float32 kernels sum in another order on the GPU: agreement to ~1e-5 relative, not bits
    off = {k: (a[k], b[k]) for k in a
           if not math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6)}
    assert not off, off


def test_auto_dtype_is_bf16_autocast_and_close_to_float32(tmp_path, genome, family, capsys):
    fp32 = _audit(family, genome, tmp_path / "fp32", capsys, "--device", "cuda",
                  "--dtype", "float32")
    auto = _audit(family, genome, tmp_path / "auto", capsys, "--device", "cuda")
    assert auto["settings"]["dtype"] == "bfloat16"
    e32, e16 = fp32["ensembles"]["model"], auto["ensembles"]["model"]
    for key in ("bits", "normalized"):
        assert e16["entropy"][key]["mean"] == pytest.approx(e32["entropy"][key]["mean"], rel=1e-2)
    js32 = {r["top_p"]: r["mean"] for r in e32["disagreement"]["js_distance"]}
    js16 = {r["top_p"]: r["mean"] for r in e16["disagreement"]["js_distance"]}
    assert js16[1.0] == pytest.approx(js32[1.0], rel=5e-2)
    # static embeddings come from the weights, not from the autocast forward
    assert e16["static_embeddings"] == e32["static_embeddings"]
    # the Fisher pass runs its batched backward in TF32 when bf16 is asked for
    for group, share in e32["fisher"]["share"].items():
        assert e16["fisher"]["share"][group]["mean"] == pytest.approx(share["mean"], abs=1e-2)


def test_fisher_in_bf16_keeps_the_batched_backward(monkeypatch):
    """Expanded weights fail under autocast; the bf16 Fisher pass must not fall back to one
    backward per window (it did: 17.6x a forward + backward on an H200)."""
    import fmaudit.passes.fisher as fisher
    from fmaudit.passes.eval_data import batches
    from fmaudit.tokenizer import build_tokenizer

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to one backward per window")

    monkeypatch.setattr(fisher, "_squared_grads_loop", no_fallback)
    tok = build_tokenizer("kmer:3")
    model = tiny_model("bert", len(tok), 0, tok=tok)
    data = list(batches([random_dna(90, i) for i in range(8)], tok, SEQ, "mlm", 0, 0.15, 4))
    cuda = torch.device("cuda")
    half = fisher.run_fisher_pass(model, data, device=cuda, dtype=torch.bfloat16)
    full = fisher.run_fisher_pass(model, data, device=cuda)
    assert half.tokens == full.tokens > 0
    for group in full.sums:
        assert half.sums[group] == pytest.approx(full.sums[group], rel=1e-2, abs=1e-12)


@pytest.mark.parametrize("estimator", ["per-token", "batch"])
def test_passes_take_batches_already_on_the_device(estimator):
    """Batches handed over on the GPU (as the benchmark does) give the same sums as host
    batches; page-locking them raised 'only dense CPU tensors can be pinned'."""
    from fmaudit.passes.eval_data import batches
    from fmaudit.passes.fisher import run_fisher_pass
    from fmaudit.passes.predictions import run_prediction_pass
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    cuda = torch.device("cuda")
    models = [tiny_model("bert", len(tok), s, tok=tok).to(cuda) for s in range(2)]
    host = list(batches([random_dna(90, i) for i in range(8)], tok, SEQ, "mlm", 0, 0.15, 4))
    on_gpu = [b.to(cuda) for b in host]
    a, b = (run_fisher_pass(models[0], d, estimator=estimator, device=cuda)
            for d in (host, on_gpu))
    assert a.tokens == b.tokens > 0
    for group in a.sums:
        assert b.sums[group] == pytest.approx(a.sums[group], rel=1e-6, abs=1e-12)
    p, q = (run_prediction_pass(models, ["0", "1"], d, len(tok), [0.5, 1.0], "nucleus", cuda)
            for d in (host, on_gpu))
    assert p.positions == q.positions > 0
    expected = numbers([p.members, p.disagreement])
    assert numbers([q.members, q.disagreement]) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def _syncs(fn) -> Counter:
    """Host synchronisations ``fn`` makes on the CUDA device (torch's sync debug mode), counted
    by the Python line that made them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


@pytest.mark.parametrize("fused", [False, True], ids=["per-level-js", "fused-js"])
def test_prediction_pass_adds_no_sync_per_batch(fused, monkeypatch):
    from fmaudit.metrics import disagreement
    from fmaudit.passes.eval_data import batches
    from fmaudit.passes.predictions import run_prediction_pass
    from fmaudit.tokenizer import build_tokenizer

    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ("cuda",) if fused else ())
    monkeypatch.setattr(disagreement, "_compiled", {})
    torch._dynamo.reset()  # a fresh recompile budget
    tok = build_tokenizer("kmer:3")
    device = torch.device("cuda")
    models = [tiny_model("bert", len(tok), s, tok=tok).to(device) for s in range(3)]
    texts = [random_dna(90, i) for i in range(32)]
    data = {n: list(batches(texts[: 4 * n], tok, SEQ, "mlm", 0, 0.15, 4)) for n in (2, 8)}
    on_device = {n: [b.to(device) for b in data[n]] for n in data}

    def audit(n: int) -> None:
        run_prediction_pass(models, ["0", "1", "2"], data[n], len(tok), [0.1, 0.5, 1.0],
                            "nucleus", device)

    def forward(n: int) -> None:  # the models' own syncs, inputs already on the device
        with torch.inference_mode():
            for b in on_device[n]:
                for m in models:
                    m(input_ids=b.input_ids, attention_mask=b.attention_mask)

    audit(2)  # warm-up: first-use allocations, lazy initialisation, compiling the fused JS
    assert disagreement._compiled.get("cuda") is not None or not fused
    forward(2)
    audit_growth = _syncs(lambda: audit(8))
    audit_growth.subtract(_syncs(lambda: audit(2)))
    model_growth = _syncs(lambda: forward(8))
    model_growth.subtract(_syncs(lambda: forward(2)))
    # 6 more batches add no sync in fmaudit's code, and no more than the models' own forwards
    # (with a mask, transformers reads it back to see whether it is all ones; fmaudit decides
    # that on the host and passes none)
    ours = {k: v for k, v in audit_growth.items() if "/fmaudit/" in k and v}
    assert not ours, (ours, audit_growth)
    assert audit_growth.total() <= model_growth.total(), (audit_growth, model_growth)


@pytest.mark.parametrize("labels", ["empirical", "sampled"])
def test_fisher_pass_adds_no_sync_per_batch_in_fmaudit(labels):
    """Targets are picked on the host and the chosen windows sent without waiting; sampled
    labels draw on the host by design (seeded per window), so that one read is allowed."""
    from fmaudit.passes.eval_data import batches
    from fmaudit.passes.fisher import run_fisher_pass, sample_labels
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    device = torch.device("cuda")
    model = tiny_model("bert", len(tok), 0, tok=tok).to(device)
    texts = [random_dna(90, i) for i in range(32)]
    data = {n: list(batches(texts[: 4 * n], tok, SEQ, "mlm", 0, 0.15, 4)) for n in (2, 8)}

    def fisher(n: int) -> None:
        run_fisher_pass(model, data[n], labels=labels, device=device)

    fisher(2)  # warm-up
    growth = _syncs(lambda: fisher(8))
    growth.subtract(_syncs(lambda: fisher(2)))
    lines, first = inspect.getsourcelines(sample_labels)
    drawing = {f"{inspect.getsourcefile(sample_labels)}:{first + i}" for i in range(len(lines))}
    ours = {k: v for k, v in growth.items() if "/fmaudit/" in k and v > 0
            and not (labels == "sampled" and k in drawing)}
    assert not ours, (ours, growth)


def test_train_on_cuda_defaults_to_bf16_and_audits_on_cpu(tmp_path, genome, capsys):
    out = tmp_path / "runs"
    code, _, err = run_main(["--quiet", "train", "--corpus", genome, "--out", out, "--seeds", "2",
                             "--max-steps", "8", "--eval-every", "4", "--json"], capsys)
    assert code == 0, err
    for seed in (0, 1):
        manifest = json.loads((out / f"seed{seed}" / "fmaudit.json").read_text())
        assert manifest["runtime"]["mixed_precision"] == "bf16"
        assert manifest["runtime"]["device"] == "cuda"
        assert math.isfinite(manifest["heldout_loss"])
    # kmer:6 windows are longer: the 1.2 kb held-out split of this genome holds 6 of them
    rep = _audit([str(out / "seed0"), str(out / "seed1")], genome, tmp_path / "rep", capsys,
                 "--device", "cpu", samples=4)
    assert rep["ensembles"]["model"]["entropy"]["normalized"]["mean"] < 1.0


def test_fused_js_on_cuda_equals_the_cpu_sparse_path(monkeypatch):
    """The Triton kernel torch.compile makes of the fused top-p JS gives the CPU's sums."""
    from fmaudit.metrics import DisagreementAccumulator, disagreement

    gen = torch.Generator().manual_seed(3)
    members = [torch.randn(300, 257, generator=gen) * 3 for _ in range(4)]
    members.append(members[0].clone())  # identical to member 0: JS exactly 0
    top_ps = [0.9, 0.05, 0.3, 0.5, 1.0]
    cpu = DisagreementAccumulator(len(members), top_ps)
    cpu.update(members)
    monkeypatch.setattr(disagreement, "_FUSED_DEVICES", ("cuda",))
    monkeypatch.setattr(disagreement, "_compiled", {})
    torch._dynamo.reset()  # a fresh recompile budget
    kernel = disagreement._compiled_pair_js("cuda")
    assert kernel is not None, "torch.compile fell back"
    assert kernel._torchdynamo_orig_callable is disagreement._fused_pair_js
    calls = []
    monkeypatch.setitem(disagreement._compiled, "cuda",
                        lambda *a: (kernel(*a), calls.append(1))[0])
    gpu = DisagreementAccumulator(len(members), top_ps)
    gpu.update([m.cuda() for m in members])
    assert len(calls) == len(gpu.pairs)  # 300 rows: one block per pair, all through the kernel
    got, expected = gpu.pair_means(), cpu.pair_means()
    assert got["argmax_agreement"] == expected["argmax_agreement"]
    torch.testing.assert_close(torch.tensor(got["js_distance"]),
                               torch.tensor(expected["js_distance"]), rtol=1e-10, atol=2e-8)
    assert got["js_distance"][gpu.pairs.index((0, 4))] == [0.0] * len(top_ps)
