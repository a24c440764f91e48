"""Every command the README shows runs, so that none of them can rot: each ```bash line is parsed, then executed
in order, in a scratch folder, with tiny flags appended (argparse keeps the last value of a flag): the stage scripts
in-process, `torchrun` lines as real process groups (two "nodes" on this machine). The exceptions are lines marked
`# [GPU]` or `# [interactive]`, `bash demo.sh` (tests/test_demo.py runs it with --quick) and the test command itself.
"""
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, hub_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPTS = {"byol_pretrain.py", "dense_distill.py", "regress.py", "match.py", "prepare_data.py"}
DATA = ["--image_size", "32", "--num_images", "24", "--data_workers", "1"]
TINY = {
    "byol_pretrain": DATA + ["--arch", "resnet18", "--crop_size", "32", "--batch_size", "8", "--max_steps", "1",
                             "--log_every", "1",
                             "--proj_hidden", "32", "--proj_dim", "16", "--probe_pairs", "4", "--warmup_epochs", "0"],
    "dense_distill": DATA + ["--crop_size", "32", "--batch_size", "8", "--max_steps", "1", "--fpn_width", "64",
                             "--head_dim", "16", "--probe_pairs", "4", "--warmup_epochs", "0"],
    "regress": DATA + ["--resize", "40", "--crop", "32", "--min_steps", "4", "--epochs", "1", "--eval_every", "2",
                       "--intermediate", "2", "--fit_rows", "256"],
    "match": DATA + ["--size", "32"],
    "prepare_data": DATA,
}
FEW = ["--num_train", "4", "8", "--seeds", "2"]           # replaces a few-shot line's sizes (24 images here)


def readme_commands() -> list[str]:
    """The logical lines of the README's bash blocks (continuations joined), comment-only lines left out."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip() and not line.strip().startswith("#"):
                lines.append(line.strip())
    return lines


def classify(line: str):
    """(kind, details): skip (why), script (module, argv) or torchrun (torchrun flags, module, argv)."""
    if re.search(r"#\s*\[(GPU|interactive)\]", line):
        return "skip", "marked"
    argv = shlex.split(line, comments=True)
    if argv[:2] == ["bash", "demo.sh"]:
        return "skip", "tests/test_demo.py"
    if argv[1:4] == ["-m", "pytest", "-q"]:
        return "skip", "the test command"
    if argv[1:2] == ["benchmarks/throughput.py"]:
        return "skip", "tests/test_fast_pipeline.py runs it at toy size"
    if argv[:3] == [".venv/bin/pip", "install", "-r"]:
        return "skip", "an install: .ci/run installs the same files"
    if argv[1:2] == ["benchmarks/gpu_check.py"]:
        return "skip", "tests/test_gpu_check.py runs its dry run"
    at = next((i for i, a in enumerate(argv) if a in SCRIPTS), None)
    assert at is not None, f"README command with no known script: {line}"
    module, launcher = argv[at].removesuffix(".py"), argv[:at]
    if launcher[0] == "torchrun":
        return "torchrun", (launcher[1:], module, argv[at + 1:])
    assert launcher in (["python"], [".venv/bin/python"]) or launcher[:2] == ["accelerate", "launch"], line
    return "script", (module, argv[at + 1:])


def tiny(module: str, argv: list[str]) -> list[str]:
    extra = TINY[module] + (FEW if "--num_train" in argv else [])
    if "--exit_after_steps" in argv:                     # the resume example: stop after step 1 of 2, resume
        extra = extra + ["--max_steps", "2", "--exit_after_steps", "1", "--checkpoint_every", "1"]
    elif "--resume" in argv and module != "regress":
        extra = extra + ["--max_steps", "2"]
    if module == "match" and "--benchmark" in argv:
        extra = extra + ["--pairs", "4"]
    return argv + extra


def test_every_readme_command_is_known_and_parses():
    kinds = [classify(line) for line in readme_commands()]
    assert sum(k == "script" for k, _ in kinds) >= 10 and sum(k == "torchrun" for k, _ in kinds) >= 3
    for kind, details in kinds:
        if kind != "skip":
            module, argv = details[-2:]
            importlib.import_module(module).get_args_parser().parse_args(argv)      # SystemExit on a bad flag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(group: list[tuple], cwd, env):
    """One torchrun line, or the lines of one multi-node job (started together, on a free port)."""
    port = str(free_port())
    procs = []
    for flags, module, argv in group:
        flags = [port if i and flags[i - 1] == "--master_port" else f for i, f in enumerate(flags)]
        cmd = [sys.executable, "-m", "torch.distributed.run", *flags, str(ROOT / f"{module}.py"),
               *tiny(module, argv)]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_every_readme_command_runs(cache_dir, tmp_path, monkeypatch, fake_hub):
    from huggingface_hub import constants
    from accelerate.state import AcceleratorState
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    g = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(g.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    commands = [classify(line) for line in readme_commands()]
    ran, i = 0, 0
    while i < len(commands):
        kind, details = commands[i]
        i += 1
        if kind == "script":
            module, argv = details
            AcceleratorState._reset_state(True)          # a line may change the precision: a fresh state each
            mod = importlib.import_module(module)
            mod.main(mod.get_args_parser().parse_args(tiny(module, argv)))
            publish(fake_hub, tmp_path / "hub")
        elif kind == "torchrun":
            group = [details]
            if "--nnodes" in details[0]:                 # the other nodes' lines follow: start them together
                while i < len(commands) and commands[i][0] == "torchrun" and "--nnodes" in commands[i][1][0]:
                    group.append(commands[i][1])
                    i += 1
            run_torchrun(group, tmp_path, env)
        ran += kind != "skip"
    AcceleratorState._reset_state(True)
    assert ran >= 13
    # what the README promises exists: stage folders, the pushed models, the picture
    for final in ("runs/byol", "runs/distill", "runs/cpu_pixel", "runs/cpu_distill", "runs/byol_2node"):
        assert (tmp_path / final / "final" / "model.safetensors").is_file(), final
    assert set(fake_hub.repos) == {"user/lead-byol", "user/lead-64"} and fake_hub.repos["user/lead-byol"]
    assert (tmp_path / "match.png").is_file() and (tmp_path / "match_hub.png").is_file()
    assert (tmp_path / "runs" / "fewshot" / "fewshot.png").is_file()
    predicted = [json.loads(x) for x in (tmp_path / "landmarks.jsonl").read_text().splitlines()]
    assert [p["path"] for p in predicted] == ["a.jpg", "b.jpg"]          # written once, the resume added nothing
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs/byol_long/metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps == [1, 2]                               # stopped after step 1, resumed for step 2


def publish(fake_hub, cache):
    """What the fake Hub received, laid out in the offline cache as a download leaves it, so that the README's
    next lines can load it by id."""
    for repo, _, files in fake_hub.uploads:
        hub_snapshot(cache, repo, files)
    shutil.rmtree(cache / ".locks", ignore_errors=True)
