"""End-to-end audits of tiny families: CLI, JSON contract, and metrics against scipy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from fmaudit.cli import main
from tests.hubcache import add_to_hub_cache
from tests.jsontree import numbers
from tests.tinymodels import make_uniform, random_dna, save_family, save_member, tiny_model

SEQ = 32


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "g.fa"
    seqs = {f"chr{i}": random_dna(6000, i) for i in range(1, 3)}
    path.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    return path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", *args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def audit(members: list[str], genome: Path, out: Path, capsys, *extra: str) -> dict:
    code, _, err = run(["report", *members, "--corpus", str(genome), "--samples", "12",
                        "--seq-len", str(SEQ), "--batch-size", "5", "--fisher-samples", "6",
                        "--k", "1,5,10,1000", "--out", str(out), *extra], capsys)
    assert code == 0, err
    return json.loads((out / "report.json").read_text())


def test_report_contract_and_spread(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1, 2))]
    rep = audit(members, genome, tmp_path / "out", capsys)
    assert rep["schema_version"] == 1
    e = rep["ensembles"]["model"]
    assert e["objective"] == "mlm" and len(e["members"]) == 3
    assert e["corpus"]["windows"] == 12 and e["corpus"]["positions"] > 0
    V = e["vocab_size"]
    for key in ("entropy.bits", "entropy.normalized", "kl_uniform_bits", "cross_entropy_bits",
                "perplexity", "accuracy", "context_gain_bits"):
        stat = e
        for part in key.split("."):
            stat = stat[part]
        vals = stat["members"]
        assert len(vals) == 3
        assert stat["mean"] == pytest.approx(np.mean(vals))
        assert stat["std"] == pytest.approx(np.std(vals, ddof=1))
    assert e["entropy"]["normalized"]["mean"] == pytest.approx(e["entropy"]["bits"]["mean"]
                                                               / math.log2(V))
    js = {row["top_p"]: row["mean"] for row in e["disagreement"]["js_distance"]}
    assert set(js) == {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
    assert all(0 < v <= 1 for v in js.values())
    # static embeddings: k=1000 is above the 64 comparable rows, so it is absent, not clipped
    assert [r["k"] for r in e["static_embeddings"]["topk_overlap"]] == [1, 5, 10]
    assert e["static_embeddings"]["rows"] == 64
    fisher = e["fisher"]
    assert fisher["tied"] and set(fisher["coarse"]) >= {"embeddings", "body", "head"}
    assert sum(v["mean"] for v in fisher["share"].values()) == pytest.approx(1.0)
    assert sum(v["mean"] for v in fisher["share_tied"].values()) == pytest.approx(1.0)
    assert len(e["contextual_embeddings"]["layers"]) == 3  # embeddings output + 2 blocks


def test_identical_members_agree_exactly(tmp_path, genome, capsys):
    a = save_family(tmp_path / "a", "bert", seeds=(7,))[0]
    b = save_family(tmp_path / "b", "bert", seeds=(7,))[0]
    rep = audit([str(a), str(b)], genome, tmp_path / "out", capsys)
    e = rep["ensembles"]["model"]
    for row in e["disagreement"]["js_distance"]:
        assert row["mean"] == pytest.approx(0.0, abs=1e-6)
    assert e["disagreement"]["argmax_agreement"]["mean"] == 1.0
    for row in e["static_embeddings"]["topk_overlap"]:
        assert row["mean"] == pytest.approx(1.0)
        assert row["null"] < 0.5
    assert e["static_embeddings"]["linear_cka"]["mean"] == pytest.approx(1.0)
    assert e["static_embeddings"]["procrustes_disparity"]["mean"] == pytest.approx(0, abs=1e-6)


def test_uniform_model_has_max_entropy(tmp_path, genome, capsys):
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    model = tiny_model("bert", len(tok), 0, tok=tok)
    make_uniform(model)
    path = save_member(tmp_path / "u", model, tok)
    rep = audit([str(path)], genome, tmp_path / "out", capsys, "--analyses", "predictions")
    e = rep["ensembles"]["model"]
    V = e["vocab_size"]
    assert e["entropy"]["bits"]["mean"] == pytest.approx(math.log2(V), abs=1e-5)
    assert e["entropy"]["normalized"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert e["kl_uniform_bits"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert e["cross_entropy_bits"]["mean"] == pytest.approx(math.log2(V), abs=1e-5)
    # one member: disagreement is not applicable (null), not zero
    assert e["disagreement"]["argmax_agreement"] is None
    assert all(r["mean"] is None for r in e["disagreement"]["js_distance"])
    assert e["entropy"]["bits"]["std"] is None
    assert "static_embeddings" not in e and "fisher" not in e


def test_js_matches_scipy_on_the_same_positions(tmp_path, genome, capsys):
    """Recompute JS(p=1) and top-1 agreement with scipy from the models themselves."""
    from fmaudit.corpus import open_corpus
    from fmaudit.passes.eval_data import batches
    from fmaudit.tokenizer import window_chars

    paths = save_family(tmp_path / "fam", "bert", seeds=(0, 1))
    rep = audit([str(p) for p in paths], genome, tmp_path / "out", capsys,
                "--analyses", "predictions", "--top-p", "1.0", "--device", "cpu")
    e = rep["ensembles"]["model"]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths[0])
    models = [AutoModelForMaskedLM.from_pretrained(p).eval() for p in paths]
    corpus = open_corpus(genome)
    texts = [w.text for w in corpus.windows("all", length=window_chars(tok, SEQ, corpus), n=12,
                                            seed=0)]
    dists, agree = [], []
    with torch.no_grad():
        for b in batches(texts, tok, SEQ, "mlm", 0, 0.15, 5):
            probs = [torch.softmax(m(input_ids=b.input_ids, attention_mask=b.attention_mask)
                                   .logits[b.target_mask].double(), -1).numpy() for m in models]
            for p, q in zip(*probs, strict=True):
                dists.append(jensenshannon(p, q, base=2))
                agree.append(p.argmax() == q.argmax())
    assert e["corpus"]["positions"] == len(dists)
    assert e["disagreement"]["js_distance"][0]["mean"] == pytest.approx(np.mean(dists), rel=1e-6)
    assert e["disagreement"]["argmax_agreement"]["mean"] == pytest.approx(np.mean(agree))


def test_sections_recomputed_from_the_models(tmp_path, genome, capsys):
    """The report's wiring, recomputed from the saved models on the same windows and masks:
    context gain = unigram CE - CE; contextual layer CKA, last-layer anisotropy and effective
    rank with numpy from masked mean-pooled hidden states; Fisher totals and tied shares from
    each member's own Fisher pass."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from fmaudit.corpus import open_corpus
    from fmaudit.metrics import group_shares
    from fmaudit.passes.eval_data import batches
    from fmaudit.passes.fisher import run_fisher_pass
    from fmaudit.tokenizer import window_chars

    paths = save_family(tmp_path / "fam", "bert", seeds=(0, 1))
    rep = audit([str(p) for p in paths], genome, tmp_path / "out", capsys, "--device", "cpu")
    e = rep["ensembles"]["model"]
    ce, gain = e["cross_entropy_bits"]["members"], e["context_gain_bits"]["members"]
    assert gain == pytest.approx([e["unigram_cross_entropy_bits"] - c for c in ce], rel=1e-12)

    tok = AutoTokenizer.from_pretrained(paths[0])
    models = [AutoModelForMaskedLM.from_pretrained(p).eval() for p in paths]
    corpus = open_corpus(genome)
    texts = [w.text for w in corpus.windows("all", length=window_chars(tok, SEQ, corpus), n=12,
                                            seed=0)]
    pooled = [[], []]
    with torch.no_grad():
        for b in batches(texts, tok, SEQ, "mlm", 0, 0.15, 5):
            mask = b.attention_mask[:, :, None].double()
            for m, model in enumerate(models):
                states = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                               output_hidden_states=True).hidden_states
                pooled[m].append(np.stack([((h.double() * mask).sum(1) / mask.sum(1)).numpy()
                                           for h in states], axis=1))
    x, y = (np.concatenate(p) for p in pooled)  # [windows, layers, hidden]

    def cka(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    ctx = e["contextual_embeddings"]
    assert ctx["windows"] == 12 and len(ctx["layers"]) == x.shape[1]
    for layer in ctx["layers"]:
        i = layer["layer"]
        assert layer["linear_cka"]["mean"] == pytest.approx(cka(x[:, i], y[:, i]), rel=1e-5)
    assert ctx["layers"][-1]["linear_cka"]["mean"] < 1 - 1e-6  # two seeds, not one twice

    def aniso(h):
        return np.linalg.norm((h / np.linalg.norm(h, axis=1, keepdims=True)).mean(0))

    def erank(h):
        s = np.linalg.svd(h, compute_uv=False)
        p = s / s.sum()
        return math.exp(-(p * np.log(p)).sum())

    last = [x[:, -1], y[:, -1]]
    assert ctx["anisotropy"]["members"] == pytest.approx([aniso(h) for h in last], rel=1e-5)
    assert ctx["effective_rank"]["members"] == pytest.approx([erank(h) for h in last], rel=1e-5)

    fisher = e["fisher"]
    runs = [run_fisher_pass(model, batches(texts[:6], tok, SEQ, "mlm", 0, 0.15, 5), seed=0)
            for model in models]
    assert fisher["totals"]["members"] == pytest.approx(
        [sum(r.sums.values()) for r in runs], rel=1e-6)
    tied = [group_shares(r.sums_tied) for r in runs]
    for group, stat in fisher["share_tied"].items():
        assert stat["members"] == pytest.approx([t[group] for t in tied], rel=1e-6)
    assert fisher["share_tied"]["embeddings"]["mean"] != fisher["share"]["embeddings"]["mean"]


def test_causal_family(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "gpt", "gpt2", seeds=(0, 1))]
    rep = audit(members, genome, tmp_path / "out", capsys)
    e = rep["ensembles"]["model"]
    assert e["objective"] == "clm"
    # every non-special next token is predicted: 12 windows x (SEQ - 2) tokens
    assert e["corpus"]["positions"] == 12 * (SEQ - 2)
    assert e["fisher"]["tied"]


def _comparable(rep: dict) -> dict:
    rep = json.loads(json.dumps(rep))
    for key in ("created", "command", "timing", "tool"):
        rep.pop(key)
    for e in rep["ensembles"].values():
        e.pop("members")
    return rep


def test_hub_cache_report_equals_local_report(tmp_path, genome, capsys, monkeypatch):
    paths = save_family(tmp_path / "fam", "bert", seeds=(0, 1))
    local = audit([str(p) for p in paths], genome, tmp_path / "local", capsys)
    cache = tmp_path / "hub"
    commits = [add_to_hub_cache(cache, f"org/tiny-seed{i}", p) for i, p in enumerate(paths)]
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = audit(["org/tiny-seed<0..1>"], genome, tmp_path / "hub-out", capsys)
    members = hub["ensembles"]["model"]["members"]
    assert [m["id"] for m in members] == ["org/tiny-seed0", "org/tiny-seed1"]
    assert [m["revision"] for m in members] == commits
    assert all(m["source"] == "hub" for m in members)
    assert _comparable(hub) == _comparable(local)


def test_hub_offline_without_cache_is_exit_2(tmp_path, genome, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["report", "org/absent", "--corpus", str(genome)], capsys)
    assert code == 2
    assert "org/absent" in err and "HF_HUB_OFFLINE" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pickle_only_member_refused(tmp_path, genome, capsys):
    path = save_family(tmp_path / "fam", "bert", seeds=(0,))[0]
    model = tiny_model("bert", 69, 0)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    code, _, err = run(["report", str(path), "--corpus", str(genome)], capsys)
    assert code == 2 and "--allow-pickle" in err


def test_mismatched_vocabulary_refused(tmp_path, genome, capsys):
    a = save_family(tmp_path / "a", "bert", seeds=(0,), tokenizer="kmer:3")[0]
    b = save_family(tmp_path / "b", "bert", seeds=(1,), tokenizer="kmer:2")[0]
    code, _, err = run(["report", str(a), str(b), "--corpus", str(genome)], capsys)
    assert code == 2 and str(b) in err and "vocabulary" in err


def _padded_copy(model, vocab: int, extra: int, seed: int):
    """``model`` with ``extra`` more output (and tied embedding) rows: random, as padding is."""
    cfg = model.config.to_dict()
    cfg["vocab_size"] = vocab + extra
    padded = type(model)(type(model.config).from_dict(cfg)).eval()
    source, target = model.state_dict(), padded.state_dict()
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, tensor in target.items():
            src = source[name]
            if src.shape == tensor.shape:
                tensor.copy_(src)
            else:  # the vocabulary axis is the first: keep the real rows, fill the padding
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
                tensor[: src.shape[0]] = src
    padded.tie_weights()
    return padded


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padded_output_layer_gives_the_unpadded_report(tmp_path, genome, capsys, kind):
    """An output layer padded past the tokenizer (Pythia-style) is read in part: the softmax,
    the Fisher pass and the embedding rows cover the tokenizer's tokens only, so a model with
    random padding rows gives exactly the report of the same model without them."""
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    plain, padded = [], []
    for seed in (0, 1):
        model = tiny_model(kind, len(tok), seed, tok=tok)
        plain.append(str(save_member(tmp_path / "plain" / f"seed{seed}", model, tok)))
        padded.append(str(save_member(tmp_path / "padded" / f"seed{seed}",
                                      _padded_copy(model, len(tok), 27, seed), tok)))
    capsys.readouterr()
    reference = _comparable(audit(plain, genome, tmp_path / "a", capsys))
    got = _comparable(audit(padded, genome, tmp_path / "b", capsys))
    assert json.loads((Path(padded[0]) / "config.json").read_text())["vocab_size"] == \
        len(tok) + 27
    # the Fisher pass runs float32 matmuls of another width (blocked sums round differently)
    got_fisher, ref_fisher = (r["ensembles"]["model"].pop("fisher") for r in (got, reference))
    assert got == reference
    got_numbers, ref_numbers = numbers(got_fisher), numbers(ref_fisher)
    assert got_numbers.keys() == ref_numbers.keys()
    for key, value in ref_numbers.items():
        assert got_numbers[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_tokenizer_larger_than_the_output_layer_is_refused(tmp_path, genome, capsys):
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    members = [str(save_member(tmp_path / f"s{seed}", tiny_model("bert", len(tok) - 20, seed,
                                                                 tok=tok), tok))
               for seed in (0, 1)]
    capsys.readouterr()
    code, out, err = run(["report", *members, "--corpus", str(genome), "--samples", "4",
                          "--seq-len", "16"], capsys)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert (f"{members[0]}: its tokenizer has {len(tok)} tokens but its output layer only "
            f"{len(tok) - 20} entries") in err


def test_damaged_init_checkpoint_only_drops_the_init_comparison(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    for seed in (0, 1):  # the untrained copies fmaudit train writes beside the members
        init = tmp_path / "fam" / "init" / f"seed{seed}"
        init.mkdir(parents=True)
        (init / "config.json").write_text((Path(members[seed]) / "config.json").read_text())
        (init / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    capsys.readouterr()
    code, _, err = run(["report", *members, "--corpus", str(genome), "--samples", "6",
                        "--seq-len", "16", "--analyses", "embeddings", "--k", "1,5",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "the untrained checkpoint cannot be read" in err and "init comparison is left out" in err
    static = json.loads((tmp_path / "o" / "report.json").read_text())["ensembles"]["model"][
        "static_embeddings"]
    assert static["linear_cka"]["mean"] is not None and static["linear_cka"]["init"] is None


def test_constant_embeddings_and_odd_configs(tmp_path, genome, capsys):
    """A member whose token embeddings are all equal is named (the static metrics are
    undefined); a config with a null architecture falls back to its model type; members with
    different position limits audit at the smaller one."""
    from safetensors.torch import load_file, save_file

    members = [Path(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    weights = load_file(members[1] / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = torch.ones_like(weights[name])
    save_file(weights, members[1] / "model.safetensors")
    capsys.readouterr()
    code, _, err = run(["report", *map(str, members), "--corpus", str(genome), "--samples", "6",
                        "--seq-len", "16", "--analyses", "embeddings"], capsys)
    assert code == 2 and f"{members[1]}: all its" in err and "token embeddings are identical" in err
    others = [Path(p) for p in save_family(tmp_path / "odd", "bert", seeds=(0, 1))]
    for m in others:
        cfg = json.loads((m / "config.json").read_text())
        cfg["architectures"] = [None]
        (m / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    code, _, err = run(["report", *map(str, others), "--corpus", str(genome), "--samples", "6",
                        "--seq-len", "16", "--analyses", "predictions"], capsys)
    assert code == 0, err
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    limits = [str(save_member(tmp_path / f"pos{n}", tiny_model("bert", len(tok), seed,
                                                              max_len=n, tok=tok), tok))
              for seed, n in ((0, 64), (1, 16))]
    capsys.readouterr()
    code, _, err = run(["report", *limits, "--corpus", str(genome), "--samples", "4",
                        "--analyses", "predictions", "--out", str(tmp_path / "pos")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "pos" / "report.json").read_text())["ensembles"]["model"][
        "seq_len"] == 16
    code, _, err = run(["report", *limits, "--corpus", str(genome), "--samples", "4",
                        "--analyses", "predictions", "--seq-len", "32"], capsys)
    assert code == 2 and "--seq-len 32: longer than the model's 16 positions" in err


def test_remote_code_needs_flag(tmp_path, genome, capsys):
    path = save_family(tmp_path / "fam", "bert", seeds=(0,))[0]
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForMaskedLM": "modeling_x.XForMaskedLM"}
    (path / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(["report", str(path), "--corpus", str(genome)], capsys)
    assert code == 2 and "--trust-remote-code" in err


def test_nan_logits_stop_with_exit_2(tmp_path, genome, capsys):
    from fmaudit.tokenizer import build_tokenizer

    tok = build_tokenizer("kmer:3")
    model = tiny_model("bert", len(tok), 0, tok=tok)
    with torch.no_grad():
        model.cls.predictions.bias.fill_(float("nan"))
    path = save_member(tmp_path / "nan", model, tok)
    code, _, err = run(["report", str(path), "--corpus", str(genome), "--samples", "4",
                        "--seq-len", "16"], capsys)
    assert code == 2 and "NaN" in err and str(path) in err


@pytest.mark.parametrize("args,needle", [
    (["--samples", "0"], "--samples"),
    (["--top-p", "0,1"], "--top-p"),
    (["--analyses", "predictions,bogus"], "bogus"),
    (["--corpus", "/no/such.fa"], "/no/such.fa"),
])
def test_bad_arguments_exit_2(tmp_path, genome, capsys, args, needle):
    path = save_family(tmp_path / "fam", "bert", seeds=(0,))[0]
    base = ["report", str(path)] + ([] if "--corpus" in args else ["--corpus", str(genome)])
    code, _, err = run(base + args, capsys)
    assert code == 2 and needle in err


def test_same_seed_same_report(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    r1 = audit(members, genome, tmp_path / "o1", capsys)
    r2 = audit(members, genome, tmp_path / "o2", capsys)
    r3 = audit(members, genome, tmp_path / "o3", capsys, "--seed", "1")
    assert _comparable(r1) == _comparable(r2)
    assert _comparable(r1) != _comparable(r3)


def test_hub_revision_is_resolved_to_its_commit(tmp_path, genome, capsys, monkeypatch):
    paths = save_family(tmp_path / "fam", "bert", seeds=(0, 1))
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "org/tiny", paths[0], revision="main")
    v1 = add_to_hub_cache(cache, "org/tiny", paths[1], revision="v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rep = audit(["org/tiny@v1"], genome, tmp_path / "out", capsys, "--analyses", "predictions")
    member = rep["ensembles"]["model"]["members"][0]
    assert member["id"] == "org/tiny@v1" and member["revision"] == v1


def test_broken_hub_cache_offline_is_exit_2_without_retrying(tmp_path, genome, capsys,
                                                             monkeypatch):
    paths = save_family(tmp_path / "fam", "bert", seeds=(0,))
    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "org/tiny-seed0", paths[0])
    ref = cache / "models--org--tiny-seed0" / "refs" / "main"
    ref.unlink()
    ref.mkdir()  # a damaged cache: the ref is a folder
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    slept = []
    monkeypatch.setattr("fmaudit.models.load.time.sleep", slept.append)
    capsys.readouterr()
    code, _, err = run(["report", "org/tiny-seed0", "--corpus", str(genome)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "org/tiny-seed0" in err and "network" not in err and not slept, err


def test_unreachable_hub_retries_then_exit_2(tmp_path, genome, capsys, monkeypatch):
    # a closed port on loopback: connection refused, never a real network request
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("fmaudit.models.load.time.sleep", lambda s: None)
    code, _, err = run(["report", "org/unreachable", "--corpus", str(genome)], capsys)
    assert code == 2 and "org/unreachable" in err and "3 tries" in err


def test_gate_in_one_go(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    strict = tmp_path / "strict.toml"
    strict.write_text('[[check]]\nmetric = "entropy.normalized"\nmax = 0.5\n')
    code, _, err = run(["report", *members, "--corpus", str(genome), "--samples", "6",
                        "--seq-len", "16", "--analyses", "predictions", "--gate", str(strict),
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 1, err  # random models are near uniform: above 0.5
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["gate"]["passed"] is False
    assert rep["gate"]["checks"][0]["value"] == rep["ensembles"]["model"]["entropy"][
        "normalized"]["mean"]
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('[[check]]\nmetric = "entropy.normalized"\nmax = 1.0\n')
    code, _, err = run(["report", *members, "--corpus", str(genome), "--samples", "6",
                        "--seq-len", "16", "--analyses", "predictions", "--gate", str(lenient)],
                       capsys)
    assert code == 0, err


def test_bad_policy_fails_before_compute(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0,))]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[check]]\nmetric = "entropy.normalized"\nmaximum = 0.5\n')
    code, _, err = run(["report", *members, "--corpus", str(genome), "--gate", str(bad),
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "maximum" in err
    assert not (tmp_path / "o").exists()


def test_gate_on_an_analysis_left_out_fails_before_compute(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    capsys.readouterr()  # saving the family prints progress
    policy = tmp_path / "p.toml"
    policy.write_text('[[check]]\nmetric = "entropy.normalized"\nmax = 1.0\n\n'
                      '[[check]]\nmetric = "static_embeddings.topk_overlap@k=5"\nmin = 0.0\n')
    args = ["report", *members, "--corpus", str(genome), "--samples", "6", "--seq-len", "16",
            "--analyses", "predictions", "--gate", str(policy), "--out", str(tmp_path / "o")]
    code, out, err = run(args, capsys)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert ("check 2 (static_embeddings.topk_overlap@k=5) needs the embeddings analysis, which "
            "--analyses predictions leaves out") in err
    assert not (tmp_path / "o").exists()
    # a check that opts in to missing metrics runs, as not applicable
    policy.write_text(policy.read_text() + 'missing = "skip"\n')
    code, _, err = run(args, capsys)
    assert code == 0, err
    gate = json.loads((tmp_path / "o" / "report.json").read_text())["gate"]
    assert [c["status"] for c in gate["checks"]] == ["pass", "skip"], gate


def test_gate_error_after_the_audit_keeps_the_report(tmp_path, genome, capsys):
    """A metric only the finished report can refuse (k = 1000 is at or above the usable
    vocabulary rows, so the report has no such k): exit 2, but the audit is written, ungated."""
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    capsys.readouterr()  # saving the family prints progress
    policy = tmp_path / "p.toml"
    policy.write_text('[[check]]\nmetric = "static_embeddings.topk_overlap@k=1000"\nmin = 0.0\n')
    out = tmp_path / "o"
    code, printed, err = run(["report", *members, "--corpus", str(genome), "--samples", "6",
                              "--seq-len", "16", "--analyses", "embeddings", "--k", "1,1000",
                              "--gate", str(policy), "--out", str(out)], capsys)
    assert code == 2 and not printed and len(err.strip().splitlines()) == 1, err
    assert f"(the audit is saved, ungated: {out / 'report.json'})" in err
    report = json.loads((out / "report.json").read_text())
    assert report["gate"] is None and (out / "report.html").is_file()
    assert report["ensembles"]["model"]["static_embeddings"]["topk_overlap"]


@pytest.mark.parametrize("analysis", ["predictions", "embeddings", "fisher"])
def test_each_analysis_writes_the_sections_the_gate_expects(tmp_path, genome, capsys, analysis):
    from fmaudit.results.audit import ANALYSIS_SECTIONS, analysis_of

    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    rep = audit(members, genome, tmp_path / "out", capsys, "--analyses", analysis)
    entry = rep["ensembles"]["model"]
    written = {key for keys in ANALYSIS_SECTIONS.values() for key in keys} & set(entry)
    assert written == set(ANALYSIS_SECTIONS[analysis])
    assert all(analysis_of(f"{key}.mean") == analysis for key in written)


def test_live_audit_renders_html_and_markdown(tmp_path, genome, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0, 1))]
    out = tmp_path / "out"
    code, _, err = run(["report", "--ensemble", "dna<b>=" + " ".join(members),
                        "--corpus", str(genome), "--samples", "8", "--seq-len", "24",
                        "--fisher-samples", "4", "--k", "1,5", "--out", str(out)], capsys)
    assert code == 0, err
    html = (out / "report.html").read_text()
    assert "dna&lt;b&gt;" in html and "dna<b>" not in html and "<script" not in html
    md = (out / "report.md").read_text()
    assert "dna\\<b\\>" in md or "dna&lt;b&gt;" in md
    # not trained by fmaudit: no spec, and the provenance table shows the tokenizer's class
    tokenizer = json.loads((out / "report.json").read_text())["ensembles"]["dna<b>"]["tokenizer"]
    assert tokenizer["spec"] is None and tokenizer["class"]
    corpora = md[md.index("Evaluation corpora"):].split("\n\n")[1]
    row = next(line for line in corpora.splitlines() if line.startswith("| dna"))
    assert [cell.strip() for cell in row.split("|")][5] == tokenizer["class"], row
    assert sorted(p.name for p in (out / "figures").iterdir())
    # re-rendering from the JSON alone gives the same page
    before = html
    code, _, err = run(["render", str(out / "report.json")], capsys)
    assert code == 0, err
    assert (out / "report.html").read_text() == before


def test_ensembles_side_by_side_with_their_own_corpora(tmp_path, genome, capsys):
    dna = [str(p) for p in save_family(tmp_path / "dna", "bert", seeds=(0, 1))]
    txt = [str(p) for p in save_family(tmp_path / "txt", "bert", seeds=(0, 1), tokenizer="char")]
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join("the quick brown fox jumps over the lazy dog " * 40
                                for _ in range(4)))
    out = tmp_path / "out"
    code, _, err = run(["report", "--ensemble", "dna=" + ",".join(dna),
                        "--ensemble", "text=" + ",".join(txt), "--corpus", f"dna={genome}",
                        "--corpus", f"text={text}", "--samples", "6", "--seq-len", "24",
                        "--analyses", "predictions", "--out", str(out)], capsys)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["ensembles"]) == ["dna", "text"]
    assert rep["ensembles"]["dna"]["corpus"]["kind"] == "dna"
    assert rep["ensembles"]["text"]["corpus"]["kind"] == "text"


def test_warns_when_the_corpus_does_not_fit_the_tokenizer(tmp_path, capsys):
    members = [str(p) for p in save_family(tmp_path / "fam", "bert", seeds=(0,))]
    text = tmp_path / "english.txt"
    text.write_text("\n\n".join("Genomes are long; models are short. " * 30 for _ in range(3)))
    code, _, err = run(["report", *members, "--corpus", str(text), "--samples", "4",
                        "--seq-len", "16", "--analyses", "predictions"], capsys)
    assert code == 0
    assert "[UNK]" in err and "does not fit the tokenizer" in err


def test_foreign_causal_tokenizer_without_padding(tmp_path, capsys):
    """A GPT-2/Pythia-style byte-level BPE with no pad, CLS or SEP token, as on the Hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"document {i}: the cat sat on the mat while the dog ran. " * 20
                                for i in range(6)))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train([str(text)], trainers.BpeTrainer(vocab_size=300,
                                                   special_tokens=["<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tok.pad_token is None
    paths = []
    for seed in (0, 1):
        model = tiny_model("gpt2", len(tok), seed)
        paths.append(str(save_member(tmp_path / f"m{seed}", model, tok)))
    code, _, err = run(["report", *paths, "--corpus", str(text), "--samples", "4",
                        "--seq-len", "16", "--analyses", "predictions,fisher",
                        "--fisher-samples", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    e = json.loads((tmp_path / "o" / "report.json").read_text())["ensembles"]["model"]
    assert e["objective"] == "clm" and e["corpus"]["positions"] > 0


@pytest.mark.parametrize("remove,needle", [("config.json", "config.json"),
                                           ("model.safetensors", "no model weights")])
def test_member_missing_files_exit_2(tmp_path, genome, capsys, remove, needle):
    path = save_family(tmp_path / "fam", "bert", seeds=(0,))[0]
    (path / remove).unlink()
    code, _, err = run(["report", str(path), "--corpus", str(genome)], capsys)
    assert code == 2 and needle in err and str(path) in err


def test_not_a_folder_nor_a_hub_id(tmp_path, genome, capsys):
    code, _, err = run(["report", "./no/such/folder", "--corpus", str(genome)], capsys)
    assert code == 2 and "no such folder" in err
