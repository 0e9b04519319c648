"""A 2-process CPU run (torchrun or accelerate launch, gloo): trains loadable members, the same
data stream and, up to float reassociation, the same weights as one process (the loss is
normalised over the GLOBAL batch, so the gradient does not depend on the process count)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fmaudit.corpus import bundled
from fmaudit.training import load_recipe, train_ensemble
from tests.training.conftest import subprocess_env

REPO = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launcher(name: str) -> list[str]:
    port = str(_free_port())
    if name == "torchrun":
        return ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", port]
    # accelerate's --multi_gpu launcher is torch elastic underneath; without GPUs fmaudit's
    # Accelerator(cpu=True) joins a gloo group (`--cpu` alone would start one process)
    return ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("one")
    # fp32: on a GPU machine this reference runs on the GPU, the two CPU processes in fp32
    members = train_ensemble(bundled("dna"), root,
                             load_recipe("tiny").replace(max_steps=6, eval_every=3), seeds=2,
                             mixed_precision="no")
    return root, members


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_processes(tmp_path: Path, single_process, launcher: str) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, *_launcher(launcher),
           "-m", "fmaudit", "train", "--corpus", str(bundled("dna")), "--out", str(out),
           "--seeds", "2", "--max-steps", "6", "--eval-every", "3", "--json"]
    # CPU and gloo even where a GPU is present: two ranks cannot share one GPU under NCCL
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # only the main process prints
    assert [m["seed"] for m in printed["members"]] == [0, 1]

    one, single = single_process
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    for m in single:
        seed = m["seed"]
        manifest = json.loads((out / f"seed{seed}" / "fmaudit.json").read_text())
        assert manifest["runtime"]["processes"] == 2
        assert manifest["runtime"]["distributed_type"] == "MULTI_CPU"
        assert manifest["data_stream"]["fingerprint"] == m["data_stream"]["fingerprint"]
        assert manifest["heldout_loss"] == pytest.approx(m["heldout_loss"], rel=1e-4)
        AutoTokenizer.from_pretrained(out / f"seed{seed}")
        AutoModelForMaskedLM.from_pretrained(out / f"seed{seed}")
        ddp = load_file(out / f"seed{seed}" / "model.safetensors")
        ref = load_file(one / f"seed{seed}" / "model.safetensors")
        for name, tensor in ref.items():
            torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert (out / "init" / "seed1" / "model.safetensors").is_file()


def test_shipped_fsdp_config_reads_as_fsdp() -> None:
    """examples/accelerate-fsdp.yaml, read by accelerate's own loader: FSDP with the settings
    fmaudit's training needs (transformer-block wrapping, full state dict gathered for the
    final checkpoints, original parameters for the optimiser). accelerate runs FSDP on
    accelerators only (a CPU config becomes DDP on gloo), so it is not trained here."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(REPO / "examples" / "accelerate-fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP and not config.use_cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_use_orig_params"] is True
