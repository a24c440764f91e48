"""The Hugging Face Hub without the network: every stage's upload (to a recording fake), the token check before
any work, and loading by Hub id from a local cache laid out as `huggingface_hub` leaves a downloaded snapshot."""
import numpy as np
import pytest
import torch
from PIL import Image

import byol_pretrain
import dense_distill
import match
import regress
from common.errors import UserError
from common.models import DenseExtractor, ResNetEncoder
from conftest import hub_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = ["--image_size", "32", "--num_images", "24", "--data_workers", "1"]
S1 = DATA + ["--arch", "resnet18", "--crop_size", "32", "--batch_size", "8", "--optimizer", "adam", "--proj_hidden",
             "32", "--proj_dim", "16", "--max_steps", "1", "--probe_pairs", "4"]
S2 = DATA + ["--crop_size", "32", "--batch_size", "8", "--feature_dim", "16", "--fpn_width", "64", "--head_dim", "16",
             "--max_steps", "1", "--probe_pairs", "4"]
S3 = DATA + ["--resize", "40", "--crop", "32", "--min_steps", "4", "--epochs", "1", "--eval_every", "2",
             "--intermediate", "2"]


def stage(module, argv):
    return module.main(module.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A stage-1 and a stage-2 final/ (untrained: the plumbing is under test). FPN width 64: GroupNorm needs two
    channels per group on the 1x1 map of a single 32 px image."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ResNetEncoder("resnet18", input_size=32).save_pretrained(root / "s1")
    DenseExtractor("resnet18", feature_dim=16, fpn_width=64, input_size=32).save_pretrained(root / "s2")
    return root


def uploaded(fake_hub, repo: str, final) -> str:
    """The one upload to `repo`: it must hold exactly final/'s files, byte for byte; returns its model card."""
    (got, _, files), = [u for u in fake_hub.uploads if u[0] == repo]
    assert files == {p.name: p.read_bytes() for p in final.iterdir()}
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    return files["README.md"].decode()


def test_every_stage_pushes_final_with_a_model_card(cache_dir, tmp_path, models, fake_hub):
    stage(byol_pretrain, S1 + ["--output_dir", tmp_path / "s1", "--push_to_hub", "--hub_model_id", "me/byol"])
    stage(dense_distill, S2 + ["--init_from", models / "s1", "--output_dir", tmp_path / "s2", "--push_to_hub",
                               "--hub_model_id", "me/lead-16", "--hub_private"])
    stage(regress, S3 + ["--features_from", models / "s2", "--output_dir", tmp_path / "s3", "--push_to_hub",
                         "--hub_model_id", "me/regressor"])
    assert fake_hub.repos == {"me/byol": False, "me/lead-16": True, "me/regressor": False}
    card1 = uploaded(fake_hub, "me/byol", tmp_path / "s1" / "final")
    card2 = uploaded(fake_hub, "me/lead-16", tmp_path / "s2" / "final")
    card3 = uploaded(fake_hub, "me/regressor", tmp_path / "s3" / "final")
    for card in (card1, card2, card3):
        assert card.startswith("---\nlibrary_name: pytorch\n") and "## Training" in card and "## Load" in card
    # each card loads and uses the model under its Hub id, and gives its metrics
    assert 'ResNetEncoder.from_pretrained("me/byol")' in card1 and "match.py --model me/byol" in card1
    assert 'DenseExtractor.from_pretrained("me/lead-16")' in card2 and "match.py --model me/lead-16" in card2
    assert "| lead-16 |" in card2 and "| points left in place |" in card2
    assert 'LandmarkRegressor.from_pretrained("me/regressor")' in card3 and "test error" in card3


def test_without_a_token_the_run_stops_before_any_work(cache_dir, tmp_path, monkeypatch, fake_hub):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    for module, argv in ((byol_pretrain, S1), (regress, S3 + ["--features_from", "random-resnet18"])):
        out = tmp_path / module.__name__
        with pytest.raises(UserError, match="no Hugging Face token found; run `huggingface-cli login`"):
            stage(module, argv + ["--output_dir", out, "--push_to_hub", "--hub_model_id", "me/x"])
        assert not out.exists()                            # nothing trained, nothing written
    with pytest.raises(UserError, match="--push_to_hub needs --hub_model_id"):
        stage(dense_distill, S2 + ["--init_from", "x", "--output_dir", tmp_path / "o", "--push_to_hub"])
    assert fake_hub.uploads == []


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, models):
    """The Hub offline, its cache holding `me/lead-16` and `me/byol` as a download leaves them."""
    from huggingface_hub import constants
    root = tmp_path / "hub"
    for repo, folder in (("me/lead-16", models / "s2"), ("me/byol", models / "s1")):
        hub_snapshot(root, repo, {p.name: p.read_bytes() for p in folder.iterdir()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def test_match_and_init_from_load_hub_ids_from_a_downloaded_snapshot(cache_dir, tmp_path, models, hub_cache):
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    common = ["--ref", tmp_path / "a.png", "--query", tmp_path / "a.png", "--ref_points", "10,10;30,20"]
    by_id = stage(match, ["--model", "me/lead-16"] + common)
    by_folder = stage(match, ["--model", models / "s2"] + common)
    assert by_id["query_points"] == by_folder["query_points"] and by_id["scores"] == by_folder["scores"]
    result = stage(dense_distill, S2 + ["--init_from", "me/byol", "--output_dir", tmp_path / "s2"])
    assert result["step"] == 1 and "hypercolumn-960" in result["probe"]
    with pytest.raises(UserError, match="me/absent: no such folder, and not a reachable Hub model"):
        stage(match, ["--model", "me/absent"] + common)
