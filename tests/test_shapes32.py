"""shapes32 (the generated image workload) and the flip/crop augmentation stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlab.config import Config, ConfigError, make_config
from trainlab.models import FlipCrop, build_model, flip_crop, stage_names
from trainlab.shapes32 import CLASSES, generate, shapes32_arrays
from trainlab.tasks import load_task
from trainlab.train import fit


def test_generate_is_a_function_of_the_seed_balanced_and_varied():
    x, y = generate(200, seed=3)
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [20] * 10 and len(CLASSES) == 10
    x2, y2 = generate(200, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = generate(200, seed=4)
    assert not np.array_equal(x, x3)
    assert x.std() > 30 and len(np.unique(x.reshape(200, -1).mean(1).round())) > 50, "colours and textures vary"
    disc = x[y == 0].astype(float)
    assert np.abs(disc[:, :, :, :16].mean() - disc[:, :, :, 16:].mean()) < 20, "positions spread over the frame"


def test_splits_are_fixed_by_seeds_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shapes32_arrays.cache_clear()
    try:
        a = shapes32_arrays(300, 100)
        assert list((tmp_path / "trainlab").glob("shapes32-*.npz")), "cached on disk"
        shapes32_arrays.cache_clear()
        b = shapes32_arrays(300, 100)  # read back from the file
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert not np.array_equal(a["x"][:100], a["x_test"]), "train and test come from different seeds"
    finally:
        shapes32_arrays.cache_clear()


def test_flip_crop_flips_shifts_and_keeps_eval_batches_as_they_are():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    outs = [flip_crop(x, pad=2) for _ in range(50)]
    assert all(o.shape == x.shape for o in outs)
    assert any(torch.equal(o[0], x[0].flip(2)) for o in outs), "a flip without a shift happens"
    assert any((o == 0).any() for o in outs), "shifts bring in the zero padding"
    for o in outs:  # every output is the input flipped or not, then shifted by at most 2 pixels
        for i in range(2):
            ok = False
            for img in (x[i], x[i].flip(2)):
                padded = torch.nn.functional.pad(img, (2, 2, 2, 2))
                ok = ok or any(torch.equal(o[i], padded[:, r:r + 8, c:c + 8]) for r in range(5) for c in range(5))
            assert ok
    stage = FlipCrop()
    assert torch.equal(stage.eval()(x), x), "identity in eval mode"
    assert not all(torch.equal(stage.train()(x), x) for _ in range(5))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert flip_crop(cl).is_contiguous(memory_format=torch.channels_last), "keeps the memory format"


def test_augment_is_a_parameterless_first_stage_only_for_shapes32():
    plain = build_model("resnet", (3, 32, 32), 10, 8)
    aug = build_model("resnet", (3, 32, 32), 10, 8, augment="flip_crop")
    assert stage_names(aug) == ["augment", *stage_names(plain)]
    assert list(aug.state_dict()) == list(plain.state_dict()), "checkpoints load across the two"
    with pytest.raises(ConfigError, match=r"^augment: the task 'digits' has no label-preserving flip_crop .*"
                                          r"got 'flip_crop'$"):
        load_task(Config(task="digits", augment="flip_crop"))
    with pytest.raises(ConfigError, match=r"augment: input should be 'none' or 'flip_crop', got 'mixup'"):
        make_config({"augment": "mixup"})


@pytest.mark.slow
def test_a_small_cnn_does_not_solve_it_in_one_epoch():
    hp = Config(task="shapes32", model="cnn", width=16, epochs=1, batch_size=64, monitor_every=0)
    torch.set_num_threads(1)
    task = load_task(hp)
    x, _ = task.train.tensors
    assert len(task.train) == 9000 and len(task.val) == 1000 and len(task.test) == 2000
    assert tuple(x.shape[1:]) == (3, 32, 32)
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05, "standardized per channel"
    result = fit(task, hp, quiet=True)
    assert 0.12 < result.test["acc"] < 0.9, "above chance, far from solved"
