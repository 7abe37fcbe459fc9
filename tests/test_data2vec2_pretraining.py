"""data2vec 2.0 pretraining in PyTorch against upstream fairseq's training step.

tests/fixtures/data2vec2-pretraining holds, per case, a fairseq ``data2vec_multi`` trainer
checkpoint (student, decoder, a teacher that differs from the student), the inputs with the mask
upstream used, and upstream's losses, targets and every parameter's gradient (cases.json): one
base case per modality and more that, together, use every option of the recipe (clone_batch,
CLS loss or none, each target normalisation, encoder-only EMA or not, ALiBi off and on, prenet
depths, loss_beta, loss_scale, decoder layouts, keep_masked_pct, inverse masks). Every case
folder is checked.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from d2v_common.pretrain import data2vec2 as P
from d2v_common.checkpoints.fairseq import FairseqCheckpointError, read_fairseq_checkpoint
from d2v_torch import (
    PRETRAINING_CLASSES,
    Data2Vec2AudioForCTC,
    Data2Vec2AudioForPreTraining,
    Data2Vec2AudioModel,
    Data2Vec2TextForPreTraining,
    Data2Vec2TextForSequenceClassification,
    Data2Vec2TextModel,
    Data2Vec2VisionForImageClassification,
    Data2Vec2VisionForPreTraining,
    Data2Vec2VisionModel,
)
from tests.fixture_paths import DATA2VEC2_DIR, DATA2VEC2_PRETRAINING_DIR

with open(os.path.join(DATA2VEC2_PRETRAINING_DIR, "cases.json")) as f:
    CASES = {case["case"]: case for case in json.load(f)["cases"]}
# Every case folder is checked against upstream (cases.json describes each; test_fixtures checks that).
STEP_CASES = sorted(e.name for e in os.scandir(DATA2VEC2_PRETRAINING_DIR) if e.is_dir())
# The three base cases (one per modality) for the tests of properties that do not depend on the options.
BASE_CASES = ["pretrain-audio", "pretrain-image", "pretrain-text"]
CLASSES = {"IMAGE": Data2Vec2VisionForPreTraining, "AUDIO": Data2Vec2AudioForPreTraining,
           "TEXT": Data2Vec2TextForPreTraining}
MODELS = {"IMAGE": Data2Vec2VisionModel, "AUDIO": Data2Vec2AudioModel, "TEXT": Data2Vec2TextModel}
HEADS = {"IMAGE": (Data2Vec2VisionForImageClassification, {"num_labels": 3}),
         "AUDIO": (Data2Vec2AudioForCTC, {"vocab_size": 10}),
         "TEXT": (Data2Vec2TextForSequenceClassification, {"num_labels": 3})}


def _case(name):
    case = CASES[name]
    folder = os.path.join(DATA2VEC2_PRETRAINING_DIR, name)
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    outputs = dict(np.load(os.path.join(folder, "outputs.npz")))
    return case, os.path.join(folder, "checkpoint.pt"), inputs, outputs


def _model_inputs(inputs) -> list:
    """The call's positional inputs: the source, then (audio, text) the keep-mask."""
    args = [torch.from_numpy(inputs["source"])]
    if "padding_mask" in inputs:
        args.append(torch.from_numpy(~inputs["padding_mask"]))
    return args


def _step(model, inputs, mask=None):
    mask = inputs["mask"] if mask is None else mask
    return model(*_model_inputs(inputs), precomputed_mask=torch.from_numpy(mask))


@pytest.fixture(scope="module", params=STEP_CASES)
def loaded(request):
    case, ckpt, inputs, outputs = _case(request.param)
    model = CLASSES[case["modality"]].from_pretrained(ckpt, seed=0)
    model.train()  # upstream's step ran in training mode (every dropout 0)
    out = _step(model, inputs)
    out.loss.backward()
    return case, ckpt, inputs, outputs, model, out


# ------------------------------------------------------------------------- the step


def test_loss_equals_fairseq_total(loaded):
    case, _, _, outputs, _, out = loaded
    total = float(outputs["total"])
    assert abs(float(out.loss.detach()) - total) <= 1e-5 * abs(total)
    assert int(out.sample_size) == int(outputs["sample_size"]) == case["sample_size"]


def test_each_loss_sum_equals_fairseq(loaded):
    case, _, _, outputs, _, out = loaded
    names = {k[len("loss/"):] for k in outputs if k.startswith("loss/")}
    assert set(out.losses) == names == set(case["losses"])
    for name in names:
        want = float(outputs[f"loss/{name}"])
        assert abs(float(out.losses[name].detach()) - want) <= 1e-5 * abs(want), name


def test_teacher_targets_equal_fairseq(loaded):
    _, _, _, outputs, _, out = loaded
    want = outputs["targets"]
    assert out.target.shape == want.shape
    np.testing.assert_allclose(out.target.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_every_fairseq_gradient_equals_ours(loaded):
    """Each ``grad/<fairseq name>`` vs the gradient of the same tensor here, within 1e-4 of its
    largest value; and nothing upstream leaves without a gradient gets one here."""
    case, ckpt, _, outputs, model, _ = loaded
    names = {v: k for k, v in P.read_fairseq_pretraining(ckpt).fairseq_names.items()}
    params = dict(model.named_parameters())
    grads = {k[len("grad/"):]: v for k, v in outputs.items() if k.startswith("grad/")}
    assert len(grads) == case["n_grads"]
    for fairseq_name, want in grads.items():
        mine = params[names[fairseq_name]].grad
        assert mine is not None, fairseq_name
        scale = np.abs(want).max()
        np.testing.assert_allclose(mine.numpy(), want, rtol=0, atol=1e-4 * scale, err_msg=fairseq_name)
    ours = {name for name, p in params.items() if p.grad is not None and p.grad.abs().max() > 0}
    assert ours <= {names[n] for n in grads}


# ------------------------------------------------------------------- checkpoint reading


@pytest.mark.parametrize("name", STEP_CASES)
def test_from_pretrained_keeps_decoder_and_teacher(name):
    case, ckpt, _, _ = _case(name)
    model = CLASSES[case["modality"]].from_pretrained(ckpt)
    state = read_fairseq_checkpoint(ckpt)["model"]
    source = P.read_fairseq_pretraining(ckpt)
    arrays = model.pretraining_arrays()
    assert set(arrays) == set(source.fairseq_names)
    for canonical, key in source.fairseq_names.items():
        value = state["_ema"][key[len("_ema."):]] if key.startswith("_ema.") else state[key]
        want = value.detach().numpy()
        assert np.array_equal(arrays[canonical].reshape(want.shape), want), canonical
    teacher = [k for k in arrays if k.startswith("teacher.")]
    assert len(teacher) == len(state["_ema"])
    assert any(k.startswith("decoder.") for k in arrays)
    # the teacher differs from the student, as in the fixture
    prefix = model.base_model_prefix + "."
    assert any(not np.array_equal(arrays[k], arrays[prefix + k[len("teacher."):]]) for k in teacher)
    # the pretraining options come from the checkpoint's config
    cfg = case["model_cfg"]
    pcfg = model.pretraining_config
    assert (pcfg.clone_batch, pcfg.cls_loss, pcfg.ema_encoder_only, pcfg.loss_scale) == (
        cfg["clone_batch"], cfg["cls_loss"], cfg["ema_encoder_only"], cfg["loss_scale"])


def test_pretraining_classes_are_registered():
    assert {"Data2Vec2VisionForPreTraining", "Data2Vec2AudioForPreTraining",
            "Data2Vec2TextForPreTraining"} <= set(PRETRAINING_CLASSES)
    assert "precomputed_mask" in Data2Vec2AudioForPreTraining.forward.__doc__


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("name", ["pretrain-image", "pretrain-text"])
def test_teacher_after_n_updates_equals_the_formula(name):
    """tau anneals linearly from ema_decay to ema_end_decay over ema_anneal_end_step updates; the
    teacher's tensors follow t <- tau t + (1 - tau) s (frozen ones copied); nothing else moves."""
    case, ckpt, _, _ = _case(name)
    model = CLASSES[case["modality"]].from_pretrained(ckpt)
    cfg = case["model_cfg"]
    prefix = model.base_model_prefix + "."
    before = model.pretraining_arrays()
    teacher = {k[len("teacher."):]: v.astype(np.float64) for k, v in before.items() if k.startswith("teacher.")}
    rng = np.random.default_rng(0)
    params = dict(model.student.named_parameters())
    steps = [1, 2, 3, 50, 100, 150]
    for step in steps:
        with torch.no_grad():  # an optimizer step moves the trainable student tensors
            for p in params.values():
                if p.requires_grad:
                    p.add_(torch.from_numpy(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        tau = model.ema_update(step)
        start, end, anneal = cfg["ema_decay"], cfg["ema_end_decay"], cfg["ema_anneal_end_step"]
        want_tau = end if step >= anneal else end - (end - start) * (1 - step / anneal)  # fairseq get_annealed_rate
        assert tau == want_tau
        for key in teacher:
            s = params[key].detach().numpy().astype(np.float64)
            teacher[key] = s if not params[key].requires_grad else tau * teacher[key] + (1 - tau) * s
    after = model.pretraining_arrays()
    assert model.num_updates == steps[-1]
    for key, want in teacher.items():
        np.testing.assert_allclose(after["teacher." + key], want, rtol=1e-6, atol=1e-7, err_msg=key)
    for key in before:  # the decoder is untouched by the EMA
        if key.startswith("decoder."):
            assert np.array_equal(after[key], before[key])
    if cfg["ema_encoder_only"]:
        assert all(k.startswith("encoder.layers.") for k in teacher)
    else:  # frozen tensors (the fixed positions) are copied, not averaged
        assert "embeddings.position_embeddings" in teacher
    assert set(teacher) <= {k[len(prefix):] for k in before if k.startswith(prefix)}


def test_ema_update_defaults_to_the_next_step():
    _, ckpt, _, _ = _case("pretrain-audio")
    model = Data2Vec2AudioForPreTraining.from_pretrained(ckpt)
    assert model.num_updates == 0
    assert model.ema_update() == pytest.approx(0.999 + (0.99999 - 0.999) / 100)
    assert model.num_updates == 1


# -------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def audio():
    _, ckpt, inputs, _ = _case("pretrain-audio")
    return Data2Vec2AudioForPreTraining.from_pretrained(ckpt), inputs


def test_mask_with_the_wrong_row_count_is_refused(audio):
    model, inputs = audio
    with pytest.raises(ValueError, match=r"batch x clone_batch = 2 x 2 = 4 rows"):
        _step(model, inputs, inputs["mask"][:2])


def test_mask_rows_that_clone_batch_does_not_divide_are_refused(audio):
    model, inputs = audio
    with pytest.raises(ValueError, match="clone_batch=2 does not divide"):
        _step(model, inputs, inputs["mask"][:3])


def test_mask_of_the_wrong_dtype_is_refused(audio):
    model, inputs = audio
    with pytest.raises(TypeError, match="must be a bool tensor"):
        _step(model, inputs, inputs["mask"].astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(batch \* clone_batch, 79\)"):
        _step(model, inputs, inputs["mask"][:, :-1])


def test_mask_rows_of_unequal_counts_are_refused(audio):
    model, inputs = audio
    mask = inputs["mask"].copy()
    mask[0, np.flatnonzero(~mask[0])[0]] = True
    with pytest.raises(ValueError, match="same number of positions"):
        _step(model, inputs, mask)


def test_rows_masking_everything_or_nothing_are_refused(audio):
    model, inputs = audio
    with pytest.raises(ValueError, match="need 1 .. T-1"):
        _step(model, inputs, np.zeros_like(inputs["mask"]))


def test_fine_tuned_checkpoint_is_refused():
    ckpt = os.path.join(DATA2VEC2_DIR, "image-cls", "checkpoint.pt")
    with pytest.raises(FairseqCheckpointError, match="no decoder and no EMA teacher"):
        Data2Vec2VisionForPreTraining.from_pretrained(ckpt)


def test_checkpoint_of_another_modality_is_refused():
    _, ckpt, _, _ = _case("pretrain-text")
    with pytest.raises(TypeError, match="not a Data2Vec2AudioConfig one"):
        Data2Vec2AudioForPreTraining.from_pretrained(ckpt)


def test_plain_model_folder_is_refused(tmp_path):
    _, ckpt, _, _ = _case("pretrain-text")
    Data2Vec2TextForPreTraining.from_pretrained(ckpt).save_student(tmp_path)
    with pytest.raises(OSError, match="not a saved data2vec 2.0 pretraining model"):
        Data2Vec2TextForPreTraining.from_pretrained(tmp_path)


def test_cls_loss_needs_an_extra_token():
    _, ckpt, _, _ = _case("pretrain-audio")
    config = Data2Vec2AudioForPreTraining.from_pretrained(ckpt).config
    with pytest.raises(ValueError, match="num_extra_tokens"):
        Data2Vec2AudioForPreTraining(config, {"cls_loss": 0.01})


# ---------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", BASE_CASES)
def test_save_pretrained_round_trip_is_bit_exact(name, tmp_path):
    case, ckpt, inputs, outputs = _case(name)
    cls = CLASSES[case["modality"]]
    model = cls.from_pretrained(ckpt)
    model.ema_update(7)
    model.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)
    a, b = model.pretraining_arrays(), again.pretraining_arrays()
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert again.num_updates == 7 and again.pretraining_config == model.pretraining_config
    model.train(), again.train()
    assert float(_step(again, inputs).loss.detach()) == float(_step(model, inputs).loss.detach())


@pytest.mark.parametrize("name", STEP_CASES)
def test_save_student_loads_in_the_model_class(name, tmp_path):
    """The student alone is a Data2Vec2*Model checkpoint: equal outputs to the pretraining
    encoder's, and equal weights to what the model class reads from the fairseq file itself; the
    fine-tuning class reads the fairseq file too (its encoder: those weights, a new head)."""
    case, ckpt, inputs, _ = _case(name)
    model = CLASSES[case["modality"]].from_pretrained(ckpt)
    model.save_student(tmp_path)
    encoder = MODELS[case["modality"]].from_pretrained(tmp_path)
    direct = MODELS[case["modality"]].from_pretrained(ckpt)
    head_class, head_options = HEADS[case["modality"]]
    with pytest.warns(UserWarning, match="newly initialized"):  # the head only
        head = head_class.from_pretrained(ckpt, **head_options)
    prefix = head.base_model_prefix + "."
    tuned = {k[len(prefix):]: v for k, v in head.state_arrays().items() if k.startswith(prefix)}
    assert set(tuned) == set(direct.state_arrays()) and all(np.array_equal(tuned[k], v)
                                                             for k, v in direct.state_arrays().items())
    args = _model_inputs(inputs)
    model.eval()
    with torch.no_grad():
        want = model.student(*args).last_hidden_state
        assert torch.equal(encoder(*args).last_hidden_state, want)
    got, ref = encoder.state_arrays(), direct.state_arrays()
    assert set(got) == set(ref) and all(np.array_equal(got[k], ref[k]) for k in got)


# ------------------------------------------------------------------------ own masks


@pytest.mark.parametrize("name", BASE_CASES)
def test_masks_are_drawn_when_none_is_given(name):
    """Without precomputed_mask the model draws upstream's kind of mask from its seeded
    Generator: same seed, same mask and loss; the counts upstream's samplers give."""
    case, ckpt, inputs, _ = _case(name)
    cls = CLASSES[case["modality"]]
    a, b, other = (cls.from_pretrained(ckpt, seed=s) for s in (5, 5, 6))
    args = _model_inputs(inputs)
    out_a, out_b, out_o = a(*args), b(*args), other(*args)
    assert torch.equal(out_a.mask, out_b.mask) and float(out_a.loss.detach()) == float(out_b.loss.detach())
    assert not torch.equal(out_a.mask, out_o.mask)
    assert np.isfinite(float(out_a.loss.detach()))
    mask = out_a.mask.numpy()
    rows, length = inputs["mask"].shape
    assert mask.shape == (rows, length)
    counts = mask.sum(1)
    assert (counts == counts[0]).all()
    mod = case["model_cfg"]["modalities"][{"IMAGE": "image", "AUDIO": "audio", "TEXT": "text"}[case["modality"]]]
    if case["modality"] == "IMAGE":  # inverse block mask: int(L * (1 - p)) patches kept
        assert counts[0] == length - int(length * (1 - mod["mask_prob"]))
    if case["modality"] == "TEXT":  # mask_length 1: random_masking
        assert counts[0] == length - int(length * (1 - mod["mask_prob"]))
    if case["modality"] == "AUDIO":  # spans stay inside the valid frames
        frames = a.student.frame_mask(args[1], length).repeat_interleave(2, 0).numpy()
        assert not (mask & ~frames).any()


def test_block_mask_statistics():
    rng = np.random.default_rng(0)
    mask = P.block_mask_2d(64, 196, 0.6, 3, rng=rng)
    assert (mask.sum(1) == int(196 * 0.6)).all()
    # blocks, not scattered patches: a masked patch's right neighbour is masked far more often than p
    def right_neighbour_masked(m):
        grid = m.reshape(64, 14, 14)
        return (grid[:, :, :-1] & grid[:, :, 1:]).sum() / grid[:, :, :-1].sum()

    scattered = P.random_mask(64, 196, 0.6, rng)  # as many masked patches, no blocks: about 0.6
    assert right_neighbour_masked(mask) > right_neighbour_masked(scattered) + 0.08
    inverse = P.block_mask_2d(64, 196, 0.8, 3, mask_prob_adjust=0.07, inverse_mask=True, rng=rng)
    assert (inverse.sum(1) == 196 - int(196 * (1 - 0.8))).all()


def test_upstream_mask_order_is_torchs_cpu_argsort():
    """The order of the masked positions upstream keeps with keep_masked_pct (torch's unstable CPU
    argsort), in numpy for the frameworks without torch: the fixtures' masks and random ones."""
    rng = np.random.default_rng(0)
    masks = [dict(np.load(os.path.join(DATA2VEC2_PRETRAINING_DIR, n, "inputs.npz")))["mask"] for n in STEP_CASES]
    masks += [rng.random((3, n)) < rng.random() for n in [1, 2, 15, 16, 17, 40, 79, 196, 500]]
    for mask in masks:
        want = torch.from_numpy(mask).to(torch.uint8).argsort(dim=1).numpy()
        np.testing.assert_array_equal(P.upstream_mask_order(mask), want)


def test_span_mask_statistics():
    rng = np.random.default_rng(0)
    padding = np.zeros((32, 200), dtype=bool)
    padding[::2, 150:] = True
    mask = P.span_mask(32, 200, 0.5, 5, padding, rng=rng)
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and not (mask & padding).any()
    # about mask_prob of the shortest rows' frames (spans overlap, so fewer; the rows are cut to the smallest)
    assert 0.25 * 150 < counts[0] <= 0.5 * 150 + 5
    dropped = P.span_mask(32, 200, 0.5, 5, None, mask_dropout=0.2, rng=np.random.default_rng(1))
    full = P.span_mask(32, 200, 0.5, 5, None, rng=np.random.default_rng(1))
    assert (dropped.sum(1) == full.sum(1) - np.rint(full.sum(1) * 0.2)).all()
    more = P.span_mask(32, 200, 0.5, 5, padding, add_masks=True, rng=rng).sum(1)
    assert (more == more[0]).all() and more[0] >= counts[0]
    assert (P.random_mask(8, 12, 0.48, rng).sum(1) == 6).all()


@pytest.mark.parametrize("name", STEP_CASES)
def test_fairseq_round_trip_is_bit_exact(name, tmp_path):
    """fairseq .pt -> d2v folder -> fairseq .pt: every tensor (student, decoder, _ema) and the
    model config come back unchanged, and the result reads as the source does."""
    case, ckpt, inputs, outputs = _case(name)
    cls = CLASSES[case["modality"]]
    cls.from_pretrained(ckpt).save_pretrained(tmp_path / "d2v")
    written = cls.from_pretrained(tmp_path / "d2v").save_fairseq(tmp_path / "out.pt")
    src, out = read_fairseq_checkpoint(ckpt), read_fairseq_checkpoint(written)
    assert set(out["model"]) == set(src["model"])
    assert set(out["model"]["_ema"]) == set(src["model"]["_ema"])
    for key, tensor in src["model"].items():
        if key == "_ema":
            for k, t in tensor.items():
                got = out["model"]["_ema"][k]
                assert got.dtype == t.dtype and torch.equal(got, t), k
        else:
            got = out["model"][key]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), key
    assert out["cfg"]["model"] == src["cfg"]["model"]
    again = cls.from_pretrained(written)
    again.train()
    assert abs(float(_step(again, inputs).loss.detach()) - float(outputs["total"])) <= 1e-5 * float(outputs["total"])


def test_save_fairseq_needs_a_fairseq_origin(tmp_path):
    _, ckpt, _, _ = _case("pretrain-text")
    config = Data2Vec2TextForPreTraining.from_pretrained(ckpt).config
    with pytest.raises(ValueError, match="not read from a fairseq checkpoint"):
        Data2Vec2TextForPreTraining(config, {"decoder_dim": 16, "decoder_groups": 1}).save_fairseq(tmp_path / "x.pt")
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------ other options


def test_teacher_runs_in_eval_mode():
    """Upstream sets the EMA teacher to eval mode for its pass, whatever the student's mode."""
    _, ckpt, _, _ = _case("pretrain-image")
    model = Data2Vec2VisionForPreTraining.from_pretrained(ckpt)
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())


@pytest.mark.parametrize("name", BASE_CASES + ["image-alibi-clone3-bn"])
def test_duplicated_clones_give_the_single_clone_loss(name):
    """clone_batch=c with each sample's c masks equal is clone_batch=1 with that mask: the
    regression sum grows c times, as does the number of masked positions; the CLS loss, weighted
    by that number as upstream, grows c^2 times. (A clone_batch=1 case is tried with c=2.)"""
    case, ckpt, inputs, _ = _case(name)
    cls = CLASSES[case["modality"]]
    given = cls.from_pretrained(ckpt)
    c = max(2, given.pretraining_config.clone_batch)
    arrays = given.pretraining_arrays()
    one, many = (cls(given.config, dataclasses.replace(given.pretraining_config, clone_batch=n)) for n in (1, c))
    one.load_pretraining_arrays(arrays)
    many.load_pretraining_arrays(arrays)
    single = inputs["mask"][::given.pretraining_config.clone_batch]
    out1 = _step(one.train(), inputs, single)
    out2 = _step(many.train(), inputs, np.repeat(single, c, axis=0))
    assert int(out2.sample_size) == c * int(out1.sample_size)
    for key in out1.losses:
        factor = c * c if key == "cls" else c
        assert float(out2.losses[key].detach()) == pytest.approx(factor * float(out1.losses[key].detach()), rel=1e-5)
    if "cls" not in out1.losses:
        assert float(out2.loss.detach()) == pytest.approx(float(out1.loss.detach()), rel=1e-5)


VARIANTS = [
    {"clone_batch": 1}, {"clone_batch": 4}, {"cls_loss": 0.0}, {"loss_beta": 0.25}, {"loss_scale": 0.5},
    {"instance_norm_target_layer": False, "layer_norm_target_layer": True},
    {"instance_norm_target_layer": False, "batch_norm_target_layer": True},
    {"layer_norm_targets": False, "instance_norm_targets": True}, {"end_of_block_targets": True},
    {"ema_encoder_only": True}, {"ema_local_encoder": False}, {"keep_masked_pct": 0.25},
    {"decoder_input_dropout": 0.5, "mask_noise_std": 0.01}, {"add_positions_all": True, "add_positions_masked": True},
    {"average_top_k_layers": 1},
]


@pytest.mark.parametrize("change", VARIANTS, ids=lambda c: ",".join(c))
def test_pretraining_options_run_and_train(change):
    """Every option of the recipe runs a step with drawn masks, gives a finite loss and a gradient
    to the student and decoder, none to the teacher."""
    _, ckpt, inputs, _ = _case("pretrain-image")
    base = Data2Vec2VisionForPreTraining.from_pretrained(ckpt)
    model = Data2Vec2VisionForPreTraining(base.config, dataclasses.replace(base.pretraining_config, **change), seed=1)
    model.train()
    out = model(torch.from_numpy(inputs["source"]))
    assert np.isfinite(float(out.loss.detach()))
    assert out.mask.shape[0] == 2 * model.pretraining_config.clone_batch
    out.loss.backward()
    assert model.decoder.layers[0].conv.weight.grad is not None
    assert model.student.encoder.layers[0].attention.qkv_proj.weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())
    assert ("cls" in out.losses) == (model.pretraining_config.cls_loss > 0)


def _edited_checkpoint(tmp_path, name, **changes):
    """The fixture's checkpoint with ``cfg.model`` (``modalities.<m>.<key>`` for a dotted key) changed."""
    _, ckpt, _, _ = _case(name)
    state = read_fairseq_checkpoint(ckpt)
    for key, value in changes.items():
        target = state["cfg"]["model"]
        *path, leaf = key.split("__")
        for part in path:
            target = target[part]
        target[leaf] = value
    out = tmp_path / "checkpoint.pt"
    torch.save(state, out)
    return out


def test_unapplied_regularisers_are_noted(tmp_path):
    ckpt = _edited_checkpoint(tmp_path, "pretrain-audio", layerdrop=0.05, modalities__audio__prenet_dropout=0.1)
    model = Data2Vec2AudioForPreTraining.from_pretrained(ckpt)
    notes = "\n".join(model.load_report.notes)
    assert "model.layerdrop=0.05 is not applied" in notes
    assert "model.modalities.audio.prenet_dropout=0.1 is not applied" in notes


@pytest.mark.parametrize("change", [{"recon_loss": 1.0}, {"modalities__image__transformer_decoder": True}])
def test_options_d2v_does_not_implement_are_refused(tmp_path, change):
    ckpt = _edited_checkpoint(tmp_path, "pretrain-image", **change)
    with pytest.raises(FairseqCheckpointError, match="options d2v does not implement"):
        Data2Vec2VisionForPreTraining.from_pretrained(ckpt)


def test_text_pad_rows_get_no_gradient():
    """As fairseq's embeddings (padding_idx): the token and position rows of the pad id stay
    fixed in training. (Regression: d2v's tables used to give them gradients.)"""
    config = Data2Vec2TextModel.config_class(vocab_size=25, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=16)
    model = Data2Vec2TextModel(config)
    ids = torch.tensor([[0, 5, 2, 1, 1], [0, 7, 8, 2, 1]])
    model(ids, attention_mask=torch.ones_like(ids)).last_hidden_state.square().sum().backward()
    pad = config.pad_token_id
    emb = model.embeddings
    assert emb.word_embeddings.weight.grad[pad].abs().max() == 0
    assert emb.word_embeddings.weight.grad[5].abs().max() > 0
    assert emb.position_embeddings.weight.grad[pad].abs().max() == 0


@pytest.mark.parametrize("name", STEP_CASES)
def test_fairseq_names_of_any_model_are_the_checkpoints(name):
    """The names d2v gives upstream's tensors (``fairseq_names``, for any model) are the keys the
    checkpoint uses, tensor for tensor."""
    case, ckpt, _, _ = _case(name)
    model = CLASSES[case["modality"]].from_pretrained(ckpt)
    assert model.fairseq_names() == P.read_fairseq_pretraining(ckpt).fairseq_names


@pytest.mark.parametrize("options", [
    {"patch_embed_dim": 48, "num_prenet_layers": 0},
    {"layer_norm_first": True},
], ids=["patch-dense", "pre-ln"])
def test_fairseq_names_map_back_for_other_layouts(options):
    from d2v_common.data2vec2 import Data2Vec2VisionConfig

    config = Data2Vec2VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   image_size=32, patch_size=8, **options)
    pcfg = P.Data2Vec2PretrainingConfig(modality="vision", decoder_dim=16, decoder_groups=4, ema_encoder_only=False)
    model = Data2Vec2VisionForPreTraining(config, pcfg)
    names = model.fairseq_names()
    assert set(names) == set(model.pretraining_arrays()) and len(set(names.values())) == len(names)


def test_fairseq_names_for_audio_layouts():
    from d2v_common.data2vec2 import Data2Vec2AudioConfig

    config = Data2Vec2AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                  conv_dim=[32, 32], conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=2,
                                  conv_pos_kernel_size=4, num_conv_pos_embedding_groups=4, conv_pos_pre_layer_norm=True,
                                  feat_extract_norm="group")
    pcfg = P.Data2Vec2PretrainingConfig(modality="audio", decoder_dim=16, decoder_groups=4)
    names = Data2Vec2AudioForPreTraining(config, pcfg).fairseq_names()
    assert names["data2vec2_audio.encoder.pos_conv_layer_norm.weight"] == \
        "modality_encoders.AUDIO.relative_positional_encoder.0.weight"
    assert names["data2vec2_audio.feature_extractor.conv_layers.0.layer_norm.bias"] == \
        "modality_encoders.AUDIO.local_encoder.conv_layers.0.2.bias"


# ------------------------------------------------------------------------ mixed precision


# the three first upstream cases (one per modality): bf16's error grows with some recipes' options
# (batch-norm targets, alibi with CLS tokens), which the float32 fixtures check
@pytest.mark.parametrize("name", BASE_CASES)
def test_bf16_autocast_step_is_close_to_float32(name):
    """A training step under ``torch.autocast("cpu", torch.bfloat16)``: the loss stays float32
    and finite, within 2e-3 (relative) of the float32 step (measured <= 2.5e-4), the gradient
    points the same way (cosine >= 0.999; measured >= 0.99991) and the EMA keeps a float32 teacher."""
    case, ckpt, inputs, _ = _case(name)
    model = CLASSES[case["modality"]].from_pretrained(ckpt)
    model.train()
    grads = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = _step(model, inputs)
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        model.zero_grad()
        if not autocast:
            reference = float(out.loss.detach())
    assert out.loss.dtype == torch.float32 and out.target.dtype == torch.float32
    assert np.isfinite(float(out.loss.detach())) and bool(torch.isfinite(grads[1]).all())
    assert abs(float(out.loss.detach()) - reference) <= 2e-3 * abs(reference)
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) >= 0.999
    model.ema_update()
    assert {p.dtype for p in model.teacher.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------- distributed

_DDP_WORKER = """
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import d2v_torch

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
job_dir = sys.argv[1]
for name, spec in json.load(open(os.path.join(job_dir, "job.json"))).items():
    model = getattr(d2v_torch, spec["class"]).from_pretrained(os.path.join(job_dir, name))
    model.train()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    data = np.load(os.path.join(job_dir, name + ".npz"))
    for step in range(spec["steps"]):
        rows = spec["rank_rows"][rank]  # this rank's samples of the global batch (uneven on purpose)
        args = [torch.from_numpy(data["b%d.%s" % (step, k)][rows[0]:rows[1]]) for k in spec["inputs"]]
        c = model.pretraining_config.clone_batch
        mask = torch.from_numpy(data["b%d.mask" % step][rows[0] * c:rows[1] * c])
        out = ddp(*args, precomputed_mask=mask)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        model.ema_update()  # after each optimizer step: every rank's student, hence teacher, is the same
    np.savez(os.path.join(job_dir, "%s.rank%d.npz" % (name, rank)), **model.pretraining_arrays())
dist.destroy_process_group()
"""

_DDP_EMA = dict(ema_decay=0.5, ema_end_decay=0.9, ema_anneal_end_step=10)  # the teacher moves visibly


def _global_batch(model, inputs, rng, size=3):
    """``size`` samples around the fixture's (the last one shorter where the modality pads) and a
    mask drawn by the model for them."""
    source = inputs["source"]
    if source.dtype == np.int64:  # text: fresh ids, the last row padded
        x = rng.integers(4, model.config.vocab_size, (size, source.shape[1]))
        x[:, 0] = 0
        x[-1, -4:] = model.config.pad_token_id
        args = [x, x != model.config.pad_token_id]
    else:
        x = rng.normal(0, 1, (size, *source.shape[1:])).astype(np.float32)
        args = [x]
        if "padding_mask" in inputs:  # audio: the last waveform is shorter
            keep = np.ones(x.shape, bool)
            keep[-1, -400:] = False
            args.append(keep)
    with torch.no_grad():
        mask = model(*[torch.from_numpy(a) for a in args]).mask.numpy()
    return args, mask


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(tmp_path):
    """2 processes (gloo, CPU) on 2 + 1 samples of each global batch of 3 == 1 process on the 3,
    for two SGD steps, each followed by the EMA update: the loss is normalised by the global
    masked count (all-reduced), the CLS loss (image fixture) weighted by it; both ranks end
    with the same student, decoder and teacher."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(0)
    job, single = {}, {}
    # one case per modality: batch-norm targets (image-alibi-clone3-bn) use each rank's own
    # statistics, as upstream, so they do not equal one process by design
    for name in BASE_CASES:
        case, ckpt, inputs, _ = _case(name)
        cls = CLASSES[case["modality"]]
        model = cls.from_pretrained(ckpt, seed=0)
        model = cls(model.config, dataclasses.replace(model.pretraining_config, **_DDP_EMA), seed=0)
        model.load_pretraining_arrays(cls.from_pretrained(ckpt).pretraining_arrays())
        model.save_pretrained(tmp_path / name)
        start = model.pretraining_arrays()
        data = {}
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
        for step in range(2):
            args, mask = _global_batch(model, inputs, rng)
            keys = ["source", "keep"][:len(args)]
            data.update({f"b{step}.{k}": a for k, a in zip(keys, args)})
            data[f"b{step}.mask"] = mask
            model(*[torch.from_numpy(a) for a in args], precomputed_mask=torch.from_numpy(mask)).loss.backward()
            opt.step()
            opt.zero_grad()
            model.ema_update()
        np.savez(tmp_path / f"{name}.npz", **data)
        job[name] = {"class": cls.__name__, "lr": 0.2, "steps": 2, "inputs": keys, "rank_rows": [[0, 2], [2, 3]]}
        single[name] = (start, model.pretraining_arrays())
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "worker.py").write_text(_DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=repo,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name, (start, expected) in single.items():
        ranks = [dict(np.load(tmp_path / f"{name}.rank{r}.npz")) for r in (0, 1)]
        assert set(ranks[0]) == set(expected)
        worst, where = max((float(np.abs(ranks[0][k].astype(np.float64) - v).max()), k) for k, v in expected.items())
        assert worst <= 1e-5, f"{name}: {where} differs by {worst}"
        for key in expected:
            assert np.array_equal(ranks[0][key], ranks[1][key]), f"{name}: the ranks differ at {key}"
        moved = [k for k in start if k.startswith("teacher.") and not np.array_equal(start[k], expected[k])]
        assert moved, f"{name}: the teacher did not move"
        assert max(float(np.abs(expected[k] - start[k]).max()) for k in start if k.startswith("decoder.")) > 1e-3


@pytest.mark.parametrize("kernel,stride,length,bias", [(3, 2, 41, False), (3, 2, 40, True), (2, 2, 17, False),
                                                       (5, 2, 30, True), (4, 3, 29, False)])
def test_strided_conv_as_matmuls_equals_the_conv(kernel, stride, length, bias):
    """The pretraining step's feature-encoder convs (matmuls on time-major views): the conv's
    output (time-major) and the input's and weights' gradients, up to float32 rounding."""
    from d2v_torch.data2vec2_pretraining import strided_conv_as_matmuls

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride, bias=bias)
    x = torch.randn(2, length, 6).transpose(1, 2).requires_grad_()  # time-major, as the encoder's
    want = conv(x)
    got = strided_conv_as_matmuls(conv, x)
    assert got.shape == want.shape and got.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(want)
    params = [x, *conv.parameters()]
    for a, b in zip(torch.autograd.grad(want, params, g), torch.autograd.grad(got, params, g)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
