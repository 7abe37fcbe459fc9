"""data2vec 2.0 pretraining in Keras against upstream fairseq's training step.

The fixtures are tests/fixtures/data2vec2-pretraining (see test_data2vec2_pretraining.py, the
PyTorch twin): every case directory there is checked. The tests are written for any Keras
backend: the TensorFlow process runs this file, and test_keras_backends.py runs them again
under JAX and PyTorch.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import d2v_tf
from d2v_common.checkpoints.fairseq import FairseqCheckpointError, read_fairseq_checkpoint
from d2v_common.pretrain import data2vec2 as P
from tests.fixture_paths import DATA2VEC2_DIR, DATA2VEC2_PRETRAINING_DIR

BACKEND = keras.backend.backend()
# every case directory (more may be added beside these): a fairseq checkpoint, inputs, outputs
CASES = sorted(d for d in os.listdir(DATA2VEC2_PRETRAINING_DIR)
               if os.path.isfile(os.path.join(DATA2VEC2_PRETRAINING_DIR, d, "checkpoint.pt")))
CLASSES = {"vision": d2v_tf.TFData2Vec2VisionForPreTraining, "audio": d2v_tf.TFData2Vec2AudioForPreTraining,
           "text": d2v_tf.TFData2Vec2TextForPreTraining}
MODELS = {"vision": d2v_tf.TFData2Vec2VisionModel, "audio": d2v_tf.TFData2Vec2AudioModel,
          "text": d2v_tf.TFData2Vec2TextModel}


def _case(name):
    folder = os.path.join(DATA2VEC2_PRETRAINING_DIR, name)
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    outputs = dict(np.load(os.path.join(folder, "outputs.npz")))
    source = inputs["source"]
    modality = "vision" if source.ndim == 4 else "text" if source.dtype.kind in "iu" else "audio"
    return modality, os.path.join(folder, "checkpoint.pt"), inputs, outputs


def _model_inputs(inputs) -> dict:
    """The call's inputs by name: the source, then (audio, text) the keep-mask."""
    source = inputs["source"]
    name = "pixel_values" if source.ndim == 4 else "input_ids" if source.dtype.kind in "iu" else "input_values"
    out = {name: source}
    if "padding_mask" in inputs:
        out["attention_mask"] = (~inputs["padding_mask"]).astype(np.int32)
    return out


def _gradients(model, inputs: dict, compiled: bool):
    """(loss, output, {id(variable): gradient}) of one training-mode call, by the backend's own
    mechanism; ``compiled``: inside the backend's traced step (tf.function / jax.jit, the mask an
    argument, so traced), else eager."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(batch):
            with tf.GradientTape() as tape:
                out = model(batch, training=True)
            plain = {"loss": out.loss, "losses": dict(out.losses), "sample_size": out.sample_size, "target": out.target}
            return plain, tape.gradient(out.loss, variables)

        out, grads = (tf.function(run) if compiled else run)({k: tf.constant(v) for k, v in inputs.items()})
        out = P.Data2Vec2PreTrainingOutput(**out)
    elif BACKEND == "jax":
        import jax

        def loss_fn(trainable, non_trainable, batch):
            out, _ = model.stateless_call(trainable, non_trainable, batch, training=True)
            return out.loss, out

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        args = ([v.value for v in variables], [v.value for v in model.non_trainable_variables])
        if compiled:
            (_, out), grads = jax.jit(grad_fn)(*args, inputs)
        else:
            (_, out), grads = grad_fn(*args, inputs)
    else:
        model.zero_grad()
        out = model(inputs, training=True)
        out.loss.backward()
        grads = [v.value.grad for v in variables]
    values = {id(v): (np.zeros(v.shape, np.float32) if g is None else np.asarray(ops.convert_to_numpy(g)))
              for v, g in zip(variables, grads)}
    return float(ops.convert_to_numpy(out.loss)), out, values


# ------------------------------------------------------------------------- the step


@pytest.mark.parametrize("name", CASES)
def test_step_and_gradients_equal_fairseq(name):
    """Eager (masked positions removed) and compiled (kept, hidden from attention): the loss
    within 1e-5 of fairseq's ``total``, each loss sum and the targets too, and every upstream
    gradient equal to ours within 1e-4 of its largest value; nothing else gets a gradient."""
    modality, ckpt, inputs, outputs = _case(name)
    model = CLASSES[modality].from_pretrained(ckpt, seed=0)
    names = {key: canonical for canonical, key in model.fairseq_names().items()}
    want_grads = {k[len("grad/"):]: v for k, v in outputs.items() if k.startswith("grad/")}
    total = float(outputs["total"])
    batch = {**_model_inputs(inputs), "precomputed_mask": inputs["mask"]}
    for compiled in (False, True) if BACKEND != "torch" else (False,):
        loss, out, grads = _gradients(model, batch, compiled)
        assert abs(loss - total) <= 1e-5 * abs(total), (compiled, loss, total)
        assert int(ops.convert_to_numpy(out.sample_size)) == int(outputs["sample_size"])
        for key, value in out.losses.items():
            want = float(outputs[f"loss/{key}"])
            assert abs(float(ops.convert_to_numpy(value)) - want) <= 1e-5 * abs(want), key
        assert set(out.losses) == {k[len("loss/"):] for k in outputs if k.startswith("loss/")}
        target = np.asarray(ops.convert_to_numpy(out.target))
        np.testing.assert_allclose(target, outputs["targets"], rtol=0, atol=1e-5 * np.abs(outputs["targets"]).max())
        mine = model.canonical_arrays(lambda v: grads.get(id(v), np.zeros(v.shape, np.float32)))
        for fairseq_name, want in want_grads.items():
            got = mine[names[fairseq_name]].reshape(want.shape)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(),
                                       err_msg=f"{fairseq_name} (compiled={compiled})")
        moved = {k for k, v in mine.items() if not k.startswith("teacher.") and np.abs(v).max() > 0}
        assert moved <= {names[n] for n in want_grads}, sorted(moved - {names[n] for n in want_grads})


# ---------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", CASES)
def test_checkpoints_keep_decoder_and_teacher(name, tmp_path):
    """fairseq .pt -> Keras: every tensor (student, decoder, _ema teacher) as in the file;
    save_pretrained -> from_pretrained (Keras and PyTorch) bit-exact, update count kept;
    d2v folder -> fairseq .pt bit-exact; save_student loads in the model classes with equal outputs."""
    import torch

    import d2v_torch

    modality, ckpt, inputs, outputs = _case(name)
    cls = CLASSES[modality]
    model = cls.from_pretrained(ckpt)
    source = P.read_fairseq_pretraining(ckpt)
    arrays = model.pretraining_arrays()
    assert set(arrays) == set(source.arrays)
    assert all(np.array_equal(arrays[k], source.arrays[k]) for k in arrays)
    assert any(k.startswith("decoder.") for k in arrays) and any(k.startswith("teacher.") for k in arrays)

    model.ema_update(7)
    model.save_pretrained(tmp_path / "d2v")
    again = cls.from_pretrained(tmp_path / "d2v")
    in_torch = getattr(d2v_torch, cls.architecture).from_pretrained(tmp_path / "d2v")
    a = model.pretraining_arrays()
    for other in (again.pretraining_arrays(), in_torch.pretraining_arrays()):
        assert set(other) == set(a)
        assert all(a[k].dtype == other[k].dtype and np.array_equal(a[k], other[k]) for k in a)
    assert int(ops.convert_to_numpy(again.num_updates)) == 7 == in_torch.num_updates
    assert again.pretraining_config == model.pretraining_config

    # the folder written from the fairseq file goes back to fairseq unchanged
    cls.from_pretrained(ckpt).save_pretrained(tmp_path / "fresh")
    written = cls.from_pretrained(tmp_path / "fresh").save_fairseq(tmp_path / "out.pt")
    src, out = read_fairseq_checkpoint(ckpt), read_fairseq_checkpoint(written)
    assert set(out["model"]) == set(src["model"]) and set(out["model"]["_ema"]) == set(src["model"]["_ema"])
    for key, tensor in src["model"].items():
        pairs = tensor.items() if key == "_ema" else [(key, tensor)]
        for k, t in pairs:
            got = out["model"]["_ema"][k] if key == "_ema" else out["model"][k]
            assert got.dtype == t.dtype and torch.equal(got, t), k
    assert out["cfg"]["model"] == src["cfg"]["model"]

    # the student alone: a Data2Vec2*Model checkpoint, in both frameworks
    model.save_student(tmp_path / "student")
    args = _model_inputs(inputs)
    want = np.asarray(ops.convert_to_numpy(model.student(**args).last_hidden_state))
    keras_model = MODELS[modality].from_pretrained(tmp_path / "student")
    np.testing.assert_array_equal(np.asarray(ops.convert_to_numpy(keras_model(**args).last_hidden_state)), want)
    torch_model = getattr(d2v_torch, MODELS[modality].architecture).from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        got = torch_model(*[torch.from_numpy(v) for v in args.values()]).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_fine_tuned_checkpoint_and_other_modality_are_refused(tmp_path):
    with pytest.raises(FairseqCheckpointError, match="no decoder and no EMA teacher"):
        d2v_tf.TFData2Vec2VisionForPreTraining.from_pretrained(os.path.join(DATA2VEC2_DIR, "image-cls", "checkpoint.pt"))
    _, ckpt, _, _ = _case("pretrain-text")
    with pytest.raises(TypeError, match="not a Data2Vec2AudioConfig one"):
        d2v_tf.TFData2Vec2AudioForPreTraining.from_pretrained(ckpt)
    d2v_tf.TFData2Vec2TextForPreTraining.from_pretrained(ckpt).save_student(tmp_path)
    with pytest.raises(OSError, match="not a saved data2vec 2.0 pretraining model"):
        d2v_tf.TFData2Vec2TextForPreTraining.from_pretrained(tmp_path)


# -------------------------------------------------------------------------- bad input


def test_bad_masks_are_refused_with_torchs_errors():
    _, ckpt, inputs, _ = _case("pretrain-audio")
    model = d2v_tf.TFData2Vec2AudioForPreTraining.from_pretrained(ckpt)
    args, mask = _model_inputs(inputs), inputs["mask"]
    with pytest.raises(ValueError, match=r"batch x clone_batch = 2 x 2 = 4 rows"):
        model(**args, precomputed_mask=mask[:2])
    with pytest.raises(ValueError, match="clone_batch=2 does not divide"):
        model(**args, precomputed_mask=mask[:3])
    with pytest.raises(TypeError, match="must be a bool tensor"):
        model(**args, precomputed_mask=mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(batch \* clone_batch, 79\)"):
        model(**args, precomputed_mask=mask[:, :-1])
    unequal = mask.copy()
    unequal[0, np.flatnonzero(~unequal[0])[0]] = True
    with pytest.raises(ValueError, match="same number of positions"):
        model(**args, precomputed_mask=unequal)
    with pytest.raises(ValueError, match="num_extra_tokens"):
        d2v_tf.TFData2Vec2AudioForPreTraining(model.config, {"cls_loss": 0.01})


def test_masks_are_drawn_when_none_is_given():
    """Same seed, same mask and loss; another seed, another mask; upstream's counts."""
    _, ckpt, inputs, _ = _case("pretrain-image")
    a, b, other = (d2v_tf.TFData2Vec2VisionForPreTraining.from_pretrained(ckpt, seed=s) for s in (5, 5, 6))
    args = _model_inputs(inputs)
    out_a, out_b, out_o = a(**args), b(**args), other(**args)
    mask_a = np.asarray(ops.convert_to_numpy(out_a.mask))
    assert np.array_equal(mask_a, np.asarray(ops.convert_to_numpy(out_b.mask)))
    assert float(ops.convert_to_numpy(out_a.loss)) == float(ops.convert_to_numpy(out_b.loss))
    assert not np.array_equal(mask_a, np.asarray(ops.convert_to_numpy(out_o.mask)))
    assert mask_a.shape == inputs["mask"].shape and (mask_a.sum(1) == inputs["mask"].sum(1)[0]).all()


# ------------------------------------------------------------------- training (fit)


def _fit_batch(name, clone_batch=2):
    """fit splits every input along its first axis: the mask as (batch, clone_batch, T)."""
    _, _, inputs, _ = _case(name)
    mask = inputs["mask"]
    return {**_model_inputs(inputs), "precomputed_mask": mask.reshape(-1, clone_batch, mask.shape[1])}


@pytest.mark.parametrize("name", ["pretrain-text"])  # audio's fit runs in test_two_devices_equal_one
def test_fit_lowers_the_loss_and_the_teacher_follows_the_ema_formula(name):
    """compile + fit: each step applies the optimizer, then the EMA (tau annealed from
    ema_decay to ema_end_decay over ema_anneal_end_step) inside the compiled step; the loss falls."""
    modality, ckpt, _, _ = _case(name)
    model = CLASSES[modality].from_pretrained(ckpt, seed=0)
    pcfg = model.pretraining_config
    batch = _fit_batch(name, pcfg.clone_batch)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    prefix = model.base_model_prefix + "."
    arrays = model.pretraining_arrays()
    teacher = {k: arrays["teacher." + k].astype(np.float64) for k in model.teacher_names}
    trainable = {id(v) for v in model.student.trainable_variables}
    frozen = {n for n, v in model._named_student_variables().items() if id(v) not in trainable}
    losses = []
    for step in range(1, 5):
        losses.append(model.fit(batch, batch_size=len(batch["precomputed_mask"]), epochs=1, shuffle=False,
                                verbose=0).history["loss"][0])
        student = model.pretraining_arrays()
        tau = pcfg.tau(step)
        for k in teacher:
            s = student[prefix + k].astype(np.float64)
            teacher[k] = s if k in frozen else tau * teacher[k] + (1 - tau) * s
    after = model.pretraining_arrays()
    assert int(ops.convert_to_numpy(model.num_updates)) == 4
    for k, want in teacher.items():
        np.testing.assert_allclose(after["teacher." + k], want, rtol=1e-6, atol=1e-7, err_msg=k)
    assert all(np.array_equal(after[k], arrays[k]) for k in arrays if k.startswith("teacher.")
               and k[len("teacher."):] not in teacher)
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_fit_draws_masks_inside_the_compiled_step():
    _, ckpt, inputs, _ = _case("pretrain-image")
    model = d2v_tf.TFData2Vec2VisionForPreTraining.from_pretrained(ckpt, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(inputs["source"], batch_size=2, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all() and int(ops.convert_to_numpy(model.num_updates)) == 2


def test_mixed_bfloat16_step_is_close_to_float32():
    """Under keras' mixed_bfloat16 policy a step (the call, then a fit step) gives a finite
    loss close to float32's (targets and losses are computed in float32)."""
    _, ckpt, inputs, outputs = _case("pretrain-image")
    batch = {**_model_inputs(inputs), "precomputed_mask": inputs["mask"]}
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = d2v_tf.TFData2Vec2VisionForPreTraining.from_pretrained(ckpt, seed=0)
        assert model.decoder.layers[0].conv.compute_dtype == "bfloat16"
        loss = float(ops.convert_to_numpy(model(batch, training=True).loss))
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        fitted = model.fit(_fit_batch("pretrain-image"), batch_size=2, epochs=1, verbose=0).history["loss"][0]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    total = float(outputs["total"])
    assert np.isfinite(loss) and abs(loss - total) <= 0.05 * total, (loss, total)
    assert np.isfinite(fitted) and abs(fitted - total) <= 0.05 * total, (fitted, total)


# ------------------------------------------------------------------------ distributed

_DISTRIBUTED = """
import json, os, sys, warnings
mode = sys.argv[1]
if mode == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax" if mode == "jax" else "tensorflow"
warnings.simplefilter("ignore")
import numpy as np, keras
if mode == "tf":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import d2v_tf
from tests.test_keras_data2vec2_pretraining import _case, _fit_batch

_, ckpt, _, _ = _case("pretrain-audio")
batch = _fit_batch("pretrain-audio")
data = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # two steps of two samples


def train(distributed):
    if mode == "tf":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if distributed else tf.distribute.get_strategy()
        with strategy.scope():
            model = d2v_tf.TFData2Vec2AudioForPreTraining.from_pretrained(ckpt, seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.05))
        replicas = strategy.num_replicas_in_sync
    else:
        import jax
        keras.distribution.set_distribution(keras.distribution.DataParallel() if distributed else None)
        model = d2v_tf.TFData2Vec2AudioForPreTraining.from_pretrained(ckpt, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        replicas = len(jax.devices()) if distributed else 1
    global start
    start = model.pretraining_arrays()
    loss = model.fit(data, batch_size=2, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    return loss, model.pretraining_arrays(), int(keras.ops.convert_to_numpy(model.num_updates)), replicas


(l1, a1, n1, r1), (l2, a2, n2, r2) = train(False), train(True)
print("RESULT " + json.dumps({
    "replicas": [r1, r2], "updates": [n1, n2], "loss": [l1, l2],
    "max_diff": max(float(np.abs(a1[k] - a2[k]).max()) for k in a1),
    "moved": max(float(np.abs(a2[k] - start[k]).max()) for k in a2 if not k.startswith("teacher.")),
    "teacher_moved": max(float(np.abs(a2[k] - start[k]).max()) for k in a2 if k.startswith("teacher.")),
}))
"""


@pytest.mark.parametrize("mode", ["tf", "jax"])
def test_two_devices_equal_one(mode, tmp_path):
    """Two steps on two devices (TensorFlow MirroredStrategy on two logical CPUs; JAX
    keras.distribution.DataParallel on two CPU devices) equal one device's two steps: the loss
    is normalised by the global number of masked positions and the EMA runs in the step."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "run.py").write_text(_DISTRIBUTED)
    env = {**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, str(tmp_path / "run.py"), mode], capture_output=True, text=True,
                         timeout=600, env=env, cwd=repo)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["replicas"] == [1, 2] and result["updates"] == [2, 2], result
    assert abs(result["loss"][0] - result["loss"][1]) <= 1e-5 * abs(result["loss"][0]), result
    assert result["max_diff"] <= 1e-5 and result["moved"] > 1e-4 and result["teacher_moved"] > 0, result
