"""One declarative weight spec per family; ``weight_spec`` picks it from the architecture name."""

from __future__ import annotations

from d2v_common.configs import Data2VecAudioConfig, Data2VecConfigBase, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import audio, text, vision
from d2v_common.spec.core import Init, ParamSpec, SpecBuilder, WeightSpec

FAMILIES = {"text": text, "audio": audio, "vision": vision}
_CONFIG_FAMILY = {Data2VecTextConfig: "text", Data2VecAudioConfig: "audio", Data2VecVisionConfig: "vision"}
_BUILDERS = {"text": text.text_spec, "audio": audio.audio_spec, "vision": vision.vision_spec}

# data2vec 2.0 families (d2v_common.spec.data2vec2)
from d2v_common.spec import data2vec2  # noqa: E402

FAMILIES.update(data2vec2.FAMILIES)
for _family_name, _family in data2vec2.FAMILIES.items():
    _CONFIG_FAMILY[_family.CONFIG_CLASS] = _family_name
    _BUILDERS[_family_name] = _family.build

ARCHITECTURES = {arch: fam for fam, mod in FAMILIES.items() for arch in mod.ARCHITECTURES}
# The classes transformers also has (data2vec 1.0); data2vec 2.0 has no HF twin.
HF_ARCHITECTURES = {arch: fam for arch, fam in ARCHITECTURES.items() if fam in ("text", "audio", "vision")}


def canonical_architecture(name: str) -> str:
    """HF PyTorch class name for a PyTorch or TF class name (``TFData2VecVisionModel`` -> ...)."""
    arch = name[2:] if name.startswith("TF") else name
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; d2v knows {', '.join(sorted(ARCHITECTURES))}")
    return arch


def family_of(config: Data2VecConfigBase) -> str:
    try:
        return _CONFIG_FAMILY[type(config)]
    except KeyError:
        raise TypeError(f"expected a Data2Vec config, got {type(config).__name__}") from None


def weight_spec(config: Data2VecConfigBase, architecture: str, **options) -> WeightSpec:
    """Every tensor of ``architecture`` (an HF class name, PT or TF) built from ``config``.

    ``options``: ``add_pooling_layer`` for the bare text / vision models (their HF default
    otherwise).
    """
    arch = canonical_architecture(architecture)
    family = family_of(config)
    if ARCHITECTURES[arch] != family:
        raise ValueError(f"{architecture} is a {ARCHITECTURES[arch]} model but got a {type(config).__name__}")
    return _BUILDERS[family](config, arch, **options)


__all__ = [
    "ARCHITECTURES",
    "HF_ARCHITECTURES",
    "FAMILIES",
    "Init",
    "ParamSpec",
    "SpecBuilder",
    "WeightSpec",
    "canonical_architecture",
    "family_of",
    "weight_spec",
]
