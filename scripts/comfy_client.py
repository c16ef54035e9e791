"""Runs ComfyUI headless and talks to it over its HTTP API (127.0.0.1 only).

- ComfyServer: starts `main.py` in a subprocess on a free port, waits until it answers, stops it by PID;
- workflow_to_prompt: a UI workflow (example_workflows/*.json) -> the API prompt `/prompt` takes,
  using `/object_info` to map each node's widget values onto its inputs;
- validate_workflow: every node type exists, every link's type matches both ends, every widget value is one ComfyUI
  takes;
- run_prompt: queues a prompt and waits for its history entry.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Dict, List, Optional

# newer ComfyUI's DynamicCombo (e.g. SaveVideo's format): a combo whose chosen option adds widgets of its own,
# named "<combo>.<input>", right after it (recursively), as the frontend draws and serialises them
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# what a combo naming a model, image, video or sound file ends with
FILE_SUFFIXES = {".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin", ".png", ".jpg", ".jpeg", ".webp",
                 ".mp4", ".webm", ".mov", ".gif", ".wav", ".mp3", ".flac"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui_root: pathlib.Path, output_dir: pathlib.Path, python: str = sys.executable,
                 extra_args: Optional[List[str]] = None, log_path: Optional[pathlib.Path] = None):
        self.root = pathlib.Path(comfyui_root)
        self.output_dir = pathlib.Path(output_dir)
        self.python = python
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self._scratch = pathlib.Path(tempfile.mkdtemp(prefix="sdit-comfy-"))
        self.log_path = log_path or self._scratch / "server.log"

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        self.output_dir.mkdir(parents=True, exist_ok=True)
        user_dir = self._scratch / "user"
        user_dir.mkdir()
        (self._scratch / "input").mkdir()      # nodes that list input files (LoadImage) need it to exist
        args = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                "--output-directory", str(self.output_dir.resolve()), "--user-directory", str(user_dir),
                "--temp-directory", str(self._scratch), "--input-directory", str(self._scratch / "input"),
                "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *self.extra_args]
        if not _has_cuda(self.python):
            args.append("--cpu")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        log = self.log()
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{log[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self._scratch, ignore_errors=True)     # user, input and temp folders (and a log kept there)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        return pathlib.Path(self.log_path).read_text(errors="replace") if pathlib.Path(self.log_path).exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return json.loads(body) if body.strip() else None
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"POST {path} failed ({error.code}): {error.read().decode(errors='replace')}") from None

    def run_prompt(self, prompt: dict, timeout: float = 1800.0) -> dict:
        """Queues an API prompt and returns its history entry once it finished."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4()), "prompt_id": str(uuid.uuid4())})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            status = history.get(prompt_id, {}).get("status", {})
            if status.get("status_str") == "error":
                raise RuntimeError(f"prompt failed: {json.dumps(status.get('messages'))[:4000]}")
            if status.get("completed"):
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running the prompt:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s")


def _has_cuda(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def output_images(history_entry: dict) -> List[dict]:
    images = []
    for node_id, output in history_entry.get("outputs", {}).items():
        for image in output.get("images", []):
            images.append(dict(image, node=node_id))
    return images


# ---- workflows ------------------------------------------------------------------------------------

def _input_specs(info: dict) -> Dict[str, list]:
    specs = {}
    for section in ("required", "optional"):
        specs.update(info["input"].get(section, {}))
    return specs


def spec_options(spec: list) -> dict:
    """An input spec's options ({} where it has none): ["INT", {"default": 1, ...}]."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec_options(spec)
    if options.get("forceInput"):
        return False
    # an input of several types ("FLOAT,INT") is drawn as the widget its `widgetType` names
    return isinstance(kind, list) or kind in WIDGET_TYPES or options.get("widgetType") in WIDGET_TYPES


def widget_default(spec: list):
    """What ComfyUI's frontend puts in a widget a workflow leaves unset: its default, else a combo's first option (a list
    of options, or "COMBO" with `options`, as nodes of ComfyUI's newer node API say it) and a text widget's ""."""
    options = spec_options(spec)
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else None
    if spec[0] == "COMBO":
        return next(iter(options.get("options") or []), None)
    if spec[0] == DYNAMIC_COMBO:
        return options["options"][0]["key"]
    return "" if spec[0] == "STRING" else None


def chosen_option_inputs(name: str, spec: list, value) -> Dict[str, list]:
    """The widgets a DynamicCombo `name` set to `value` adds after itself ({} for other inputs): "<name>.<input>" ->
    spec, required then optional."""
    if spec[0] != DYNAMIC_COMBO:
        return {}
    option = next((o for o in spec[1]["options"] if o["key"] == value), None)
    if option is None:
        raise ValueError(f"{name}: {value!r} is not one of {[o['key'] for o in spec[1]['options']]}")
    return {f"{name}.{key}": sub for section in ("required", "optional")
            for key, sub in option["inputs"].get(section, {}).items()}


def _input_type(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def validate_workflow(workflow: dict, object_info: dict) -> List[str]:
    """Problems found (empty when valid): unknown node types, links whose types do not match, widget values ComfyUI
    would refuse (`_widget_problem`)."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}
    for node in workflow["nodes"]:
        if node["type"] not in object_info:
            problems.append(f"node {node['id']}: unknown type {node['type']}")
            continue
        for name, spec, value in _node_inputs(node, object_info[node["type"]], _linked(node, links)):
            problem = _widget_problem(spec, value)
            if problem:
                problems.append(f"node {node['id']}: {node['type']}.{name} {problem}")
    for link in workflow.get("links", []):
        link_id, source, source_slot, target, target_slot, link_type = link[:6]
        if nodes.get(source, {}).get("type") not in object_info or nodes.get(target, {}).get("type") not in object_info:
            continue
        outputs = object_info[nodes[source]["type"]]["output"]
        if source_slot >= len(outputs) or outputs[source_slot] != link_type:
            problems.append(f"link {link_id}: {nodes[source]['type']} output {source_slot} is not {link_type}")
            continue
        target_inputs = nodes[target].get("inputs", [])
        name = target_inputs[target_slot]["name"] if target_slot < len(target_inputs) else None
        spec = _input_specs(object_info[nodes[target]["type"]]).get(name)
        if spec is None:
            problems.append(f"link {link_id}: {nodes[target]['type']} has no input '{name}'")
        elif _input_type(spec) not in (link_type, "*") and link_type != "*":
            problems.append(f"link {link_id}: {nodes[target]['type']}.{name} takes {_input_type(spec)}, got {link_type}")
    return problems


def _widget_problem(spec: list, value) -> str:
    """Why ComfyUI would refuse a widget's value ("" where it would not): a combo's value not among its options (but a
    file's name: the user installs the file), a number outside its bounds."""
    if value is HOLDS_NO_VALUE:
        return ""
    options = spec_options(spec)
    if _input_type(spec) == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
        names_a_file = isinstance(value, str) and pathlib.PurePath(value).suffix.lower() in FILE_SUFFIXES
        if value is None or (choices and value not in choices and not names_a_file):
            return f"has {value!r}, not one of its options"
    elif spec[0] in ("INT", "FLOAT") and isinstance(value, (int, float)):
        if not options.get("min", value) <= value <= options.get("max", value):
            return f"has {value!r}, outside [{options.get('min')}, {options.get('max')}]"
    return ""


def _linked(node: dict, links: dict) -> dict:
    """A workflow node's inputs that take a link: name -> the link."""
    return {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}


HOLDS_NO_VALUE = object()      # an input whose value is not a widget's: a socket, or a widget taking a link


def _node_inputs(node: dict, info: dict, linked: dict):
    """(name, spec, value) of each input of a workflow node, in order (a DynamicCombo's chosen option's widgets after
    it): the widget's value, or HOLDS_NO_VALUE."""
    values = list(node.get("widgets_values", []))
    specs = list(_input_specs(info).items())
    while specs:
        name, spec = specs.pop(0)
        value = HOLDS_NO_VALUE
        if _is_widget(spec) and values:
            widget_value = values.pop(0)
            options = spec_options(spec)
            if options.get("control_after_generate") and values and values[0] in SEED_CONTROL_VALUES:
                values.pop(0)
            if name not in linked:
                value = widget_value
                specs[:0] = chosen_option_inputs(name, spec, value).items()
        yield name, spec, value


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """UI workflow -> API prompt: linked inputs become [source id, slot], widgets take their values."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):          # muted / bypassed
            continue
        linked = _linked(node, links)
        inputs = {}
        for name, _, value in _node_inputs(node, object_info[node["type"]], linked):
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif value is not HOLDS_NO_VALUE:
                inputs[name] = value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
