"""A local web page for the trained models, as a Hugging Face Space is laid out (app.py, Gradio): landmarks on every
face of a photo, and points clicked on one photo carried to another, with the similarity heat map of the last one.

    pip install -r requirements-app.txt        # gradio: an optional extra, not in the core install
    python app.py                              # then open http://127.0.0.1:7860

Models (loaded once): --regressor, a regressor's final/ (default: the real-face recipe's, else the synthetic demo's);
--model, the dense features for matching (default: as match.py chooses). Nothing is fetched from the network:
Gradio's analytics are off, and the page is served on this machine only (--host 127.0.0.1).
Why Gradio: it is what Hugging Face Spaces run, so this file is a Space as it stands; its Image component gives
click coordinates in the image's own pixels, which is all the matching tab needs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    import gradio as gr
except ImportError:
    raise SystemExit("error: app.py needs the web page's extra: pip install -r requirements-app.txt") from None

import match  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.predict import DEFAULT_MODELS, Predictor, draw  # noqa: E402

SYNTHETIC_REGRESSOR = "runs/demo/regress_aligned/final"     # bash demo.sh: 5 points of the drawn faces


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("LEAD in a web page: landmarks on a photo, points carried between two")
    parser.add_argument("--regressor", default=None, help="a regressor's final/ or Hub id (regress.py)")
    parser.add_argument("--model", default=None, help="dense features for matching: a stage-2 final/ or Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines too")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def pick_regressor(given: str | None) -> str | None:
    if given:
        return given
    return next((m for m in (DEFAULT_MODELS[5], DEFAULT_MODELS[68], SYNTHETIC_REGRESSOR)
                 if (Path(m) / "config.json").is_file()), None)


class Page:
    """The models, loaded once, and what each tab does with an upload."""

    def __init__(self, regressor: str | None, model: str | None):
        from common.features import load_source
        self.regressor, self.predictor = regressor, Predictor.load(regressor) if regressor else None
        self.model, self.source = model, None
        try:
            self.model = model or match.resolve_model(match.get_args_parser().parse_args([]), real=True)[0]
            self.source = load_source(self.model)
        except UserError as e:                                  # the landmarks tab can work without it
            self.missing = str(e)
        if self.predictor is None and self.source is None:
            raise UserError("no regressor and no model for matching: run `bash demo.sh` first, or pass --regressor "
                            "/ --model")

    def landmarks(self, image):
        if image is None:
            return None, ""
        if self.predictor is None:
            raise UserError("no regressor: run `bash demo.sh` (or --real DIR) first, or pass --regressor")
        faces, skipped = self.predictor(image.convert("RGB"))
        record = {"width": image.width, "height": image.height, "landmarks": self.predictor.landmarks,
                  "faces": faces, **({"skipped": skipped} if skipped else {})}
        return draw(image, faces), json.dumps(record)

    def carry(self, ref, query, points: list):
        """Match `points` (clicked on `ref`, its pixels) into `query`; the picture shows the last one's heat map."""
        if ref is None or query is None or not points:
            return None, json.dumps({"ref_points": points})
        if self.source is None:
            raise UserError(self.missing)
        from PIL import Image
        with tempfile.TemporaryDirectory(prefix="lead-app-") as tmp:     # one per request: sessions apart
            work = Path(tmp)
            ref.convert("RGB").save(work / "ref.png")
            query.convert("RGB").save(work / "query.png")
            argv = ["--model", self.model, "--ref", str(work / "ref.png"), "--query", str(work / "query.png"),
                    "--ref_points", ";".join(f"{x},{y}" for x, y in points), "--heatmap", str(len(points) - 1),
                    "--out", str(work / "match.png")]
            result = match.match_two(match.get_args_parser().parse_args(argv), loaded=self.source)
            picture = Image.open(work / "match.png").copy()
        return picture, json.dumps({k: result[k] for k in ("ref_points", "query_points", "scores")})


def build(page: Page) -> gr.Blocks:
    def click(ref, query, points, evt: gr.SelectData):
        points = points + [[float(evt.index[0]), float(evt.index[1])]]
        return (points, *page.carry(ref, query, points))

    def guarded(fn):                                          # a user's mistake: a message on the page, not a trace
        @functools.wraps(fn)                                  # Gradio reads the signature (gr.SelectData) through it
        def run(*args):
            try:
                return fn(*args)
            except UserError as e:
                raise gr.Error(str(e)) from None
        return run

    with gr.Blocks(title="LEAD landmarks") as demo:
        gr.Markdown(f"# LEAD: landmarks and matching\nRegressor `{page.regressor}`; features `{page.model}`.")
        with gr.Tab("Landmarks"):
            with gr.Row():
                photo = gr.Image(type="pil", label="Photo", elem_id="photo")
                drawn = gr.Image(type="pil", label="Every face's landmarks", elem_id="drawn", interactive=False)
            record = gr.Textbox(label="JSON (regress.py --predict's line)", elem_id="record", lines=6)
            photo.change(guarded(page.landmarks), photo, [drawn, record])
        with gr.Tab("Match"):
            points = gr.State([])
            with gr.Row():
                ref = gr.Image(type="pil", label="Reference: click points", elem_id="ref")
                query = gr.Image(type="pil", label="Query", elem_id="query")
            carried = gr.Image(type="pil", label="Carried points, heat map of the last", elem_id="carried",
                               interactive=False)
            result = gr.Textbox(label="JSON (match.py --json's fields)", elem_id="result", lines=4)
            clear = gr.Button("Clear points")
            ref.select(guarded(click), [ref, query, points], [points, carried, result])
            clear.click(lambda: ([], None, ""), None, [points, carried, result])
            ref.change(lambda: ([], None, ""), None, [points, carried, result])
    return demo


def main(args) -> None:
    page = Page(pick_regressor(args.regressor), args.model)
    build(page).launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    from common.cli import run_cli
    run_cli(main, get_args_parser())
