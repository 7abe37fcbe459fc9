"""The first lines of every script that runs an exported artifact: d2v made unimportable, so an
artifact that still needed d2v's code would fail there instead of quietly importing it."""

import textwrap

D2V_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("d2v_common", "d2v_torch", "d2v_tf", "crosscheck"):
                raise ImportError(f"{name} must not be needed to serve an exported model")

    sys.meta_path.insert(0, Blocked())
    import numpy as np
    """
)
