"""Checkpoint files in and out: the weight-format registry (``formats``), hub downloads
(``hub``) and original fairseq data2vec 2.0 checkpoints (``fairseq``)."""
