"""What every script does around main(): logging, and user errors as one line with exit status 2."""
from __future__ import annotations

import logging
import os
import sys

from rich.logging import RichHandler

from .errors import UserError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("datasets", "huggingface_hub", "fsspec", "filelock", "httpx", "httpcore", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")    # read when (if) datasets is imported
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def run(main, parser) -> None:
    """Parse argv, run main(args); a UserError (a user's mistake) prints one line and exits 2."""
    args = parser.parse_args()
    setup_logging()
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
