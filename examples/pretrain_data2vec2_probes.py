"""data2vec 2.0 pretraining of tiny models on real data, then linear probes (figures in docs/data2vec2.md).

* ``--modality vision``: scikit-learn's digits (8x8, upsampled to 16x16, 4x4 patches), a 4-layer
  image model; the probe classifies the digit (1,200 train / 597 test images).
* ``--modality audio``: the 27 real speech clips (9 languages, 16 kHz) shipped in the
  ``pytest-audioeval`` wheel (``pip download --no-deps pytest-audioeval -d /tmp/pa`` and unzip;
  ``--audio-dir`` points at its ``samples/audio`` folder), a 4-layer speech model. The clips are cut
  into 0.25 s chunks (275); the probes say which language a chunk speaks and which clip it comes
  from (even chunks of every clip train, odd ones test), and which language a chunk of an unseen
  sentence speaks (the 8 "pangrama" clips held out; English has none). Each probe standardises the
  features and picks its C by cross-validation on its training split. The audio defaults are close
  to fairseq's base audio recipe (lr warm-up, EMA 0.999 -> 0.9999, mask 0.5, top 3 of 4 layers,
  instance-normalised) with the teacher keeping its own EMA feature encoder
  (``--no-ema-local-encoder`` shares the student's, which lets the targets collapse).
* ``--modality audio`` with ``--audio-dir`` at the ``recordings`` folder of the Free Spoken Digit
  Dataset (``git clone https://github.com/Jakobovski/free-spoken-digit-dataset``; 3,000 clips
  ``{digit}_{speaker}_{take}.wav``, 8 kHz int16, 6 speakers x 10 digits x 50 takes; found by the file
  names, or ``--audio-dataset fsdd``): the same speech model and recipe, pretrained on random
  ``--crop-seconds`` crops (0.6 s; shorter clips zero-padded, with an attention mask) of FSDD's
  training takes (5-49) of the speakers not in ``--held-out-speakers`` (theo, yweweler). Probes on
  whole clips (pooled over their valid frames): the digit on FSDD's official split (takes 0-4 of
  every speaker test: 2,700 / 300 clips) and the digit of the unseen speakers (trained on the seen
  speakers' training takes, tested on every take of the held-out ones: 1,800 / 1,000). Needs scipy
  (a scikit-learn dependency) to read and resample (8 -> 16 kHz) the WAVs.

Both print the probe accuracy of the pretrained student and of the same model at its random
initialisation (frozen features: every block's output mean-pooled, concatenated; a logistic
regression on top). Needs the ``examples`` extra (scikit-learn) and, for the pytest-audioeval
clips, soundfile.

    python examples/pretrain_data2vec2_probes.py --modality vision
    python examples/pretrain_data2vec2_probes.py --modality audio --audio-dir /tmp/pa/pytest_audioeval/samples/audio
    python examples/pretrain_data2vec2_probes.py --modality audio --audio-dir free-spoken-digit-dataset/recordings
"""

from __future__ import annotations

import argparse
import copy
import glob
import math
import os
import re
import sys
import time
import warnings

import numpy as np
import torch

from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2VisionConfig
from d2v_common.pretrain.data2vec2 import Data2Vec2PretrainingConfig
from d2v_torch import Data2Vec2AudioForPreTraining, Data2Vec2VisionForPreTraining

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_vision_digits import load_digits_images, probe_accuracy, random_shift  # noqa: E402

CHUNK = 4000  # 0.25 s at 16 kHz: the audio probes' unit


def block_features(backbone, inputs, skip_tokens: int = 0, batch: int = 256) -> np.ndarray:
    """Every block's output, mean-pooled over the sequence (extra tokens left out), concatenated."""
    backbone.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            hidden = backbone(inputs[i : i + batch], output_hidden_states=True).hidden_states[1:]
            out.append(torch.cat([h[:, skip_tokens:].mean(1) for h in hidden], dim=-1).numpy())
    return np.concatenate(out)


def pretrain(model, next_batch, steps: int, lr: float, log_every: int, warmup: float = 0.1):
    """AdamW, linear warm-up (``warmup`` of the steps) then cosine decay, EMA after each step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05,
                            betas=(0.9, 0.98))
    warmup = max(1, int(steps * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    start, losses = time.time(), []
    for step in range(steps):
        out = model(*next_batch())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        model.ema_update()
        losses.append(out.loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            # the targets' spread across the batch at each position and channel: near 0, the teacher
            # says the same for every clip (a collapse to position patterns), and the loss falls with it
            target_std = float(out.target.float().std(0).mean()) if out.target is not None else float("nan")
            print(f"step {step + 1:5d}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  target std {target_std:.3f}"
                  f"  tau {model.last_tau:.4f}  ({time.time() - start:.0f}s)", flush=True)
    return time.time() - start, losses


# ------------------------------------------------------------------------------ vision


def run_vision(args) -> dict:
    images, labels = load_digits_images()
    perm = np.random.default_rng(args.seed).permutation(len(images))
    train, test = perm[:1200], perm[1200:]
    config = Data2Vec2VisionConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, intermediate_size=128, num_extra_tokens=1)
    steps = args.steps or 800
    pcfg = Data2Vec2PretrainingConfig(
        modality="vision", clone_batch=4, average_top_k_layers=2, instance_norm_target_layer=True,
        layer_norm_targets=True, cls_loss=0.01, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=steps,
        mask_prob=0.6, mask_length=2, inverse_mask=True, decoder_dim=64, decoder_groups=4, decoder_kernel=3,
        decoder_layers=2, decoder_input_dropout=0.0,
    )
    model = Data2Vec2VisionForPreTraining(config, pcfg, seed=args.seed)
    initial = copy.deepcopy(model.student)
    generator = torch.Generator().manual_seed(args.seed)
    x_train = images[train]

    def next_batch():
        idx = torch.randint(0, len(train), (args.batch_size,), generator=generator)
        return [random_shift(x_train[idx], 2, generator)]

    seconds, _ = pretrain(model, next_batch, steps, args.lr, 100)
    results = {"steps": steps, "seconds": seconds}
    for name, backbone in (("random init", initial), ("pretrained", model.student)):
        f = block_features(backbone, images, skip_tokens=1)
        results[name] = probe_accuracy(f[train], labels[train], f[test], labels[test])
    return results


# ------------------------------------------------------------------------------- audio


def load_clips(folder: str) -> list[tuple[str, str, np.ndarray]]:
    import soundfile

    clips = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.wav"))):
        wave, rate = soundfile.read(path, dtype="float32")
        if rate != 16000:
            raise ValueError(f"{path}: {rate} Hz, expected 16000")
        clips.append((os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0], wave))
    if not clips:
        raise FileNotFoundError(f"no <language>/<clip>.wav under {folder}: point --audio-dir at pytest_audioeval/"
                                "samples/audio (pip download --no-deps pytest-audioeval, then unzip the wheel)")
    return clips


def normalise(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-7)).astype(np.float32)


def probe_accuracy_cv(train_x, train_y, test_x, test_y, seed: int = 0) -> tuple[float, float]:
    """Standardised features, a logistic regression whose C is picked by 3-fold cross-validation on the
    training split only; returns (test accuracy, chosen C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        {"logisticregression__C": [1e-3, 1e-2, 1e-1, 1.0, 10.0]},
        cv=StratifiedKFold(3, shuffle=True, random_state=seed),
    )
    with warnings.catch_warnings():  # a 0.96 s clip has 2 training chunks: fewer than 3 folds in the clip probe
        warnings.filterwarnings("ignore", message="The least populated class")
        search.fit(train_x, train_y)
    return float(search.score(test_x, test_y)), float(search.best_params_["logisticregression__C"])


def audio_config() -> Data2Vec2AudioConfig:
    """The tiny speech model: 4 layers x 64, a 6-layer conv feature encoder at 100 frames/s."""
    return Data2Vec2AudioConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        conv_dim=[64] * 6, conv_kernel=[10, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2],  # 160x: 100 frames / s
        num_conv_pos_embeddings=2, conv_pos_kernel_size=9, num_conv_pos_embedding_groups=4,
    )


def audio_pretraining_config(args, steps: int) -> Data2Vec2PretrainingConfig:
    return Data2Vec2PretrainingConfig(
        modality="audio", clone_batch=args.clone_batch, average_top_k_layers=args.top_k,
        instance_norm_target_layer=True,
        ema_decay=args.ema_decay, ema_end_decay=args.ema_end_decay, ema_anneal_end_step=steps,
        mask_prob=args.mask_prob, mask_length=5,
        # the teacher's own (EMA) feature encoder: sharing the student's lets the student make the
        # teacher's input, hence the targets, the same for every clip (the collapse in the docs)
        ema_encoder_only=not args.ema_local_encoder, ema_local_encoder=args.ema_local_encoder,
        decoder_dim=64, decoder_groups=4, decoder_kernel=7, decoder_layers=2, decoder_input_dropout=0.0,
    )


def run_audio(args) -> dict:
    clips = load_clips(args.audio_dir)
    config = audio_config()
    steps = args.steps or 2000
    pcfg = audio_pretraining_config(args, steps)
    model = Data2Vec2AudioForPreTraining(config, pcfg, seed=args.seed)
    initial = copy.deepcopy(model.student)
    rng = np.random.default_rng(args.seed)
    crop = 12800  # 0.8 s pretraining crops (the shortest clip is 0.96 s)

    def next_batch():
        batch = []
        for i in rng.integers(0, len(clips), args.batch_size):
            wave = clips[i][2]
            start = int(rng.integers(0, len(wave) - crop + 1))
            batch.append(wave[start : start + crop])
        return [torch.from_numpy(normalise(np.stack(batch)))]

    seconds, losses = pretrain(model, next_batch, steps, args.lr, 50, warmup=args.warmup)
    results = {"steps": steps, "seconds": seconds, "loss, first 50 steps": float(np.mean(losses[:50])),
               "loss, last 50 steps": float(np.mean(losses[-50:]))}

    # non-overlapping 0.25 s chunks; "interleaved": even chunks of every clip train, odd ones test
    chunks, clip_ids = [], []
    for i, (_, _, wave) in enumerate(clips):
        for s in range(0, len(wave) - CHUNK + 1, CHUNK):
            chunks.append(wave[s : s + CHUNK])
            clip_ids.append(i)
    chunks, clip_ids = torch.from_numpy(normalise(np.stack(chunks))), np.array(clip_ids)
    order = np.zeros(len(clip_ids), int)
    for i in range(len(clips)):
        where = np.flatnonzero(clip_ids == i)
        order[where] = np.arange(len(where))
    even = order % 2 == 0
    languages = sorted({c[0] for c in clips})
    lang = np.array([languages.index(c[0]) for c in clips])[clip_ids]
    held_out = np.array([c[1] == "pangrama" for c in clips])[clip_ids]  # unseen sentences (English has none)
    results["chunks"] = int(len(clip_ids))
    results["held-out clip chunks"] = int(held_out.sum())
    probes = {
        "language, interleaved": (even, ~even, lang),
        "clip, interleaved": (even, ~even, clip_ids),
        "language, held-out clips": (~held_out, held_out, lang),
    }
    for name, backbone in (("random init", initial), ("pretrained", model.student)):
        f = block_features(backbone, chunks)
        for probe, (train, test, y) in probes.items():
            acc, c = probe_accuracy_cv(f[train], y[train], f[test], y[test], seed=args.seed)
            results[f"{probe}, {name}"] = acc
            results[f"{probe}, {name}, C"] = c
    return results


# ------------------------------------------------------------------- audio: spoken digits

FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")  # {digit}_{speaker}_{take}.wav


def is_fsdd(folder: str) -> bool:
    """True when the folder holds WAVs named like the Free Spoken Digit Dataset's."""
    return any(FSDD_NAME.match(name) for name in os.listdir(folder)) if os.path.isdir(folder) else False


def load_fsdd(folder: str) -> list[tuple[int, str, int, np.ndarray]]:
    """(digit, speaker, take, 16 kHz float32 wave) for every ``{digit}_{speaker}_{take}.wav``: int16
    scaled to [-1, 1), resampled from the files' rate (8 kHz) to 16 kHz."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    clips = []
    for name in sorted(os.listdir(folder)):
        match = FSDD_NAME.match(name)
        if not match:
            continue
        rate, wave = wavfile.read(os.path.join(folder, name))
        if wave.ndim != 1 or wave.dtype != np.int16:
            raise ValueError(f"{name}: expected mono int16, got {wave.dtype} of shape {wave.shape}")
        wave = wave.astype(np.float32) / 32768.0
        if rate != 16000:
            g = math.gcd(rate, 16000)
            wave = resample_poly(wave, 16000 // g, rate // g).astype(np.float32)
        clips.append((int(match.group(1)), match.group(2), int(match.group(3)), wave))
    if not clips:
        raise FileNotFoundError(f"no {{digit}}_{{speaker}}_{{take}}.wav in {folder}: git clone "
                                "https://github.com/Jakobovski/free-spoken-digit-dataset, then point "
                                "--audio-dir at its recordings folder")
    return clips


def crop_or_pad(wave: np.ndarray, length: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A random ``length``-sample crop of a normalised clip, or the whole clip zero-padded to it;
    returns (samples, keep-mask)."""
    wave = normalise(wave)
    if len(wave) >= length:
        start = int(rng.integers(0, len(wave) - length + 1))
        return wave[start : start + length], np.ones(length, np.int64)
    out, keep = np.zeros(length, np.float32), np.zeros(length, np.int64)
    out[: len(wave)], keep[: len(wave)] = wave, 1
    return out, keep


def clip_features(backbone, waves: list[np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Frozen features of whole clips (normalised, batched by length, zero-padded with an
    attention mask), pooled over each clip's valid frames: ``"blocks mean"`` (every block's output
    mean-pooled, concatenated), ``"blocks mean+std"`` and ``"last block mean"``."""
    backbone.eval()
    order = np.argsort([len(w) for w in waves], kind="stable")
    pooled = {"blocks mean": [None] * len(waves), "blocks mean+std": [None] * len(waves),
              "last block mean": [None] * len(waves)}
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            length = max(len(waves[j]) for j in idx)
            x, keep = np.zeros((len(idx), length), np.float32), np.zeros((len(idx), length), np.int64)
            for row, j in enumerate(idx):
                x[row, : len(waves[j])], keep[row, : len(waves[j])] = normalise(waves[j]), 1
            x, keep = torch.from_numpy(x), torch.from_numpy(keep)
            hidden = backbone(x, attention_mask=keep, output_hidden_states=True).hidden_states[1:]
            frames = backbone.frame_mask(keep, hidden[0].shape[1]).float()[..., None]  # (B, T, 1)
            count = frames.sum(1)
            means = [(h * frames).sum(1) / count for h in hidden]
            stds = [(((h - m[:, None]) ** 2 * frames).sum(1) / count).sqrt() for h, m in zip(hidden, means)]
            mean_cat = torch.cat(means, -1).numpy()
            both = torch.cat(means + stds, -1).numpy()
            for row, j in enumerate(idx):
                pooled["blocks mean"][j] = mean_cat[row]
                pooled["blocks mean+std"][j] = both[row]
                pooled["last block mean"][j] = means[-1][row].numpy()
    return {k: np.stack(v) for k, v in pooled.items()}


def run_fsdd(args) -> dict:
    clips = load_fsdd(args.audio_dir)
    config = audio_config()
    steps = args.steps or 2000
    model = Data2Vec2AudioForPreTraining(config, audio_pretraining_config(args, steps), seed=args.seed)
    initial = copy.deepcopy(model.student)
    digits = np.array([c[0] for c in clips])
    speakers = np.array([c[1] for c in clips])
    takes = np.array([c[2] for c in clips])
    held_speakers = [s for s in args.held_out_speakers.split(",") if s]
    unseen = np.isin(speakers, held_speakers)
    official_test = takes < 5  # FSDD's split: takes 0-4 of every speaker and digit test, the rest train
    pretrain_ids = np.flatnonzero(~official_test & ~unseen)  # training takes of the seen speakers only
    rng = np.random.default_rng(args.seed)
    crop = int(round(args.crop_seconds * 16000))

    def next_batch():
        pairs = [crop_or_pad(clips[i][3], crop, rng) for i in rng.choice(pretrain_ids, args.batch_size)]
        return [torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))]

    seconds, losses = pretrain(model, next_batch, steps, args.lr, 50, warmup=args.warmup)
    results = {"steps": steps, "seconds": seconds, "loss, first 50 steps": float(np.mean(losses[:50])),
               "loss, last 50 steps": float(np.mean(losses[-50:])), "pretraining clips": int(len(pretrain_ids))}
    probes = {
        # FSDD's official split (300 test clips, every speaker; the held-out speakers' training
        # takes are in the probe's training split but were not pretrained on)
        "digit, official split": (~official_test, official_test),
        # train on the seen speakers' training takes, test on every take of the unseen speakers
        "digit, unseen speakers": (~official_test & ~unseen, unseen),
    }
    for probe, (train, test) in probes.items():
        results[f"{probe}, train/test clips"] = f"{int(train.sum())}/{int(test.sum())}"
    start = time.time()
    waves = [c[3] for c in clips]
    for name, backbone in (("random init", initial), ("pretrained", model.student)):
        features = clip_features(backbone, waves)
        for pooling in args.poolings.split(","):
            f = features[pooling]
            for probe, (train, test) in probes.items():
                acc, c = probe_accuracy_cv(f[train], digits[train], f[test], digits[test], seed=args.seed)
                key = f"{probe}, {name}" if pooling == "blocks mean" else f"{probe}, {name}, {pooling}"
                results[key] = acc
                results[f"{key}, C"] = c
    results["probe seconds"] = time.time() - start
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", choices=("vision", "audio"), required=True)
    parser.add_argument("--audio-dir", default="/tmp/pa/pytest_audioeval/samples/audio")
    parser.add_argument("--steps", type=int, default=None, help="default: 800 (vision), 2000 (audio)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 (vision), 8 (audio)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-prob", type=float, default=0.5, help="audio only")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="audio only: the teacher's EMA decay at step 0")
    parser.add_argument("--ema-end-decay", type=float, default=0.9999, help="audio only: ... at the last step")
    parser.add_argument("--warmup", type=float, default=0.25, help="audio only: fraction of the steps spent warming up")
    parser.add_argument("--top-k", type=int, default=3, help="audio only: teacher layers averaged into the targets")
    parser.add_argument("--clone-batch", type=int, default=4, help="audio only")
    parser.add_argument("--ema-local-encoder", action=argparse.BooleanOptionalAction, default=True,
                        help="audio only: the teacher keeps its own EMA copy of the feature encoder")
    parser.add_argument("--audio-dataset", choices=("auto", "audioeval", "fsdd"), default="auto",
                        help="audio only: auto = fsdd when --audio-dir holds {digit}_{speaker}_{take}.wav files")
    parser.add_argument("--crop-seconds", type=float, default=0.6,
                        help="fsdd only: pretraining crop (shorter clips zero-padded, with an attention mask)")
    parser.add_argument("--held-out-speakers", default="theo,yweweler",
                        help="fsdd only: speakers left out of pretraining and of the unseen-speaker probe's training")
    parser.add_argument("--poolings", default="blocks mean",
                        help="fsdd only: comma-separated, of: blocks mean, blocks mean+std, last block mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 32 if args.modality == "vision" else 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):  # numpy's / scikit-learn's BLAS too, not only torch
        if args.modality == "vision":
            results = run_vision(args)
        elif args.audio_dataset == "fsdd" or (args.audio_dataset == "auto" and is_fsdd(args.audio_dir)):
            results = run_fsdd(args)
        else:
            results = run_audio(args)
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return results


if __name__ == "__main__":
    main()
