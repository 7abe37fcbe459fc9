"""The one loading path: ``pretrained.load_pretrained`` opens a source (folder, weight file,
hub id, fairseq ``.pt``) and ``matching`` fits its arrays to a weight spec with a load report."""
