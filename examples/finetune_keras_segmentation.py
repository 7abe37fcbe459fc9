"""Fine-tune TFData2VecVisionForSemanticSegmentation with Keras on generated shapes.

Every image holds a few filled squares and discs on a noisy background; the model labels each
pixel background / square / disc. The border pixels are labelled 255 (ignored by the loss), as
in ADE20k-style datasets. Runs in a couple of minutes on 2 CPU cores:

    python examples/finetune_keras_segmentation.py            # full run
    python examples/finetune_keras_segmentation.py --quick    # a smoke run (seconds)

Prints Keras' progress bar, then pixel accuracy and mean IoU on held-out images next to the
majority-class baseline.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from d2v_tf import Data2VecVisionConfig, TFData2VecVisionForSemanticSegmentation  # noqa: E402

IGNORE = 255
CLASSES = ("background", "square", "disc")


def make_shapes(n: int, size: int, rng: np.random.Generator):
    """NCHW float images and (N, H, W) integer label maps."""
    images = rng.normal(0.0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(1, 3)
            r = rng.integers(size // 6, size // 3)
            cy, cx = rng.integers(r, size - r, size=2)
            if kind == 1:
                inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            else:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            colour = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
            images[i][:, inside] += colour[:, None] + 1.0
            labels[i][inside] = kind
    labels[:, 0, :] = labels[:, -1, :] = labels[:, :, 0] = labels[:, :, -1] = IGNORE
    return images, labels


def evaluate(model, images, labels, batch_size: int):
    logits = model.predict(images, batch_size=batch_size, verbose=0)["logits"]  # (N, C, h, w)
    # upsample to the label size the way the loss does, then take the best class
    from d2v_tf.layers import resize2d

    up = np.asarray(resize2d(np.transpose(logits, (0, 2, 3, 1)), labels.shape[1:]))
    pred = up.argmax(-1)
    valid = labels != IGNORE
    accuracy = float((pred[valid] == labels[valid]).mean())
    ious = []
    for c in range(len(CLASSES)):
        inter = ((pred == c) & (labels == c) & valid).sum()
        union = (((pred == c) | (labels == c)) & valid).sum()
        ious.append(inter / union if union else 1.0)
    majority = max((labels[valid] == c).mean() for c in range(len(CLASSES)))
    return accuracy, float(np.mean(ious)), float(majority)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = 32
    n_train, n_test, epochs = (128, 32, 6) if args.quick else (768, 128, 10)
    x_train, y_train = make_shapes(n_train, size, rng)
    x_test, y_test = make_shapes(n_test, size, rng)

    config = Data2VecVisionConfig(
        image_size=size, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, out_indices=[1, 2, 3, 4], pool_scales=[1, 2, 4], use_relative_position_bias=True,
        auxiliary_channels=32, num_labels=len(CLASSES), drop_path_rate=0.0,
        id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)},
    )
    model = TFData2VecVisionForSemanticSegmentation(config)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=2e-3, weight_decay=0.01))  # built-in loss
    model.fit(x_train, y_train, batch_size=16, epochs=epochs, verbose=2 if args.quick else 1)
    accuracy, miou, majority = evaluate(model, x_test, y_test, batch_size=16)
    print(f"pixel accuracy {accuracy:.3f}  mean IoU {miou:.3f}  (majority-class baseline {majority:.3f})")
    return {"pixel_accuracy": accuracy, "mean_iou": miou, "majority_baseline": majority}


if __name__ == "__main__":
    main()
