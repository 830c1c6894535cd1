"""Test-wide settings: one torch thread per process (tests train tiny models; extra threads only
contend on a 2-core machine), inherited by subprocesses through OMP_NUM_THREADS."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
