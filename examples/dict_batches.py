"""A dataset that yields dicts, the Hugging Face convention: {"input_ids": LongTensor(16), "label": int}.

Run it with:  trainlab train --set task=examples/dict_batches.py:build --set epochs=10
Each sequence holds 16 tokens from a vocabulary of 20; its label is which of the marker tokens 1..4 occurs
most often. The model (`embbag`) embeds the tokens, averages them and classifies the average. trainlab finds
the input under "input_ids" and the target under "label" (its default names; `Task(input_key=...,
target_key=...)` names others) and reads the dataset through a DataLoader, since it is not in-memory tensors.
"""

import torch
from torch import nn
from torch.utils.data import Dataset

from trainlab import Task

VOCAB, LENGTH, CLASSES = 20, 16, 4


class TokenCounts(Dataset):
    """`n` sequences drawn from `seed`; item i is {"input_ids": (16,) int64, "label": int}."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
        counts = torch.stack([(self.ids == t + 1).sum(1) for t in range(CLASSES)], 1).float()
        counts += torch.rand(counts.shape, generator=g) * 0.5  # ties broken at random, once
        self.labels = counts.argmax(1)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "label": int(self.labels[i])}


class EmbeddingBag(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(width, CLASSES))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def build(hp):
    width = hp.width or 32
    return Task(name="tokens", build_model=lambda: EmbeddingBag(width), num_classes=CLASSES,
                train=TokenCounts(2000, seed=1), test=TokenCounts(500, seed=2), model_name="embbag",
                metrics=["acc", "top2"])
