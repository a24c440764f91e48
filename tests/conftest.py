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
