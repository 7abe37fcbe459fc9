"""Runs in the ORACLE's venv (not d2v's): upstream fairseq's data2vec 2.0 mask samplers, driven as
the oracle tools' ``step.py --no-mask`` drives them (the modality encoder's training call with
``clone_batch`` and mask seeds), many times per config; prints the statistics of
``crosscheck/mask_stats.py`` as JSON. Started by ``python -m crosscheck.fairseq_oracle mask-stats``.

    PYTHONPATH=WORK/shim:TOOLS:REPO WORK/venv/bin/python crosscheck/oracle_mask_stats.py CONFIGS_JSON DRAWS
"""
import json
import sys

import step  # the oracle tools' step.py (its imports set the shim up)
import numpy as np
import torch
from omegaconf import OmegaConf

import fairseq.tasks as T
from fairseq.data.dictionary import Dictionary
from examples.data2vec.models.data2vec2 import Data2VecMultiConfig, Data2VecMultiModel
from examples.data2vec.models.modalities.base import MaskSeed

from crosscheck.mask_stats import mask_statistics


def draw(config: dict, draws: int) -> dict:
    m = config["modality"]
    cfg = step.merge(step.BASE[m], {"clone_batch": config["clone_batch"], "modalities": {m: config["mask"]}})
    task, task_cfg = None, {"_name": "x", "data": "data"}
    if m == "text":
        d = Dictionary()
        for i in range(20):
            d.add_symbol(f"{100 + i}")
        d.add_symbol("<mask>")
        T._BUILDERS["source_dictionary"] = d
        task = T._Task(None, d)
    if m == "image":
        cfg = step.merge(cfg, {"modalities": {"image": {"input_size": config["grid"] * 8, "patch_size": 8}}})
    model_cfg = OmegaConf.merge(OmegaConf.structured(Data2VecMultiConfig), OmegaConf.create(cfg))
    root = OmegaConf.create({"common": {"seed": 1}, "optimization": {"max_update": 10}, "task": task_cfg,
                             "criterion": {"_name": "model"}, "model": model_cfg})
    model = Data2VecMultiModel.build_model(root.model, task=task)
    enc = model.modality_encoders[m.upper()]
    torch.manual_seed(0)
    np.random.seed(0)
    lengths = config.get("lengths")
    if m == "image":
        src, pad = torch.randn(config["batch"], 3, config["grid"] * 8, config["grid"] * 8), None
    elif m == "audio":
        src, pad = torch.randn(len(lengths), max(lengths)), torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
        for i, n in enumerate(lengths):
            pad[i, n:] = True
    else:
        src = torch.randint(d.nspecial, len(d) - 1, (len(lengths), max(lengths)))
        for i, n in enumerate(lengths):
            src[i, n:] = d.pad()
        pad = src.eq(d.pad())
    masks = []
    frame_pad = None
    with torch.no_grad():
        for k in range(draws):
            seeds = MaskSeed(seed=1 + k, update=k, ids=torch.arange(src.size(0)))
            out = enc(src, pad, True, remove_masked=True, clone_batch=config["clone_batch"], mask_seeds=seeds)
            masks.append(out["encoder_mask"].mask.bool().numpy())
            if pad is not None and frame_pad is None:  # the padding of the masked rows (frames for audio)
                feats = enc.local_features(src)
                frame_pad = enc.convert_padding_mask(feats, pad).repeat_interleave(config["clone_batch"], 0).numpy()
    masks = np.stack(masks)
    stats = mask_statistics(masks, frame_pad, config.get("grid"))
    stats["length"] = int(masks.shape[-1])
    stats["valid_lengths"] = None if frame_pad is None else (~frame_pad[::config["clone_batch"]]).sum(1).tolist()
    return stats


def main():
    configs = json.loads(open(sys.argv[1]).read())
    draws = int(sys.argv[2])
    out = {name: draw(c, draws) for name, c in configs.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
