"""``python -m crosscheck.pipeline_memory``: chunked speech recognition keeps memory to one chunk.

A base-size ``Data2VecAudioForCTC`` (random weights, 12 layers, width 768; written once to a
temporary folder) transcribes, each in a fresh subprocess so that peak resident memory is its
own: nothing (model loaded only), one chunk's worth of audio, and a long waveform (10 minutes by
default) with ``chunk_length_s``. The chunked peak should stay under twice the one-chunk peak
(docs/pipelines.md records a run). Timings are wall-clock seconds on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONISHRDLUCMWFGYPBVKXJQZ'"]


def write_checkpoint(folder: str) -> None:
    """A base-size CTC checkpoint (HF's data2vec-audio-base layout) with its processors."""
    import d2v_torch
    from d2v_common.configs import Data2VecAudioConfig
    from d2v_common.processing import AudioFeatureExtractor, CTCTokenizer

    model = d2v_torch.Data2VecAudioForCTC(Data2VecAudioConfig(vocab_size=len(VOCAB)))
    model.save_pretrained(folder)
    AudioFeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    CTCTokenizer({t: i for i, t in enumerate(VOCAB)}).save_pretrained(folder)


def worker(folder: str, seconds: float, chunk_length_s: float, stride_length_s: float) -> dict:
    """Load the pipeline, transcribe ``seconds`` of noise (0: none), report peak RSS in MiB."""
    import numpy as np

    import d2v_torch

    asr = d2v_torch.pipeline("automatic-speech-recognition", model=folder)
    loaded_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, forward, calls = time.perf_counter(), asr.runner.forward, []

    def counted_forward(*args, **kwargs):  # progress on stderr: chunks done, peak so far
        out = forward(*args, **kwargs)
        calls.append(None)
        print(f"  {seconds:g} s: chunk {len(calls)} done after {time.perf_counter() - start:.0f} s, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", file=sys.stderr, flush=True)
        return out

    asr.runner.forward = counted_forward
    if seconds:
        waveform = np.random.default_rng(0).standard_normal(int(seconds * 16000)).astype(np.float32)
        options = {"chunk_length_s": chunk_length_s, "stride_length_s": stride_length_s} if chunk_length_s else {}
        asr(waveform, **options)
    return {"seconds": seconds, "chunk_length_s": chunk_length_s, "chunks": len(calls), "loaded_mib": round(loaded_mib),
            "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "wall_s": round(time.perf_counter() - start, 1)}


def run_worker(folder: str, seconds: float, chunk_length_s: float, stride_length_s: float) -> dict:
    code = (f"import json; from crosscheck.pipeline_memory import worker; "
            f"print(json.dumps(worker({folder!r}, {seconds}, {chunk_length_s}, {stride_length_s})))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # stderr: progress
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--chunk-length-s", type=float, default=30.0)
    parser.add_argument("--stride-length-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint(folder)
        rows = [run_worker(folder, 0, 0, 0),  # the model alone
                run_worker(folder, args.chunk_length_s, 0, 0),  # one chunk, no chunking
                run_worker(folder, args.minutes * 60, args.chunk_length_s, args.stride_length_s)]
    one_chunk, long = rows[1]["peak_mib"], rows[2]["peak_mib"]
    print(f"peak RSS: model loaded {rows[0]['peak_mib']} MiB, one {args.chunk_length_s:g} s chunk {one_chunk} MiB, "
          f"{args.minutes:g} min chunked {long} MiB = {long / one_chunk:.2f}x one chunk")
    return 0 if long < 2 * one_chunk else 1


if __name__ == "__main__":
    raise SystemExit(main())
