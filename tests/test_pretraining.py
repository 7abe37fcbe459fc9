"""data2vec pretraining: the recipe, PyTorch/Keras step parity, student checkpoints, monitoring,
distributed equivalence (torchrun + DDP, tf.distribute) and the digits example."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import d2v_tf
import d2v_torch
import keras
from crosscheck.training import deterministic_config
from d2v_common.pretrain import data2vec1 as P
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import ARCHITECTURES
from d2v_tf import pretraining as KP
from d2v_torch import pretraining as TP
from crosscheck.cases import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5

VISION = dict(tiny.VISION, num_hidden_layers=2, use_mask_token=True, out_indices=[1, 2, 2, 3])
TEXT = dict(tiny.TEXT, max_position_embeddings=64)
AUDIO = dict(tiny.AUDIO, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4)
# tau 0.5 -> 0.9 over 10 updates: the teacher moves visibly in one step
EMA = dict(ema_decay=0.5, ema_end_decay=0.9, ema_anneal_end_step=10)


def _config(modality: str):
    if modality == "vision":
        return deterministic_config(Data2VecVisionConfig(**VISION))
    if modality == "text":
        return deterministic_config(Data2VecTextConfig(**TEXT))
    # the learned mask embedding exists only with mask_time_prob > 0; masks are always given
    return deterministic_config(Data2VecAudioConfig(**AUDIO)).copy(mask_time_prob=0.05)


def _recipe(modality: str, **extra):
    extra = {**EMA, **({"mask_length": 3} if modality == "audio" else {}), **extra}
    return P.PretrainingConfig.for_modality(modality, **extra)


def _batch(modality: str, recipe, config, rng, batch: int = 2) -> dict:
    """Inputs with explicit masks (numpy), some rows padded."""
    if modality == "vision":
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32),
                "bool_masked_pos": P.block_mask(recipe, batch, (4, 4), rng)}
    if modality == "text":
        ids = rng.integers(3, 98, (batch, 12))
        ids[:, 0], ids[:, -1] = 0, 2
        am = np.ones_like(ids)
        am[-1, 9:], ids[-1, 9:], ids[-1, 8] = 0, 1, 2
        corrupted, selected = P.bert_mask(recipe, config, ids, am, rng)
        return {"input_ids": ids, "attention_mask": am, "masked_input_ids": corrupted, "masked_positions": selected}
    waves = rng.standard_normal((batch, 400)).astype(np.float32)
    am = np.ones((batch, 400), np.int64)
    am[-1, 320:] = 0
    lengths = [39] * (batch - 1) + [31]
    return {"input_values": waves, "attention_mask": am,
            "mask_time_indices": P.span_mask(recipe, batch, 39, lengths, rng)}


PLAIN_INPUTS = ("pixel_values", "input_ids", "input_values", "attention_mask")  # no masks

CLASSES = {
    "vision": ("Data2VecVisionForPreTraining", "data2vec_vision"),
    "text": ("Data2VecTextForPreTraining", "data2vec_text"),
    "audio": ("Data2VecAudioForPreTraining", "data2vec_audio"),
}


def _start_arrays(model, seed: int) -> dict:
    """Student and teacher from different random weights (so the EMA is visible), random head."""
    spec, prefix = model.student.spec, model.base_model_prefix
    rng = np.random.default_rng(seed)
    h = model.config.hidden_size
    out = {f"{prefix}.{k}": v for k, v in spec.random_arrays(seed).items()}
    out.update({f"teacher.{k}": v for k, v in spec.random_arrays(seed + 1).items()})
    out["regression_head.weight"] = (rng.standard_normal((h, h)) * 0.1).astype(np.float32)
    out["regression_head.bias"] = (rng.standard_normal(h) * 0.1).astype(np.float32)
    return out


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert set(a) == set(b)
    return max((float(np.abs(a[k].astype(np.float64) - b[k]).max()), k) for k in a)


def _torch_inputs(batch: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in batch.items()}


# ---------------------------------------------------------------------------- the recipe


def test_recipe_defaults_and_schedule():
    audio, text, vision = (P.PretrainingConfig.for_modality(m) for m in ("audio", "text", "vision"))
    assert (audio.average_top_k_layers, audio.instance_norm_target_layer, audio.loss_beta) == (8, True, 0.0)
    assert (text.average_top_k_layers, text.layer_norm_target_layer, text.loss_beta) == (10, True, 4.0)
    assert (vision.average_top_k_layers, vision.target_layer, vision.loss_beta) == (6, "block", 2.0)
    assert audio.scale(768) == pytest.approx(1 / np.sqrt(768)) and text.scale(768) == 1.0
    assert (audio.mask_prob, audio.mask_length, text.mask_prob, vision.mask_prob) == (0.65, 10, 0.15, 0.6)
    # tau: linear 0.999 -> 0.9999 over 30k (audio) / 100k (text) updates; vision constant 0.9998
    assert audio.tau(0) == pytest.approx(0.999) and audio.tau(15000) == pytest.approx(0.99945)
    assert audio.tau(30000) == audio.tau(10**6) == pytest.approx(0.9999)
    assert text.tau(50000) == pytest.approx(0.99945)
    assert vision.tau(1) == vision.tau(10**6) == pytest.approx(0.9998)
    assert text.top_k(2) == 2 and text.top_k(12) == 10  # clamped to the depth
    assert P.PretrainingConfig.from_dict(text.to_dict()) == text


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(average_top_k_layers=0), ValueError),
        (dict(ema_decay=1.5), ValueError),
        (dict(mask_prob=0.0), ValueError),
        (dict(loss_beta=-1.0), ValueError),
        (dict(target_layer="attention"), ValueError),
        (dict(random_token_prob=0.6, leave_unmasked_prob=0.6), ValueError),
        (dict(not_a_field=1), TypeError),
    ],
)
def test_recipe_rejects_bad_values(bad, error):
    with pytest.raises(error):
        P.PretrainingConfig.for_modality("text", **bad)


def test_mask_generators(rng):
    vision = P.PretrainingConfig.for_modality("vision")
    masks = P.block_mask(vision, 8, (14, 14), rng)
    target = round(0.6 * 196)
    assert masks.shape == (8, 196) and masks.dtype == bool
    assert (masks.sum(1) <= target).all() and (masks.sum(1) >= 0.8 * target).all()
    grids = masks.reshape(8, 14, 14)
    blocks = grids[:, :-1, :-1] & grids[:, 1:, :-1] & grids[:, :-1, 1:] & grids[:, 1:, 1:]
    assert blocks.any(axis=(1, 2)).all()  # rectangles, not scattered patches
    assert np.array_equal(P.block_mask(vision, 2, (4, 4), 7), P.block_mask(vision, 2, (4, 4), 7))
    assert (P.block_mask(vision, 4, (2, 2), rng).sum(1) >= 1).all()  # tiny grids still get a mask

    audio = P.PretrainingConfig.for_modality("audio")
    spans = P.span_mask(audio, 4, 100, [100, 100, 60, 40], rng)
    assert not spans[2, 60:].any() and not spans[3, 40:].any()
    for row in spans:  # every run of masked frames is at least one span long
        edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        assert ((np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]) >= 10).all()
    with pytest.raises(ValueError, match="mask_length"):
        P.span_mask(audio, 1, 5, None, rng)

    text = P.PretrainingConfig.for_modality("text")
    tc = Data2VecTextConfig(**TEXT)
    ids = rng.integers(3, 98, (64, 200))
    ids[:, 0], ids[:, -1] = 0, 2
    am = np.ones_like(ids)
    am[:, 150:], ids[:, 150:] = 0, 1
    corrupted, selected = P.bert_mask(text, tc, ids, am, rng)
    assert not selected[:, 0].any() and not selected[:, -1].any() and not selected[:, 150:].any()
    assert np.array_equal(corrupted[~selected], ids[~selected])
    frac = selected.sum(1) / 148
    assert (np.abs(frac - 0.15) < 0.01).all()
    picked, orig = corrupted[selected], ids[selected]
    mask_id = tc.vocab_size - 1
    assert 0.75 < (picked == mask_id).mean() < 0.85
    assert 0.05 < ((picked != mask_id) & (picked != orig)).mean() < 0.15
    assert not np.isin(picked, [0, 1, 2]).any()
    with pytest.raises(ValueError, match="no maskable token"):
        P.bert_mask(text, tc, np.array([[0, 2, 1]]), None, rng)


def test_reference_loss_matches_torch_loss(rng):
    x, y = rng.standard_normal((2, 5, 8)) * 3, rng.standard_normal((2, 5, 8))
    mask = rng.random((2, 5)) < 0.5
    mask[0, 0] = True
    for modality in ("audio", "text", "vision"):
        c = P.PretrainingConfig.for_modality(modality)
        per = TP.regression_loss(torch.from_numpy(x), torch.from_numpy(y), c).numpy()
        assert per[mask].mean() == pytest.approx(P.reference_loss(x, y, mask, c), rel=1e-6)


# ------------------------------------------------------------------------ one-step parity


@pytest.mark.parametrize("modality", ["vision", "text", "audio"])
def test_one_step_torch_keras_parity(modality):
    """Same weights, batch and masks: one SGD step + EMA update gives the same loss and the same
    student, teacher and head in PyTorch and in Keras (fit), and matches the numpy recipe."""
    config, recipe = _config(modality), _recipe(modality)
    batch = _batch(modality, recipe, config, np.random.default_rng(1))
    name, prefix = CLASSES[modality]
    lr = 0.5

    pt = getattr(TP, name)(config, recipe, seed=0)
    start = _start_arrays(pt, 0)
    pt.load_pretraining_arrays(start)
    pt.train()
    with torch.no_grad():  # the numpy definition of targets and loss, from the teacher's layers
        kwargs = {k: v for k, v in _torch_inputs(batch).items() if k in PLAIN_INPUTS}
        if modality == "vision":  # block outputs, patch tokens
            layers = [h[:, 1:] for h in pt.teacher(**kwargs, output_hidden_states=True).hidden_states[1:]]
        else:  # feed-forward outputs before the residual
            layers = list(pt.teacher(**kwargs, output_ffn_states=True).ffn_states)
    opt = torch.optim.SGD([p for p in pt.parameters() if p.requires_grad], lr=lr)
    out = pt(**_torch_inputs(batch))
    out.loss.backward()
    opt.step()
    tau = pt.ema_update()
    assert tau == pytest.approx(0.54)

    reference = P.reference_targets([t.numpy() for t in layers], recipe)
    assert np.abs(out.target.numpy() - reference).max() <= TOL
    mask = out.mask.numpy()
    expected_loss = P.reference_loss(out.prediction.detach().numpy(), reference, mask, recipe)
    assert out.loss.item() == pytest.approx(expected_loss, abs=TOL)
    assert float(out.target_var) == pytest.approx(P.spread(reference, mask), abs=1e-4)

    tfm = getattr(KP, "TF" + name)(config, recipe, seed=0)
    tfm.load_pretraining_arrays(start)
    tfm.compile(optimizer=keras.optimizers.SGD(lr))
    history = tfm.fit(batch, batch_size=2, epochs=1, shuffle=False, verbose=0).history
    assert abs(out.loss.item() - history["loss"][0]) <= TOL
    assert history["tau"][0] == pytest.approx(0.54)

    after_pt, after_tf = pt.pretraining_arrays(), tfm.pretraining_arrays()
    worst, where = _max_diff(after_pt, after_tf)
    assert worst <= TOL, f"{modality}: {where} differs by {worst}"
    # the step did something, and the teacher is the EMA of the updated student
    assert max(float(np.abs(after_pt[k] - start[k]).max()) for k in start if k.startswith(prefix)) > 1e-4
    for k in start:
        if k.startswith("teacher."):
            student_key = prefix + k[len("teacher"):]
            expected = 0.54 * start[k] + 0.46 * after_pt[student_key]
            assert np.abs(after_pt[k] - expected).max() <= 1e-6


def test_ffn_states_are_the_feed_forward_outputs():
    """The encoders' ``output_ffn_states`` option: each layer's FFN output before its residual;
    default outputs carry no such attribute."""
    torch.manual_seed(0)
    text = d2v_torch.Data2VecTextModel(_config("text")).eval()
    captured = []
    record = lambda module, inputs, output: captured.append(output)  # noqa: E731
    hooks = [layer.output.dense.register_forward_hook(record) for layer in text.encoder.layer]
    ids = torch.randint(3, 98, (2, 7))
    out = text(ids, output_ffn_states=True)
    for h in hooks:
        h.remove()
    assert len(out.ffn_states) == 2 and all(torch.equal(a, b) for a, b in zip(out.ffn_states, captured))
    assert not hasattr(text(ids), "ffn_states")

    audio = d2v_torch.Data2VecAudioModel(_config("audio")).eval()
    captured.clear()
    hooks = [layer.feed_forward.register_forward_hook(record) for layer in audio.encoder.layers]
    out = audio(torch.randn(2, 400), output_ffn_states=True)
    for h in hooks:
        h.remove()
    assert len(out.ffn_states) == 2 and all(torch.equal(a, b) for a, b in zip(out.ffn_states, captured))


def test_masks_drawn_when_not_given():
    """Without masks both frameworks draw them with the seeded numpy generators (Keras inside
    the compiled step); equal seeds give equal masks."""
    rng = np.random.default_rng(3)
    for modality in ("vision", "text", "audio"):
        config, recipe = _config(modality), _recipe(modality)
        batch = _batch(modality, recipe, config, rng, batch=4)
        plain = {k: v for k, v in batch.items() if k in PLAIN_INPUTS}
        name, _ = CLASSES[modality]
        torch.manual_seed(0)
        a = getattr(TP, name)(config, recipe, seed=5).train()
        b = getattr(TP, name)(config, recipe, seed=5).train()
        ma, mb = a(**_torch_inputs(plain)).mask, b(**_torch_inputs(plain)).mask
        assert torch.equal(ma, mb) and bool(ma.any())
        tfm = getattr(KP, "TF" + name)(config, recipe, seed=5)
        tfm.compile(optimizer=keras.optimizers.SGD(0.01))
        logs = tfm.fit(plain, batch_size=2, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0]) and logs["target_var"][0] > 0
        assert int(tfm.num_updates.numpy()) == 2


# --------------------------------------------------------------------- student checkpoints


@pytest.mark.parametrize("modality", ["vision", "text", "audio"])
def test_student_checkpoint_loads_into_every_head(modality, tmp_path):
    config = _config(modality)
    name, prefix = CLASSES[modality]
    pt = getattr(TP, name)(config, seed=0)
    pt.save_student(tmp_path / "pt")
    tfm = getattr(KP, "TF" + name)(config, seed=0)
    tfm.save_student(tmp_path / "tf")
    student_pt, student_tf = pt.student.state_arrays(), tfm.student.state_arrays()
    heads = [arch for arch, fam in ARCHITECTURES.items() if fam == modality]
    assert len(heads) >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in heads:
            combos = ((d2v_torch, "pt", student_pt), (d2v_tf, "pt", student_pt), (d2v_torch, "tf", student_tf))
            for module, source, student in combos:
                cls = getattr(module, arch if module is d2v_torch else "TF" + arch)
                model, report = cls.from_pretrained(tmp_path / source, output_loading_info=True)
                arrays = model.state_arrays()
                head_prefix = "" if arch.endswith("Model") else prefix + "."
                assert not report.unexpected and not report.mismatched, (arch, report)
                assert not set(report.newly_initialized) & {head_prefix + k for k in student}, (arch, report)
                for key, value in student.items():
                    assert np.array_equal(arrays[head_prefix + key], value), (arch, key)
                if not arch.endswith("Model"):
                    assert report.newly_initialized, arch  # the head is listed as new


# ------------------------------------------------------------------------------ monitoring


def _collapsing_vision(cls):
    """A teacher whose patch embedding is zero: every patch token is the same, so are targets."""
    model = cls(_config("vision"), _recipe("vision"), seed=0)
    arrays = model.pretraining_arrays()
    for key in arrays:
        if key.startswith("teacher.embeddings.patch_embeddings."):
            arrays[key] = np.zeros_like(arrays[key])
    model.load_pretraining_arrays(arrays)
    return model


def test_collapse_warning_and_step_logging(caplog):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = _collapsing_vision(TP.Data2VecVisionForPreTraining).train()
    with pytest.warns(P.TargetCollapseWarning, match="target_var"):
        out = model(torch.from_numpy(x))
    assert float(out.target_var) < 0.01

    healthy = TP.Data2VecVisionForPreTraining(_config("vision"), _recipe("vision"), seed=0).train()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="d2v.pretraining"):
        warnings.simplefilter("error", P.TargetCollapseWarning)
        out = healthy(torch.from_numpy(x))
    assert float(out.target_var) > 0.5
    assert any("target_var" in r.getMessage() and "pred_var" in r.getMessage() for r in caplog.records)

    tfm = _collapsing_vision(KP.TFData2VecVisionForPreTraining)
    tfm.compile(optimizer=keras.optimizers.SGD(0.01))
    with pytest.warns(P.TargetCollapseWarning, match="target_var"):
        logs = tfm.fit(x, batch_size=2, verbose=0).history
    assert logs["target_var"][0] < 0.01 and "pred_var" in logs


# ------------------------------------------------------------------------------ bad inputs


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="use_mask_token"):
        TP.Data2VecVisionForPreTraining(Data2VecVisionConfig(**{**VISION, "use_mask_token": False}))
    with pytest.raises(ValueError, match="mask_time_prob"):
        KP.TFData2VecAudioForPreTraining(Data2VecAudioConfig(**AUDIO, mask_time_prob=0.0))
    with pytest.raises(ValueError, match="is_decoder"):
        TP.Data2VecTextForPreTraining(Data2VecTextConfig(**TEXT, is_decoder=True))
    with pytest.raises(ValueError, match="text model but the pretraining config is for vision"):
        TP.Data2VecTextForPreTraining(_config("text"), P.PretrainingConfig.for_modality("vision"))
    with pytest.raises(TypeError, match="Data2VecVisionConfig"):
        TP.Data2VecVisionForPreTraining(_config("text"))

    model = TP.Data2VecVisionForPreTraining(_config("vision"), seed=0)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"bool_masked_pos must have shape \(2, 16\)"):
        model(x, bool_masked_pos=torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        model(x, bool_masked_pos=torch.ones(2, 16))
    with pytest.raises(ValueError, match="masks no position"):
        model(x, bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))
    tfm = KP.TFData2VecVisionForPreTraining(_config("vision"), seed=0)
    with pytest.raises(ValueError, match="masks no position"):
        tfm(x.numpy(), bool_masked_pos=np.zeros((2, 16), bool))
    text = TP.Data2VecTextForPreTraining(_config("text"), seed=0)
    with pytest.raises(ValueError, match="together"):
        text(torch.randint(3, 90, (2, 6)), masked_input_ids=torch.randint(3, 90, (2, 6)))


# ----------------------------------------------------------------------------- distributed

_DDP_WORKER = """
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import d2v_torch.pretraining as TP
from d2v_common.configs import CONFIG_CLASSES
from d2v_common.pretrain.data2vec1 import PretrainingConfig

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
job_dir = sys.argv[1]
for name, spec in json.load(open(os.path.join(job_dir, "job.json"))).items():
    config = CONFIG_CLASSES[spec["model_type"]].from_dict(spec["config"])
    model = getattr(TP, spec["class"])(config, PretrainingConfig.from_dict(spec["recipe"]), seed=0)
    data = np.load(os.path.join(job_dir, name + ".npz"))
    model.load_pretraining_arrays({k[2:]: data[k] for k in data.files if k.startswith("w.")})
    model.train()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    for step in range(spec["steps"]):
        batch = {k.split(".", 1)[1]: data[k] for k in data.files if k.startswith("b%d." % step)}
        n = len(next(iter(batch.values()))) // world  # this rank's half of the global batch
        out = ddp(**{k: torch.from_numpy(v[rank * n:(rank + 1) * n]) for k, v in batch.items()})
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        model.ema_update()
    np.savez(os.path.join(job_dir, "%s.rank%d.npz" % (name, rank)), **model.pretraining_arrays())
dist.destroy_process_group()
"""


def test_torchrun_ddp_matches_one_process(tmp_path):
    """2 processes (gloo, CPU) on halves of each batch == 1 process on the whole batch, for two
    SGD steps with EMA updates; both ranks hold the same student and teacher."""
    rng = np.random.default_rng(0)
    job, single = {}, {}
    for modality in ("vision", "text"):
        config, recipe = _config(modality), _recipe(modality)
        batches = [_batch(modality, recipe, config, rng, batch=4) for _ in range(2)]
        if modality == "vision":  # uneven masked counts per rank: the loss needs the global count
            for b in batches:
                b["bool_masked_pos"][:2, 8:] = False
        name, _ = CLASSES[modality]
        model = getattr(TP, name)(config, recipe, seed=0)
        start = _start_arrays(model, 3)
        data = {f"w.{k}": v for k, v in start.items()}
        for i, b in enumerate(batches):
            data.update({f"b{i}.{k}": v for k, v in b.items()})
        np.savez(tmp_path / f"{modality}.npz", **data)
        job[modality] = {"class": name, "model_type": config.model_type, "config": config.to_dict(),
                         "recipe": recipe.to_dict(), "lr": 0.5, "steps": 2}
        model.load_pretraining_arrays(start)
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for b in batches:
            model(**_torch_inputs(b)).loss.backward()
            opt.step()
            opt.zero_grad()
            model.ema_update()
        single[modality] = (start, model.pretraining_arrays())
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "worker.py").write_text(_DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for modality, (start, expected) in single.items():
        ranks = [dict(np.load(tmp_path / f"{modality}.rank{r}.npz")) for r in (0, 1)]
        worst, where = _max_diff(expected, ranks[0])
        assert worst <= TOL, f"{modality}: {where} differs by {worst}"
        assert _max_diff(ranks[0], ranks[1])[0] == 0.0  # the ranks' teachers stay identical
        assert max(float(np.abs(expected[k] - start[k]).max()) for k in start if not k.startswith("teacher")) > 1e-3


_TF_DISTRIBUTE = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras
import d2v_tf
from d2v_common.configs import CONFIG_CLASSES
from d2v_common.pretrain.data2vec1 import PretrainingConfig
import d2v_tf.pretraining as KP

job_dir = sys.argv[1]
spec = json.load(open(job_dir + "/job.json"))
config = CONFIG_CLASSES[spec["model_type"]].from_dict(spec["config"])
recipe = PretrainingConfig.from_dict(spec["recipe"])
data = dict(np.load(job_dir + "/data.npz"))
start = {k[2:]: v for k, v in data.items() if k.startswith("w.")}
x = {k[2:]: v for k, v in data.items() if k.startswith("x.")}

def train(strategy):
    with strategy.scope():
        model = getattr(KP, spec["class"])(config, recipe, seed=0)
        model.load_pretraining_arrays(start)
        model.compile(optimizer=keras.optimizers.SGD(spec["lr"]))
    model.fit(x, batch_size=spec["batch"], epochs=1, shuffle=False, verbose=0)
    return model

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two = train(mirrored)
one = train(tf.distribute.get_strategy())
a, b = one.pretraining_arrays(), two.pretraining_arrays()
replicas_equal = all(
    all(np.array_equal(t.numpy(), mirrored.experimental_local_results(v.value)[0].numpy())
        for t in mirrored.experimental_local_results(v.value))
    for v in two.teacher.variables + two.student.variables
)
print("RESULT " + json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "updates": [int(one.num_updates.numpy()), int(two.num_updates.numpy())],
    "max_diff": max(float(np.abs(a[k] - b[k]).max()) for k in a),
    "moved": max(float(np.abs(a[k] - start[k]).max()) for k in a if not k.startswith("teacher")),
    "replicas_equal": replicas_equal,
}))
"""


def test_tf_distribute_mirrored_matches_one_replica(tmp_path):
    """MirroredStrategy over two logical CPUs == one replica on the combined batch (two steps of
    fit, EMA inside the compiled step); every replica holds the same teacher."""
    rng = np.random.default_rng(0)
    config, recipe = _config("text"), _recipe("text")
    batches = [_batch("text", recipe, config, rng, batch=4) for _ in range(2)]
    x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    model = TP.Data2VecTextForPreTraining(config, recipe, seed=0)
    start = _start_arrays(model, 3)
    np.savez(tmp_path / "data.npz", **{f"w.{k}": v for k, v in start.items()}, **{f"x.{k}": v for k, v in x.items()})
    (tmp_path / "job.json").write_text(json.dumps({
        "class": "TFData2VecTextForPreTraining", "model_type": config.model_type, "config": config.to_dict(),
        "recipe": recipe.to_dict(), "lr": 0.5, "batch": 4,
    }))
    (tmp_path / "run.py").write_text(_TF_DISTRIBUTE)
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["replicas"] == 2 and result["updates"] == [2, 2]
    assert result["max_diff"] <= TOL, result
    assert result["moved"] > 1e-3 and result["replicas_equal"]


_TF_MULTI_WORKER = """
import json, os, sys
job_dir, index, ports = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["localhost:" + p for p in ports]},
                                      "task": {"type": "worker", "index": index}})
import tensorflow as tf
import numpy as np, keras
import d2v_tf
from d2v_common.configs import CONFIG_CLASSES
from d2v_common.pretrain.data2vec1 import PretrainingConfig
import d2v_tf.pretraining as KP

spec = json.load(open(job_dir + "/job.json"))
config = CONFIG_CLASSES[spec["model_type"]].from_dict(spec["config"])
data = dict(np.load(job_dir + "/data.npz"))
start = {k[2:]: v for k, v in data.items() if k.startswith("w.")}
x = {k[2:]: v for k, v in data.items() if k.startswith("x.")}
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = getattr(KP, spec["class"])(config, PretrainingConfig.from_dict(spec["recipe"]), seed=0)
    model.load_pretraining_arrays(start)
    model.compile(optimizer=keras.optimizers.SGD(spec["lr"]))
    model.optimizer.build(model.trainable_variables)
# each worker gets its shard of every global batch; the step is the model's own train_step
batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(spec["batch"]))

@tf.function
def step(batch):
    return strategy.run(model.train_step, args=(batch,))

for batch in batches:
    step(batch)
np.savez(job_dir + "/worker%d.npz" % index, **model.pretraining_arrays())
"""


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_tf_multi_worker_matches_one_process(tmp_path):
    """MultiWorkerMirroredStrategy, two worker processes on CPU, each running the model's
    train_step (optimizer step + EMA) on its shard: the same weights as one process on the
    combined batches, on both workers."""
    rng = np.random.default_rng(4)
    config, recipe = _config("vision"), _recipe("vision")
    batches = [_batch("vision", recipe, config, rng, batch=4) for _ in range(2)]
    for b in batches:
        b["bool_masked_pos"][:2, 8:] = False
    x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    single = TP.Data2VecVisionForPreTraining(config, recipe, seed=0)
    start = _start_arrays(single, 5)
    single.load_pretraining_arrays(start)
    single.train()
    opt = torch.optim.SGD([p for p in single.parameters() if p.requires_grad], lr=0.5)
    for b in batches:
        single(**_torch_inputs(b)).loss.backward()
        opt.step()
        opt.zero_grad()
        single.ema_update()
    expected = single.pretraining_arrays()  # torch == Keras is checked above; here it is the reference
    np.savez(tmp_path / "data.npz", **{f"w.{k}": v for k, v in start.items()}, **{f"x.{k}": v for k, v in x.items()})
    (tmp_path / "job.json").write_text(json.dumps({
        "class": "TFData2VecVisionForPreTraining", "model_type": config.model_type, "config": config.to_dict(),
        "recipe": recipe.to_dict(), "lr": 0.5, "batch": 4,
    }))
    (tmp_path / "worker.py").write_text(_TF_MULTI_WORKER)
    ports = ",".join(str(p) for p in _free_ports(2))
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path), str(i), ports],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    workers = [dict(np.load(tmp_path / f"worker{i}.npz")) for i in range(2)]
    worst, where = _max_diff(expected, workers[0])
    assert worst <= TOL, f"{where} differs by {worst}"
    assert _max_diff(workers[0], workers[1])[0] == 0.0


# --------------------------------------------------------------------------------- example


def test_digits_example_quick():
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "pretrain_vision_digits.py"), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("linear probe accuracy")]
    assert len(lines) == 2 and "random init" in lines[0] and "pretrained" in lines[1]
    for line in lines:
        assert 0.0 < float(line.split()[-1]) <= 1.0
