"""Files written whole or not at all (light: no torch import)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, obj) -> None:
    """Written whole or not at all: a killed run never leaves half a file for --resume (or demo.sh) to read."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
