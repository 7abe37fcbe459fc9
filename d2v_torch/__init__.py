"""Data2Vec in PyTorch, with HF's class names, arguments and outputs."""

from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.models.checks import model_class_for
from d2v_torch.audio import (
    Data2VecAudioForAudioFrameClassification,
    Data2VecAudioForCTC,
    Data2VecAudioForSequenceClassification,
    Data2VecAudioForXVector,
    Data2VecAudioModel,
    Data2VecAudioPreTrainedModel,
)
from d2v_torch.base import MODEL_REGISTRY, Data2VecPreTrainedModel
from d2v_torch.big_models import lora_target_modules, quantize_dynamic_int8, shard_for_fsdp
from d2v_torch.data2vec2 import (
    Data2Vec2AudioForCTC,
    Data2Vec2AudioForSequenceClassification,
    Data2Vec2AudioModel,
    Data2Vec2PreTrainedModel,
    Data2Vec2TextForSequenceClassification,
    Data2Vec2TextModel,
    Data2Vec2VisionForImageClassification,
    Data2Vec2VisionModel,
)
from d2v_torch.data2vec2_pretraining import (
    Data2Vec2AudioForPreTraining,
    Data2Vec2TextForPreTraining,
    Data2Vec2VisionForPreTraining,
)
from d2v_torch.pipelines import pipeline
from d2v_torch.pretraining import (
    Data2VecAudioForPreTraining,
    Data2VecTextForPreTraining,
    Data2VecVisionForPreTraining,
)
from d2v_torch.text import (
    Data2VecTextForCausalLM,
    Data2VecTextForMaskedLM,
    Data2VecTextForMultipleChoice,
    Data2VecTextForQuestionAnswering,
    Data2VecTextForSequenceClassification,
    Data2VecTextForTokenClassification,
    Data2VecTextModel,
    Data2VecTextPreTrainedModel,
)
from d2v_torch.vision import (
    Data2VecVisionForImageClassification,
    Data2VecVisionForSemanticSegmentation,
    Data2VecVisionModel,
    Data2VecVisionPreTrainedModel,
)

# The classes register themselves (d2v_common.models.registry): MODEL_REGISTRY holds every class by
# the HF architecture it implements (its ``architecture`` attribute, HF's PyTorch name).
# MODEL_CLASSES: the checkpoint classes, how tools find the PyTorch class for a ``config.json`` or a
# crosscheck case; PRETRAINING_CLASSES: the data2vec pretraining wrappers.
MODEL_CLASSES = MODEL_REGISTRY.of_kind("model")
PRETRAINING_CLASSES = MODEL_REGISTRY.of_kind("pretraining")


def model_class(architecture: str):
    """The PyTorch class implementing an HF architecture name.

    Args:
        architecture: an HF PyTorch class name, e.g. ``"Data2VecVisionModel"``.

    Returns:
        The d2v model class.

    Raises:
        ValueError: the name is not a Data2Vec architecture.
    """
    return model_class_for(MODEL_CLASSES, architecture)


__all__ = [
    "Data2Vec2AudioForPreTraining",
    "Data2Vec2TextForPreTraining",
    "Data2Vec2VisionForPreTraining",
    "Data2Vec2AudioConfig",
    "Data2Vec2AudioForCTC",
    "Data2Vec2AudioForSequenceClassification",
    "Data2Vec2AudioModel",
    "Data2Vec2PreTrainedModel",
    "Data2Vec2TextConfig",
    "Data2Vec2TextForSequenceClassification",
    "Data2Vec2TextModel",
    "Data2Vec2VisionConfig",
    "Data2Vec2VisionForImageClassification",
    "Data2Vec2VisionModel",
    "MODEL_CLASSES",
    "MODEL_REGISTRY",
    "PRETRAINING_CLASSES",
    "model_class",
    "pipeline",
    "lora_target_modules",
    "quantize_dynamic_int8",
    "shard_for_fsdp",
    "Data2VecAudioConfig",
    "Data2VecAudioForAudioFrameClassification",
    "Data2VecAudioForCTC",
    "Data2VecAudioForPreTraining",
    "Data2VecAudioForSequenceClassification",
    "Data2VecAudioForXVector",
    "Data2VecAudioModel",
    "Data2VecAudioPreTrainedModel",
    "Data2VecPreTrainedModel",
    "Data2VecTextConfig",
    "Data2VecTextForCausalLM",
    "Data2VecTextForMaskedLM",
    "Data2VecTextForMultipleChoice",
    "Data2VecTextForPreTraining",
    "Data2VecTextForQuestionAnswering",
    "Data2VecTextForSequenceClassification",
    "Data2VecTextForTokenClassification",
    "Data2VecTextModel",
    "Data2VecTextPreTrainedModel",
    "Data2VecVisionConfig",
    "Data2VecVisionForImageClassification",
    "Data2VecVisionForPreTraining",
    "Data2VecVisionForSemanticSegmentation",
    "Data2VecVisionModel",
    "Data2VecVisionPreTrainedModel",
]
