"""The per-process half of tests/test_big_models_torch.py's FSDP2 test (spawned on CPU, gloo):
every rank shards the same model with ``d2v_torch.shard_for_fsdp``, takes one SGD step on the
same batch and rank 0 writes the gathered weights."""

import os

import numpy as np
import torch
import torch.distributed as dist

import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.training import deterministic_config


def cases(architectures):
    return [next(c for c in all_cases("small") if c.architecture == a) for a in architectures]


def model_and_inputs(case):
    torch.manual_seed(0)
    model = d2v_torch.model_class(case.architecture)(deterministic_config(case.config)).train()
    inputs = {k: torch.from_numpy(np.require(v, requirements="C"))
              for k, v in case.make_inputs(np.random.default_rng(0)).items()}
    return model, inputs


def one_step(model, inputs, case) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(**inputs, **case.call_kwargs).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def run(rank: int, world: int, init_file: str, architectures: list, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case in cases(architectures):
            model, inputs = model_and_inputs(case)
            d2v_torch.shard_for_fsdp(model)
            loss = one_step(model, inputs, case)
            state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().numpy().copy()
                     for k, v in model.state_dict().items()}
            if rank == 0:
                np.savez(os.path.join(out_dir, f"{case.architecture}.npz"), loss=loss, **state)
    finally:
        dist.destroy_process_group()
