"""Continue data2vec 2.0 pretraining of a released checkpoint on your own images, speech or text.

The checkpoint is what ``Data2Vec2*ForPreTraining.from_pretrained`` reads (a fairseq
``data2vec_multi`` trainer ``checkpoint.pt`` such as ``base_libri.pt``, or a folder written by
``save_pretrained``), or a plain converted model folder (``d2v-convert ... --from fairseq``),
which starts a fresh decoder and a teacher equal to the student. The modality comes from the
checkpoint; the data folder must hold files of it:

* images (``.png .jpg .jpeg .bmp .gif .webp .tif .tiff``, read with Pillow): a random resized
  crop to the model's ``image_size`` and a horizontal flip each time, ImageNet mean / std;
* speech (``.wav .flac .ogg``; 16 kHz mono, read with soundfile when installed, else the
  standard ``wave`` module for PCM WAVs): random crops of ``--max-seconds``, each normalised to
  zero mean and unit variance, padded to the longest in the batch;
* text (``.txt``, one sample per line): ``--tokenizer`` (a RoBERTa-style tokenizer folder, raw
  text) or ``--dict`` (a fairseq ``dict.txt``: the lines are already BPE-encoded, symbols split
  on spaces, as ``fairseq-preprocess`` reads them); a ``dict.txt`` or tokenizer in the checkpoint
  folder is used when neither is given.

Then AdamW with a linear warm-up and cosine decay, the EMA teacher updated after every step, a
tqdm progress bar, and ``save_student(--output)``: the ``Data2Vec2*Model`` classes (and the head
classes, for fine-tuning) load the result. ``--save-pretraining DIR`` also keeps the decoder
and teacher to continue again later.

    python examples/continue_pretraining_data2vec2.py base_libri.pt my_wavs/ --output my-encoder --steps 2000
    torchrun --nproc_per_node=2 examples/continue_pretraining_data2vec2.py base_libri.pt my_wavs/ --output my-encoder

Under ``torchrun`` each process trains on its share of the files (``--batch-size`` per
process) with DistributedDataParallel (NCCL on GPUs, gloo on CPUs); the loss divides by the
masked positions of the global batch and every rank keeps the same teacher; rank 0 saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch

from d2v_common.checkpoints.fairseq import fairseq_checkpoint_file, read_fairseq_dictionary
from d2v_common.pretrain import data2vec2 as P
from d2v_torch import data2vec2_pretraining as T

CLASSES = {
    "vision": T.Data2Vec2VisionForPreTraining,
    "audio": T.Data2Vec2AudioForPreTraining,
    "text": T.Data2Vec2TextForPreTraining,
}
MODEL_TYPES = {"data2vec2-vision": "vision", "data2vec2-audio": "audio", "data2vec2-text": "text"}
EXTENSIONS = {
    "vision": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg"),
    "text": (".txt",),
}
WHAT = {"vision": "images", "audio": "speech files", "text": "text files"}
SAMPLING_RATE = 16000  # every data2vec 2.0 speech model
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------- the checkpoint


def load_model(path: str, seed: int):
    """The pretraining model and its modality, from a fairseq pretraining checkpoint, a
    ``save_pretrained`` folder or a plain ``Data2Vec2*Model`` folder (fresh decoder)."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, P.PRETRAINING_FILE)):
        with open(os.path.join(path, P.PRETRAINING_FILE), encoding="utf-8") as f:
            architecture = json.load(f).get("architecture")
        modality = {arch: m for m, (arch, _) in P.ARCHITECTURES.items()}.get(architecture)
        if modality is None:
            raise ValueError(f"{path}: {P.PRETRAINING_FILE} names {architecture!r}, not a data2vec 2.0 pretraining class")
        return CLASSES[modality].from_pretrained(path, seed=seed), modality
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{path} holds a {model_type!r} model, not a data2vec 2.0 one ({sorted(MODEL_TYPES)})")
        modality = MODEL_TYPES[model_type]
        cls = CLASSES[modality]
        encoder = cls.backbone_class.from_pretrained(path)
        print(f"note: {path} has no decoder nor EMA teacher: a fresh decoder (the default recipe) is trained, "
              "the teacher starts as the student")
        model = cls(encoder.config, P.Data2Vec2PretrainingConfig(modality=modality), seed=seed)
        model.student.load_arrays(encoder.state_arrays())
        model.teacher.load_arrays(encoder.state_arrays())
        return model, modality
    if fairseq_checkpoint_file(path) is None:
        raise FileNotFoundError(
            f"{path} is neither a fairseq checkpoint.pt nor a folder with {P.PRETRAINING_FILE} or config.json"
        )
    source = P.read_fairseq_pretraining(path)  # unpickled once; its type of config gives the modality
    modality = source.pretraining_config.modality
    model = CLASSES[modality](source.config, source.pretraining_config, seed=seed)
    model.load_pretraining_arrays(source.arrays)
    model.num_updates, model.fairseq_source = source.num_updates, source.fairseq
    for note in source.report.notes:
        if "not applied" in note:
            print(note)
    return model, modality


# ------------------------------------------------------------------------------------ data


def list_files(folder: str, modality: str) -> list[str]:
    """The folder's files of ``modality`` (recursively, sorted); a clear error when it is
    missing, empty or holds another modality's files."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"data folder {folder!r} does not exist")
    found: dict[str, list[str]] = {m: [] for m in EXTENSIONS}
    for root, _, names in os.walk(folder):
        for name in names:
            for m, extensions in EXTENSIONS.items():
                if name.lower().endswith(extensions):
                    found[m].append(os.path.join(root, name))
    if found[modality]:
        return sorted(found[modality])
    others = {m: len(v) for m, v in found.items() if v}
    if others:
        held = ", ".join(f"{n} {WHAT[m]}" for m, n in others.items())
        raise ValueError(
            f"the checkpoint is a {modality} model but {folder} holds {held} and no {WHAT[modality]} "
            f"({' '.join(EXTENSIONS[modality])}): give a folder of {WHAT[modality]}, or a {next(iter(others))} checkpoint"
        )
    raise ValueError(f"{folder} holds no {WHAT[modality]} ({' '.join(EXTENSIONS[modality])}): nothing to train on")


def load_image(path: str, config, rng: random.Random) -> np.ndarray:
    """(C, S, S) float32: a random crop of 35-100% of the area (aspect 3/4-4/3), resized to
    ``image_size``, flipped half of the time, normalised."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L" if config.num_channels == 1 else "RGB")
        w, h = image.size
        for _ in range(10):
            area = w * h * rng.uniform(0.35, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = min(w, h), min(w, h)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        size = config.image_size
        image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(image, dtype=np.float32).reshape(size, size, -1).transpose(2, 0, 1) / 255.0
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if config.num_channels == 3 else ((0.5,), (0.5,))
    return (x - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]


def read_audio(path: str) -> np.ndarray:
    """Mono float32 samples of a 16 kHz file (soundfile when installed, else ``wave``, PCM only)."""
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    else:
        import wave

        try:
            with wave.open(path) as w:
                rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                raw = w.readframes(w.getnframes())
        except wave.Error as e:
            raise OSError(f"{path}: {e} (the wave module reads PCM WAVs only; pip install soundfile for the rest)") from e
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
        if dtype is None:
            raise OSError(f"{path}: {8 * width}-bit PCM is not read without soundfile (pip install soundfile)")
        samples = np.frombuffer(raw, dtype).astype(np.float32).reshape(-1, channels).mean(axis=1)
        samples = (samples - 128) / 128 if width == 1 else samples / float(2 ** (8 * width - 1))
    if rate != SAMPLING_RATE:
        raise ValueError(f"{path} is sampled at {rate} Hz; data2vec 2.0 speech models take {SAMPLING_RATE} Hz: "
                         f"resample it first (e.g. sox in.wav -r {SAMPLING_RATE} out.wav)")
    return samples


def text_encoder(args, checkpoint: str, config):
    """``lines -> (input_ids, attention_mask)`` for the text model: a fairseq dict.txt (lines
    already BPE-encoded) or a RoBERTa-style tokenizer folder (raw text)."""
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    dictionary, tokenizer = args.dict, args.tokenizer
    if dictionary is None and tokenizer is None:
        if os.path.isfile(os.path.join(folder, "dict.txt")):
            dictionary = os.path.join(folder, "dict.txt")
        elif any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "vocab.json")):
            tokenizer = folder
        else:
            raise ValueError("a text model needs --dict (a fairseq dict.txt; the lines BPE-encoded) or --tokenizer "
                             "(a tokenizer folder; raw lines): the checkpoint's folder holds neither")
    limit = config.max_position_embeddings
    if tokenizer is not None:
        from d2v_common.processing import TextTokenizer

        tok = TextTokenizer.from_pretrained(tokenizer)

        def encode(lines):
            batch = tok(lines, padding=True, truncation=True, max_length=limit)
            return np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]).astype(bool)

        return encode
    symbols = read_fairseq_dictionary(dictionary)
    ids = {s: i for i, s in enumerate(symbols)}
    bos, pad, eos, unk = ids["<s>"], ids["<pad>"], ids["</s>"], ids["<unk>"]
    if len(symbols) > config.vocab_size:
        raise ValueError(f"{dictionary} has {len(symbols)} symbols, more than the model's {config.vocab_size} embeddings")

    def encode(lines):
        rows = [[bos] + [ids.get(s, unk) for s in line.split()][: limit - 2] + [eos] for line in lines]
        out = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out, out != pad

    return encode


class Batches:
    """Endless random batches of one modality's files (``files`` already this rank's share)."""

    def __init__(self, modality, files, config, args, checkpoint, seed):
        self.modality, self.config, self.args = modality, config, args
        self.rng = random.Random(seed)
        if modality == "text":
            self.items = []
            for path in files:
                with open(path, encoding="utf-8") as f:
                    self.items += [line.strip() for line in f if line.strip()]
            if not self.items:
                raise ValueError(f"the text files ({len(files)}) hold no non-empty line")
            self.encode = text_encoder(args, checkpoint, config)
        elif modality == "audio":
            self.items = [read_audio(p) for p in files]
            shortest = int(args.min_seconds * SAMPLING_RATE)
            self.items = [w for w in self.items if len(w) >= shortest]
            if not self.items:
                raise ValueError(f"every speech file is shorter than --min-seconds={args.min_seconds}")
        else:
            self.items = list(files)

    def __iter__(self):
        return self

    def __next__(self):
        picked = [self.rng.choice(self.items) for _ in range(self.args.batch_size)]
        if self.modality == "vision":
            return [torch.from_numpy(np.stack([load_image(p, self.config, self.rng) for p in picked]))]
        if self.modality == "text":
            ids, keep = self.encode(picked)
            return [torch.from_numpy(ids), torch.from_numpy(keep)]
        crop = int(self.args.max_seconds * SAMPLING_RATE)
        waves = []
        for w in picked:
            start = self.rng.randint(0, max(0, len(w) - crop))
            w = w[start : start + crop]
            waves.append((w - w.mean()) / np.sqrt(w.var() + 1e-7))
        length = max(map(len, waves))
        x = np.zeros((len(waves), length), np.float32)
        keep = np.zeros((len(waves), length), bool)
        for i, w in enumerate(waves):
            x[i, : len(w)], keep[i, : len(w)] = w, True
        return [torch.from_numpy(x), torch.from_numpy(keep)]


# ------------------------------------------------------------------------------- training


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="fairseq checkpoint.pt, save_pretrained folder or converted model folder")
    parser.add_argument("data", help="folder of images, 16 kHz speech files or .txt files (one sample per line)")
    parser.add_argument("--output", required=True, help="where the student (a Data2Vec2*Model checkpoint) goes")
    parser.add_argument("--save-pretraining", default=None, help="also save student, decoder and teacher here")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (per process under torchrun)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps)")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="speech: crop length")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="speech: shorter files are left out")
    parser.add_argument("--dict", default=None, help="text: fairseq dict.txt (lines are BPE-encoded symbols)")
    parser.add_argument("--tokenizer", default=None, help="text: tokenizer folder (raw lines)")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    device = torch.device(args.device)
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(args.seed)

    model, modality = load_model(args.checkpoint, seed=args.seed + rank)  # each rank draws its own masks
    files = list_files(args.data, modality)
    share = files[rank::world] if len(files) >= world else files
    batches = Batches(modality, share, model.config, args, args.checkpoint, seed=args.seed + rank)
    model.to(device).train()
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20 if args.warmup is None else args.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    from tqdm.auto import tqdm

    losses, start = [], time.time()
    bar = tqdm(range(args.steps), desc=f"data2vec 2.0 {modality}", disable=rank != 0)
    for _ in bar:
        inputs = [x.to(device) for x in next(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = trained(*inputs)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        model.ema_update()  # after every optimizer step; the same on every rank
        losses.append(float(out.loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", tau=f"{model.last_tau:.5f}")

    if rank == 0:
        model.save_student(args.output)
        print(f"{len(files)} {WHAT[modality]}, {args.steps} steps in {time.time() - start:.0f}s; "
              f"the student is in {args.output} (loads in {model.backbone_class.__name__})")
        if args.save_pretraining:
            model.save_pretrained(args.save_pretraining)
    if distributed:
        torch.distributed.destroy_process_group()
    return {"modality": modality, "files": len(files), "losses": losses}


if __name__ == "__main__":
    main()
