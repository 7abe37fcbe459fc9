"""Runs in the ORACLE's venv: the oracle tools' ``step.py``, except that its weight randomiser
leaves non-persistent buffers alone. ``step.py`` gives every floating buffer random values, those
that no checkpoint stores too (fairseq's ``SinusoidalPositionalEmbedding.weights``, text with
``learned_pos=False``): upstream would then run on a table the checkpoint cannot give anyone.

    PYTHONPATH=WORK/shim:TOOLS WORK/venv/bin/python crosscheck/oracle_step.py <step.py arguments>
"""
import torch

import step

_randomise = step.randomise


def randomise(module, gen):
    kept = {(name, b): getattr(m, b).clone() for name, m in module.named_modules()
            for b in getattr(m, "_non_persistent_buffers_set", ()) if getattr(m, b, None) is not None}
    _randomise(module, gen)
    with torch.no_grad():
        for (name, b), value in kept.items():
            getattr(module.get_submodule(name), b).copy_(value)


step.randomise = randomise

if __name__ == "__main__":
    step.main()
