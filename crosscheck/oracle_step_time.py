"""Runs in the ORACLE's venv (not d2v's): times one training step of upstream fairseq's
``Data2VecMultiModel`` (forward with ``precomputed_mask`` + backward of fairseq's objective, sum of
every loss tensor's sum / sample_size), as the oracle tools' ``step.py`` builds and runs it.
Started by ``python -m crosscheck.bench_pretraining --oracle WORK``, which writes FOLDER/cfg.json
(``modality``, fairseq ``model_cfg``) and FOLDER/inputs.npz (d2v's call inputs and the mask).

    PYTHONPATH=WORK/shim:TOOLS WORK/venv/bin/python crosscheck/oracle_step_time.py FOLDER THREADS SEED
"""
import json
import os
import sys
import time

import oracle_boot  # noqa: F401  (the oracle shim's import fix; first)
import numpy as np
import torch
from omegaconf import OmegaConf

from examples.data2vec.models.data2vec2 import Data2VecMultiConfig, Data2VecMultiModel


def main():
    folder, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with open(os.path.join(folder, "cfg.json")) as f:
        spec = json.load(f)
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    m = spec["modality"]
    task_cfg = {"_name": {"image": "mae_image_pretraining", "audio": "audio_pretraining"}[m], "data": "data"}
    model_cfg = OmegaConf.merge(OmegaConf.structured(Data2VecMultiConfig), OmegaConf.create(spec["model_cfg"]))
    root = OmegaConf.create({"common": {"seed": 1}, "optimization": {"max_update": 100000}, "task": task_cfg,
                             "criterion": {"_name": "model"}, "model": model_cfg})
    model = Data2VecMultiModel.build_model(root.model, task=None)
    model.train()
    if m == "image":
        src, pad = torch.from_numpy(inputs["pixel_values"]), None
    else:
        src = torch.from_numpy(inputs["input_values"])
        pad = torch.from_numpy(inputs["attention_mask"] == 0)
    mask = torch.from_numpy(inputs["precomputed_mask"]).to(torch.uint8)
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        for p in params:
            p.grad = None
        res = model(src, padding_mask=pad, mode=m.upper(), precomputed_mask=mask)
        total = sum(v.float().sum() for v in res["losses"].values()) / res["sample_size"]
        total.backward()
        return float(total.detach())

    # Steps on request, so the caller can interleave them with d2v's (a loaded machine's slow
    # spells then hit both alike): one line "step" -> one JSON line {"s", "loss"}; EOF ends.
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        loss = run()
        print(json.dumps({"s": time.perf_counter() - start, "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
