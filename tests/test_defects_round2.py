"""Regression tests for issue 26 ("Defects a new user hit in the first hour, round 2"), items 2, 7,
9, 10 and 12. Each test failed on main 4c0e43b."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python args...`` in a fresh process that imports this checkout's packages."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env,
                          timeout=timeout)


# ------------------------------------------------------------------------------ item 2: entry points
# Every documented ``python -m`` module and console script, with the cheap arguments that prove it
# starts (a full run is tested elsewhere or below).
CONSOLE_SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
MODULE_ENTRY_POINTS = ["d2v_common.export", "d2v_common.convert", "d2v_torch.export", "d2v_tf.export",
                       "crosscheck", "crosscheck.bench", "crosscheck.bench_pretraining", "crosscheck.bench_memory",
                       "crosscheck.adapters_report", "crosscheck.pipeline_memory"]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def _documented_modules() -> set[str]:
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    return set(re.findall(r"python -m ([A-Za-z_][\w.]*)", text)) - {"pytest", "pip"}


def test_every_documented_module_entry_point_is_tested_here():
    assert _documented_modules() <= set(MODULE_ENTRY_POINTS)


@pytest.mark.slow  # a fresh interpreter per entry point
@pytest.mark.parametrize("module", MODULE_ENTRY_POINTS)
def test_module_entry_point_starts(module):
    proc = _run(["-m", module, "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.slow  # a fresh interpreter per entry point
@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_script_starts(script):
    module, function = CONSOLE_SCRIPTS[script].split(":")
    proc = _run(["-c", f"import sys; from {module} import {function}; sys.argv[0] = {script!r}; sys.exit({function}())",
                 "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.slow  # a fresh interpreter per entry point
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_script_starts(example):
    proc = _run([str(ROOT / "examples" / example), "--help"])
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.fixture(scope="module")
def tiny_text_checkpoint(tmp_path_factory):
    from crosscheck.cases import text as text_cases
    from d2v_torch import Data2VecTextConfig, Data2VecTextModel

    path = tmp_path_factory.mktemp("tiny-text")
    config = Data2VecTextConfig(**{**text_cases.SMALL, "type_vocab_size": 1, "pad_token_id": 1},
                                architectures=["Data2VecTextModel"])
    Data2VecTextModel(config).save_pretrained(path)
    return path


@pytest.mark.slow  # a fresh interpreter per entry point
def test_python_m_d2v_common_export_writes_onnx(tiny_text_checkpoint, tmp_path):
    """Run as ``__main__`` the module used to be a second copy whose format registry stayed empty."""
    dst = tmp_path / "onnx"
    proc = _run(["-m", "d2v_common.export", str(tiny_text_checkpoint), str(dst), "--format", "onnx"])
    assert proc.returncode == 0, proc.stderr
    assert (dst / "model.onnx").is_file()


@pytest.mark.slow  # a fresh interpreter per entry point
def test_python_m_d2v_common_export_finds_the_keras_formats(tiny_text_checkpoint, tmp_path):
    # a bad --batch-size is rejected after the format is looked up: the error shows it was found
    proc = _run(["-m", "d2v_common.export", str(tiny_text_checkpoint), str(tmp_path / "sm"), "--format",
                 "saved-model", "--batch-size", "0"])
    assert proc.returncode == 2
    assert "not available" not in proc.stderr
    assert "batch_size must be a positive integer" in proc.stderr


# ------------------------------------------------------------------------------ item 7: .pt2 outputs
def test_pt2_outputs_need_no_detach(tiny_text_checkpoint, tmp_path):
    import torch

    from d2v_common.export import export_checkpoint
    from d2v_torch import Data2VecTextModel

    export_checkpoint(tiny_text_checkpoint, tmp_path / "pt2", "torch-export")
    program = torch.export.load(str(tmp_path / "pt2" / "model.pt2")).module()
    ids = torch.tensor([[0, 5, 6, 2]])
    out = program(input_ids=ids, attention_mask=torch.ones_like(ids))  # no torch.no_grad(), as in serving.md
    assert not out["last_hidden_state"].requires_grad
    assert out["last_hidden_state"].numpy().shape[:2] == (1, 4)
    # the model exported from Python keeps its trainable weights
    model = Data2VecTextModel.from_pretrained(tiny_text_checkpoint)
    from d2v_torch.export import export_program

    sample = {"input_ids": np.tile(ids.numpy(), (2, 1)), "attention_mask": np.ones((2, 4), dtype=np.int64)}
    export_program(model, sample)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------ item 10: NaN in configs
def _float_fields():
    import d2v_common.data2vec2  # noqa: F401 - registers the data2vec 2.0 configs
    from d2v_common.configs import CONFIG_CLASSES

    for cls in CONFIG_CLASSES.values():
        for key, field in cls.FIELDS.items():
            if field.kind.rstrip("?") in ("float", "floats"):
                yield cls, key, field.kind.rstrip("?") == "floats"


FLOAT_FIELDS = list(_float_fields())


def test_float_fields_cover_every_config_class():
    from d2v_common.configs import CONFIG_CLASSES

    assert {cls for cls, _, _ in FLOAT_FIELDS} == set(CONFIG_CLASSES.values())
    assert len(CONFIG_CLASSES) == 6


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("cls", "key", "is_list"), FLOAT_FIELDS,
                         ids=[f"{cls.__name__}.{key}" for cls, key, _ in FLOAT_FIELDS])
def test_every_float_field_rejects_nan_and_infinity(cls, key, is_list, bad):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{key} must be a finite number"):
        cls(**{key: [bad] if is_list else bad})


def test_nan_in_config_json_is_refused_when_loading(tmp_path):
    from d2v_common.configs import Data2VecTextConfig, load_config

    (tmp_path / "config.json").write_text('{"model_type": "data2vec-text", "layer_norm_eps": NaN}')
    with pytest.raises(ValueError, match="layer_norm_eps must be a finite number"):
        load_config(tmp_path)
    Data2VecTextConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="layer_norm_eps must be a finite number"):
        Data2VecTextConfig.from_pretrained(tmp_path, layer_norm_eps=float("nan"))
    with pytest.raises(ValueError, match="initializer_range must be a finite number"):
        Data2VecTextConfig.from_pretrained(tmp_path, initializer_range=float("nan"))


# ------------------------------------------------------------------------------ item 12: small ones
# (bench: an unknown workload makes the old code stop right after parsing instead of benchmarking)
@pytest.mark.parametrize(("module", "args"), [
    ("crosscheck.__main__", ["--seed", "-1"]),
    ("crosscheck.bench", ["--seed", "-1", "--workloads", "none-such"]),
    ("crosscheck.bench", ["--warmup", "0", "--workloads", "none-such"]),
    ("crosscheck.bench", ["--repeats", "0", "--workloads", "none-such"]),
    ("crosscheck.bench", ["--threads", "0", "--workloads", "none-such"]),
    ("crosscheck.bench", ["--load-runs", "0", "--workloads", "none-such"]),
])
def test_crosscheck_int_options_are_argparse_errors(module, args, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[0]}" in err
    assert "a non-negative integer" in err or "a positive integer" in err
