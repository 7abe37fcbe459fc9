"""The model classes register themselves (d2v_common.models.registry): the public names, the class
tables of both frameworks, export and crosscheck all follow the one registry."""

from __future__ import annotations

import inspect
import re
import sys

import pytest

import d2v_tf
import d2v_torch
from crosscheck import bench
from crosscheck.cases import all_cases
from d2v_common import export as common_export
from d2v_common.models import docstrings as documentation
from d2v_common import spec
from d2v_common.models import registry
from d2v_tf.base import TFData2VecPreTrainedModel
from d2v_torch.base import Data2VecPreTrainedModel

PACKAGES = {"torch": d2v_torch, "keras": d2v_tf}


def _public_model_classes(package) -> set[type]:
    """Classes in ``__all__`` that implement an architecture themselves."""
    out = set()
    for name in package.__all__:
        value = getattr(package, name)
        if isinstance(value, type) and value.__dict__.get("architecture"):
            out.add(value)
    return out


@pytest.mark.parametrize("framework", PACKAGES)
def test_all_equals_the_registry(framework):
    """A class that is registered but not exported, or exported but not registered, fails here."""
    package = PACKAGES[framework]
    registered = set(package.MODEL_REGISTRY.values())
    assert registered == _public_model_classes(package)
    assert {cls.__name__ for cls in registered} <= set(package.__all__)
    for cls in registered:  # and the defining module's __all__, where it keeps one
        module = sys.modules[cls.__module__]
        assert cls.__name__ in getattr(module, "__all__", [cls.__name__]), (cls.__module__, cls.__name__)


@pytest.mark.parametrize("framework", PACKAGES)
def test_registry_holds_every_architecture_under_its_hf_name(framework):
    package = PACKAGES[framework]
    prefix = package.MODEL_REGISTRY.class_prefix
    assert set(package.MODEL_REGISTRY) == set(registry.ARCHITECTURE_INFO)
    for name, cls in package.MODEL_REGISTRY.items():
        assert cls.architecture == name and cls.__name__ == prefix + name
    assert set(package.MODEL_CLASSES) == set(spec.ARCHITECTURES)
    assert set(package.PRETRAINING_CLASSES) == set(registry.PRETRAINING_ARCHITECTURES)
    for name in package.MODEL_CLASSES:
        assert package.model_class(name) is package.MODEL_REGISTRY[name]
    # data2vec 2.0 and the pretraining wrappers are in the registry too
    assert package.MODEL_REGISTRY["Data2Vec2TextModel"].__name__ == prefix + "Data2Vec2TextModel"
    assert package.MODEL_REGISTRY["Data2VecVisionForPreTraining"].__name__ == prefix + "Data2VecVisionForPreTraining"


@pytest.mark.parametrize("base", [Data2VecPreTrainedModel, TFData2VecPreTrainedModel], ids=["torch", "keras"])
def test_a_new_class_registers_or_is_refused_when_defined(base):
    registered = PACKAGES["torch" if base is Data2VecPreTrainedModel else "keras"].MODEL_REGISTRY
    before = dict(registered)
    with pytest.raises(TypeError, match="no architecture d2v knows"):
        type(("TF" if base is TFData2VecPreTrainedModel else "") + "Data2VecFoo", (base,),
             {"architecture": "Data2VecFoo"})
    # a user's subclass of a registered class inherits its architecture and is not registered again
    head = registered["Data2VecTextForSequenceClassification"]
    type("MyClassifier", (head,), {})
    assert dict(registered) == before


def test_registry_refuses_a_second_class_and_a_wrong_name():
    reg = registry.ModelRegistry("test", class_prefix="TF")
    first = type("TFData2VecTextModel", (), {"architecture": "Data2VecTextModel"})
    reg.register(first)
    with pytest.raises(TypeError, match="implemented twice"):
        reg.register(type("TFData2VecTextModel", (), {"architecture": "Data2VecTextModel", "__qualname__": "Other"}))
    with pytest.raises(TypeError, match="name it TFData2VecTextForMaskedLM"):
        reg.register(type("MaskedLM", (), {"architecture": "Data2VecTextForMaskedLM"}))
    reg.register(type("Abstract", (), {"architecture": ""}))  # abstract bases set none
    assert dict(reg) == {"Data2VecTextModel": first}


def test_exportable_set_comes_from_the_registry():
    """Export serves the checkpoint classes of EXPORTABLE_FAMILIES, each with its HF output names."""
    expected = {
        name for name, info in registry.ARCHITECTURE_INFO.items()
        if info.kind == "model" and info.family in registry.EXPORTABLE_FAMILIES
    }
    assert set(common_export.EXPORTABLE_ARCHITECTURES) == expected
    assert set(common_export.OUTPUT_FIELDS) == expected  # no row for a class that does not export
    for name in registry.PRETRAINING_ARCHITECTURES:
        with pytest.raises(common_export.ExportError, match="cannot be exported"):
            common_export.check_architecture(name)


def test_crosscheck_and_bench_use_registered_classes():
    """Every checkpoint class has a crosscheck case; bench workloads name registered classes."""
    assert {case.architecture for case in all_cases()} == set(d2v_torch.MODEL_CLASSES)
    for workload in bench.WORKLOADS.values():
        assert workload.family == registry.architecture_info(workload.architecture).family
        assert workload.architecture in d2v_torch.MODEL_CLASSES and workload.architecture in d2v_tf.MODEL_CLASSES


def test_architecture_info():
    info = registry.architecture_info("Data2VecTextForQuestionAnswering")
    assert (info.family, info.kind, info.task, info.exportable) == ("text", "model", "QuestionAnswering", True)
    assert registry.architecture_info("Data2Vec2VisionModel").task == "Model"
    assert registry.architecture_info("Data2VecAudioForPreTraining").exportable is False
    with pytest.raises(ValueError, match="unknown architecture 'Data2VecFoo'"):
        registry.architecture_info("Data2VecFoo")


# ----------------------------------------------------------------------------- shapes in docstrings
# An argument's description starts with its shape, "(batch, seq_len) int64: ...", or, for a
# non-tensor argument, its type.
_SHAPE = re.compile(r"^\((?:[\w +*/\[\]-]+, )*[\w +*/\[\]-]+,?\)|^per layer \(")
_FLAG = re.compile(r"^bool\b")


def _args_section(doc: str) -> dict[str, str]:
    """``{name: description}`` of a Google-style ``Args:`` section (continuation lines joined)."""
    lines = doc.split("\n")
    start = lines.index("Args:")
    out: dict[str, str] = {}
    name = None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        item = re.match(r"^    (\w+):\s*(.*)$", line)
        if item:
            name = item.group(1)
            out[name] = item.group(2)
        elif name is not None and line.startswith("        "):
            out[name] += " " + line.strip()
    return out


def _described_with_shape(text: str) -> bool:
    """Every alternative ("Task: ..." for a method several heads share) starts with a shape or a type."""
    parts = re.split(r"(?:^|\. )[A-Z]\w+: ", text) if re.match(r"^[A-Z]\w+: ", text) else [text]
    parts = [p for p in parts if p]
    return bool(parts) and all(_SHAPE.match(p) or _FLAG.match(p) for p in parts)


def _methods():
    for framework, package in PACKAGES.items():
        method = "forward" if framework == "torch" else "call"
        for name, cls in package.MODEL_REGISTRY.items():
            yield pytest.param(cls, method, id=cls.__name__)


@pytest.mark.parametrize("cls, method", list(_methods()))
def test_every_forward_and_call_documents_its_shapes(cls, method):
    """help(Class.forward / call) names every parameter with its shape (or type) and says what
    comes back: a new class (or a new argument) without shapes fails here."""
    function = getattr(cls, method)
    doc = inspect.getdoc(function) or ""
    assert "Args:" in doc and "Returns:" in doc, f"{cls.__name__}.{method} has no Args:/Returns: section"
    args = _args_section(doc)
    parameters = [p for p in inspect.signature(function).parameters if p != "self"]
    assert list(args) == parameters, f"{cls.__name__}.{method}: Args: lists {list(args)}, signature {parameters}"
    unshaped = {name: text for name, text in args.items() if not _described_with_shape(text)}
    assert not unshaped, f"{cls.__name__}.{method}: no shape for {unshaped}"
    returns = doc.split("Returns:", 1)[1]
    assert re.search(r"\(batch[,)]", returns), f"{cls.__name__}.{method}: Returns: gives no output shape"


def test_the_docstring_test_catches_a_missing_shape():
    undocumented = documentation.inputs_doc(("Data2VecTextModel",), ["input_ids", "brand_new_argument"])
    args = _args_section(undocumented)
    assert _described_with_shape(args["input_ids"])
    assert args["brand_new_argument"] == "" and not _described_with_shape(args["brand_new_argument"])
    assert not _described_with_shape("the token ids")
