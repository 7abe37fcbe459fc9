"""``python -m crosscheck.bench``: d2v's speed next to transformers', same weights, same inputs.

Every workload builds each model from one seeded weight set and times one inference call per
row, interleaved (each repeat runs every row once, in a rotated order, so slow spells of a
shared machine hit all rows alike); warm-up calls (XLA compilation included) are not timed.
Rows: d2v PyTorch float32 and bfloat16 (the model cast with ``.to(torch.bfloat16)``, inputs
cast too); d2v Keras float32 eager, as a TF graph (``model.make_fast(jit_compile=False)``) and
XLA-compiled (``make_fast(jit_compile=True)``), and bfloat16 (``mixed_bfloat16`` policy) as a
graph; the same Keras class on the JAX backend (``make_fast()``: ``jax.jit``, in a subprocess,
since Keras fixes its backend per process); and, where transformers is installed, HF's PyTorch class in float32 and bfloat16 and HF's
TF class (vision only: HF has no TF text or audio Data2Vec) eager, in ``tf.function`` and in
``tf.function(jit_compile=True)``; and the d2v PyTorch model exported to ONNX
(``d2v_torch.export``) in onnxruntime, float32 and with int8 weights (``onnxruntime.quantization``
dynamic quantisation). "vs ref" is the reference row's median time over this row's (above 1:
this row is faster); the reference is HF's class in the same framework, precision and mode,
d2v torch fp32 for onnxruntime fp32 and HF torch fp32 for onnxruntime int8. "err" is the main
output's max |row - d2v torch float32| over max |d2v torch float32|; the int8 row also reports
its error against onnxruntime fp32 and how many rows keep the fp32 argmax.

The data2vec 2.0 pretraining workloads (``crosscheck.bench_pretraining``) time one training step
(forward + backward) of the released base image and audio recipes, one row per framework.

``from_pretrained`` of a base vision checkpoint is timed for every loader in a fresh
subprocess: seconds, and peak resident memory above the post-import level, as a multiple of
the weight file's size.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from crosscheck import bench_pretraining  # noqa: E402
from crosscheck.bench_quant import QUANT_FRAMEWORKS, QUANT_ROWS  # noqa: E402
from crosscheck import bench_memory  # noqa: E402
from crosscheck.cases import data2vec2 as d2v2_cases  # noqa: E402
from crosscheck.cases import tiny  # noqa: E402
from crosscheck.flops import model_flops  # noqa: E402
from d2v_common.io_utils import non_negative_int, positive_int  # noqa: E402
from d2v_common.models.registry import architecture_info  # noqa: E402

# ------------------------------------------------------------------------------ workloads

TEXT_BASE = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
# data2vec-vision-base-ft1k / the ADE20k segmentation checkpoints
VISION_BASE = dict(use_relative_position_bias=True, layer_scale_init_value=0.1, use_mean_pooling=True)
AUDIO_BASE: dict = {}
# --size tiny: the crosscheck's tiny configs (image_size comes from the workload)
TINY = {
    "text": dict(tiny.TEXT, pad_token_id=1),
    "audio": dict(tiny.AUDIO),
    "vision": {**{k: v for k, v in tiny.VISION.items() if k != "image_size"}, "use_relative_position_bias": True},
}
# data2vec 2.0 (families "audio2", "vision2", "text2"): the config defaults are the base size
TINY_D2V2 = {"audio2": dict(d2v2_cases.AUDIO),
             "vision2": {k: v for k, v in d2v2_cases.VISION.items() if k != "image_size"},
             "text2": dict(d2v2_cases.TEXT)}


@dataclass(frozen=True)
class Workload:
    name: str
    architecture: str
    batch: int
    length: int  # tokens, audio samples, or image side
    extra: dict = field(default_factory=dict)  # config fields beyond the family's base
    tiny_length: int = 0

    @property
    def family(self) -> str:
        return architecture_info(self.architecture).family

    @property
    def modality(self) -> str:
        """text, audio or vision (data2vec 2.0 families end in 2)."""
        return self.family.rstrip("2")

    def config(self, size: str):
        from d2v_common import configs, data2vec2

        if self.family.endswith("2"):
            cls = getattr(data2vec2, f"Data2Vec2{self.modality.capitalize()}Config")
            fields = dict(self.extra) if size == "base" else {**TINY_D2V2[self.family], **self.extra}
        else:
            cls = getattr(configs, f"Data2Vec{self.family.capitalize()}Config")
            base = {"text": TEXT_BASE, "audio": AUDIO_BASE, "vision": VISION_BASE}[self.family]
            fields = {**base, **self.extra} if size == "base" else {**TINY[self.family], **self.extra}
        if self.modality == "vision":
            fields["image_size"] = self.size_for(size)
        return cls(**fields)

    def size_for(self, size: str) -> int:
        return self.length if size == "base" else self.tiny_length

    def inputs(self, config, size: str, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        n, b = self.size_for(size), self.batch
        if self.modality == "text":
            ids = rng.integers(3, config.vocab_size, size=(b, n)).astype(np.int64)
            mask = np.ones((b, n), np.int64)
            if b > 1:  # one padded row, as in real batches
                ids[-1, n // 2 :] = config.pad_token_id
                mask[-1, n // 2 :] = 0
            return {"input_ids": ids, "attention_mask": mask}
        if self.modality == "audio":
            return {"input_values": rng.standard_normal((b, n)).astype(np.float32)}
        return {"pixel_values": rng.standard_normal((b, config.num_channels, n, n)).astype(np.float32)}

    @property
    def main_output(self) -> str:
        return "logits" if "For" in self.architecture else "last_hidden_state"


WORKLOADS = {
    w.name: w
    for w in [
        Workload("text-b8x128", "Data2VecTextModel", 8, 128, tiny_length=16),
        Workload("text-b4x512", "Data2VecTextModel", 4, 512, tiny_length=32),
        Workload("text-cls-b8x128", "Data2VecTextForSequenceClassification", 8, 128, dict(num_labels=2),
                 tiny_length=16),
        Workload("audio-b2x10s", "Data2VecAudioModel", 2, 160_000, tiny_length=4000),
        Workload("vision-cls-b8x224", "Data2VecVisionForImageClassification", 8, 224,
                 dict(num_labels=1000), tiny_length=32),
        Workload("vision-seg-b2x512", "Data2VecVisionForSemanticSegmentation", 2, 512,
                 dict(num_labels=150, use_auxiliary_head=True), tiny_length=32),
        # data2vec 2.0 base (no HF class: the d2v torch and onnxruntime rows)
        Workload("audio2-ctc-b2x10s", "Data2Vec2AudioForCTC", 2, 160_000, tiny_length=4000),
        Workload("vision2-cls-b8x224", "Data2Vec2VisionForImageClassification", 8, 224,
                 dict(num_labels=1000), tiny_length=32),
    ]
}
QUICK_WORKLOADS = ["text-b8x128", "vision-cls-b8x224"]

# row key -> (label, the HF row it is compared with)
ROWS = {
    "torch-fp32": ("d2v torch fp32", "hf-torch-fp32"),
    "torch-bf16": ("d2v torch bf16", "hf-torch-bf16"),
    "keras-eager": ("d2v keras eager", "hf-tf-eager"),
    "keras-graph": ("d2v keras graph", "hf-tf-graph"),
    "keras-xla": ("d2v keras xla", "hf-tf-xla"),
    "keras-bf16": ("d2v keras bf16 graph", None),
    "keras-jax-jit": ("d2v keras jax jit", None),
    "hf-torch-fp32": ("HF torch fp32", None),
    "hf-torch-bf16": ("HF torch bf16", None),
    "hf-tf-eager": ("HF TF eager", None),
    "hf-tf-graph": ("HF TF graph", None),
    "hf-tf-xla": ("HF TF xla", None),
    "ort-fp32": ("onnxruntime fp32", "torch-fp32"),
    "ort-int8": ("onnxruntime int8 (dynamic)", "hf-torch-fp32"),
    **QUANT_ROWS,  # int8 rows, one entry per framework (crosscheck.bench_quant)
}
ORT_ROWS = ("ort-fp32", "ort-int8")
# float32 Keras paths: eager, tf.function (TF graph: grappler + oneDNN fusions), tf.function + XLA
KERAS_ROWS = ("keras-eager", "keras-graph", "keras-xla")
# The same Keras classes on the JAX backend, make_fast() (jax.jit): Keras fixes its backend per
# process, so this row is timed in a subprocess (after the in-process rows, not interleaved).
JAX_ROW = "keras-jax-jit"
HF_TF_ROWS = ("hf-tf-eager", "hf-tf-graph", "hf-tf-xla")

# The targets (speed ratios are HF time / d2v time).
TARGETS = {
    "torch_fp32_vs_hf": 0.95,
    "torch_bf16_vs_hf": 1.15,
    "bf16_err": 2e-2,
    "keras_best_vs_hf_tf_xla": 1.1,
    "keras_best_vs_hf_tf_eager": 1.5,
    "tf_load_seconds": 1.0,
    "tf_load_rss_x": 2.0,
    "keras_load_vs_torch": 2.0,
    "h5_load_rss_x_weights": 1.3,
    "ort_int8_vs_hf_fp32": 2.0,
    "ort_int8_err": 0.05,
    "ort_int8_argmax": 0.98,
}


def hf_oracle():
    """The test oracle module (transformers with known weights), or None without it."""
    try:
        from crosscheck.runner import oracle

        return oracle()
    except RuntimeError:
        return None


def set_threads(threads: int) -> None:
    """The same thread count for both frameworks (TF's must be set before its first op)."""
    import tensorflow as tf
    import torch

    torch.set_num_threads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process: keep its settings
        pass


# ----------------------------------------------------------------------------------- rows


@dataclass
class Row:
    key: str
    run: object  # () -> numpy array of the main output
    first_call_s: float = 0.0
    times: list = field(default_factory=list)
    output: object = None  # the main output of the first call


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _torch_rows(workload: Workload, model, inputs: dict, prefix: str, keys: list[str]) -> dict:
    """float32 and bfloat16 rows of one PyTorch model (bf16: a cast copy, with cast inputs)."""
    import torch

    field_ = workload.main_output
    pt_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def runner(m, x):
        def run():
            with torch.inference_mode():
                return _to_numpy(getattr(m(**x, return_dict=True), field_))

        return run

    runs = {}
    if f"{prefix}-fp32" in keys:
        runs[f"{prefix}-fp32"] = runner(model, pt_inputs)
    if f"{prefix}-bf16" in keys:
        low = copy.deepcopy(model).to(torch.bfloat16)
        bf_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in pt_inputs.items()}
        runs[f"{prefix}-bf16"] = runner(low, bf_inputs)
    return runs


def build_rows(workload: Workload, size: str, keys: list[str], seed: int = 0) -> tuple[dict, dict]:
    """(row key -> callable returning the main output as numpy, row key -> why it cannot run)."""
    from d2v_common.spec import weight_spec

    config = workload.config(size)
    arrays = weight_spec(config, workload.architecture).random_arrays(seed)
    inputs = workload.inputs(config, size, seed + 1)
    field_ = workload.main_output
    runs: dict = {}
    skipped: dict = {}

    def attempt(group, build):
        group = [k for k in group if k in keys]
        if group:
            try:
                runs.update(build(group))
            except Exception as e:  # noqa: BLE001 - a row that cannot be built is reported, not fatal
                skipped.update({k: f"{type(e).__name__}: {e}"[:200] for k in group})

    def d2v_torch_rows(group):
        import d2v_torch

        model = d2v_torch.model_class(workload.architecture)(config)
        model.load_arrays(arrays)
        return _torch_rows(workload, model.eval(), inputs, "torch", group)

    def keras_rows(group):
        model = _keras_model(workload, config, arrays)
        graph, xla = model.make_fast(jit_compile=False), model.make_fast(jit_compile=True)
        return {
            "keras-eager": lambda: _to_numpy(getattr(model(**inputs, training=False), field_)),
            "keras-graph": lambda: _to_numpy(getattr(graph(**inputs), field_)),
            "keras-xla": lambda: _to_numpy(getattr(xla(**inputs), field_)),
        }

    def keras_bf16_row(group):
        low = _keras_model(workload, config, arrays, "mixed_bfloat16").make_fast(jit_compile=False)
        return {"keras-bf16": lambda: _to_numpy(getattr(low(**inputs), field_))}

    attempt(["torch-fp32", "torch-bf16"], d2v_torch_rows)
    attempt(KERAS_ROWS, keras_rows)
    attempt(["keras-bf16"], keras_bf16_row)
    attempt(ORT_ROWS, lambda group: _onnxruntime_rows(workload, config, arrays, inputs, group))
    for framework in QUANT_FRAMEWORKS.values():
        attempt(list(framework.rows), lambda group, f=framework: f.build(workload, config, arrays, inputs, group))
    hf_keys = [k for k in keys if k.startswith("hf-")]
    hf = hf_oracle() if hf_keys else None
    if hf_keys and hf is None:
        skipped.update({k: "transformers (the test extra) is not installed" for k in hf_keys})
    elif hf_keys:
        attempt(["hf-torch-fp32", "hf-torch-bf16"],
                lambda group: _torch_rows(workload, hf.hf_torch_model(config, workload.architecture, arrays),
                                          inputs, "hf-torch", group))
        if workload.family != "vision":
            skipped.update({k: "HF has no TF Data2Vec text/audio classes" for k in HF_TF_ROWS if k in keys})
        elif not hf.tf_available():
            skipped.update({k: "tf-keras is not installed" for k in HF_TF_ROWS if k in keys})
        else:
            attempt(HF_TF_ROWS, lambda group: _hf_tf_rows(workload, hf.hf_tf_model(config, workload.architecture, arrays),
                                                           inputs))
    return {k: v for k, v in runs.items() if k in keys}, skipped


def _onnxruntime_rows(workload: Workload, config, arrays: dict, inputs: dict, keys: list[str]) -> dict:
    """d2v torch exported to ONNX (the d2v-export path), in onnxruntime: float32 and, with
    weights quantised to int8 (dynamic quantisation: activations quantised per call), int8."""
    import shutil

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import d2v_torch
    from d2v_common import export as common
    from d2v_torch import export as torch_export

    model = d2v_torch.model_class(workload.architecture)(config)
    model.load_arrays(arrays)
    # token_type_ids (configs with several token types) are all zeros, as the torch rows get them;
    # a workload without attention_mask keeps every position
    def feed(name: str) -> np.ndarray:
        if name in inputs:
            return inputs[name]
        if name == "attention_mask":
            return np.ones(next(iter(inputs.values())).shape[:2], np.int64)
        return np.zeros_like(inputs["input_ids"])

    feeds = {n: feed(n) for n in common.input_names(config, workload.architecture)}
    tmp = tempfile.mkdtemp(prefix="d2v-bench-onnx-")
    try:
        fp32 = os.path.join(tmp, "model.onnx")
        sample = common.sample_inputs(config, workload.architecture, batch_size=2,
                                      length=16 if workload.modality == "text" else None)  # audio: its default
        torch_export.write_onnx(torch_export.export_program(model.eval(), sample), fp32)
        sessions = {}
        if "ort-fp32" in keys:
            sessions["ort-fp32"] = torch_export.onnxruntime_session(fp32, torch.get_num_threads())
        if "ort-int8" in keys:
            int8 = os.path.join(tmp, "model.int8.onnx")
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
            sessions["ort-int8"] = torch_export.onnxruntime_session(int8, torch.get_num_threads())
    finally:  # sessions hold the graphs in memory
        shutil.rmtree(tmp, ignore_errors=True)
    field_ = workload.main_output
    return {k: (lambda s=s: np.asarray(s.run([field_], feeds)[0], dtype=np.float32)) for k, s in sessions.items()}


def int8_on_trained_example(quick: bool = False, seed: int = 0) -> dict:
    """int8 vs fp32 onnxruntime on a trained model: examples/finetune_torch_text.py's classifier
    (trained here as the example does), scored on the example's held-out set."""
    import importlib.util
    import shutil

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from d2v_common import export as common
    from d2v_torch import export as torch_export

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                        "finetune_torch_text.py")
    spec = importlib.util.spec_from_file_location("finetune_torch_text", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trained = []

    class Recorded(example.Data2VecTextForSequenceClassification):  # keeps the model main() trains
        def __init__(self, config):
            super().__init__(config)
            trained.append(self)

    example.Data2VecTextForSequenceClassification = Recorded
    result = example.main(["--seed", str(seed)] + (["--quick"] if quick else []))
    model = trained[0].eval()
    rng = np.random.default_rng(seed)  # the example's held-out set: same generator, same order
    n_train, n_test = (1024, 256) if quick else (2048, 512)
    example.make_data(n_train, 32, rng)
    ids, mask, labels = example.make_data(n_test, 32, rng)
    feeds = {"input_ids": ids, "attention_mask": mask}
    tmp = tempfile.mkdtemp(prefix="d2v-bench-int8-")
    try:
        fp32, int8 = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
        sample = common.sample_inputs(model.config, model.architecture, batch_size=2, length=16)
        torch_export.write_onnx(torch_export.export_program(model, sample), fp32)
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        full = torch_export.onnxruntime_session(fp32).run(["logits"], feeds)[0]
        low = torch_export.onnxruntime_session(int8).run(["logits"], feeds)[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        eager = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    return {
        "rows": int(n_test),
        "accuracy_fp32": float(np.mean(full.argmax(-1) == labels)),
        "accuracy_int8": float(np.mean(low.argmax(-1) == labels)),
        "example_accuracy": result["accuracy"],
        "argmax_agreement": float(np.mean(low.argmax(-1) == full.argmax(-1))),
        "rel_err_vs_fp32": float(np.abs(low - full).max() / np.abs(full).max()),
        "ort_fp32_vs_eager_max_abs": float(np.abs(full - eager).max()),
    }


def _keras_model(workload: Workload, config, arrays: dict, policy: str | None = None):
    """d2v's Keras model; ``policy`` (e.g. "mixed_bfloat16") applies while its layers are built."""
    import keras

    import d2v_tf

    previous = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        model = d2v_tf.model_class(workload.architecture)(config)
    finally:
        keras.config.set_dtype_policy(previous)
    model.load_arrays(arrays)
    return model


def _hf_tf_rows(workload: Workload, model, inputs: dict) -> dict:
    """Eager, tf.function and XLA rows of HF's TF class."""
    import tensorflow as tf

    field_ = workload.main_output
    x = tf.constant(inputs["pixel_values"])

    def call(p):
        return getattr(model(pixel_values=p, training=False), field_)

    graph, xla = tf.function(call, jit_compile=False), tf.function(call, jit_compile=True)
    return {
        "hf-tf-eager": lambda: _to_numpy(call(x)),
        "hf-tf-graph": lambda: _to_numpy(graph(x)),
        "hf-tf-xla": lambda: _to_numpy(xla(x)),
    }


# ------------------------------------------------------------------------------- timing


def time_rows(runs: dict, repeats: int, warmup: int, failed: dict) -> dict[str, Row]:
    """Warm up every row, then time ``repeats`` rounds; each round runs every row once, in an
    order rotated by one per round, PyTorch rows and Keras rows as two blocks (so one framework's
    idle threads spin down before the other's run). Rows whose first call raises go to ``failed``."""
    rows = {k: Row(k, fn) for k, fn in runs.items()}
    for key, row in list(rows.items()):
        start = time.perf_counter()
        try:
            row.output = row.run()
        except Exception as e:  # noqa: BLE001 - e.g. a graph that does not compile: reported
            del rows[key]
            failed[key] = f"{type(e).__name__}: {e}"[:200]
            continue
        row.first_call_s = time.perf_counter() - start
        for _ in range(max(warmup - 1, 0)):
            row.run()
    torch_keys = [k for k in rows if "torch" in k]
    tf_keys = [k for k in rows if k not in torch_keys]
    for r in range(repeats):
        blocks = [torch_keys, tf_keys] if r % 2 == 0 else [tf_keys, torch_keys]
        for block in blocks:
            if not block:
                continue
            shift = r % len(block)
            for key in block[shift:] + block[:shift]:
                start = time.perf_counter()
                rows[key].run()
                rows[key].times.append(time.perf_counter() - start)
    return rows


def summarize(workload: Workload, rows: dict[str, Row], skipped: dict, gflop: float | None = None,
              peak: dict | None = None) -> dict:
    """Per-row statistics, ratios to HF and output errors (JSON-ready)."""
    reference = rows["torch-fp32"].output if "torch-fp32" in rows else None
    scale = float(np.abs(reference).max()) if reference is not None else None
    out = {}
    for key, row in rows.items():
        t = sorted(row.times)
        med = statistics.median(t) if t else float("nan")
        q = np.percentile(t, [25, 75]) if t else [float("nan")] * 2
        entry = {
            "label": ROWS[key][0],
            "median_ms": med * 1e3,
            "min_ms": t[0] * 1e3 if t else float("nan"),
            "max_ms": t[-1] * 1e3 if t else float("nan"),
            "iqr_ms": float(q[1] - q[0]) * 1e3,
            "samples_per_s": workload.batch / med if t else float("nan"),
            "first_call_s": row.first_call_s,
            "times_ms": [x * 1e3 for x in row.times],
        }
        fraction = _peak_fraction(key, med, gflop, peak) if t else None
        if fraction is not None:
            entry["gflops"] = gflop / med
            entry["peak_fraction"] = fraction
        if reference is not None and row.output.shape == reference.shape:
            diff = float(np.abs(row.output.astype(np.float64) - reference).max())
            entry["max_abs_err"] = diff
            entry["rel_err"] = diff / scale if scale else diff
        out[key] = entry
    if "ort-int8" in rows and "ort-fp32" in rows:  # the quantisation's own error and decisions
        low, full = rows["ort-int8"].output, rows["ort-fp32"].output
        out["ort-int8"]["rel_err_vs_fp32"] = float(np.abs(low - full).max() / max(np.abs(full).max(), 1e-30))
        if low.ndim == 2:
            out["ort-int8"]["argmax_agreement"] = float(np.mean(low.argmax(-1) == full.argmax(-1)))
    for key, entry in out.items():
        hf = ROWS[key][1]
        if hf in out:
            entry["vs_hf"] = out[hf]["median_ms"] / entry["median_ms"]
            entry["vs_hf_min"] = out[hf]["min_ms"] / entry["min_ms"]
    keras = [k for k in KERAS_ROWS if k in out]
    summary = {"workload": workload.name, "architecture": workload.architecture, "batch": workload.batch,
               "rows": out, "skipped": skipped}
    if gflop:
        summary["gflop"] = gflop
    if keras:
        best = min(keras, key=lambda k: out[k]["median_ms"])
        summary["keras_best"] = best
        for hf in HF_TF_ROWS:
            if hf in out:
                summary[f"keras_best_vs_{hf.replace('-', '_')}"] = out[hf]["median_ms"] / out[best]["median_ms"]
    return summary


def run_workload(workload: Workload, size: str, keys: list[str], repeats: int, warmup: int, seed: int = 0,
                 threads: int | None = None, peak: dict | None = None) -> dict:
    """Time every row of ``workload`` (the Keras JAX row in its own process); with ``peak`` (from
    ``measure_gemm_peak``) each row also says what fraction of the machine's GEMM peak its FLOPs
    ran at."""
    gflop = workload_gflop(workload, size) if peak else None
    runs, skipped = build_rows(workload, size, [k for k in keys if k != JAX_ROW], seed)
    rows = time_rows(runs, repeats, warmup, skipped)
    if JAX_ROW in keys:
        try:
            rows[JAX_ROW] = _jax_row(workload, size, repeats, warmup, seed, threads)
        except Exception as e:  # noqa: BLE001 - e.g. jax not installed: reported, not fatal
            skipped[JAX_ROW] = f"{type(e).__name__}: {e}"[:200]
    result = summarize(workload, rows, skipped, gflop=gflop, peak=peak)
    del runs, rows
    gc.collect()
    return result


# ------------------------------------------------------------------------ machine peak

PEAK_SIZES = {"base": 2048, "tiny": 256}


def peak_precisions(keys) -> tuple[str, ...]:
    """The GEMM precisions the rows ``keys`` are read against: bfloat16 only when a bf16 row runs
    (a CPU without bf16 instructions multiplies 2048x2048 in bf16 at ~0.1 GFLOP/s, minutes per
    call, for a figure no int8 or fp32 row uses)."""
    return ("fp32", "bf16") if any("bf16" in key for key in keys) else ("fp32",)


def measure_gemm_peak(n: int = 2048, repeats: int = 5, precisions=("fp32", "bf16")) -> dict:
    """The machine's float32 and bfloat16 GEMM rates: ``torch.matmul`` of two n x n matrices,
    the best of ``repeats`` calls after one untimed call (GFLOP/s = 2 n^3 / seconds).

    Returns:
        ``{"n": n, "fp32_gflops": ..., "bf16_gflops": ...}`` (the ``precisions`` asked for).
    """
    import torch

    out = {"n": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in precisions:
            continue
        a = torch.randn(n, n, dtype=torch.float32).to(dtype)
        b = torch.randn(n, n, dtype=torch.float32).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        out[f"{name}_gflops"] = 2 * n**3 / best / 1e9
    return out


def workload_gflop(workload: Workload, size: str) -> float:
    """Model FLOPs of one call of ``workload`` (``crosscheck.flops``: counted from the config), in GFLOP."""
    return model_flops(workload.config(size), workload.architecture, workload.batch, workload.size_for(size)) / 1e9


def _peak_rates(peak: dict) -> str:
    return ", ".join(f"{p} {peak[f'{p}_gflops']:.0f} GFLOP/s" for p in ("fp32", "bf16") if f"{p}_gflops" in peak)


def _peak_fraction(key: str, median_s: float, gflop: float | None, peak: dict | None) -> float | None:
    if not gflop or not peak or not median_s > 0:
        return None
    rate = peak.get("bf16_gflops" if "bf16" in key else "fp32_gflops")
    return gflop / median_s / rate if rate else None


# ------------------------------------------------------------------------- Keras on JAX


def _jax_worker(workload_name: str, size: str, seed: int, repeats: int, warmup: int, out_path: str) -> dict:
    """Runs in a fresh process with KERAS_BACKEND=jax: the workload's Keras model through
    ``make_fast()`` (``jax.jit`` of ``stateless_call``), timed like the other rows; the first
    output goes to ``out_path`` (.npy)."""
    import keras

    from d2v_common.spec import weight_spec

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"the JAX worker runs with KERAS_BACKEND=jax, not {keras.backend.backend()!r}")
    workload = WORKLOADS[workload_name]
    config = workload.config(size)
    arrays = weight_spec(config, workload.architecture).random_arrays(seed)
    inputs = workload.inputs(config, size, seed + 1)
    fast = _keras_model(workload, config, arrays).make_fast()

    def run():
        return _to_numpy(getattr(fast(**inputs), workload.main_output))  # np.asarray waits for the result

    start = time.perf_counter()
    output = run()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    np.save(out_path, output)
    return {"first_call_s": first, "times": times}


def _jax_row(workload: Workload, size: str, repeats: int, warmup: int, seed: int, threads: int | None) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "output.npy")
        cmd = [sys.executable, "-m", "crosscheck.bench", "--jax-worker", workload.name, size, str(seed), out_path,
               "--repeats", str(repeats), "--warmup", str(warmup)]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "KERAS_BACKEND": "jax"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row = Row(JAX_ROW, None, result["first_call_s"], result["times"], np.load(out_path))
    return row


# ------------------------------------------------------------------------ from_pretrained

LOADERS = {
    # name -> (module ("hf": transformers, through the test oracle), class, checkpoint file it
    # reads); d2v classes by architecture (the package's ``model_class``), HF's by class name
    "d2v torch": ("d2v_torch", "Data2VecVisionForImageClassification", "safetensors"),
    "HF torch": ("hf", "Data2VecVisionForImageClassification", "safetensors"),
    "d2v keras": ("d2v_tf", "Data2VecVisionForImageClassification", "safetensors"),
    "d2v keras (h5)": ("d2v_tf", "Data2VecVisionForImageClassification", "tf-h5"),
    "HF TF (h5)": ("hf", "TFData2VecVisionForImageClassification", "tf-h5"),
}
LOAD_COMPARISONS = {"d2v torch": "HF torch", "d2v keras": "HF TF (h5)", "d2v keras (h5)": "HF TF (h5)"}


def _rss_kb() -> tuple[int, int]:
    """(current, peak) resident set size of this process in kB (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _load_worker(loader: str, directory: str, threads: int) -> dict:
    """Runs in a fresh process: import, then time one from_pretrained and its peak memory."""
    module_name, class_name, fmt = LOADERS[loader]
    import tensorflow  # noqa: F401 - every loader pays the same imports before the baseline
    import torch

    torch.set_num_threads(threads)
    if module_name == "hf":  # through the test oracle, which imports transformers
        from crosscheck.runner import oracle

        cls = oracle().hf_class(class_name)
    else:
        cls = importlib.import_module(module_name).model_class(class_name)
    gc.collect()
    try:  # reset the peak to the current size, so the peak is the load's own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    baseline, _ = _rss_kb()
    start = time.perf_counter()
    if module_name.startswith("d2v"):
        model = cls.from_pretrained(directory, checkpoint_format=fmt)
    else:
        model = cls.from_pretrained(directory)
    seconds = time.perf_counter() - start
    _, peak = _rss_kb()
    if isinstance(model, torch.nn.Module):  # memory-mapped weights (HF torch) are only read now
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
    _, peak_used = _rss_kb()
    del model
    return {"seconds": seconds, "baseline_mb": baseline / 1024, "peak_extra_mb": (peak - baseline) / 1024,
            "peak_extra_mb_after_use": (peak_used - baseline) / 1024}


def write_load_checkpoints(root: str, size: str, seed: int = 0) -> dict[str, str]:
    """A base classification checkpoint: model.safetensors + config.json, and HF's
    tf_model.h5 + config.json in a second directory (HF's TF loader prefers safetensors)."""
    from d2v_common.checkpoints import formats as checkpoint
    from d2v_common.spec import weight_spec

    workload = WORKLOADS["vision-cls-b8x224"]
    config = workload.config(size)
    spec = weight_spec(config, workload.architecture)
    arrays = spec.random_arrays(seed)
    dirs = {"safetensors": os.path.join(root, "pt"), "tf-h5": os.path.join(root, "h5")}
    for fmt, d in dirs.items():
        os.makedirs(d, exist_ok=True)
        checkpoint.write_checkpoint(d, arrays, spec, [fmt])
        config.architectures = [("TF" if fmt == "tf-h5" else "") + workload.architecture]
        config.save_pretrained(d)
    return dirs


def measure_loading(size: str, runs: int, threads: int, loaders=None, hf: bool = True) -> dict:
    loaders = [name for name in (loaders or LOADERS) if hf or LOADERS[name][0] != "hf"]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_load_checkpoints(tmp, size)
        sizes = {fmt: os.path.getsize(os.path.join(d, checkpoint_file(fmt))) for fmt, d in dirs.items()}
        for d in dirs.values():  # warm the page cache so no loader pays the first disk read
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as f:
                    while f.read(1 << 24):
                        pass
        samples = {name: [] for name in loaders}
        errors = {}
        for _ in range(runs):
            for name in loaders:  # interleaved, like the speed rows
                if name in errors:
                    continue
                fmt = LOADERS[name][2]
                proc = subprocess.run(
                    [sys.executable, "-m", "crosscheck.bench", "--load-worker", name, dirs[fmt], "--threads", str(threads)],
                    capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    errors[name] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
                    continue
                samples[name].append(json.loads(lines[-1]))
        for name in loaders:
            fmt = LOADERS[name][2]
            if name in errors:
                results[name] = {"error": errors[name]}
                continue
            secs = [s["seconds"] for s in samples[name]]
            peaks = [s["peak_extra_mb"] for s in samples[name]]
            used = [s["peak_extra_mb_after_use"] for s in samples[name]]
            results[name] = {
                "format": fmt,
                "checkpoint_mb": sizes[fmt] / 2**20,
                "seconds": statistics.median(secs),
                "seconds_min": min(secs),
                "seconds_max": max(secs),
                "peak_extra_mb": statistics.median(peaks),
                "rss_x_checkpoint": statistics.median(peaks) / (sizes[fmt] / 2**20),
                "peak_extra_mb_after_use": statistics.median(used),
            }
    for name, hf_name in LOAD_COMPARISONS.items():
        if name in results and "seconds" in results.get(hf_name, {}) and "seconds" in results[name]:
            results[name]["vs_hf"] = results[hf_name]["seconds"] / results[name]["seconds"]
    compare_loaders(results, weight_bytes(size))
    return results


def weight_bytes(size: str) -> int:
    """Bytes of the load checkpoint's tensors (what a loaded model holds)."""
    from d2v_common.spec import weight_spec

    workload = WORKLOADS["vision-cls-b8x224"]
    spec = weight_spec(workload.config(size), workload.architecture)
    return sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in spec.stored())


# Keras loaders timed against d2v torch loading the same folder in the same run
KERAS_LOAD_COMPARISONS = {"d2v keras": "d2v torch", "d2v keras (h5)": "d2v torch"}


def compare_loaders(results: dict, weights: int) -> None:
    """Adds each loader's peak memory over its weights' bytes (``rss_x_weights``) and, for the
    Keras loaders, their time over d2v torch's (``vs_d2v_torch``, medians; ``_min``: fastest runs)."""
    for e in results.values():
        if "peak_extra_mb" in e:
            e["weights_mb"] = weights / 2**20
            e["rss_x_weights"] = e["peak_extra_mb"] / e["weights_mb"]
    for name, ref in KERAS_LOAD_COMPARISONS.items():
        if "seconds" in results.get(name, {}) and "seconds" in results.get(ref, {}):
            results[name]["vs_d2v_torch"] = results[name]["seconds"] / results[ref]["seconds"]
            results[name]["vs_d2v_torch_min"] = results[name]["seconds_min"] / results[ref]["seconds_min"]


def load_targets(loading: dict) -> list[tuple[str, float | None, float]]:
    """(target, measured, limit) of the load rows, all lower-is-better."""
    return [
        ("d2v keras from_pretrained time / d2v torch's (same folder, same run)",
         loading.get("d2v keras", {}).get("vs_d2v_torch"), TARGETS["keras_load_vs_torch"]),
        ("d2v keras from_pretrained (h5) peak RSS / weight bytes",
         loading.get("d2v keras (h5)", {}).get("rss_x_weights"), TARGETS["h5_load_rss_x_weights"]),
    ]


def checkpoint_file(fmt: str) -> str:
    from d2v_common.checkpoints.formats import checkpoint_format

    return checkpoint_format(fmt).file_name


# -------------------------------------------------------------------------------- reports


def targets(results: list[dict], loading: dict, int8_example: dict | None = None) -> list[dict]:
    """The issue's targets against what was measured (None where the rows were not run)."""

    def worst(row: str, metric: str):
        vals = [(r["rows"][row][metric], r["workload"]) for r in results if metric in r["rows"].get(row, {})]
        return min(vals) if vals else None

    out = []

    def add(name, value, limit, higher_is_better=True, where=""):
        if value is None:
            out.append({"target": name, "limit": limit, "measured": None, "met": None, "where": where})
            return
        met = value >= limit if higher_is_better else value <= limit
        out.append({"target": name, "limit": limit, "measured": value, "met": met, "where": where})

    w = worst("torch-fp32", "vs_hf")
    add("d2v torch fp32 vs HF torch fp32 (slowest workload)", w and w[0], TARGETS["torch_fp32_vs_hf"], where=w and w[1])
    w = worst("torch-bf16", "vs_hf")
    add("d2v torch bf16 vs HF torch bf16 (slowest workload)", w and w[0], TARGETS["torch_bf16_vs_hf"], where=w and w[1])
    errs = [(r["rows"]["torch-bf16"]["rel_err"], r["workload"]) for r in results if "rel_err" in r["rows"].get("torch-bf16", {})]
    e = max(errs) if errs else None
    add("d2v torch bf16 error vs fp32 (largest)", e and e[0], TARGETS["bf16_err"], higher_is_better=False, where=e and e[1])
    vision = [r for r in results if r["workload"] == "vision-cls-b8x224"]
    v = vision[0] if vision else {}
    add("fastest d2v keras vs HF TF xla (vision-cls-b8x224)", v.get("keras_best_vs_hf_tf_xla"),
        TARGETS["keras_best_vs_hf_tf_xla"], where=v.get("keras_best", ""))
    add("fastest d2v keras vs HF TF eager (vision-cls-b8x224)", v.get("keras_best_vs_hf_tf_eager"),
        TARGETS["keras_best_vs_hf_tf_eager"], where=v.get("keras_best", ""))
    for name in ("text-cls-b8x128", "vision-cls-b8x224"):
        row = next((r["rows"].get("ort-int8", {}) for r in results if r["workload"] == name), {})
        add(f"onnxruntime int8 vs HF torch fp32 ({name})", row.get("vs_hf"), TARGETS["ort_int8_vs_hf_fp32"])
        add(f"onnxruntime int8 logits error vs fp32, rel. to max ({name})", row.get("rel_err_vs_fp32"),
            TARGETS["ort_int8_err"], higher_is_better=False)
    add("onnxruntime int8 same argmax as fp32 (trained example, held-out rows)",
        (int8_example or {}).get("argmax_agreement"), TARGETS["ort_int8_argmax"])
    k = loading.get("d2v keras", {})
    add("d2v keras from_pretrained seconds", k.get("seconds"), TARGETS["tf_load_seconds"], higher_is_better=False)
    add("d2v keras from_pretrained peak RSS / checkpoint", k.get("rss_x_checkpoint"), TARGETS["tf_load_rss_x"],
        higher_is_better=False)
    for name, measured, limit in load_targets(loading):
        add(name, measured, limit, higher_is_better=False)
    return out


def _table(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*c) for c in lines])


def format_report(report: dict) -> str:
    parts = [f"threads={report['threads']}  repeats={report['repeats']}  warmup={report['warmup']}  size={report['size']}"]
    peak = report.get("gemm_peak")
    if peak:
        parts.append(f"GEMM peak of this machine (torch.matmul, {peak['n']}x{peak['n']}): "
                     f"{_peak_rates(peak)}; "
                     "'of peak' = the row's model FLOPs per second over the peak of its precision")
    lines = []
    for r in report["workloads"]:
        for key, e in r["rows"].items():
            lines.append([
                r["workload"], e["label"], f"{e['median_ms']:.0f}", f"{e['min_ms']:.0f}-{e['max_ms']:.0f}",
                f"{e['samples_per_s']:.2f}", f"{e['vs_hf']:.2f}x" if "vs_hf" in e else "-",
                f"{e['vs_hf_min']:.2f}x" if "vs_hf_min" in e else "-",
                f"{e['rel_err']:.1e}" if "rel_err" in e else "-",
                f"{e['peak_fraction']:.0%}" if "peak_fraction" in e else "-", f"{e['first_call_s']:.1f}",
            ])
        for key, why in r["skipped"].items():
            label = ROWS[key][0] if key in ROWS else bench_pretraining.FRAMEWORKS[key].label
            lines.append([r["workload"], label, "-", "-", "-", "-", "-", "-", "-", f"skipped: {why}"])
    if lines:
        parts.append(_table(["workload", "row", "median ms", "min-max ms", "samples/s", "vs ref", "vs ref (min)",
                             "err", "of peak", "first call s"], lines))
    for r in report["workloads"]:
        e = r["rows"].get("ort-int8", {})
        if "rel_err_vs_fp32" in e:
            agree = f", same argmax as fp32 on {e['argmax_agreement']:.1%} of rows" if "argmax_agreement" in e else ""
            parts.append(f"{r['workload']}: onnxruntime int8 vs fp32 max abs error {e['rel_err_vs_fp32']:.2%} of "
                         f"max |logits|{agree} (random weights and inputs)")
    if report.get("loading"):
        lines = []
        for name, e in report["loading"].items():
            if "error" in e:
                lines.append([name, "-", "-", "-", "-", "-", "-", f"failed: {e['error']}"])
                continue
            lines.append([name, e["format"], f"{e['seconds']:.2f}", f"{e['seconds_min']:.2f}-{e['seconds_max']:.2f}",
                          f"{e['peak_extra_mb']:.0f}", f"{e['rss_x_checkpoint']:.2f}x",
                          f"{e['peak_extra_mb_after_use']:.0f}", f"{e['vs_hf']:.2f}x" if "vs_hf" in e else "-"])
        mb = next((e["checkpoint_mb"] for e in report["loading"].values() if "checkpoint_mb" in e), 0)
        parts.append(f"from_pretrained, base vision classification checkpoint ({mb:.0f} MB), fresh process each:")
        parts.append(_table(["loader", "reads", "seconds", "min-max s", "peak MB over imports", "x checkpoint",
                             "MB once weights used", "vs HF"], lines))
        parts.append(load_comparison_text(report["loading"]))
    e = report.get("int8_example")
    if e:
        parts.append(f"trained example (examples/finetune_torch_text.py, {e['rows']} held-out rows): onnxruntime int8 "
                     f"keeps the fp32 argmax on {e['argmax_agreement']:.1%}, logits error {e['rel_err_vs_fp32']:.2%} "
                     f"of max; accuracy fp32 {e['accuracy_fp32']:.3f}, int8 {e['accuracy_int8']:.3f}")
    lines = []
    for t in report["targets"]:
        measured = "-" if t["measured"] is None else f"{t['measured']:.3g}"
        status = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append([t["target"], f"{t['limit']:g}", measured, status, t["where"] or ""])
    parts.append(_table(["target", "limit", "measured", "status", "where"], lines))
    return "\n\n".join(parts)


def load_comparison_text(loading: dict) -> str:
    """The load rows of the targets: Keras over torch time, and peak memory over weight bytes."""
    out = []
    for name, e in loading.items():
        if "rss_x_weights" in e:
            torch_ratio = (f", time {e['vs_d2v_torch']:.2f}x d2v torch's (fastest runs {e['vs_d2v_torch_min']:.2f}x)"
                           if "vs_d2v_torch" in e else "")
            out.append(f"  {name}: peak {e['rss_x_weights']:.2f}x the weights ({e['weights_mb']:.0f} MB){torch_ratio}")
    return "\n".join(["from_pretrained against the weights and d2v torch:"] + out)


def plot(report: dict, path: str) -> None:
    """Bar chart of d2v's speed over HF's (median) per workload, plus the loaders."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'd2v[bench]'") from e
    keys = ["torch-fp32", "torch-bf16", *KERAS_ROWS]
    names = [r["workload"] for r in report["workloads"]]
    loading = {k: v for k, v in report.get("loading", {}).items() if "vs_hf" in v}
    fig, axes = plt.subplots(1, 2 if loading else 1, figsize=(10 if loading else 7, 4.2),
                             gridspec_kw={"width_ratios": [3, 1]} if loading else None, squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        vals = [r["rows"].get(key, {}).get("vs_hf", np.nan) for r in report["workloads"]]
        pos = np.arange(len(names)) + (i - (len(keys) - 1) / 2) * width
        bars = ax.bar(pos, vals, width, label=ROWS[key][0].replace("d2v ", "") + " vs " + ROWS[ROWS[key][1]][0])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=7)
    ax.set_ylabel("speed-up over HF (median)")
    ax.set_title(f"d2v vs transformers, CPU, {report['threads']} threads", fontsize=9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    if loading:
        ax = axes[0][1]
        ax.bar(range(len(loading)), [v["vs_hf"] for v in loading.values()], color="tab:gray")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(loading)), list(loading), fontsize=6, rotation=20)
        ax.set_title("from_pretrained speed-up", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------ CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosscheck.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", help=f"comma-separated, from {', '.join([*WORKLOADS, *bench_pretraining.WORKLOADS])}"
                        " (default: all)")
    parser.add_argument("--rows", help=f"comma-separated, from {', '.join([*ROWS, *bench_pretraining.FRAMEWORKS])} "
                        "(default: all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_WORKLOADS)} only, 3 repeats, one load run per loader")
    parser.add_argument("--repeats", type=positive_int, help="timed calls per row (default 5, --quick 3)")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed calls per row first (default 1)")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, help="threads for both frameworks")
    parser.add_argument("--size", choices=["base", "tiny"], default="base", help="model size (tiny: smoke runs)")
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers' rows")
    parser.add_argument("--no-load", action="store_true", help="skip the from_pretrained measurements")
    parser.add_argument("--load-runs", type=positive_int, help="fresh processes per loader (default 3, --quick 1)")
    parser.add_argument("--load-only", action="store_true",
                        help="measure the GEMM peak and the from_pretrained rows only (no inference workloads)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="weight and input seed (default 0)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': print JSON only)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the speed-ups (needs matplotlib)")
    parser.add_argument("--peak-only", action="store_true", help="measure the machine's GEMM peak and stop")
    parser.add_argument("--memory", action="store_true",
                        help="peak training memory with and without gradient checkpointing (crosscheck.bench_memory)")
    bench_memory.add_arguments(parser)
    parser.add_argument("--int8-example", action="store_true",
                        help="also train examples/finetune_torch_text.py's model and compare its onnxruntime int8 "
                        "and fp32 logits on the held-out set (argmax agreement)")
    parser.add_argument("--load-worker", nargs=2, metavar=("LOADER", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--jax-worker", nargs=4, metavar=("WORKLOAD", "SIZE", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.jax_worker:
        import warnings

        warnings.filterwarnings("ignore")
        name, size, seed, out_path = args.jax_worker
        if hasattr(os, "sched_setaffinity") and args.threads < (os.cpu_count() or 1):
            # XLA sizes its CPU thread pool from the cores this process may use
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        print(json.dumps(_jax_worker(name, size, int(seed), args.repeats or 5, args.warmup, out_path)))
        return 0

    if args.memory:
        return bench_memory.run(args.size, args.memory_steps, args.threads, args.memory_families, args.json,
                                args.memory_batch, args.memory_malloc_mmap_threshold)
    if args.load_worker:
        print(json.dumps(_load_worker(*args.load_worker, threads=args.threads)))
        return 0
    # data2vec 2.0 pretraining steps (crosscheck.bench_pretraining): their own workloads and rows
    pretraining, train_rows = bench_pretraining.WORKLOADS, bench_pretraining.FRAMEWORKS
    names = args.workloads.split(",") if args.workloads else (
        QUICK_WORKLOADS if args.quick else list(WORKLOADS) + list(pretraining))
    if args.load_only:
        if args.no_load:
            parser.error("--load-only and --no-load exclude each other")
        names = []
    keys = args.rows.split(",") if args.rows else list(ROWS) + list(train_rows)
    for bad in [n for n in names if n not in WORKLOADS and n not in pretraining] + [
            k for k in keys if k not in ROWS and k not in train_rows]:
        parser.error(f"unknown workload or row {bad!r}")
    if args.no_hf:
        keys = [k for k in keys if not k.startswith("hf-")]
    repeats = args.repeats or (3 if args.quick else 5)
    quiet = args.json == "-"

    import warnings

    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    import d2v_tf  # noqa: F401 - Keras 3 before transformers' TF classes switch tf.keras to Keras 2
    import d2v_torch  # noqa: F401

    # The machine's GEMM peak first: every row is also read as a fraction of it, so figures from
    # machines with different peaks can be compared.
    peak = measure_gemm_peak(PEAK_SIZES[args.size],
                             precisions=("fp32", "bf16") if args.peak_only else peak_precisions(keys))
    if args.peak_only:
        print(json.dumps(peak) if quiet else
              f"GEMM peak (torch.matmul, {peak['n']}x{peak['n']}, {args.threads} threads): "
              f"{_peak_rates(peak)}")
        return 0
    report = {"threads": args.threads, "repeats": repeats, "warmup": args.warmup, "size": args.size,
              "gemm_peak": peak, "workloads": [], "loading": {}}
    for name in names:
        if not quiet:
            print(f"  {name} ...", file=sys.stderr, flush=True)
        if name in pretraining:
            report["workloads"].append(bench_pretraining.run_workload(name, args.size, keys, repeats, args.warmup,
                                                                      args.seed, args.threads))
            continue
        report["workloads"].append(
            run_workload(WORKLOADS[name], args.size, keys, repeats, args.warmup, args.seed, args.threads, peak=peak)
        )
    if not args.no_load:
        if not quiet:
            print("  from_pretrained ...", file=sys.stderr, flush=True)
        runs = args.load_runs or (1 if args.quick else 3)
        report["loading"] = measure_loading(args.size, runs, args.threads, hf=not args.no_hf)
    if args.int8_example:
        if not quiet:
            print("  int8 on the trained example ...", file=sys.stderr, flush=True)
        report["int8_example"] = int8_on_trained_example(quick=args.quick, seed=args.seed)
    report["targets"] = targets(report["workloads"], report["loading"], report.get("int8_example"))
    if args.json:
        text = json.dumps(report, indent=2)
        if quiet:
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    if not quiet:
        print(format_report(report))
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
