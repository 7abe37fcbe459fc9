"""Big models on small machines, PyTorch (issue 30): LoRA through peft, dynamic int8,
FSDP2 sharding, over every registered class on tiny configs."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import torch_inputs
from crosscheck.training import deterministic_config

ONE_PER_CLASS = list({c.architecture: c for c in reversed([c for c in all_cases("small") if "interp" not in c.name])}.values())


SAVE_ROUND_TRIPS = ("Data2VecTextForMaskedLM", "Data2VecAudioForXVector", "Data2VecVisionForSemanticSegmentation",
                    "Data2Vec2AudioForSequenceClassification")


def _first_tensor(out) -> torch.Tensor:
    """The model's loss when it has one, else its first output (a stand-in loss)."""
    return out.loss if getattr(out, "loss", None) is not None else next(v for v in out.to_tuple() if v is not None)


def _fresh(case, seed=0):
    torch.manual_seed(seed)
    return d2v_torch.model_class(case.architecture)(deterministic_config(case.config))


def _output(model, inputs, case) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**inputs, **case.call_kwargs)
    return next(v for k, v in out.items() if k != "loss" and isinstance(v, torch.Tensor))


def test_every_class_trains_merges_and_saves_with_lora(tmp_path):
    """forward, a training step (only the adapters move), merge_and_unload (same outputs);
    peft's adapter save/reload and d2v's save after merging (same outputs, same weights) for a
    head of each family (the saving code is the same for every class)."""
    assert {c.architecture for c in ONE_PER_CLASS} == set(d2v_torch.MODEL_CLASSES)
    for case in ONE_PER_CLASS:
        model = _fresh(case)
        frozen = {k: v.detach().clone() for k, v in model.named_parameters()}  # BatchNorm stats move in training
        targets = d2v_torch.lora_target_modules(model)
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        inputs = torch_inputs(case.make_inputs(np.random.default_rng(0)))
        lora.train()
        torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.5).zero_grad()
        loss = _first_tensor(lora(**inputs, **case.call_kwargs)).float().sum()
        loss.backward()
        optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.5)
        optimizer.step()
        base_now = {k.replace("base_layer.", ""): v for k, v in lora.get_base_model().named_parameters() if "lora_" not in k}
        assert all(torch.equal(base_now[k], v) for k, v in frozen.items()), case.architecture
        lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().max() > 0 for p in lora_b), case.architecture  # the step moved them
        adapted = _output(lora, inputs, case)
        saving = case.architecture in SAVE_ROUND_TRIPS
        if saving:
            lora.save_pretrained(tmp_path / case.architecture / "adapter")
            base = _fresh(case)  # the same base weights (and the BatchNorm statistics the step moved)
            base.load_state_dict({k.replace("base_layer.", ""): v for k, v in lora.get_base_model().state_dict().items()
                                  if "lora_" not in k})
            reloaded = PeftModel.from_pretrained(base, tmp_path / case.architecture / "adapter")
            torch.testing.assert_close(_output(reloaded, inputs, case), adapted, rtol=0, atol=0)

        merged = lora.merge_and_unload(safe_merge=True)
        assert type(merged) is d2v_torch.model_class(case.architecture)
        torch.testing.assert_close(_output(merged, inputs, case), adapted, rtol=1e-5, atol=1e-5)
        if saving:
            merged.save_pretrained(tmp_path / case.architecture / "merged")
            loaded = type(merged).from_pretrained(tmp_path / case.architecture / "merged")
            assert loaded.state_dict().keys() == merged.state_dict().keys()
            assert all(torch.equal(loaded.state_dict()[k], v) for k, v in merged.state_dict().items()), case.architecture


def test_lora_rank_8_trains_under_one_percent_of_a_base_model():
    """Base-size models built on the meta device (no memory): rank 8 on the query and value
    projections (2.0: the fused qkv) trains < 1% of the weights."""
    for model_class, config in [(d2v_torch.Data2VecTextModel, d2v_torch.Data2VecTextConfig()),
                                (d2v_torch.Data2VecAudioModel, d2v_torch.Data2VecAudioConfig()),
                                (d2v_torch.Data2VecVisionModel, d2v_torch.Data2VecVisionConfig()),
                                (d2v_torch.Data2Vec2AudioModel, d2v_torch.Data2Vec2AudioConfig())]:
        with torch.device("meta"):
            model = model_class(config)
        lora = get_peft_model(model, LoraConfig(r=8, target_modules=d2v_torch.lora_target_modules(model)))
        trainable, total = lora.get_nb_trainable_parameters()
        assert trainable / total < 0.01, (model_class.__name__, trainable, total)


def test_a_short_lora_training_lowers_the_loss():
    case = next(c for c in ONE_PER_CLASS if c.architecture == "Data2VecTextForSequenceClassification")
    model = _fresh(case)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"]))
    inputs = torch_inputs(case.make_inputs(np.random.default_rng(0)))
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = lora(**inputs).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_lora_target_modules_name_each_familys_projections():
    text = next(c for c in ONE_PER_CLASS if c.architecture == "Data2VecTextModel")
    assert d2v_torch.lora_target_modules(_fresh(text)) == ["query", "value"]  # HF's names work as they are
    audio = next(c for c in ONE_PER_CLASS if c.architecture == "Data2VecAudioModel")
    assert d2v_torch.lora_target_modules(_fresh(audio), ("query", "key", "value")) == ["q_proj", "k_proj", "v_proj"]
    v2 = next(c for c in ONE_PER_CLASS if c.architecture == "Data2Vec2TextModel")
    assert d2v_torch.lora_target_modules(_fresh(v2)) == ["qkv_proj"]
    with pytest.raises(ValueError, match="unknown attention role 'output'"):
        d2v_torch.lora_target_modules(_fresh(v2), ("output",))


def test_every_class_runs_with_dynamic_int8_and_reloads_from_its_state_dict(tmp_path):
    """quantize_dynamic_int8: every Linear that runs as a Linear becomes int8, outputs stay near
    float32 (tiny random weights: within 6% of the output's scale), and the quantised state_dict reloads into a freshly quantised model exactly."""
    for case in ONE_PER_CLASS:
        model = _fresh(case).eval()
        quantized = d2v_torch.quantize_dynamic_int8(model)
        assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in quantized.modules())
        assert type(model.state_dict()[next(iter(model.state_dict()))]) is torch.Tensor  # the original is left float
        inputs = torch_inputs(case.make_inputs(np.random.default_rng(0)))
        reference, got = _output(model, inputs, case), _output(quantized, inputs, case)
        scale = reference.abs().max()
        if scale > 1e-3:  # a freshly initialised x-vector head's logits are ~1e-7: no scale to compare to
            assert (got - reference).abs().max() <= 0.06 * scale, case.architecture
        if case.architecture in SAVE_ROUND_TRIPS:
            torch.save(quantized.state_dict(), tmp_path / "int8.pt")
            again = d2v_torch.quantize_dynamic_int8(_fresh(case, seed=1))
            again.load_state_dict(torch.load(tmp_path / "int8.pt"))
            torch.testing.assert_close(_output(again, inputs, case), got, rtol=0, atol=0)


# one head per family (1.0 text, audio, vision; 2.0 text, audio, vision)
FSDP_HEADS = ["Data2VecTextForSequenceClassification", "Data2VecAudioForSequenceClassification",
              "Data2VecVisionForImageClassification", "Data2Vec2TextForSequenceClassification",
              "Data2Vec2AudioForSequenceClassification", "Data2Vec2VisionForImageClassification"]


@pytest.mark.slow  # two spawned processes, each importing torch and d2v
def test_fsdp2_step_on_two_cpu_processes_equals_the_unsharded_step(tmp_path):
    """FSDP2 (fully_shard per encoder block + the root) on 2 gloo processes, both on the same
    batch (gradients averaged): the step's loss and every weight equal one process's step."""
    import torch.multiprocessing as mp

    from tests import fsdp_worker

    mp.start_processes(fsdp_worker.run, args=(2, str(tmp_path / "rendezvous"), FSDP_HEADS, str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")
    for case in fsdp_worker.cases(FSDP_HEADS):
        model, inputs = fsdp_worker.model_and_inputs(case)
        assert len(d2v_torch.big_models.encoder_blocks(model)) >= case.config.num_hidden_layers
        loss = fsdp_worker.one_step(model, inputs, case)
        sharded = np.load(tmp_path / f"{case.architecture}.npz")
        assert abs(float(sharded["loss"]) - loss) <= 1e-5 * max(1.0, abs(loss)), case.architecture
        for name, value in model.state_dict().items():
            np.testing.assert_allclose(sharded[name], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)
