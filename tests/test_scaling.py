"""experiments/scaling.py: the trend's line and interval against an independent least-squares computation, and
the flags it counts a run's compute by."""
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import scaling  # noqa: E402


def test_fit_agrees_with_scipy_and_the_covariance_of_least_squares():
    x, y = np.array([13.0, 13.6, 14.2, 14.5]), np.array([23.2, 20.1, 18.9, 18.0])
    got = scaling.fit(x, y, at=17.5)
    ref = stats.linregress(x, y)
    assert got["slope"] == pytest.approx(ref.slope)
    assert got["at"] == pytest.approx(ref.intercept + ref.slope * 17.5)
    design = np.stack([np.ones_like(x), x], 1)                  # var(a + b x0) = [1, x0] s^2 (X'X)^-1 [1, x0]'
    s2 = ((y - design @ np.array([ref.intercept, ref.slope])) ** 2).sum() / (len(x) - 2)
    point = np.array([1.0, 17.5])
    se = np.sqrt(s2 * point @ np.linalg.inv(design.T @ design) @ point)
    assert got["half_width"] == pytest.approx(stats.t.ppf(0.975, 2) * se)


def test_fit_of_two_points_has_no_interval():
    got = scaling.fit(np.array([1.0, 2.0]), np.array([3.0, 5.0]), at=4.0)
    assert got["at"] == pytest.approx(9.0) and np.isnan(got["half_width"])


def test_compute_flags_keep_what_a_step_computes_and_drop_data_and_length():
    argv = ["--dataset", "mtfl", "--data_dir", "/x", "--add_data", "imagefolder:/y", "--image_size", "128",
            "--arch", "resnet18", "--crop_size", "64", "--max_steps", "31", "--crop_scale", "0.3", "1",
            "--unfreeze_encoder", "--output_dir", "runs/a", "--overwrite"]
    assert scaling.compute_flags(argv) == ["--arch", "resnet18", "--crop_size", "64", "--crop_scale", "0.3", "1",
                                           "--unfreeze_encoder"]


def test_flops_per_image_do_not_depend_on_the_batch_they_are_counted_at():
    flags = ["--objective", "lead+dve", "--dve_channels", "8", "--feature_dim", "16", "--fpn_width", "16"]
    two, four = (scaling.flops_per_image(2, "resnet18", 32, flags, b) for b in (2, 4))
    assert two > 0 and four == pytest.approx(two, rel=0.05)


def test_report_states_an_exact_power_law_and_the_paper_s_compute():
    """Metrics that fall exactly as 10 * (FLOPs / 1e13) ** -0.3: the table reads x0.50 per tenfold compute
    (10 ** -0.3 = 0.501), 10 * 1e4 ** -0.3 = 0.63 at 1e17 FLOPs with a zero-width interval, and says the paper's
    compute and its distance in decades as numbers."""
    rows = [{"name": f"r{i}", "arch": "resnet18", "size": 64, "steps": (i, 2 * i), "flops": flops, "wall_s": 60.0,
             "metrics": {(s, k): 10 * (flops / 1e13) ** -0.3 for _, s, k in scaling.METRICS}}
            for i, flops in enumerate((1e13, 1e14, 1e15), 1)]
    text = "\n".join(scaling.report(rows, rows, paper=1e17))
    assert "the paper's compute, 1e+17 FLOPs, is 2.0 decades beyond the largest run" in text
    assert "| LEAD-64 same | x0.50 | 0.63 | 0.63 to 0.63 |" in text
    assert "| r2 | resnet18, 64 px | 2, 4 | 1e+14 | 1.0 | 5.01 |" in text
