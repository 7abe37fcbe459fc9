"""Helpers that build transformers models (the test oracle) with known weights."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from d2v_common import configs as d2v_configs
from d2v_common.spec import weight_spec


def hf_config(d2v_config):
    """The transformers config equal to a d2v config."""
    return getattr(transformers, type(d2v_config).__name__).from_dict(d2v_config.to_dict())


def d2v_config(hf_cfg):
    return getattr(d2v_configs, type(hf_cfg).__name__).from_dict(hf_cfg.to_dict())


def random_hf_model(architecture: str, hf_cfg, seed: int = 0):
    """An HF PyTorch model whose every tensor is random (seeded), in eval mode."""
    model = getattr(transformers, architecture)(hf_cfg).eval()
    arrays = weight_spec(d2v_config(hf_cfg), architecture).random_arrays(seed)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, strict=True)
    return model


def state_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
