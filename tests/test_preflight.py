"""Pre-flight of a task before training: user task files written here, each with one fault, through the
command line (in-process main()): one line naming the task and the problem, exit 2, and nothing stored."""

import re
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainlab.cli import main
from trainlab.config import Config, ConfigError
from trainlab.preflight import PreflightError, preflight
from trainlab.tasks import Task

TASK = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import Dataset, TensorDataset
    from trainlab import Task

    class Listed(Dataset):  # not in memory as tensors: only its first batch is read
        def __init__(self, x, y):
            self.x, self.y = x, y
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):
            return self.x[i], self.y[i]

    def build(hp):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(120, 8, generator=g)
        y = torch.randint(0, 3, (120,), generator=g)
        width, test = 8, (x[:20], y[:20])
        FAULT
        data = Listed(x, y) if LISTED else TensorDataset(x, y)
        return Task(name="toy", build_model=lambda: nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 3)),
                    train=data, test=TensorDataset(*test), num_classes=3)
''')

FAULTS = [  # (fault, in a Dataset that is not tensors, what the one line must say)
    ("y[77] = 3", False, r"the train split's label at index 77 is 3 \(not below num_classes 3; 1 example out of range "
                         r"in all\): labels must be class indices in \[0, 3\)"),
    ("y[5] = -1; y[9] = -2", False, r"the train split's label at index 5 is -1 \(negative; 2 examples out of range"),
    ("test = (x[:20], y[:20] + 1)", False, r"the test split's label at index \d+ is 3 \(not below num_classes 3"),
    ("x[42, 3] = float('nan')", False, r"the train split's input at index 42 holds NaN \(1 of its values; 1 example "
                                       r"with NaN or Inf in all\): inputs must be finite"),
    ("x[7] = float('inf')", False, r"the train split's input at index 7 holds Inf \(8 of its values"),
    ("width = 5", False, r"the model does not accept the train inputs: a batch of shape \(32, 8\) \(dtype float32\) "
                         r"raised RuntimeError: mat1 and mat2 shapes cannot be multiplied \(32x8 and 5x16\)"),
    ("x, y = x[:0], y[:0]", False, r"the train split is empty \(0 examples\)"),
    ("y = y.float()", False, r"the train split's labels are float32, but a classification loss needs class indices"),
    ("y[3] = 7", True, r"the train split's label at index 3 is 7 \(not below num_classes 3"),
    ("x[0, 0] = float('nan')", True, r"the train split's input at index 0 holds NaN"),
    ("raise OSError('no data in /srv/none')", False, r"building the task raised OSError: no data in /srv/none "
                                                     r"\(at toytask\.py line \d+\)"),
]


def write_task(tmp_path, fault: str, listed: bool = False) -> str:
    path = tmp_path / "toytask.py"
    path.write_text(TASK.replace("FAULT", fault).replace("LISTED", str(listed)))
    return f"{path}:build"


@pytest.mark.parametrize("fault, listed, message", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("command", ["train", "check"])
def test_bad_task_is_one_line_exit_2_nothing_stored(tmp_path, capsys, fault, listed, message, command):
    spec = write_task(tmp_path, fault, listed)
    db = tmp_path / "runs.db"
    argv = ["train", "--quiet"] if command == "train" else ["check", "init"]
    rc = main([*argv, "--set", f"task={spec}", "--set", "model=mlp", "--db", str(db)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("trainlab: error: task ") and "toy" in err, err
    assert re.search(message, err), err
    assert "learning rate" not in err and "lr " not in err  # bad data is never blamed on the learning rate
    assert not db.exists()  # the store is not even opened: no file, no run row


def test_good_task_passes_and_changes_no_random_state(tmp_path):
    from trainlab.preflight import load_checked_task

    hp = Config(task=write_task(tmp_path, "pass"), model="mlp")
    before = torch.get_rng_state()
    task = load_checked_task(hp)
    assert torch.equal(torch.get_rng_state(), before)
    assert task.name == "toy" and task.val is not None


def test_ignore_index_is_allowed_and_soft_labels_are_checked():
    x = torch.randn(40, 4)
    y = torch.randint(0, 2, (40,))
    y[3] = -100  # cross_entropy's ignore_index: not a class, not an error
    task = Task("t", lambda: nn.Linear(4, 2), TensorDataset(x, y), TensorDataset(x, y.clamp(min=0)), 2)
    preflight(task, Config(batch_size=8))
    soft = torch.softmax(torch.randn(40, 2), dim=1)
    soft[11, 0] = float("nan")
    task = Task("soft", lambda: nn.Linear(4, 2), TensorDataset(x, soft), TensorDataset(x, y.clamp(min=0)), 2)
    with pytest.raises(PreflightError, match=r"^task 'soft' \(mnist1d\): the train split's label probabilities hold NaN"):
        preflight(task, Config(batch_size=8))


def test_model_output_width_and_given_model_mode():
    x, y = torch.randn(30, 4), torch.randint(0, 5, (30,))
    task = Task("five", lambda: nn.Linear(4, 3), TensorDataset(x, y % 3), TensorDataset(x, y % 3), 5)
    with pytest.raises(PreflightError, match=r"outputs scores of shape 16x3 for a batch of 16, but the task has 5 "
                                             r"classes: expected 16x5"):
        preflight(task, Config(batch_size=16))
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5))
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    preflight(Task("ok", lambda: model, TensorDataset(x, y), TensorDataset(x, y), 5), Config(batch_size=16), model)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_a_model_too_big_for_memory_is_refused_before_it_is_built(capsys):
    # mlp with width 2**20 on mnist1d: two 2**20 x 2**20 layers, 4 TB of weights: refused on the meta device
    rc = main(["check", "init", "--set", "model=mlp", "--set", f"width={2 ** 20}", "--db", "sqlite://"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "task 'mnist1d': the model (mlp, width 1048576) has 4.4 TB of parameters; training it needs about" in err
    assert "use a smaller model or width" in err


def test_user_dataset_that_fails_to_read_is_named():
    class Broken(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            if i == 2:
                raise FileNotFoundError("img_0002.png")
            return torch.zeros(4), 0

    task = Task("files", lambda: nn.Linear(4, 2), Broken(), TensorDataset(torch.zeros(3, 4), torch.zeros(3).long()), 2)
    with pytest.raises(ConfigError, match=r"^task 'files' \(mnist1d\): reading train example 2 raised "
                                          r"FileNotFoundError: img_0002\.png \(at test_preflight\.py line \d+\)$"):
        preflight(task, Config(batch_size=8))
