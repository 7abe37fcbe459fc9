"""Fine-tune Data2VecTextForSequenceClassification in PyTorch on generated token sequences.

Each sequence is random filler tokens; its class says which keyword group appears in it
(none / group A / group B). A plain training loop with AdamW and a progress bar; runs in a
couple of minutes on 2 CPU cores:

    python examples/finetune_torch_text.py            # full run
    python examples/finetune_torch_text.py --quick    # a smoke run (seconds)

Prints held-out accuracy next to the majority-class baseline.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from d2v_torch import Data2VecTextConfig, Data2VecTextForSequenceClassification

PAD, BOS, EOS = 1, 0, 2
VOCAB = 64
GROUP_A, GROUP_B = (10, 11, 12), (20, 21, 22)
FILLER = np.array([t for t in range(3, VOCAB) if t not in GROUP_A + GROUP_B])


def make_data(n: int, max_len: int, rng: np.random.Generator):
    """Padded ids, attention mask and labels (0: no keyword, 1: group A, 2: group B)."""
    ids = np.full((n, max_len), PAD, dtype=np.int64)
    labels = rng.integers(0, 3, size=n)
    for i in range(n):
        length = rng.integers(8, max_len - 1)
        body = rng.choice(FILLER, size=length)
        if labels[i]:
            group = GROUP_A if labels[i] == 1 else GROUP_B
            body[rng.integers(0, length)] = rng.choice(group)
        ids[i, : length + 2] = np.concatenate([[BOS], body, [EOS]])
    return ids, (ids != PAD).astype(np.int64), labels


def progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc)
    except ImportError:  # the `progress` extra is optional
        return iterable


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    max_len = 32
    n_train, n_test, epochs = (1024, 256, 3) if args.quick else (2048, 512, 4)
    train = [torch.from_numpy(a) for a in make_data(n_train, max_len, rng)]
    test = [torch.from_numpy(a) for a in make_data(n_test, max_len, rng)]

    config = Data2VecTextConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=max_len + 2, type_vocab_size=1, pad_token_id=PAD, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = Data2VecTextForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batch = 32
    steps = epochs * (n_train // batch)
    model.train()
    bar = progress(range(steps), steps, "fine-tuning")
    for step in bar:
        start = (step * batch) % n_train
        ids, mask, labels = (t[start : start + batch] for t in train)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=test[0], attention_mask=test[1]).logits
    accuracy = float((logits.argmax(-1) == test[2]).float().mean())
    majority = float(np.bincount(test[2].numpy()).max() / n_test)
    print(f"accuracy {accuracy:.3f}  (majority-class baseline {majority:.3f})")
    return {"accuracy": accuracy, "majority_baseline": majority}


if __name__ == "__main__":
    main()
