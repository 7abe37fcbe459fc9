"""Data2Vec in PyTorch, with HF's class names, arguments and outputs."""

from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_torch.base import Data2VecPreTrainedModel
from d2v_torch.vision import (
    Data2VecVisionForImageClassification,
    Data2VecVisionForSemanticSegmentation,
    Data2VecVisionModel,
    Data2VecVisionPreTrainedModel,
)

__all__ = [
    "Data2VecAudioConfig",
    "Data2VecPreTrainedModel",
    "Data2VecTextConfig",
    "Data2VecVisionConfig",
    "Data2VecVisionForImageClassification",
    "Data2VecVisionForSemanticSegmentation",
    "Data2VecVisionModel",
    "Data2VecVisionPreTrainedModel",
]
