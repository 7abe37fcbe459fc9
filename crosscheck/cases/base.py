"""A cross-check case: one architecture, one config, one input recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from d2v_common.configs import Data2VecConfigBase

# Default tolerances (fp32, CPU): d2v vs HF torch and d2v TF vs d2v torch.
TOLERANCE = 1e-5
SEGMENTATION_LOGITS_TOLERANCE = 1e-4


@dataclass
class Case:
    name: str  # short id, e.g. "vision-seg-relbias"
    architecture: str  # HF PyTorch class name
    config: Data2VecConfigBase
    # numpy inputs (labels included) from a seeded generator
    make_inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]
    # keyword arguments for the forward call (output_hidden_states ...)
    call_kwargs: dict = field(default_factory=dict)
    tolerance: float = TOLERANCE
    # per-output overrides, e.g. {"logits": 1e-4}
    tolerances: dict = field(default_factory=dict)
    # whether HF's TF class exists (vision only) for tf_model.h5 interop checks
    hf_tf: bool = False
    # whether transformers' PyTorch class can run this case (HF's segmentation assumes the
    # configured image size, so other sizes are d2v-only)
    hf_torch: bool = True

    @property
    def family(self) -> str:
        return self.name.split("-")[0]

    def tolerance_for(self, key: str) -> float:
        return self.tolerances.get(key, self.tolerance)
