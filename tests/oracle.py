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


# ------------------------------------------------ used by crosscheck's --reference hf and bench


def tf_available() -> bool:
    """HF's TF classes need tf-keras (Keras 2) beside Keras 3."""
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def hf_class(name: str):
    """transformers' class of that name (e.g. "TFData2VecVisionModel")."""
    return getattr(transformers, name)


def hf_torch_model(config, architecture: str, arrays: dict, eager_attention: bool = False):
    """transformers' PyTorch class with exactly these (d2v canonical) weights, in eval mode.
    ``eager_attention``: HF's fused attention returns no attention weights."""
    cfg = hf_config(config)
    if eager_attention:
        cfg._attn_implementation = "eager"
    model = getattr(transformers, architecture)(cfg).eval()
    full = weight_spec(config, architecture).tie(dict(arrays))
    model.load_state_dict({k: torch.from_numpy(np.require(v, requirements="C")) for k, v in full.items()}, strict=True)
    return model


def hf_tf_model(config, architecture: str, arrays: dict):
    """transformers' TF class, loaded from a tf_model.h5 that d2v writes from these weights."""
    import tempfile

    from d2v_common.checkpoints import formats as checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.write_checkpoint(tmp, arrays, weight_spec(config, architecture), ["tf-h5"])
        hf_config(config).save_pretrained(tmp)
        return getattr(transformers, "TF" + architecture).from_pretrained(tmp)
