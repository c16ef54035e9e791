"""The pack inside ComfyUI's real browser UI: Debian's chromium driven by playwright against the project's
ComfyUI host (127.0.0.1, --cpu). Every test runs on ComfyUI's bundled frontend and on the newest one from PyPI
(the install step puts it under .frontends/newest; served with --front-end-root), each in the classic canvas
and in Nodes 2.0 (Vue nodes). Skipped when chromium or playwright is missing (the install step installs both
where it can). A screenshot of each finished graph is saved under test_artifacts/."""
import json
import os
import pathlib
import sys
import time

import pytest

from conftest import COMFYUI_ROOT, REPO_ROOT
from test_workflows import OUR_NODES

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from comfy_client import ComfyServer  # noqa: E402

CHROMIUM = pathlib.Path(os.environ.get("SDIT_CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM}")

ARTIFACTS = REPO_ROOT / "test_artifacts"
EXTENSION = "comfyui-sdit.region-maps"
DEMO_WORKFLOWS = [p for p in sorted((REPO_ROOT / "example_workflows").glob("*.json"))
                  if any(n["type"] == "SDiTDemoModelLoader" for n in json.loads(p.read_text())["nodes"])]
SAMPLERS = ("RASSampler", "SDiTSampler")
NEWEST_FRONTEND = REPO_ROOT / ".frontends" / "newest" / "comfyui_frontend_package" / "static"
FRONTENDS = ("bundled", "newest")
MODES = ("classic", "nodes2")       # Nodes 2.0 is the setting Comfy.VueNodes.Enabled


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def finished(server, prompt_id: str):
    """The prompt's history entry once it succeeded or failed, else None."""
    entry = server.get(f"/history/{prompt_id}").get(prompt_id, {})
    status = entry.get("status", {})
    return entry if status.get("completed") or status.get("status_str") == "error" else None


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    extra = []
    if request.param == "newest":
        if not NEWEST_FRONTEND.is_dir():
            pytest.skip(f"no newest frontend at {NEWEST_FRONTEND} (make test installs it)")
        extra = ["--front-end-root", str(NEWEST_FRONTEND)]
    with ComfyServer(COMFYUI_ROOT, tmp_path_factory.mktemp("browser-output"), extra_args=extra) as running:
        running.post("/settings", {"Comfy.TutorialCompleted": True})   # no templates dialog on first load
        running.frontend = request.param
        yield running


@pytest.fixture(scope="module", params=MODES)
def page(request, server):
    nodes2 = request.param == "nodes2"
    server.post("/settings", {"Comfy.VueNodes.Enabled": nodes2})
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.sdit_errors = []
            page.sdit_case = f"{server.frontend}-{request.param}"
            page.sdit_nodes2 = nodes2
            page.on("pageerror", lambda error: page.sdit_errors.append(f"{error}\n{error.stack or ''}"))
            page.on("console", lambda message: page.sdit_errors.append(message.text)
                    if message.type == "error" and "sdit" in message.text.lower() else None)
            page.goto(server.url)
            ready(page)
            mode = page.evaluate("() => app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled') ?? null")
            if nodes2 and mode is not True:
                pytest.skip(f"the {server.frontend} frontend has no Nodes 2.0 mode")
            yield page
        finally:
            browser.close()


def ready(page) -> None:
    """The UI has loaded (and knows which mode the test runs in)."""
    page.wait_for_function("window.app?.graph && window.LiteGraph?.registered_node_types", timeout=180_000)
    page.keyboard.press("Escape")
    page.evaluate(f"() => {{ window.sditNodes2 = {str(page.sdit_nodes2).lower()}; }}")


def our_errors(page) -> list:
    return [e for e in page.sdit_errors if "sdit" in e.lower()]


def test_ui_registers_our_nodes_and_runs_our_extension(page):
    registered = page.evaluate("Object.keys(LiteGraph.registered_node_types)")
    assert set(OUR_NODES) <= set(registered)
    assert EXTENSION in page.evaluate("app.extensions.map(e => e.name)")
    assert our_errors(page) == []


@pytest.mark.parametrize("path", DEMO_WORKFLOWS, ids=[p.name for p in DEMO_WORKFLOWS])
def test_example_workflow_queued_from_the_ui_finishes_with_maps_on_the_nodes(page, server, path):
    before = set(server.get("/history"))
    workflow = json.loads(path.read_text())
    page.evaluate("workflow => app.loadGraphData(workflow)", workflow)
    loaded = page.evaluate("() => app.graph._nodes.map(n => n.type)")
    assert sorted(loaded) == sorted(n["type"] for n in workflow["nodes"]), "a current workflow loads as saved"
    server.post("/free", {"free_memory": True})       # no cached outputs from another case: everything runs
    page.evaluate("app.queuePrompt(0, 1)")                                   # the UI's own queue path
    prompt_id = wait_until(lambda: next(iter(set(server.get("/history")) - before), None), 900, "the prompt")
    entry = wait_until(lambda: finished(server, prompt_id), 900, "the prompt to finish")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]

    graph_nodes = page.evaluate("app.graph._nodes.map(n => ({id: String(n.id), type: n.type}))")
    types = {n["id"]: n["type"] for n in graph_nodes}
    outputs = entry["outputs"]
    saved = [i for node, out in outputs.items() if types.get(node) == "SaveImage" for i in out.get("images", [])]
    assert saved and all((server.output_dir / i.get("subfolder", "") / i["filename"]).is_file() for i in saved)
    regions = [node for node, out in outputs.items() if types.get(node) == "RegionVisualizer" and out.get("images")]
    assert regions, "the Region Visualizer's previews came back"

    samplers = [n["id"] for n in graph_nodes if n["type"] in SAMPLERS]
    assert samplers
    for node_id in samplers:                  # every message arrived (the last evaluation's map included)
        state = page.wait_for_function(
            """id => { const n = app.graph.getNodeById(Number(id));
                       return n?.sditSummary && n?.sditLive && {summary: n.sditSummary.text, work: n.sditSummary.work,
                              live: n.sditLive.text, steps: n.sditLive.steps, step: n.sditLive.step}; }""",
            arg=node_id, timeout=60_000).json_value()
        assert 0 < state["work"] < 1 and "% of dense token work" in state["summary"]
        assert state["step"] == state["steps"] - 1, "the last evaluation's map arrived"

    page.keyboard.press(".")                                                  # fit the graph into view
    page.evaluate("() => new Promise(done => setTimeout(done, 500))")
    for node_id in samplers:                  # ... and the user sees them: the map and both lines, on the node
        shown = page.wait_for_function(SHOWN_ON_NODE, arg=node_id, timeout=20_000).json_value()
        assert shown["map"] and "% of dense token work" in shown["text"] and "tokens" in shown["text"], shown
    assert overlapping_nodes(page) == [], "a node grew over its neighbour"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_{page.sdit_case}_{path.stem}.png"))
    page.evaluate("""id => { const node = app.graph.getNodeById(Number(id));       // the sampler at 100%
                             app.canvas.ds.scale = 1; app.canvas.centerOnNode(node); app.canvas.setDirty(true, true); }""",
                  samplers[-1])
    page.evaluate("() => new Promise(done => setTimeout(done, 500))")
    page.screenshot(path=str(ARTIFACTS / f"browser_{page.sdit_case}_{path.stem}_sampler.png"))
    assert our_errors(page) == []


# The node's info widget is in the document, rendered (not display:none, not zero-sized), inside the node's
# own element in Nodes 2.0, with its map image decoded and drawn, and its text lines.
SHOWN_ON_NODE = """id => {
    const n = app.graph.getNodeById(Number(id));
    const root = n?.widgets?.find(w => w.name === "sdit_region_info")?.element;
    if (!root?.isConnected) return null;
    const box = root.getBoundingClientRect();
    const image = root.querySelector("img");
    const imageBox = image?.getBoundingClientRect();
    const vueNode = document.querySelector(`[data-node-id="${id}"]`);
    const visible = (root.checkVisibility ? root.checkVisibility() : true) && box.width > 0 && box.height > 0;
    const inNode = !window.sditNodes2 || (vueNode !== null && vueNode.contains(root));
    const map = !!image && image.complete && image.naturalWidth > 0 && imageBox.width > 0 && imageBox.height > 0;
    return visible && inNode && map && {map, text: root.textContent}; }"""


NODE_BOXES = """() => {
    const nodes = app.graph._nodes, element = n => document.querySelector(`[data-node-id="${n.id}"]`);
    // Nodes 2.0 draws each node as an element, reused by id: until every element shows its node's title, the
    // page still draws (part of) the graph loaded before, whose node 7 may sit where this graph's node 8 is
    const current = !window.sditNodes2 || nodes.every(n => element(n)?.textContent.includes(n.title));
    return current && nodes.map(n => {
        const el = element(n);
        if (window.sditNodes2 && el) { const r = el.getBoundingClientRect(); return [String(n.id), r.x, r.y, r.width, r.height]; }
        const b = n.getBounding ? n.getBounding() : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30];
        return [String(n.id), b[0], b[1], b[2], b[3]]; }); }"""


def settled_node_boxes(page, timeout: float = 30.0) -> list:
    """The nodes' on-screen boxes once the page shows this graph and two reads 250 ms apart agree (a slow
    machine lays out and fits the view over several frames; a fixed wait measured it half-done)."""
    previous = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        boxes = page.evaluate(NODE_BOXES)
        if boxes and boxes == previous:
            return boxes
        previous = boxes
        page.wait_for_timeout(250)
    raise TimeoutError(f"the nodes' boxes did not settle within {timeout}s (last read: {previous})")


def overlapping_nodes(page) -> list:
    """Pairs of nodes whose on-screen boxes intersect (Nodes 2.0: their elements; classic: their bounds)."""
    boxes = settled_node_boxes(page)
    pairs = []
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((a, b))
    return pairs


ALL_WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


def test_example_workflows_load_with_no_node_over_another(page):
    """Laid out so that no node covers another as the frontend sizes them, with room for the samplers' maps. A
    workflow of nodes this ComfyUI lacks (newer ComfyUI's, make_workflows.NEWER_EXAMPLES) is checked where they are
    known: the frontend cannot size a node it has no definition of."""
    overlaps = {}
    for path in ALL_WORKFLOWS:
        types = sorted({node["type"] for node in json.loads(path.read_text())["nodes"]})
        if not page.evaluate("types => types.every(t => t in LiteGraph.registered_node_types)", types):
            continue
        # Nodes 2.0 can squeeze the layout of a graph loaded after another one (the bundled frontend always,
        # the newest one seen once in a whole-suite run): each workflow gets a fresh browser context there
        # (nothing restored from an earlier tab)
        fresh = page.sdit_case.endswith("nodes2")
        context = page.context.browser.new_context(viewport=page.viewport_size) if fresh else None
        view = context.new_page() if context else page
        if context:
            view.sdit_nodes2 = True
            view.goto(page.url)
            ready(view)
        view.evaluate("workflow => app.loadGraphData(workflow)", json.loads(path.read_text()))
        view.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        found = overlapping_nodes(view)
        if found:
            overlaps[path.name] = found
            ARTIFACTS.mkdir(exist_ok=True)          # what the frontend showed, to look at
            view.screenshot(path=str(ARTIFACTS / f"browser_{page.sdit_case}_{path.stem}_overlap.png"))
        if context:
            context.close()
    assert overlaps == {}
    assert our_errors(page) == []


BAD_MESSAGES = [
    None,
    {"node": "1"},
    {"node": "1", "method": "RAS", "step": 1, "steps": 2, "tokens": 3, "total": 4, "dense": False,
     "map": "<img src=x onerror=alert(1)>"},
    {"node": "1", "method": "<b>RAS</b>", "work_fraction": 0.5, "dense": 1, "sparse": 1, "evaluations": 2, "seconds": 1},
    {"node": {"id": 1}, "method": "SDiT", "work_fraction": "half", "dense": -1, "sparse": 1, "evaluations": 2,
     "seconds": 1},
    {"node": "99999", "method": "SDiT", "work_fraction": 0.5, "dense": 1, "sparse": 1, "evaluations": 2, "seconds": 1},
]


def test_missing_or_malformed_messages_are_ignored(page):
    page.evaluate("""() => { const n = LiteGraph.createNode("RASSampler"); n.id = 1; app.graph.clear(); app.graph.add(n);
                            n.id = 1; }""")
    before = page.evaluate("() => { const n = app.graph.getNodeById(1); return [!!n, n?.sditLive ?? null, n?.sditSummary ?? null]; }")
    assert before[0]
    for message in BAD_MESSAGES:
        for event in ("sdit.live", "sdit.summary"):
            page.evaluate("([event, detail]) => window.comfyAPI.api.api.dispatchEvent(new CustomEvent(event, {detail}))",
                          [event, message])
    # two animation frames: any draw a bad message could trigger has happened
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    after = page.evaluate("() => { const n = app.graph.getNodeById(1); return [!!n, n?.sditLive ?? null, n?.sditSummary ?? null]; }")
    assert after == before, "nothing malformed reached the node"
    assert our_errors(page) == [] and not [e for e in page.sdit_errors if "alert" in e]


def test_a_sampler_inside_a_subgraph_shows_its_run(page, server):
    """The backend names a node in a subgraph by its execution id, "<subgraph node>:<node>"."""
    page.evaluate("workflow => app.loadGraphData(workflow)", json.loads((REPO_ROOT / "example_workflows" /
                                                                          "sdit_demo.json").read_text()))
    page.evaluate("""() => { const sampler = app.graph._nodes.find(n => n.type === "RASSampler");
        const {node} = app.graph.convertToSubgraph(new Set([sampler]));
        window.sditInner = (node.subgraph.nodes ?? node.subgraph._nodes).find(n => n.type === "RASSampler"); }""")
    server.post("/free", {"free_memory": True})
    page.evaluate("app.queuePrompt(0, 1)")
    state = page.wait_for_function("""() => window.sditInner.sditSummary && window.sditInner.sditLive &&
        {summary: window.sditInner.sditSummary.text, step: window.sditInner.sditLive.step,
         steps: window.sditInner.sditLive.steps}""", timeout=120_000).json_value()
    assert "% of dense token work" in state["summary"] and state["step"] == state["steps"] - 1
    assert our_errors(page) == []


LEGACY_SETTINGS = {"RASSampler": ("RASOptions", {"warmup_steps": 3, "dynamic_spread": 0.3, "reset_steps": "0.4, 0.67"}),
                   "SDiTSampler": ("SDiTOptions", {"tau1": 0.2, "dilation_mode": "inside", "drift_probes": 0.0,
                                                   "tau2": 0.95, "kv_cache": "model dtype"})}


def test_a_workflow_saved_before_the_options_nodes_keeps_its_settings(page, server):
    """The samplers' settings moved to Options nodes: a workflow saved before that gets an Options node per
    sampler with its saved values (not silently the defaults), and it runs."""
    workflow = json.loads((REPO_ROOT / "tests" / "data" / "legacy_sdit_demo.json").read_text())
    page.evaluate("workflow => app.loadGraphData(workflow)", workflow)
    found = page.evaluate("""() => app.graph._nodes.filter(n => n.type.endsWith("Sampler") && n.type !== "KSampler")
        .map(n => { const slot = n.findInputSlot("options"); const link = app.graph.links[n.inputs[slot].link];
                    const options = link && app.graph.getNodeById(link.origin_id);
                    return {type: n.type, sampler: Object.fromEntries(n.widgets.map(w => [w.name, w.value])),
                            options: options && {type: options.type,
                                                 values: Object.fromEntries(options.widgets.map(w => [w.name, w.value]))}}; })""")
    assert sorted(f["type"] for f in found) == sorted(LEGACY_SETTINGS)
    for entry in found:
        options_type, expected = LEGACY_SETTINGS[entry["type"]]
        assert entry["options"] and entry["options"]["type"] == options_type
        assert {k: entry["options"]["values"][k] for k in expected} == expected
        assert entry["sampler"]["sample_ratio"] == 0.5 and entry["sampler"]["steps"] == 20
    before = set(server.get("/history"))
    page.evaluate("app.queuePrompt(0, 1)")
    prompt_id = wait_until(lambda: next(iter(set(server.get("/history")) - before), None), 900, "the prompt")
    entry = wait_until(lambda: finished(server, prompt_id), 900, "the prompt to finish")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    assert our_errors(page) == []
