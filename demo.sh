#!/usr/bin/env bash
# The demo on the embedded synthetic faces: installs into .venv (once), then runs.
# Foundation stage: generates every split of the synthetic data set, builds the tensor caches and
# draws runs/demo/samples.png; the training stages join this script as they land.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python prepare_data.py --preview runs/demo/samples.png "$@"
