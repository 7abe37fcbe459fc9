"""The framework-neutral half of ``d2v_torch.pipeline`` / ``d2v_tf.pipeline``.

A pipeline is a model, its processors and a ``Task``: the task turns raw input (text, a
waveform, an image) into numpy model inputs with the processors, asks the framework's
``PipelineRunner`` for one forward, and formats the numpy result as HF's pipelines do. Only the
runner (load a class, run a forward, make a tensor) differs between PyTorch and Keras.

Tasks register in ``TASKS`` (``register_task``); a new task is one ``Task`` subclass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from d2v_common.checkpoints.hub import pop_hub_options
from d2v_common.configs import load_config
from d2v_common.spec import family_of

def modality(family: str) -> str:
    """``"text"``, ``"audio"`` or ``"vision"`` of a weight-spec family (data2vec 1.0 or 2.0)."""
    return family.rstrip("2")


# ------------------------------------------------------------------------------ the framework side
class PipelineRunner:
    """What a framework supplies: its model classes, one forward, its tensors.

    Args (class attributes of a subclass):
        framework: ``"pt"`` or ``"tf"`` (HF's names, as ``return_tensors``).
        package: the package whose ``pipeline`` this is (for messages).
    """

    framework = ""
    package = ""

    def model_class(self, architecture: str) -> type:
        """The framework's class for an HF architecture name."""
        raise NotImplementedError

    def is_model(self, model: Any) -> bool:
        """Whether ``model`` is a d2v model of this framework."""
        raise NotImplementedError

    def prepare(self, model: Any) -> Any:
        """The model ready for inference (evaluation mode, device); returns it."""
        return model

    def forward(self, model: Any, inputs: dict[str, np.ndarray], field: str) -> np.ndarray:
        """``model(**inputs)[field]`` without gradients, as a float32 numpy array."""
        raise NotImplementedError

    def tensor(self, array: np.ndarray) -> Any:
        """``array`` as this framework's tensor."""
        raise NotImplementedError


# ------------------------------------------------------------------------------ scores
def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(-1, keepdims=True))  # no overflow for large logits
    return shifted / shifted.sum(-1, keepdims=True)


CLASSIFICATION_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softmax": softmax,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "none": lambda x: x,
}


def classification_function(name: Any, config: Any) -> str:
    """The function HF's classification pipelines apply: the one named (any case), else sigmoid for
    one label or a multi-label model, nothing for regression, softmax otherwise."""
    if name is None:
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"
    if not isinstance(name, str) or name.lower() not in CLASSIFICATION_FUNCTIONS:
        raise ValueError(f"function_to_apply must be one of {', '.join(map(repr, CLASSIFICATION_FUNCTIONS))}, "
                         f"got {name!r}")
    return name.lower()


def check_top_k(top_k: Any) -> int | None:
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int (or None for every label), got {top_k!r}")
    return top_k


def top_labels(logits: np.ndarray, id2label: dict[int, str], function: str, top_k: int | None) -> list[dict]:
    """``[{"label", "score"}]`` best first (ties in label order), at most ``top_k`` (all for None)."""
    scores = CLASSIFICATION_FUNCTIONS[function](np.asarray(logits, dtype=np.float64))
    order = np.argsort(-scores, kind="stable")[: len(scores) if top_k is None else top_k]
    return [{"label": id2label[int(i)], "score": float(scores[i])} for i in order]


# ------------------------------------------------------------------------------ tasks
class Task:
    """One pipeline task: which classes serve it, which processors it needs, its call options.

    Subclasses set:
        name: HF's task name.
        architectures: weight-spec family -> HF architecture loaded for a folder or hub id.
        processors: modality -> {role: processor class}.
        options: call keyword -> default (also accepted by ``pipeline(...)``).
    and implement ``check_options`` and ``run``; ``is_batch`` / ``collect`` have HF's list rules.
    """

    name = ""
    architectures: dict[str, str] = {}
    processors: dict[str, dict[str, type]] = {}
    options: dict[str, Any] = {}

    def check_options(self, options: dict[str, Any], pipe: "Pipeline") -> dict[str, Any]:
        """The call options checked and normalised (raise ValueError/TypeError for bad ones)."""
        return options

    def is_batch(self, inputs: Any) -> bool:
        return isinstance(inputs, (list, tuple))

    def run(self, pipe: "Pipeline", item: Any, options: dict[str, Any]) -> Any:
        """The result for one input."""
        raise NotImplementedError

    def collect(self, results: list[Any], inputs: Any, batched: bool, options: dict[str, Any]) -> Any:
        """The call's return value: one result, or a list for a batch."""
        return results if batched else results[0]


TASKS: dict[str, Task] = {}


def register_task(task_class: type[Task]) -> type[Task]:
    """Add a ``Task`` subclass to ``TASKS`` under its ``name`` (a class decorator)."""
    if task_class.name in TASKS:
        raise ValueError(f"task {task_class.name!r} is registered twice")
    TASKS[task_class.name] = task_class()
    return task_class


def get_task(name: Any) -> Task:
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown pipeline task {name!r}; use one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


# ------------------------------------------------------------------------------ the pipeline
class Pipeline:
    """A model with its processors and task, called as HF's pipelines are.

    Args:
        task: the ``Task``.
        model: the framework's d2v model.
        runner: the framework's ``PipelineRunner``.
        processors: role -> processor (``tokenizer``, ``feature_extractor``, ``image_processor``).
        defaults: call options fixed at construction (a call's own keywords win).

    Examples:
        >>> asr = d2v_torch.pipeline("automatic-speech-recognition", model="path/to/ctc")  # doctest: +SKIP
        >>> asr(waveform, chunk_length_s=10)["text"]  # doctest: +SKIP
    """

    def __init__(self, task: Task, model: Any, runner: PipelineRunner, processors: dict[str, Any],
                 defaults: dict[str, Any]):
        self.task = task
        self.model = model
        self.runner = runner
        self.framework = runner.framework
        self.tokenizer = processors.get("tokenizer")
        self.feature_extractor = processors.get("feature_extractor")
        self.image_processor = processors.get("image_processor")
        self.modality = modality(family_of(model.config))
        self._check_keywords(defaults)
        self.defaults = dict(defaults)
        task.check_options({**task.options, **defaults}, self)  # bad defaults fail now, not at the first call

    def _check_keywords(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.task.options))
        if unknown:
            raise TypeError(f"the {self.task.name!r} pipeline takes no {', '.join(map(repr, unknown))}; its options "
                            f"are {', '.join(sorted(self.task.options)) or 'none'}")

    def forward(self, inputs: dict[str, Any], field: str) -> np.ndarray:
        """One forward of the model on numpy inputs; ``field`` of its output as float32 numpy."""
        return self.runner.forward(self.model, inputs, field)

    def __call__(self, inputs: Any, **options: Any) -> Any:
        """Run the task on one input or a list of inputs (a list of results back)."""
        self._check_keywords(options)
        merged = self.task.check_options({**self.task.options, **self.defaults, **options}, self)
        batched = self.task.is_batch(inputs)
        items = list(inputs) if batched else [inputs]
        if not items:
            raise ValueError("the input list is empty")
        results = [self.task.run(self, item, merged) for item in items]
        return self.task.collect(results, inputs, batched, merged)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task.name!r}, model={type(self.model).__name__}, framework={self.framework!r})"


def _load_processor(role: str, cls: type, source: str, task: Task, hub_options: dict[str, Any]) -> Any:
    try:
        return cls.from_pretrained(source, **hub_options)
    except FileNotFoundError as err:
        raise ValueError(f"the {task.name!r} pipeline needs a {role} ({cls.__name__}) and none loads from "
                         f"{source!r} ({err}): pass {role}=d2v_common.processing.{cls.__name__}.from_pretrained"
                         "(<folder or hub id that has one>)") from err


def build_pipeline(task_name: str, model: Any, runner: PipelineRunner, *, tokenizer: Any = None,
                   feature_extractor: Any = None, image_processor: Any = None,
                   model_kwargs: dict[str, Any] | None = None, **options: Any) -> Pipeline:
    """``pipeline(task, model=...)`` for a framework: see ``d2v_torch.pipeline``.

    ``options``: the hub keywords (``revision``, ``cache_dir``, ``local_files_only``, ``token``,
    ``force_download``) for the model and its processors, then the task's call options.
    """
    task = get_task(task_name)
    hub_options = pop_hub_options(options)
    given = {"tokenizer": tokenizer, "feature_extractor": feature_extractor, "image_processor": image_processor}
    if model is None:
        raise ValueError(f"pipeline({task.name!r}) needs model=: a checkpoint folder, a hub id or a d2v model "
                         f"(d2v has no default checkpoints)")
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        family = family_of(load_config(source, **hub_options))
        if family not in task.architectures:
            raise ValueError(f"{source!r} holds a model of the {family!r} family; the {task.name!r} pipeline "
                             f"serves the {', '.join(map(repr, sorted(task.architectures)))} families")
        model = runner.model_class(task.architectures[family]).from_pretrained(
            source, **hub_options, **(model_kwargs or {}))
    elif not runner.is_model(model):
        raise TypeError(f"model must be a checkpoint folder, a hub id or a {runner.package} model; got "
                        f"{type(model).__module__}.{type(model).__name__} (a model of the other framework goes "
                        f"to the other package's pipeline)")
    elif model_kwargs:
        raise ValueError("model_kwargs are from_pretrained options: they need model= as a folder or hub id")
    architecture = getattr(model, "architecture", None)
    family = family_of(model.config)
    if architecture not in task.architectures.values():
        wanted = task.architectures.get(family) or " / ".join(sorted(task.architectures.values()))
        raise TypeError(f"the {task.name!r} pipeline runs {wanted}, not {type(model).__name__}: load the checkpoint "
                        f"with that class (or pass its folder as model=)")

    processors = {}
    for role, cls in task.processors[modality(family)].items():
        value = given.pop(role)
        if isinstance(value, (str, os.PathLike)):
            value = _load_processor(role, cls, os.fspath(value), task, hub_options)
        elif value is None and source is not None:
            value = _load_processor(role, cls, source, task, hub_options)
        elif value is None:
            raise ValueError(f"the {task.name!r} pipeline needs a {role}: pass {role}=d2v_common.processing."
                             f"{cls.__name__}.from_pretrained(<checkpoint folder or hub id>), or model= as a "
                             "folder or hub id that holds one")
        if not isinstance(value, cls):
            raise TypeError(f"{role} must be a d2v_common.processing.{cls.__name__} for a {task.name!r} pipeline "
                            f"on a {modality(family)} model, got {type(value).__name__}")
        processors[role] = value
    extra = sorted(role for role, value in given.items() if value is not None)
    if extra:
        raise TypeError(f"the {task.name!r} pipeline on a {modality(family)} model uses no {', '.join(extra)}")
    return Pipeline(task, runner.prepare(model), runner, processors, options)


__all__ = [
    "CLASSIFICATION_FUNCTIONS",
    "Pipeline",
    "PipelineRunner",
    "TASKS",
    "Task",
    "build_pipeline",
    "check_top_k",
    "classification_function",
    "get_task",
    "modality",
    "register_task",
    "top_labels",
]
