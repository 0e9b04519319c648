"""Model FLOPs per token, for throughput figures and model FLOPs utilisation (MFU).

Only matrix multiplies are counted (embedding lookups, norms, softmax and biases are O(d) per
token). For a model whose linear layers hold ``W_body`` weights outside the output head and
``W_head`` in it, with ``L`` blocks of width ``d`` reading ``T`` tokens with full attention:

    forward FLOPs per token = 2 W_body + 4 L T d + 2 W_head * f

where ``f`` is the fraction of tokens whose logits are computed (1 for a full forward; the
masked share when the head runs only at predicted positions, as fmaudit does). ``4 L T d`` is
``Q K^T`` and ``A V`` (``T d`` multiply-adds each, per token and layer). A training step costs
3x the forward (the backward pass runs two matmuls per forward matmul). This is the PaLM
convention (Chowdhery et al. 2022, appendix B); MFU = achieved model FLOPs/s over the chip's
peak dense FLOPs/s for the dtype used.
"""

from __future__ import annotations

from typing import Any

from fmaudit.models.groups import HEAD, group_of

__all__ = ["PEAK_TFLOPS_BF16", "forward_flops_per_token", "linear_weights", "peak_flops"]

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), in TFLOP/s, matched
# against ``torch.cuda.get_device_name()`` in this order (first match wins).
PEAK_TFLOPS_BF16 = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM / HBM3
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def linear_weights(model: Any) -> tuple[int, int]:
    """``(W_body, W_head)``: weights of the matrix-multiply layers (``nn.Linear`` and GPT-2's
    ``Conv1D``) outside and inside the output head (:func:`groups.group_of`); a weight shared
    by two layers (a tied decoder) counts for each layer that multiplies by it."""
    import torch

    body = head = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None:
            continue
        if group_of(f"{name}.weight") == HEAD:
            head += weight.numel()
        else:
            body += weight.numel()
    return body, head


def forward_flops_per_token(model: Any, seq_len: int, head_fraction: float = 1.0) -> float:
    """Forward matmul FLOPs per token: ``2 W_body + 4 L T d + 2 W_head f`` (module docstring).

    Args:
        model: a transformers model (its config gives ``num_hidden_layers`` and
            ``hidden_size``).
        seq_len: ``T``, the tokens each position attends over.
        head_fraction: ``f`` in ``[0, 1]``.
    """
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    body, head = linear_weights(model)
    layers, width = int(model.config.num_hidden_layers), int(model.config.hidden_size)
    return 2.0 * body + 4.0 * layers * seq_len * width + 2.0 * head * head_fraction


def peak_flops(device_name: str, dtype: str = "bfloat16") -> float | None:
    """Peak dense FLOP/s of a GPU by name (:data:`PEAK_TFLOPS_BF16`), or None when unknown or
    not bf16 (pass the peak yourself for other chips and dtypes)."""
    if dtype != "bfloat16":
        return None
    for key, tflops in PEAK_TFLOPS_BF16:
        if key in device_name:
            return tflops * 1e12
    return None
