"""Thumbnails of the example workflows for ComfyUI's templates menu: example_workflows/<name>.jpg (ComfyUI
serves a .jpg beside a workflow as its thumbnail). Each is the workflow's graph as ComfyUI's own UI draws it
(headless chromium, the bundled frontend, the whole graph in view).

    .venv/bin/python scripts/make_thumbnails.py [--chromium /usr/bin/chromium] [name ...]

Names (e.g. wandancer_sdit) draw only those workflows: the ones of newer ComfyUI's nodes with COMFYUI_PATH set to
such a tree (make_workflows.py --newer), so that their nodes are drawn, and --front-end-root the frontend the
others were drawn with (CI's ComfyUI's: .venv's comfyui_frontend_package/static).
"""
import argparse
import io
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from comfy_client import ComfyServer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 512, 384        # the templates menu shows 4:3 cards


def crop_to_graph(shot, pad: int = 24):
    """The smallest 4:3 box around everything that differs from the canvas background."""
    from PIL import Image, ImageChops
    background = shot.getpixel((2, 2))
    plain = Image.new("RGB", shot.size, background)
    box = ImageChops.difference(shot, plain).convert("L").point(lambda v: 255 if v > 12 else 0).getbbox()
    if box is None:
        return shot
    left, top, right, bottom = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    width, height = right - left, bottom - top
    if width * 3 < height * 4:                   # grow the short side around the centre to 4:3
        grow = (height * 4 // 3 - width) // 2
        left, right = left - grow, right + grow
    else:
        grow = (width * 3 // 4 - height) // 2
        top, bottom = top - grow, bottom + grow
    card = Image.new("RGB", (right - left, bottom - top), background)
    card.paste(shot.crop((max(left, 0), max(top, 0), min(right, shot.width), min(bottom, shot.height))),
               (max(0, -left), max(0, -top)))
    return card


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--front-end-root", help="the frontend to draw with (as ComfyUI's --front-end-root): the "
                                                 "other thumbnails' one, where COMFYUI_PATH's differs")
    parser.add_argument("names", nargs="*", help="workflows to draw (file stems); all by default")
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright
    comfy = pathlib.Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui")
    frontend = ["--front-end-root", args.front_end_root] if args.front_end_root else []
    with tempfile.TemporaryDirectory() as out, ComfyServer(comfy, pathlib.Path(out), extra_args=frontend) as server, \
            sync_playwright() as playwright:
        server.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False,
                                  "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                                  "LiteGraph.Canvas.MinFontSizeForLOD": 1,        # text stays drawn when small
                                  "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1})
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 3 * WIDTH, "height": 3 * HEIGHT})
        page.goto(server.url)
        page.wait_for_function("window.app?.graph && window.LiteGraph?.registered_node_types", timeout=180_000)
        # only the graph: the menus, tabs and toasts around it are hidden
        page.add_style_tag(content="body * { visibility: hidden !important; } "
                                   "#graph-canvas { visibility: visible !important; }")
        for path in sorted((REPO / "example_workflows").glob("*.json")):
            if args.names and path.stem not in args.names:
                continue
            page.keyboard.press("Escape")
            page.evaluate("workflow => app.loadGraphData(workflow)", json.loads(path.read_text()))
            page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")   # whole graph
            page.wait_for_timeout(500)
            shot = crop_to_graph(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
            shot = shot.resize((WIDTH, HEIGHT), Image.LANCZOS)     # crop is 4:3 to within a pixel
            shot.save(path.with_suffix(".jpg"), quality=80)
            print("wrote", path.with_suffix(".jpg").relative_to(REPO))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
