"""Every model class by the architecture it implements: one registry per framework, filled by
the classes themselves, and the framework-neutral facts about each architecture.

How a class gets here: the framework base classes (``d2v_torch.base.Data2VecPreTrainedModel``,
``d2v_tf.base.TFData2VecPreTrainedModel`` and the two pretraining bases) call
``ModelRegistry.register`` from ``__init_subclass__``. A class is registered when it sets
``architecture`` itself (abstract bases leave it empty; a user's subclass of a registered class
inherits it and is not registered a second time).

Keys are HF's PyTorch class names in both frameworks (``"Data2VecTextModel"``): the Keras
class ``TFData2VecTextModel`` is registered under the same key, as ``config.json`` and the
weight spec name it. ``d2v_torch.MODEL_CLASSES`` / ``d2v_tf.MODEL_CLASSES`` (the classes that
load and save checkpoints), ``PRETRAINING_CLASSES``, the export tables, the benchmarks and the
crosscheck coverage test all read these registries; nothing keeps a class list by hand.

The neutral facts (``ARCHITECTURE_INFO``) come from the weight specs (architecture -> family)
and, for the pretraining wrappers, from ``PRETRAINING_ARCHITECTURES``. Which architectures
``d2v-export`` serves is ``EXPORTABLE_FAMILIES``: exporting a new family is one entry there
(plus its HF output names in ``d2v_common.export.OUTPUT_FIELDS``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from d2v_common.spec import ARCHITECTURES as SPEC_ARCHITECTURES

# The data2vec pretraining wrappers (student, EMA teacher, regression head): no checkpoint of
# their own (``save_student`` writes the backbone's), so no weight spec.
PRETRAINING_ARCHITECTURES = {
    "Data2VecAudioForPreTraining": "audio",
    "Data2VecTextForPreTraining": "text",
    "Data2VecVisionForPreTraining": "vision",
    # data2vec 2.0 (student, conv decoder, EMA teacher; d2v_common.pretrain.data2vec2)
    "Data2Vec2AudioForPreTraining": "audio2",
    "Data2Vec2TextForPreTraining": "text2",
    "Data2Vec2VisionForPreTraining": "vision2",
}

# Families whose checkpoint classes ``d2v-export`` serves (ONNX, torch.export, SavedModel,
# LiteRT). data2vec 2.0 ("text2", "audio2", "vision2") is added by listing it here.
EXPORTABLE_FAMILIES = ("text", "audio", "vision", "text2", "audio2", "vision2")


@dataclass(frozen=True)
class ArchitectureInfo:
    """What d2v knows about an architecture, whatever the framework.

    Args:
        name: HF's PyTorch class name (``"Data2VecVisionModel"``).
        family: the weight-spec family (``"text"``, ``"audio"``, ``"vision"``, ``"text2"``,
            ``"audio2"``, ``"vision2"``); for a pretraining wrapper, its backbone's.
        kind: ``"model"`` (has a weight spec: ``from_pretrained`` / ``save_pretrained``) or
            ``"pretraining"``.
    """

    name: str
    family: str
    kind: str

    @property
    def task(self) -> str:
        """``"Model"`` for a base model, else what follows ``For`` (``"SequenceClassification"``)."""
        return self.name.split("For", 1)[1] if "For" in self.name else "Model"

    @property
    def exportable(self) -> bool:
        return self.kind == "model" and self.family in EXPORTABLE_FAMILIES


ARCHITECTURE_INFO: dict[str, ArchitectureInfo] = {
    **{name: ArchitectureInfo(name, family, "model") for name, family in SPEC_ARCHITECTURES.items()},
    **{name: ArchitectureInfo(name, family, "pretraining") for name, family in PRETRAINING_ARCHITECTURES.items()},
}
EXPORTABLE_ARCHITECTURES = tuple(name for name, info in ARCHITECTURE_INFO.items() if info.exportable)


def architecture_info(name: str) -> ArchitectureInfo:
    """The facts about ``name`` (an HF PyTorch class name); ``ValueError`` for an unknown one."""
    if name not in ARCHITECTURE_INFO:
        raise ValueError(f"unknown architecture {name!r}; use one of {', '.join(sorted(ARCHITECTURE_INFO))}")
    return ARCHITECTURE_INFO[name]


class ModelRegistry(Mapping):
    """One framework's classes by architecture (read-only mapping; ``register`` adds).

    Args:
        framework: ``"torch"`` or ``"keras"`` (for messages).
        class_prefix: what the framework's class names put before the architecture (``"TF"``
            for Keras, HF's convention), checked when a class registers.
    """

    def __init__(self, framework: str, class_prefix: str = ""):
        self.framework = framework
        self.class_prefix = class_prefix
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Add ``cls`` under its own ``architecture``; classes that set none are skipped.

        Raises:
            TypeError: the architecture is unknown to d2v (no weight spec), the class name is
                not the architecture's, or another class already implements it.
        """
        name = cls.__dict__.get("architecture")
        if not name:
            return cls
        info = ARCHITECTURE_INFO.get(name)
        if info is None:
            raise TypeError(
                f"{cls.__name__}.architecture = {name!r} is no architecture d2v knows; add its weight "
                "spec to d2v_common/spec (or the name to d2v_common.models.registry.PRETRAINING_ARCHITECTURES)"
            )
        if cls.__name__ != self.class_prefix + name:
            raise TypeError(f"{cls.__name__} implements {name}: name it {self.class_prefix + name}")
        old = self._classes.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"{name} is implemented twice in {self.framework}: {old.__module__}.{old.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        self._classes[name] = cls  # a module reload replaces its own class
        return cls

    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def of_kind(self, kind: str) -> dict[str, type]:
        """``{architecture: class}`` of ``"model"`` (checkpoint) or ``"pretraining"`` classes."""
        return {name: cls for name, cls in self._classes.items() if ARCHITECTURE_INFO[name].kind == kind}


__all__ = [
    "ARCHITECTURE_INFO",
    "EXPORTABLE_ARCHITECTURES",
    "EXPORTABLE_FAMILIES",
    "PRETRAINING_ARCHITECTURES",
    "ArchitectureInfo",
    "ModelRegistry",
    "architecture_info",
]
