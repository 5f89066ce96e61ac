"""Speed patches for a model about to be trained: fused GELU everywhere, integer-mask dropout on the CPU; both
swap modules in place and leave the values (GELU) or their distribution (dropout) as they were."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _replace_modules(model: torch.nn.Module, kind: type, make: Callable[[torch.nn.Module], torch.nn.Module]) -> int:
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is kind:
                setattr(module, name, make(child))
                swapped += 1
    return swapped


def fast_activations(model: torch.nn.Module) -> int:
    """Swap GPT-2's Python tanh-GELU (eight elementwise kernels forward, more backward) for PyTorch's fused
    kernel of the same formula; the values agree to float rounding. Returns the number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    return _replace_modules(model, NewGELUActivation, lambda _: GELUTanh())


class IntegerDropout(torch.nn.Dropout):
    """`nn.Dropout` whose keep-mask is cut from 64-bit random integers, four 16-bit lanes each.

    On the CPU torch's float `bernoulli_` costs about six times as much per element as this and runs on one
    core: it was a fifth of a LoRA training step of the uer model. The drop probability is p to 1/65536
    (0.1 → 0.100006), survivors are scaled so the expectation is exact, masks follow torch's seed, and
    outside training it is the identity, as nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = round(self.p * 65536)
        if not self.training or not 0 < drop < 65536 or self.inplace:
            return super().forward(x)
        # One draw per four elements: a full-range int64 read as four uniform int16 in [-32768, 32767].
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= drop - 32768
        return x * keep.to(x.dtype).mul_(65536 / (65536 - drop))


def fast_dropout(model: torch.nn.Module) -> int:
    """Swap every `nn.Dropout` (GPT-2's and LoRA's) for `IntegerDropout`; for CPU training only, CUDA's fused
    dropout is fast. Attention-probability dropout happens inside SDPA and stays as it is."""
    return _replace_modules(model, torch.nn.Dropout, lambda d: IntegerDropout(d.p))
