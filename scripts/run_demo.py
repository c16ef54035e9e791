"""The demo: runs example_workflows/sdit_demo.json in a headless ComfyUI and writes its images.

    .venv/bin/python scripts/run_demo.py [--out demo_output] [--workflow example_workflows/sdit_demo.json]

The workflow goes through ComfyUI's own server (`/prompt` on 127.0.0.1), exactly as if queued from the UI.
Images of an earlier run of the same workflow are removed first, so a second run replaces them (SaveImage
would otherwise number them _00002_, ...); ComfyUI's temporary folders are removed when it stops.
"""
import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from comfy_client import ComfyServer, output_images, validate_workflow, workflow_to_prompt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def remove_earlier_images(workflow: dict, out: pathlib.Path) -> None:
    """SaveImage writes <prefix>_<5 digits>_.png: drop those of this workflow's prefixes."""
    for node in workflow["nodes"]:
        if node["type"] == "SaveImage":
            prefix = node["widgets_values"][0]
            for old in out.glob(f"{prefix}_[0-9][0-9][0-9][0-9][0-9]_.png"):
                old.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "demo_output"), help="folder for the images")
    parser.add_argument("--workflow", default=str(REPO / "example_workflows" / "sdit_demo.json"))
    args = parser.parse_args()
    comfy = pathlib.Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui")
    out = pathlib.Path(args.out).resolve()
    workflow = json.loads(pathlib.Path(args.workflow).read_text())
    remove_earlier_images(workflow, out)
    with ComfyServer(comfy, out, log_path=out / "comfyui.log") as server:
        info = server.get("/object_info")
        problems = validate_workflow(workflow, info)
        if problems:
            print("workflow does not match this ComfyUI:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        started = time.monotonic()
        entry = server.run_prompt(workflow_to_prompt(workflow, info))
        seconds = time.monotonic() - started
    images = [out / image.get("subfolder", "") / image["filename"] for image in output_images(entry)
              if image.get("type") == "output"]
    print(f"demo finished in {seconds:.1f}s; {len(images)} images in {out}:")
    for path in images:
        print("  ", path)
    return 0 if images else 1


if __name__ == "__main__":
    sys.exit(main())
