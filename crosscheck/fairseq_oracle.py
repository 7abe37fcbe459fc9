"""Development aid: drive the ORIGINAL data2vec 2.0 code (fairseq, built by the oracle tools) to
make the pretraining fixtures and the mask statistics the tests read. Not imported by the
library or the tests; it needs the oracle's venv and shim (``setup.sh`` of the d2v2 oracle tools):

    python -m crosscheck.fairseq_oracle fixtures --oracle WORK --tools TOOLS   # tests/fixtures/data2vec2-pretraining/<case>/
    python -m crosscheck.fairseq_oracle mask-stats --oracle WORK --tools TOOLS # tests/fixtures/data2vec2-mask-stats.json

``WORK`` holds ``venv/`` and ``shim/``; ``TOOLS`` holds ``step.py``. Every case is one
``step.py`` run (its command line is printed and kept in ``cases.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
PRETRAINING_DIR = os.path.join(FIXTURES, "data2vec2-pretraining")

# Tiny widths shared by the extra cases (fixture bytes stay small).
_TINY = {"embed_dim": 16, "mlp_ratio": 2.0, "num_heads": 4}
_TINY_DEC = {"decoder_dim": 8, "decoder_groups": 2}

# name -> (modality, seed, overrides, extra step.py arguments). Together they use every option the
# issue lists: clone_batch 1/3/4, cls_loss 0 and > 0, every target normalisation, encoder-only EMA
# and not, ALiBi off and on (audio, image, text), prenet depths 0..2, loss_beta, loss_scale,
# average_top_k_layers, decoder depth / kernel (odd, even) / residual / projections / positions,
# mask_prob_adjust, keep_masked_pct and inverse_mask (through the precomputed mask). inverse_mask is
# images' only: upstream's span sampler fails with it (``1 - mask`` on a bool tensor); text cannot
# use ema_local_encoder (upstream feeds the token ids to the teacher as floats) and audio with
# clone_batch > 1 cannot use encoder_zero_mask=False (an in-place write breaks the backward pass).
EXTRA_CASES = {
    "image-clone1-nocls-encoder-ema": ("image", 311, {
        **_TINY, "clone_batch": 1, "cls_loss": 0.0, "ema_encoder_only": True, "average_top_k_layers": 1,
        "instance_norm_target_layer": False, "layer_norm_target_layer": True,
        "layer_norm_targets": False, "instance_norm_targets": True, "loss_beta": 0.25,
        "modalities": {"image": {"embed_dim": 16, "input_size": 16, "patch_size": 4, "prenet_depth": 0, "inverse_mask": False, "mask_prob": 0.6,
                                 "mask_prob_adjust": 0.0, "mask_length": 2, "keep_masked_pct": 0.25,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 3, "decoder_kernel": 5,
                                             "decoder_residual": False}}}}, []),
    "image-alibi-clone3-bn": ("image", 312, {
        **_TINY, "clone_batch": 3, "cls_loss": 0.1, "loss_scale": 0.5, "end_of_block_targets": True,
        "instance_norm_target_layer": False, "batch_norm_target_layer": True, "layer_norm_targets": True,
        "modalities": {"image": {"embed_dim": 16, "input_size": 16, "patch_size": 4, "prenet_depth": 2, "ema_local_encoder": False,
                                 "use_alibi_encoder": True, "learned_alibi_scale": True,
                                 "learned_alibi_scale_per_layer": True, "mask_prob": 0.7, "mask_length": 3,
                                 "mask_prob_adjust": 0.1, "num_extra_tokens": 2,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 2, "decoder_kernel": 4,
                                             "add_positions_masked": True, "add_positions_all": True}}}}, []),
    "image-preln-patchdense": ("image", 313, {
        **_TINY, "clone_batch": 2, "cls_loss": 0.02, "layer_norm_first": True, "average_top_k_layers": 3,
        "depth": 3, "loss_beta": 1.0, "loss_scale": 2.0,
        "modalities": {"image": {"embed_dim": 24, "input_size": 16, "patch_size": 4, "prenet_depth": 1, "inverse_mask": True, "mask_prob": 0.5,
                                 "keep_masked_pct": 0.1, "mask_prob_adjust": 0.2,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 1, "decoder_kernel": 3}}}}, []),
    "audio-noalibi-clone1": ("audio", 321, {
        **_TINY, "clone_batch": 1, "average_top_k_layers": 1, "ema_encoder_only": True, "loss_beta": 0.5,
        "instance_norm_target_layer": False, "layer_norm_target_layer": True, "layer_norm_targets": True,
        "modalities": {"audio": {"feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2",
                                 "use_alibi_encoder": False, "learned_alibi_scale": False,
                                 "learned_alibi_scale_per_head": False, "prenet_depth": 0, "mask_prob": 0.65,
                                 "mask_length": 3, "keep_masked_pct": 0.2,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 3, "decoder_kernel": 5,
                                             "decoder_residual": False, "projection_layers": 2}}}}, []),
    "audio-cls-clone3-layeralibi": ("audio", 322, {
        **_TINY, "clone_batch": 3, "cls_loss": 0.05, "loss_scale": 2.0, "ema_encoder_only": False,
        "instance_norm_targets": True,
        "modalities": {"audio": {"feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2",
                                 "extractor_mode": "default", "conv_pos_pre_ln": True, "conv_pos_width": 6,
                                 "num_extra_tokens": 1, "prenet_depth": 2, "learned_alibi_scale": True,
                                 "learned_alibi_scale_per_head": False, "learned_alibi_scale_per_layer": True,
                                 "ema_local_encoder": True, "mask_prob": 0.6,
                                 "mask_length": 4,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 2, "decoder_kernel": 4,
                                             "projection_layers": 3, "projection_ratio": 1.5}}}},
        ["--lengths", "1500", "1800"]),
    "audio-fixed-alibi-localema": ("audio", 323, {
        **_TINY, "clone_batch": 2, "ema_encoder_only": False, "average_top_k_layers": 3, "depth": 3,
        "instance_norm_target_layer": True, "layer_norm_targets": True, "loss_beta": 0.1,
        "modalities": {"audio": {"feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2",
                                 "learned_alibi_scale": False, "learned_alibi_scale_per_head": False,
                                 "alibi_scale": 0.7, "num_alibi_heads": 2, "prenet_depth": 1,
                                 "ema_local_encoder": False, "mask_prob": 0.5, "mask_length": 5,
                                 "mask_dropout": 0.1,
                                 "decoder": {**_TINY_DEC, "decoder_layers": 1, "decoder_kernel": 7}}}},
        ["--lengths", "1600", "1600"]),
    "text-clone1-spans-fullema": ("text", 331, {
        **_TINY, "clone_batch": 1, "ema_encoder_only": False, "loss_scale": None, "loss_beta": 0.1,
        "instance_norm_target_layer": False, "layer_norm_target_layer": True, "layer_norm_targets": True,
        "modalities": {"text": {"prenet_depth": 2, "mask_length": 3, "mask_prob": 0.4, "keep_masked_pct": 0.25,
                                "decoder": {"decoder_dim": 8, "decoder_groups": 4, "decoder_kernel": 5,
                                            "decoder_layers": 3, "decoder_residual": True,
                                            "projection_layers": 1}}}}, ["--lengths", "14", "10"]),
    "text-alibi-cls-clone4": ("text", 332, {
        **_TINY, "clone_batch": 4, "cls_loss": 0.05, "ema_encoder_only": False, "average_top_k_layers": 1,
        "end_of_block_targets": True, "layer_norm_first": True, "instance_norm_target_layer": False,
        "instance_norm_targets": True,
        "modalities": {"text": {"prenet_depth": 1, "num_extra_tokens": 1, "use_alibi_encoder": True,
                                "learned_alibi_scale": True, "learned_alibi_scale_per_head": True,
                                "layernorm_embedding": False,
                                "no_scale_embedding": False, "mask_prob": 0.5,
                                "mask_length": 2,
                                "decoder": {"decoder_dim": 8, "decoder_groups": 1, "decoder_kernel": 2,
                                            "decoder_layers": 2, "decoder_residual": True,
                                            "projection_layers": 2, "projection_ratio": 1.0}}}},
        ["--lengths", "10", "12"]),
    "text-sinusoidal-random": ("text", 333, {
        **_TINY, "clone_batch": 3, "ema_encoder_only": True, "average_top_k_layers": 2, "loss_scale": 0.25,
        "modalities": {"text": {"prenet_depth": 1, "learned_pos": False, "mask_length": 1, "mask_prob": 0.3,
                                "decoder": {"decoder_dim": 8, "decoder_groups": 2, "decoder_kernel": 3,
                                            "decoder_layers": 2}}}}, ["--lengths", "9", "12"]),
}


# Mask statistics: each config is the modality's tiny step.py model with these mask options, drawn
# MASK_DRAWS times through the modality encoder's training call (as ``step.py --no-mask``). The
# first of each modality is the released base config's mask recipe (examples/data2vec/config/v2).
MASK_DRAWS = 30
MASK_CONFIGS = {
    "image-base": {"modality": "image", "grid": 14, "batch": 2, "clone_batch": 16,
                   "mask": {"inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 3}},
    "image-blocks": {"modality": "image", "grid": 14, "batch": 2, "clone_batch": 4,
                     "mask": {"inverse_mask": False, "mask_prob": 0.6, "mask_prob_adjust": 0.0, "mask_length": 3}},
    "image-len2-dropout": {"modality": "image", "grid": 8, "batch": 3, "clone_batch": 2,
                           "mask": {"inverse_mask": True, "mask_prob": 0.7, "mask_prob_adjust": 0.1, "mask_length": 2,
                                    "mask_dropout": 0.1}},
    "audio-base": {"modality": "audio", "lengths": [5000, 3800], "clone_batch": 8,
                   "mask": {"mask_prob": 0.5, "mask_length": 5, "mask_prob_adjust": 0.05}},
    "audio-long-spans": {"modality": "audio", "lengths": [4000, 4000, 2500], "clone_batch": 2,
                         "mask": {"mask_prob": 0.65, "mask_length": 10, "mask_dropout": 0.1}},
    "audio-add-masks": {"modality": "audio", "lengths": [3000, 2000], "clone_batch": 3,
                        "mask": {"mask_prob": 0.5, "mask_length": 4, "add_masks": True}},
    "text-base": {"modality": "text", "lengths": [64, 40], "clone_batch": 8,
                  "mask": {"mask_prob": 0.48, "mask_length": 1}},
    "text-spans": {"modality": "text", "lengths": [64, 50], "clone_batch": 2,
                   "mask": {"mask_prob": 0.3, "mask_length": 3}},
}


def make_mask_stats(args) -> None:
    import tempfile

    base, env = _oracle_cmd(args)
    env["PYTHONPATH"] += os.pathsep + os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(MASK_CONFIGS, f)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle_mask_stats.py")
    try:
        out = subprocess.run([base[0], script, f.name, str(MASK_DRAWS)], check=True, env=env, capture_output=True,
                             text=True)
    finally:
        os.remove(f.name)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    path = os.path.join(PRETRAINING_DIR, "cases.json")
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    index["mask_statistics"] = {
        "note": (f"upstream's samplers through the modality encoder's training call (as step.py --no-mask), "
                 f"{MASK_DRAWS} draws per config; made by python -m crosscheck.fairseq_oracle mask-stats; "
                 "read by tests/test_data2vec2_mask_stats.py"),
        "draws": MASK_DRAWS,
        "configs": {name: {**MASK_CONFIGS[name], "upstream": stats[name]} for name in MASK_CONFIGS},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(json.dumps(stats, indent=1))


# Cases run through crosscheck/oracle_step.py (step.py keeping non-persistent buffers, here the
# sinusoidal position table that step.py's randomiser would overwrite).
KEEP_BUFFERS = {"text-sinusoidal-random"}


def _oracle_cmd(args, keep_buffers: bool = False) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=f"{args.oracle}/shim:{args.tools}")
    script = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracle_step.py") if keep_buffers
              else os.path.join(args.tools, "step.py"))
    return [f"{args.oracle}/venv/bin/python", script], env


def _case_entry(name: str, modality: str, seed: int, command: str, folder: str) -> dict:
    import torch  # the fixture's checkpoint is a torch pickle

    ckpt = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=False)
    inputs, outputs = dict(np.load(os.path.join(folder, "inputs.npz"))), dict(np.load(os.path.join(folder, "outputs.npz")))
    state = ckpt["model"]
    ema = state["_ema"]
    differs = any(not torch.equal(v, state[k if k in state else "blocks." + k]) for k, v in ema.items()
                  if (k if k in state else "blocks." + k) in state)
    return {
        "case": name, "modality": modality.upper(), "seed": seed, "command": command,
        "model_cfg": ckpt["cfg"]["model"],
        "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in inputs.items()},
        "losses": {k[len("loss/"):]: float(v) for k, v in outputs.items() if k.startswith("loss/")},
        "sample_size": int(outputs["sample_size"]), "total": float(outputs["total"]),
        "targets_shape": list(outputs["targets"].shape),
        "n_grads": sum(k.startswith("grad/") for k in outputs),
        "teacher_differs_from_student": bool(differs),
        "files": {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))},
    }


def make_fixtures(args) -> None:
    path = os.path.join(PRETRAINING_DIR, "cases.json")
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    cases = {c["case"]: c for c in index["cases"]}
    for name, (modality, seed, overrides, extra) in EXTRA_CASES.items():
        if args.only and name not in args.only:
            continue
        folder = os.path.join(PRETRAINING_DIR, name)
        argv = ["--modality", modality, "--seed", str(seed), "--out", name, "--set",
                json.dumps(overrides, separators=(",", ":")), *extra]
        script = "crosscheck/oracle_step.py" if name in KEEP_BUFFERS else "step.py"
        command = f"{script} " + " ".join(shlex.quote(a) for a in argv)
        print(command, flush=True)
        if not args.index_only:
            run, env = _oracle_cmd(args, keep_buffers=name in KEEP_BUFFERS)
            subprocess.run(run + argv[:5] + [folder] + argv[6:], check=True, env=env)
        cases[name] = _case_entry(name, modality, seed, command, folder)
        index["cases"] = list(cases.values())
        with open(path, "w", encoding="utf-8") as f:  # after each case: a failed run keeps the others
            json.dump(index, f, indent=1)
            f.write("\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["fixtures", "mask-stats"])
    p.add_argument("--oracle", default="/work/oracle", help="folder with the oracle's venv/ and shim/")
    p.add_argument("--tools", default="/work/shared/tools/d2v2_oracle", help="folder with step.py")
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    p.add_argument("--index-only", action="store_true", help="only (re)write cases.json from the case folders")
    args = p.parse_args(argv)
    if args.what == "fixtures":
        make_fixtures(args)
    else:
        make_mask_stats(args)


if __name__ == "__main__":
    main(sys.argv[1:])
