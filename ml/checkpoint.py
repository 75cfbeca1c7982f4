"""Saving and loading weights, optionally as int8 per output channel to keep a committed checkpoint small."""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

SCALE_SUFFIX = ".__int8_scale"


def state_quantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conv and linear weights to symmetric int8 with one scale per output channel; the rest unchanged."""
    packed = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.ndim >= 2:
            flat = tensor.reshape(tensor.shape[0], -1).float()
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            packed[key] = torch.round(flat / scale[:, None]).to(torch.int8).reshape(tensor.shape)
            packed[key + SCALE_SUFFIX] = scale
        else:
            packed[key] = tensor.contiguous()
    return packed


def state_dequantize(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in packed.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = packed.get(key + SCALE_SUFFIX)
        if scale is not None:
            shape = (tensor.shape[0],) + (1,) * (tensor.ndim - 1)
            tensor = tensor.float() * scale.reshape(shape)
        state[key] = tensor
    return state


def weights_save(state: dict[str, torch.Tensor], path, dtype: str) -> None:
    if dtype == "int8":
        state = state_quantize(state)
    elif dtype == "float32":
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    else:
        raise ValueError(f"unknown weights dtype {dtype!r}: use float32 or int8")
    save_file(state, str(path))


def weights_load(path) -> dict[str, torch.Tensor]:
    return state_dequantize(load_file(str(path)))
