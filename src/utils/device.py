"""Device resolution: "auto" picks CUDA when present, else CPU; asking for absent CUDA is a clear error. (The weights'
dtype is resolved where models are loaded: `src.lm.model.resolve_dtype`.)"""

from __future__ import annotations

import torch

from src.utils.errors import InputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{device}' requested but CUDA is not available on this machine; use device='auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InputError(f"device '{device}' does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved
