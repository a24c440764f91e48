import os
import sys
from pathlib import Path

import datasets
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(int(os.environ.get("LEAD_TEST_THREADS", "2")))
datasets.disable_progress_bars()
# --mixed_precision auto in fp32, as on a CPU without fast bf16, whatever this machine's CPU: the same figures on
# every machine, and subprocesses agree (tests/test_precision.py measures the probe itself)
os.environ["LEAD_CPU_BF16"] = "0"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private data cache, so tests never touch (or depend on) the user's ~/.cache/lead."""
    d = tmp_path / "cache"
    monkeypatch.setenv("LEAD_CACHE", str(d))
    return d


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and does not stall when both cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeHub:
    """huggingface_hub.HfApi replaced by a recorder: tests never use the network. `repos` maps each created
    repository to its privacy, `uploads` each upload to (repo id, message, {file name: bytes})."""

    def __init__(self):
        self.repos, self.uploads = {}, []

    def __call__(self, *args, **kwargs):           # HfApi() -> this recorder
        return self

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.repos[repo_id] = bool(private)

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        assert repo_id in self.repos, "upload before create_repo"
        files = {p.name: p.read_bytes() for p in sorted(Path(folder_path).iterdir()) if p.is_file()}
        self.uploads.append((repo_id, commit_message, files))


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub client's API replaced by a FakeHub, with a token present."""
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake_token")
    return hub


def hub_snapshot(cache: Path, repo: str, files: dict) -> bool:
    """Lay out {file name: bytes} in a Hugging Face cache folder as a download of `repo` leaves it:
    models--OWNER--NAME/refs/main names a commit, snapshots/COMMIT/ holds the files. False if already there."""
    import hashlib
    base = cache / f"models--{repo.replace('/', '--')}"
    if (base / "refs" / "main").is_file():
        return False
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (base / "snapshots" / commit).mkdir(parents=True)
    for name, data in files.items():
        (base / "snapshots" / commit / name).write_bytes(data)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return True


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A stage-1 final/ folder: what byol_pretrain.py writes (here untrained, to keep the tests fast)."""
    from common.models import ResNetEncoder
    folder = tmp_path_factory.mktemp("byol") / "final"
    torch.manual_seed(0)
    ResNetEncoder("resnet18").save_pretrained(folder)
    return folder


def tiny_regressor(root):
    """A stage-2 final/ (root/s2) and a 5-point regressor on it (root/reg), untrained: the plumbing of prediction
    (regress.py --predict, app.py) is under test, not the points."""
    from common.models import DenseExtractor, LandmarkRegressor
    torch.manual_seed(0)
    DenseExtractor("resnet18", feature_dim=16, fpn_width=16, input_size=32).save_pretrained(root / "s2")
    LandmarkRegressor(16, 5, intermediate=4, features_from=str(root / "s2"), protocol="custom", resize=44, crop=32,
                      dataset="mtfl").save_pretrained(root / "reg")
    return root
