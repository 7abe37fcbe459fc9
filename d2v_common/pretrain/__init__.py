"""Framework-neutral parts of self-supervised pretraining (``data2vec1``: data2vec 1.0;
``data2vec2``: data2vec 2.0, its fairseq checkpoints, mask samplers and EMA schedule)."""
