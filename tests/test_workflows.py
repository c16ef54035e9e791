"""The pack inside a running ComfyUI server: node registration, example workflows, a real run."""
import io
import json
import sys
import urllib.request

import pytest

from conftest import COMFYUI_ROOT, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from comfy_client import ComfyServer, output_images, validate_workflow, workflow_to_prompt  # noqa: E402

WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
OUR_NODES = {"RASSampler": "RAS Sampler", "RASModelPatch": "RAS Model Patch",
             "SDiTSampler": "SDiT Sampler", "SDiTModelPatch": "SDiT Model Patch",
             "SDiTOptions": "SDiT Options", "RASOptions": "RAS Options",
             "RegionVisualizer": "Region Visualizer", "ComplexityMap": "Complexity Map",
             "SDiTDemoModelLoader": "SDiT Demo Model Loader", "SDiTDemoDecode": "SDiT Demo Decode"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(COMFYUI_ROOT, tmp_path_factory.mktemp("comfy-output")) as running:
        yield running


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_nodes_are_registered_with_tooltips(object_info):
    for node_type, display in OUR_NODES.items():
        assert node_type in object_info, f"{node_type} missing"
        info = object_info[node_type]
        assert info["display_name"] == display
        assert info["category"].startswith("sampling/region adaptive")
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_type}.{name} has no tooltip"
    assert object_info["RASSampler"]["output"] == ["LATENT", "REGION_TRACE"]
    assert object_info["SDiTSampler"]["output"] == ["LATENT", "REGION_TRACE"]
    assert object_info["ComplexityMap"]["output"] == ["IMAGE", "MASK"]
    assert object_info["RegionVisualizer"]["output_node"] and object_info["ComplexityMap"]["output_node"]


def has_its_nodes(name: str, object_info) -> bool:
    """The running ComfyUI has every node type the committed example workflow `name` uses (those of newer ComfyUI's
    nodes are validated and built where it does)."""
    workflow = json.loads((REPO_ROOT / "example_workflows" / name).read_text())
    return all(node["type"] in object_info for node in workflow["nodes"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_example_workflow_matches_object_info(path, object_info):
    import make_workflows
    if path.name in make_workflows.NEWER_EXAMPLES and not has_its_nodes(path.name, object_info):
        pytest.skip("a workflow of newer ComfyUI's nodes")
    workflow = json.loads(path.read_text())
    problems = validate_workflow(workflow, object_info)
    if problems and older_than_newer_examples() and all(p.endswith("not one of its options") for p in problems):
        pytest.skip(f"a workflow for a family of newer ComfyUI, which has these options: {problems}")
    assert problems == []
    assert workflow_to_prompt(workflow, object_info)


def older_than_newer_examples() -> bool:
    """The running ComfyUI is older than the one the examples of newer families were built against (some of those in
    EXAMPLES, whose nodes every ComfyUI has, pick options only newer ones have: a text encoder type)."""
    import make_workflows
    from pack_host import comfyui_version

    def release(version):
        return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    return release(comfyui_version()) < release(make_workflows.NEWER_GENERATED_WITH)


GENERATED_WITH = "0.3.75"      # the ComfyUI `make workflows` builds the example workflows against (CI's)


def test_example_workflows_are_what_the_script_builds(object_info):
    """Every builder in scripts/make_workflows.py runs, one per example workflow, and on the ComfyUI they were
    built against gives the committed file (a change to the script that breaks or changes one shows here); those
    of newer ComfyUI's nodes where the running ComfyUI has them."""
    import make_workflows
    from pack_host import comfyui_version
    assert sorted({**make_workflows.EXAMPLES, **make_workflows.NEWER_EXAMPLES}) == [path.name for path in WORKFLOWS]
    newer = {name: build for name, build in make_workflows.NEWER_EXAMPLES.items() if has_its_nodes(name, object_info)}
    for builders, generated_with in ((make_workflows.EXAMPLES, GENERATED_WITH),
                                     (newer, make_workflows.NEWER_GENERATED_WITH)):
        built = {name: build(object_info) for name, build in builders.items()}
        if comfyui_version() == generated_with:
            for name, workflow in built.items():
                assert workflow == json.loads((REPO_ROOT / "example_workflows" / name).read_text()), name


def test_templates_menu_lists_every_example_workflow_with_its_thumbnail(server):
    """ComfyUI lists a pack's example_workflows/*.json as templates and serves a .jpg beside one as its card."""
    from PIL import Image
    listed = server.get("/workflow_templates")
    module = next(name for name, templates in listed.items() if "sdit_demo" in templates)
    assert sorted(listed[module]) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{module}/{path.stem}.jpg") as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            thumbnail = Image.open(io.BytesIO(response.read()))
        assert thumbnail.size == (512, 384), path.name
        assert thumbnail.convert("L").getextrema()[1] > 100, f"{path.name}: the thumbnail shows nothing"


def test_validation_catches_a_broken_link(object_info):
    workflow = json.loads((REPO_ROOT / "example_workflows" / "sdit_demo.json").read_text())
    workflow["links"][0][5] = "IMAGE"
    assert validate_workflow(workflow, object_info)
    workflow["nodes"][0]["type"] = "NoSuchNode"
    assert any("unknown type" in p for p in validate_workflow(workflow, object_info))


def test_validation_catches_widget_values_comfyui_refuses(object_info):
    """A combo widget left null (what the builder wrote for combos of ComfyUI's newer node API before it read their
    options), a combo value that is not an option, a number out of bounds: ComfyUI would refuse the prompt. A model
    file's name is the user's to install: not checked."""
    workflow = json.loads((REPO_ROOT / "example_workflows" / "sdit_demo.json").read_text())
    assert validate_workflow(workflow, object_info) == []
    sampler = next(node for node in workflow["nodes"] if node["type"] == "KSampler")
    where = f"node {sampler['id']}: KSampler"
    values = list(sampler["widgets_values"])           # seed, its control, steps, cfg, sampler_name, scheduler, denoise
    for index, value, problem in [(4, None, "sampler_name has None, not one of its options"),
                                  (5, "no such scheduler", "scheduler has 'no such scheduler', not one of its options"),
                                  (2, 0, "steps has 0, outside [1, 10000]")]:
        sampler["widgets_values"] = values[:index] + [value] + values[index + 1:]
        assert validate_workflow(workflow, object_info) == [f"{where}.{problem}"]
    sampler["widgets_values"] = values
    unet = json.loads((REPO_ROOT / "example_workflows" / "wan22_ti2v_5b_sdit.json").read_text())
    assert not any("unet_name" in p or "vae_name" in p for p in validate_workflow(unet, object_info))


def test_the_builder_gives_combos_of_either_spelling_their_first_option():
    from comfy_client import widget_default
    assert widget_default([["euler", "heun"], {}]) == "euler"
    assert widget_default(["COMBO", {"options": ["default", "fast"]}]) == "default"
    assert widget_default(["COMBO", {"options": ["default", "fast"], "default": "fast"}]) == "fast"
    assert widget_default(["STRING", {"multiline": True}]) == ""


def test_demo_workflow_runs_and_writes_images(server, object_info):
    workflow = json.loads((REPO_ROOT / "example_workflows" / "sdit_demo.json").read_text())
    entry = server.run_prompt(workflow_to_prompt(workflow, object_info))
    images = [i for i in output_images(entry) if i["type"] == "output"]
    assert sorted({i["filename"].split("_0")[0] for i in images}) == ["demo_full", "demo_ras", "demo_sdit",
                                                                     "demo_sdit_complexity", "demo_sdit_regions"]
    regions = [i for i in images if i["filename"].startswith("demo_sdit_regions")]
    assert len(regions) > 3   # regions, update counts, one mask per evaluation
    previews = [i for i in output_images(entry) if i["type"] == "temp"]
    assert any(i["filename"].startswith("sdit_complexity") for i in previews)
    for image in images:
        assert (server.output_dir / image.get("subfolder", "") / image["filename"]).stat().st_size > 1000


def test_server_reports_a_clear_error_for_a_bad_setting(server, object_info):
    workflow = json.loads((REPO_ROOT / "example_workflows" / "sdit_demo.json").read_text())
    prompt = workflow_to_prompt(workflow, object_info)
    ras = next(k for k, v in prompt.items() if v["class_type"] == "RASSampler")
    defaults = {name: spec[1]["default"] for name, spec in object_info["RASOptions"]["input"]["required"].items()}
    prompt["900"] = {"class_type": "RASOptions", "inputs": dict(defaults, reset_steps="later")}
    prompt[ras]["inputs"]["options"] = ["900", 0]
    with pytest.raises(RuntimeError, match=r"RAS Options: input 'reset_steps'"):
        server.run_prompt(prompt)


def test_an_api_prompt_with_the_settings_on_the_sampler_is_told_where_they_went(server, object_info):
    """API-format prompts written before the Options nodes: ComfyUI drops inputs a node does not declare,
    so the sampler itself says where they went instead of sampling with the defaults."""
    workflow = json.loads((REPO_ROOT / "example_workflows" / "sdit_demo.json").read_text())
    prompt = workflow_to_prompt(workflow, object_info)
    sdit = next(k for k, v in prompt.items() if v["class_type"] == "SDiTSampler")
    prompt[sdit]["inputs"].update(tau1=0.2, drift_probes=0.0)
    with pytest.raises(RuntimeError, match=r"SDiT Sampler: input 'tau1': moved to the SDiT Options node "
                                           r"\(tau1, drift_probes\)"):
        server.run_prompt(prompt)


def test_samplers_show_ksampler_inputs_plus_the_ratio_and_options(object_info):
    """Simple by default: every other setting lives on the Options nodes."""
    ksampler = set(object_info["KSampler"]["input"]["required"])
    for node_type, options_type in (("RASSampler", "RAS_OPTIONS"), ("SDiTSampler", "SDIT_OPTIONS")):
        inputs = object_info[node_type]["input"]
        assert set(inputs["required"]) == ksampler | {"sample_ratio"}
        assert {name: spec[0] for name, spec in inputs["optional"].items()} == {"options": options_type}
    for node_type in ("RASModelPatch", "SDiTModelPatch"):
        assert set(object_info[node_type]["input"]["required"]) == {"model", "sample_ratio"}
    assert object_info["SDiTOptions"]["output"] == ["SDIT_OPTIONS"]
    assert object_info["RASOptions"]["output"] == ["RAS_OPTIONS"]


def test_readme_node_table_lists_every_input(object_info):
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("| node | inputs |"):readme.index("Every input has a tooltip.")]
    for node_type, display in OUR_NODES.items():
        rows = [line for line in table.splitlines() if line.startswith("|")]
        row = next((r for r in rows if display in r.split("|")[1]), None) or \
            next((r for r in rows if display.rsplit(" ", 1)[0] in r.split("|")[1]), None)  # "Loader / Decode"
        assert row, f"{display} has no row"
        inputs = object_info[node_type]["input"]
        for name in [*inputs.get("required", {}), *inputs.get("optional", {})]:
            assert f"`{name}`" in row or (name in object_info["KSampler"]["input"]["required"] and "KSampler's" in row), \
                f"{display}: `{name}` missing from the README's node table"


FAMILY_WORKFLOWS = {"Flux.1": ["ras_flux.json", "sdit_flux.json", "flux_controlnet_ras.json"], "Flux 2": ["flux2_ras.json"],
                    "Chroma": ["chroma_ras.json"], "SD3": ["sd35_sdit.json", "sd35_controlnet_ras.json"],
                    "Lumina 2": ["lumina2_ras.json", "zimage_sdit.json"], "Qwen-Image": ["qwen_image_sdit.json", "qwen_image_controlnet_ras.json",
                                                                                  "qwen_image_fun_controlnet_sdit.json"],
                    # before "Wan", as "HunyuanVideo 1.5" before "HunyuanVideo" below
                    "Wan VACE": ["wan21_vace_sdit.json"], "Wan 2.2 Animate": ["wan22_animate_ras.json"],
                    "Wan Animate 2": ["wan_animate2_ras.json"],
                    "Wan HuMo": ["wan21_humo_sdit.json"], "Wan 2.2 S2V": ["wan22_s2v_ras.json"],
                    "Wan SCAIL": ["wan21_scail2_ras.json"], "WanDancer": ["wandancer_sdit.json"],
                    "Wan": ["wan22_t2v_two_experts_ras.json", "wan22_ti2v_5b_sdit.json",
                            "wan21_context_windows_ras.json", "wan21_uni3c_i2v_ras.json"],
                    # before "HunyuanVideo": a README family is matched by the first key it starts with
                    "HunyuanVideo 1.5": ["hunyuan_video15_i2v_sdit.json", "hunyuan_image21_ras.json"],
                    "HunyuanVideo": ["hunyuan_video_ras.json"], "Cosmos 1.0": ["cosmos1_t2w_ras.json"],
                    "Cosmos Predict2": ["anima_sdit.json"],
                    "HiDream-O1": ["hidream_o1_ras.json"], "HiDream": ["hidream_i1_ras.json"], "Kandinsky 5": ["kandinsky5_t2v_ras.json"],
                    "LTX-Video": ["ltxv_i2v_sdit.json"], "LTX-2": ["ltx2_t2av_ras.json"], "Mochi": ["mochi_ras.json"],
                    "AuraFlow": ["auraflow_sdit.json"], "Krea 2": ["krea2_ras.json"],
                    "Ideogram 4": ["ideogram4_ras.json"], "Mage-Flow": ["mage_flow_sdit.json"],
                    "Lens": ["lens_ras.json"], "JoyImage": ["joyimage_edit_ras.json"],
                    "CogVideoX": ["cogvideox_t2v_sdit.json"], "OmniGen2": ["omnigen2_edit_sdit.json"],
                    "Boogu-Image": ["boogu_ras.json"], "ERNIE-Image": ["ernie_image_sdit.json"],
                    "PixArt": ["pixart_sigma_ras.json"], "Chroma Radiance": ["chroma_radiance_sdit.json"],
                    "HunyuanDiT": ["hunyuan_dit_ras.json"], "Z-Image pixel space": ["zimage_pixel_ras.json"], "PixelDiT": ["pixeldit_sdit.json"],
                    "MiniMax H3": ["minimax_h3_t2av_ras.json"],
                    "SenseNova U1.5": ["sensenova_ras.json"], "Prism": ["prism_i2av_ras.json"],
                    "Helios": ["helios_t2v_ras.json"]}
# README families without an example workflow, and why (the README row says so)
NO_EXAMPLE = {"Kandinsky 6": "its text encoder's loader type is in no ComfyUI file of the search index: a workflow could "
                             "not be validated against /object_info"}


def test_every_supported_family_has_an_example_workflow():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("| family | ComfyUI class |"):readme.index("Other video models")]
    families = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert families
    for family in families:
        if any(family.startswith(k) for k in NO_EXAMPLE):
            row = next(line for line in table.splitlines() if line.startswith(f"| {family} |"))
            assert "no example workflow" in row, f"README family '{family}': say why it has no example workflow"
            continue
        key = next((k for k in FAMILY_WORKFLOWS if family.startswith(k)), None)
        assert key, f"README family '{family}' has no example workflow"
        for name in FAMILY_WORKFLOWS[key]:
            assert (REPO_ROOT / "example_workflows" / name).is_file() and f"`{name}`" in readme
