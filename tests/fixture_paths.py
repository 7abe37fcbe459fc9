"""Where the test suite's data files live: tests/fixtures/ of this repository (see its README.md).

Every test that reads a fixture takes its path from here, so the suite runs from a bare clone.
"""

import os

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# data2vec 2.0 inference: upstream fairseq outputs of tiny random models (cases.json describes them).
DATA2VEC2_DIR = os.path.join(FIXTURES_DIR, "data2vec2")
# data2vec 2.0 pretraining: one upstream training step per modality (losses and gradients).
DATA2VEC2_PRETRAINING_DIR = os.path.join(FIXTURES_DIR, "data2vec2-pretraining")
# fairseq dictionaries (dict.ltr.txt) that fit the data2vec 2.0 fixtures' output layers.
FAIRSEQ_DICTS_DIR = os.path.join(FIXTURES_DIR, "fairseq-dicts")
