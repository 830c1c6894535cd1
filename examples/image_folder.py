"""A disk-backed image task: PNG files in class folders (the ImageFolder layout), read with PIL.

Run it with:  trainlab train --set task=examples/image_folder.py:build --set num_workers=2
On first use it writes its own images into ./image-folder-data (relative to where trainlab runs):
train/<class>/<i>.png and test/<class>/<i>.png, 16x16 RGB, three classes of striped pictures (horizontal
stripes, vertical stripes, a checkerboard) at random phase, period, colour and noise. The Dataset opens one
file per example, so it goes through a DataLoader (`num_workers` worker processes, from the Config), and
`train_transform` flips half of each training batch left-right (augmentation: training batches only; the
flip is drawn from torch's generator in the training process, so resume stays exact).
"""

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainlab import Task

CLASSES = ("hstripes", "vstripes", "checker")
SIZE = 16
ROOT = Path("image-folder-data")


def _picture(kind: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.integers(3, 7)
    phase = rng.integers(0, period)
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    h, v = ((r + phase) // (period / 2)) % 2, ((c + phase) // (period / 2)) % 2
    mask = (h, v, (h + v) % 2)[kind].astype(np.float32)
    fg, bg = rng.uniform(0.4, 1.0, 3), rng.uniform(0.0, 0.5, 3)
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg + rng.normal(0, 0.15, (SIZE, SIZE, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_images(root: Path, per_class: dict, seed: int = 0) -> Path:
    """Write the folders once (into a temporary folder, renamed when complete, so a half-written set is never read)."""
    from PIL import Image

    if (root / "complete").is_file():
        return root
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for k, name in enumerate(CLASSES):
            folder = tmp / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_picture(k, rng)).save(folder / f"{i:04d}.png")
    (tmp / "complete").write_text("ok\n")
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class ImageFolder(Dataset):
    """(image (3, 16, 16) float in [-1, 1], class index) per PNG file under root/<class>/."""

    def __init__(self, root: Path):
        self.files = [(p, k) for k, name in enumerate(CLASSES) for p in sorted((root / name).glob("*.png"))]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as img:
            x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
        return x / 127.5 - 1.0, label


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip a random half of the batch left-right (on the batch's device)."""
    flip = torch.rand(len(x)) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def build(hp):
    root = write_images(ROOT, {"train": 200, "test": 60})
    width = hp.width or 16

    def model():
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Dropout(hp.dropout), nn.Linear(width, len(CLASSES)))

    return Task(name="image-folder", build_model=model, num_classes=len(CLASSES), train=ImageFolder(root / "train"),
                test=ImageFolder(root / "test"), train_transform=random_flip, model_name="small-cnn")
