"""data2vec pretraining of a small vision model on scikit-learn's digits, then linear probes.

The 8x8 digit images are upsampled to 16x16 and cut into 4x4 patches. A 4-layer model is
pretrained with data2vec (block masking, EMA teacher, targets from the teacher's top layers);
then a logistic regression is fit on frozen features (each block's output, mean-pooled over
the patches, concatenated) of the pretrained student and, for comparison, of the same model at
its random initialisation. Both test accuracies are printed. Needs the ``examples`` extra
(scikit-learn).

    python examples/pretrain_vision_digits.py              # about a minute or two on 2 CPU cores
    python examples/pretrain_vision_digits.py --quick      # seconds: a smoke run
    python examples/pretrain_vision_digits.py --save ckpt  # also write the student checkpoint

Two choices differ from the paper's ImageNet recipe, for a dataset of 1,200 tiny images: the
targets are instance-normalised per layer (the audio recipe; with per-token layer norm the
student learned to predict a near-constant vector here), and each image is shifted by up to
2 pixels per step.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.pretrain.data2vec1 import PretrainingConfig
from d2v_torch.pretraining import Data2VecVisionForPreTraining


def load_digits_images(size: int = 16):
    """(N, 1, size, size) float32 images in [-1, 1] (bilinear upsampling) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False), digits.target


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``pixels`` in each direction (background fills the border)."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (pixels,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * pixels + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])


def features(backbone, images: torch.Tensor) -> np.ndarray:
    """Frozen features: every block's output, mean-pooled over the patch tokens, concatenated."""
    backbone.eval()
    with torch.no_grad():
        out = backbone(images, output_hidden_states=True)
    return torch.cat([h[:, 1:].mean(1) for h in out.hidden_states[1:]], dim=-1).numpy()


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a model this small runs best on one)")
    parser.add_argument("--quick", action="store_true", help="two epochs on a subset (smoke test)")
    parser.add_argument("--save", default=None, help="write the pretrained student checkpoint here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_digits_images()
    perm = np.random.default_rng(args.seed).permutation(len(images))
    train, test = perm[:1200], perm[1200:]
    if args.quick:
        train, test, args.epochs = train[:300], test[:200], 2

    config = Data2VecVisionConfig(
        image_size=16, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, use_mask_token=True, use_shared_relative_position_bias=True, layer_scale_init_value=0.1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
    )
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    recipe = PretrainingConfig.for_modality(
        "vision",
        average_top_k_layers=2,  # the top half of the layers, as 6 of 12 in the paper
        layer_norm_target_layer=False,
        instance_norm_target_layer=True,
        ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=total,  # a short run: a faster teacher
        mask_prob=0.6, min_block_patches=2,
    )
    model = Data2VecVisionForPreTraining(config, recipe, seed=args.seed)
    initial = copy.deepcopy(model.student)  # the random-init baseline

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.05)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    generator = torch.Generator().manual_seed(args.seed)
    x_train = images[train]
    model.train()
    start = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for i in range(0, len(train), args.batch_size):
            out = model(random_shift(x_train[order[i : i + args.batch_size]], 2, generator))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            model.ema_update()
            losses.append(out.loss.item())
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(
                f"epoch {epoch + 1:3d}/{args.epochs}  loss {np.mean(losses):.4f}"
                f"  target_var {float(out.target_var):.3f}  pred_var {float(out.pred_var):.3f}"
                f"  tau {model.last_tau:.4f}  ({time.time() - start:.0f}s)"
            )

    if args.save:
        model.save_student(args.save)  # loads into Data2VecVisionForImageClassification, in either framework
        print(f"student checkpoint written to {args.save}")

    results = {}
    for name, backbone in (("random init", initial), ("data2vec pretrained", model.student)):
        f = features(backbone, images)
        results[name] = probe_accuracy(f[train], labels[train], f[test], labels[test])
    print(f"linear probe accuracy, random init:         {results['random init']:.4f}")
    print(f"linear probe accuracy, data2vec pretrained: {results['data2vec pretrained']:.4f}")
    return results


if __name__ == "__main__":
    main()
