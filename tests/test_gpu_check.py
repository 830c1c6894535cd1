"""benchmarks/gpu_check.py on a machine without CUDA: one line, exit 0, at once (no torch import needed)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_gpu_check_says_no_cuda_device_and_exits_0():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.strip() == "gpu_check: no CUDA device: nothing to check on this machine (exit 0)"
