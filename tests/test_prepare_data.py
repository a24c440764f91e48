"""prepare_data.py: the README's first job on tiny synthetic data, and its one-line errors."""
import subprocess
import sys

import pytest
from PIL import Image

import prepare_data
from conftest import ROOT


def args_for(*argv):
    return prepare_data.get_args_parser().parse_args(list(argv))


def test_prepares_splits_and_draws_the_sample_grid(cache_dir, tmp_path):
    out = tmp_path / "samples.png"
    counts = prepare_data.main(args_for("--num_images", "10", "--image_size", "48", "--splits", "train,test",
                                        "--data_workers", "1", "--preview", str(out), "--preview_count", "10"))
    assert counts == {"train": 10, "test": 10}
    grid = Image.open(out)
    assert grid.size == (8 * 96, 2 * 96)                     # 8 columns of 48 px tiles at scale 2
    assert len(list((cache_dir / "synthetic").iterdir())) == 2 + 2   # two splits, each with a lock file


@pytest.mark.slow
def test_user_errors_are_one_line_and_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "prepare_data.py", "--dataset", "mafl", "--data_dir", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, env={"LEAD_CACHE": str(tmp_path), "PATH": ""})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope' / 'MAFL' / 'training.txt'}: not found "
        "(expected MAFL training list (19,000 CelebA image names))"]


def test_bad_flags_are_refused_by_the_parser(capsys):
    import pytest
    for argv, message in [(["--num_images", "0"], "must be at least 1"), (["--image_size", "16"], "must be at least 32"),
                          (["--zoom_out", "0.5,1"], "need 1 <= LO <= HI"), (["--zoom_out", "2"], "expected LO,HI"),
                          (["--landmarks", "7"], "invalid choice")]:
        with pytest.raises(SystemExit) as e:
            args_for(*argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_preview_split_must_be_prepared(cache_dir, tmp_path):
    import pytest
    from common.errors import UserError
    with pytest.raises(UserError, match="--preview_split test is not among --splits val"):
        prepare_data.main(args_for("--splits", "val", "--preview_split", "test", "--num_images", "4"))


def test_a_missing_local_dataset_folder_is_one_line(cache_dir, tmp_path):
    import pytest
    from common.cli import from_flags
    from common.data import DataSpec, load_split
    from common.errors import UserError
    with pytest.raises(UserError, match="not found"):
        load_split(from_flags(DataSpec, vars(args_for("--dataset", str(tmp_path / "missing")))), "train")
