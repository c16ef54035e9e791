"""Writes example_workflows/*.json (ComfyUI UI format) from a live ComfyUI's /object_info.

    .venv/bin/python scripts/make_workflows.py        # starts ComfyUI headless, regenerates the files
    COMFYUI_PATH=<newer tree> <its python> scripts/make_workflows.py --newer   # the newer-ComfyUI-only ones

Widget values are taken by input name (defaults from /object_info fill the rest), so the files always
match the node definitions; tests re-validate them against a running server.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from comfy_client import (ComfyServer, _input_specs, _is_widget, chosen_option_inputs, spec_options,  # noqa: E402
                          widget_default)

REPO = pathlib.Path(__file__).resolve().parents[1]
# settings beyond sample_ratio live on an Options node plugged into the sampler's `options` input
OPTIONS_NODE = {"SDiTSampler": "SDiTOptions", "SDiTModelPatch": "SDiTOptions", "RASSampler": "RASOptions",
                "RASModelPatch": "RASOptions"}


def demo_image_size() -> int:
    """The size the shipped demo weights were trained at (their metadata), which the demo workflow samples."""
    import safetensors
    with safetensors.safe_open(str(REPO / "models" / "sdit_demo_flux.safetensors"), "pt") as f:
        return int((f.metadata() or {}).get("image_size", 256))


class Workflow:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes, self.links = [], []

    def add(self, node_type: str, widgets: dict = None, inputs: dict = None, pos=(0, 0), title: str = None):
        widgets, inputs = dict(widgets or {}), dict(inputs or {})
        info = self.info[node_type]
        if node_type in OPTIONS_NODE:      # widgets the sampler does not have go to its Options node
            own = _input_specs(info)
            moved = {name: widgets.pop(name) for name in list(widgets) if name not in own}
            if moved:
                options = self.add(OPTIONS_NODE[node_type], moved, pos=(pos[0] - 380, pos[1] + 420))
                inputs["options"] = (options, 0)
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": [320, 120], "flags": {},
                "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}, "widgets_values": []}
        if title:
            node["title"] = title
        specs = list(_input_specs(info).items())
        while specs:
            name, spec = specs.pop(0)
            if _is_widget(spec):
                options = spec_options(spec)
                value = widgets.pop(name, widget_default(spec))
                node["widgets_values"].append(value)
                if options.get("control_after_generate"):
                    node["widgets_values"].append("fixed")
                specs[:0] = chosen_option_inputs(name, spec, value).items()    # a DynamicCombo's option's widgets
            if name in inputs:      # a socket, or a widget whose value comes from a link
                source, slot = inputs.pop(name)
                link_id = len(self.links) + 1
                link_type = self.info[source["type"]]["output"][slot]
                self.links.append([link_id, source["id"], slot, node_id, len(node["inputs"]), link_type])
                source["outputs"][slot]["links"].append(link_id)
                socket = {"name": name, "type": spec[0], "link": link_id}
                node["inputs"].append(dict(socket, widget={"name": name}) if _is_widget(spec) else socket)
        if widgets or inputs:
            raise KeyError(f"{node_type}: unknown inputs {sorted(widgets) + sorted(inputs)}")
        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"])):
            node["outputs"].append({"name": name, "type": kind, "links": [], "slot_index": slot})
        self.nodes.append(node)
        return node

    def to_json(self) -> dict:
        lay_out(self.nodes, self.info)
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


# ---- layout: the intended columns and rows, with room for every node as frontends draw it ----

NODE_WIDTH = 320
COLUMN_GAP, ROW_GAP = 80, 50
SHOWS_RUNS = {"RASSampler", "SDiTSampler", "RASModelPatch", "SDiTModelPatch"}   # the pack's live map + summary
SHOWS_IMAGES = {"SaveImage", "PreviewImage", "RegionVisualizer", "ComplexityMap", "SaveAnimatedWEBP", "LoadImage",
                "LoadVideo"}


def node_height(node: dict, info: dict) -> int:
    """Generous: Nodes 2.0 draws widgets taller than the classic canvas; images and maps appear after a run."""
    specs = _input_specs(info[node["type"]])
    sockets = sum(1 for spec in specs.values() if not _is_widget(spec))
    slots = max(sockets, len(info[node["type"]]["output"]))
    multiline = sum(1 for spec in specs.values()
                    if _is_widget(spec) and spec_options(spec).get("multiline"))
    height = 50 + 26 * slots + 38 * len(node["widgets_values"]) + 90 * multiline
    height += 200 if node["type"] in SHOWS_RUNS else 0
    height += 300 if node["type"] in SHOWS_IMAGES else 0
    return height


def lay_out(nodes: list, info: dict) -> None:
    """The positions given when building are the intent: nodes with the same x form a column (columns spaced
    for their width), and within a column each node keeps its y unless the node above reaches it, then it
    moves down just below that one."""
    columns = sorted({node["pos"][0] for node in nodes})
    for index, x in enumerate(columns):
        bottom = None
        for node in sorted((n for n in nodes if n["pos"][0] == x), key=lambda n: (n["pos"][1], n["id"])):
            node["size"] = [NODE_WIDTH, node_height(node, info)]
            y = node["pos"][1] if bottom is None else max(node["pos"][1], bottom + ROW_GAP)
            node["pos"] = [index * (NODE_WIDTH + COLUMN_GAP), y]
            bottom = y + node["size"][1]


def demo(info: dict) -> dict:
    """The demo model sampled fully, with RAS and with SDiT at ratio 0.5; the SDiT run's regions drawn."""
    wf = Workflow(info)
    loader = wf.add("SDiTDemoModelLoader", {"prompt": "a red star"}, pos=(0, 0))
    size = demo_image_size()
    latent = wf.add("EmptySD3LatentImage", {"width": size, "height": size, "batch_size": 1}, pos=(0, 250))
    common = {"seed": 7, "steps": 20, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple"}
    sockets = {"model": (loader, 0), "positive": (loader, 1), "negative": (loader, 2), "latent_image": (latent, 0)}
    rows = (0, 560, 1350)      # room for the live map and run summary the UI shows under each sampler
    full = wf.add("KSampler", common, dict(sockets), pos=(400, rows[0]), title="Full sampling")
    ras = wf.add("RASSampler", dict(common, sample_ratio=0.5), dict(sockets), pos=(400, rows[1]))
    sdit = wf.add("SDiTSampler", dict(common, sample_ratio=0.5), dict(sockets), pos=(400, rows[2]))
    decoded = {}
    for row, (sampler, prefix) in zip(rows, ((full, "demo_full"), (ras, "demo_ras"), (sdit, "demo_sdit"))):
        decoded[prefix] = wf.add("SDiTDemoDecode", {}, {"samples": (sampler, 0)}, pos=(800, row))
        wf.add("SaveImage", {"filename_prefix": prefix}, {"images": (decoded[prefix], 0)}, pos=(1100, row))
    regions = wf.add("RegionVisualizer", {}, {"region_trace": (sdit, 1), "image": (decoded["demo_sdit"], 0)},
                     pos=(1500, rows[2]))
    wf.add("SaveImage", {"filename_prefix": "demo_sdit_regions"}, {"images": (regions, 0)}, pos=(1900, rows[2]))
    complexity = wf.add("ComplexityMap", {}, {"latent": (sdit, 0), "region_trace": (sdit, 1)}, pos=(1500, rows[2] + 700))
    wf.add("SaveImage", {"filename_prefix": "demo_sdit_complexity"}, {"images": (complexity, 0)},
           pos=(1900, rows[2] + 700))
    return wf.to_json()


def sampler_tail(wf: "Workflow", sampler_type: str, widgets: dict, sockets: dict, vae, prefix: str,
                 regions: bool) -> None:
    """Sampler -> VAE decode -> save (prefix None: preview only); optionally the Region Visualizer
    over the decoded image."""
    sampler = wf.add(sampler_type, widgets, sockets, pos=(1000, 100))
    decode = wf.add("VAEDecode", {}, {"samples": (sampler, 0), "vae": vae}, pos=(1400, 100))
    if prefix is None:
        wf.add("PreviewImage", {}, {"images": (decode, 0)}, pos=(1650, 100))
    else:
        wf.add("SaveImage", {"filename_prefix": prefix}, {"images": (decode, 0)}, pos=(1650, 100))
    if regions:
        wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1), "image": (decode, 0)}, pos=(1650, 450))


def dual_clip_loaders(wf: "Workflow", unet_name: str, clip_names: tuple, clip_type: str, vae_name: str) -> tuple:
    """Diffusion model, two text encoders (ComfyUI's DualCLIPLoader) and VAE: the model, CLIP and VAE nodes."""
    unet = wf.add("UNETLoader", {"unet_name": unet_name, "weight_dtype": "default"})
    clip = wf.add("DualCLIPLoader", {"clip_name1": clip_names[0], "clip_name2": clip_names[1], "type": clip_type},
                  pos=(0, 150))
    vae = wf.add("VAELoader", {"vae_name": vae_name}, pos=(0, 350))
    return unet, clip, vae


def flux_loaders(wf: "Workflow", prompt: str) -> dict:
    """Standard Flux dev loaders: returns the sockets a sampler needs, plus the VAE."""
    unet, clip, vae = dual_clip_loaders(wf, "flux1-dev.safetensors", ("clip_l.safetensors", "t5xxl_fp16.safetensors"),
                                        "flux", "ae.safetensors")
    text = wf.add("CLIPTextEncode", {"text": prompt}, {"clip": (clip, 0)}, pos=(350, 100), title="Prompt")
    negative = wf.add("CLIPTextEncode", {"text": ""}, {"clip": (clip, 0)}, pos=(350, 300), title="Negative (unused at cfg 1)")
    guided = wf.add("FluxGuidance", {"guidance": 3.5}, {"conditioning": (text, 0)}, pos=(700, 100))
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    return {"model": (unet, 0), "positive": (guided, 0), "negative": (negative, 0), "latent_image": (latent, 0),
            "vae": (vae, 0)}


def ras_flux(info: dict) -> dict:
    """Standard Flux dev loaders + RAS Sampler + VAE decode + preview."""
    wf = Workflow(info)
    sockets = flux_loaders(wf, "a red fox in a snowy forest, detailed fur, soft morning light")
    vae = sockets.pop("vae")
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, None, False)
    return wf.to_json()


def sdit_flux(info: dict) -> dict:
    """Standard Flux dev loaders + SDiT Sampler + VAE decode + preview + Region Visualizer over the image."""
    wf = Workflow(info)
    sockets = flux_loaders(wf, "a lighthouse on a rocky coast at dusk, crashing waves, clear sky")
    vae = sockets.pop("vae")
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.4}, sockets, vae, None, True)
    return wf.to_json()


def text_pair(wf: "Workflow", clip, prompt: str, negative: str = "", node: str = "CLIPTextEncode") -> tuple:
    positive = wf.add(node, {"text": prompt}, {"clip": clip}, pos=(350, 100), title="Prompt")
    negative = wf.add(node, {"text": negative}, {"clip": clip}, pos=(350, 300), title="Negative")
    return (positive, 0), (negative, 0)


def separate_loaders(wf: "Workflow", unet_name: str, clip_name: str, clip_type: str, vae_name: str,
                     shift: float = None) -> tuple:
    """Diffusion model, text encoder and VAE from their own files (optionally with a flow shift):
    the model, CLIP and VAE sockets."""
    unet = wf.add("UNETLoader", {"unet_name": unet_name, "weight_dtype": "default"})
    clip = wf.add("CLIPLoader", {"clip_name": clip_name, "type": clip_type}, pos=(0, 150))
    vae = wf.add("VAELoader", {"vae_name": vae_name}, pos=(0, 350))
    model = (unet, 0)
    if shift is not None:
        model = (wf.add("ModelSamplingAuraFlow", {"shift": shift}, {"model": model}, pos=(350, 0)), 0)
    return model, (clip, 0), (vae, 0)


def hunyuan_dit_ras(info: dict) -> dict:
    """HunyuanDiT 1.2 (checkpoint with its CLIP and mT5 text encoders and VAE) + RAS Sampler."""
    wf = Workflow(info)
    ckpt = wf.add("CheckpointLoaderSimple", {"ckpt_name": "hunyuan_dit_1.2.safetensors"})
    positive, negative = text_pair(wf, (ckpt, 1), "an ink painting of cranes over a misty lake, rice paper texture",
                                   "blurry, low quality")
    latent = wf.add("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (ckpt, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 30, "cfg": 6.0, "sampler_name": "euler",
                                    "scheduler": "normal", "sample_ratio": 0.5}, sockets, (ckpt, 2), "hunyuan_dit_ras",
                 False)
    return wf.to_json()


def sd35_sdit(info: dict) -> dict:
    """SD3.5 medium (checkpoint with its text encoders) + SDiT Sampler."""
    wf = Workflow(info)
    ckpt = wf.add("CheckpointLoaderSimple", {"ckpt_name": "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"})
    positive, negative = text_pair(wf, (ckpt, 1), "a watercolor fox reading a book under a tree, detailed",
                                   "blurry, low quality")
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (ckpt, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 28, "cfg": 4.5, "sampler_name": "euler",
                                     "scheduler": "sgm_uniform", "sample_ratio": 0.5}, sockets, (ckpt, 2), "sd35_sdit", True)
    return wf.to_json()


def sd35_controlnet_ras(info: dict) -> dict:
    """SD3.5 Large (checkpoint with its text encoders) with Stability's SD3.5 Large canny ControlNet (canny edges of an
    image, the hint encoded by the VAE), applied to the prompts by ComfyUI's Apply ControlNet + RAS Sampler (the
    ControlNet runs on the tokens the model runs)."""
    wf = Workflow(info)
    ckpt = wf.add("CheckpointLoaderSimple", {"ckpt_name": "sd3.5_large_fp8_scaled.safetensors"})
    positive, negative = text_pair(wf, (ckpt, 1), "a stone bridge over a river in autumn, golden light, detailed",
                                   "blurry, low quality")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Control image")
    edges = wf.add("Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (image, 0)}, pos=(350, 550))
    loader = wf.add("ControlNetLoader", {"control_net_name": "sd3.5_large_controlnet_canny.safetensors"},
                    pos=(0, 950))
    applied = wf.add("ControlNetApplyAdvanced", {"strength": 0.7, "start_percent": 0.0, "end_percent": 1.0},
                     {"positive": positive, "negative": negative, "control_net": (loader, 0), "image": (edges, 0),
                      "vae": (ckpt, 2)}, pos=(700, 550))
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (ckpt, 0), "positive": (applied, 0), "negative": (applied, 1), "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 40, "cfg": 4.0, "sampler_name": "euler",
                                    "scheduler": "sgm_uniform", "sample_ratio": 0.5}, sockets, (ckpt, 2),
                 "sd35_controlnet_ras", True)
    return wf.to_json()


def lumina2_ras(info: dict) -> dict:
    """Lumina Image 2.0 (all-in-one checkpoint) + its system-prompt encoder + RAS Sampler."""
    wf = Workflow(info)
    ckpt = wf.add("CheckpointLoaderSimple", {"ckpt_name": "lumina_2.safetensors"})
    shifted = wf.add("ModelSamplingAuraFlow", {"shift": 6.0}, {"model": (ckpt, 0)}, pos=(350, 0))
    positive = wf.add("CLIPTextEncodeLumina2", {"user_prompt": "a cozy cabin in a snowy forest at night, warm windows"},
                      {"clip": (ckpt, 1)}, pos=(350, 150), title="Prompt")
    negative = wf.add("CLIPTextEncodeLumina2", {"user_prompt": "blurry, ugly"}, {"clip": (ckpt, 1)},
                      pos=(350, 350), title="Negative")
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (shifted, 0), "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 25, "cfg": 4.0, "sampler_name": "res_multistep",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, (ckpt, 2), "lumina2_ras", True)
    return wf.to_json()


def zimage_sdit(info: dict) -> dict:
    """Z-Image Turbo: diffusion model, Qwen3 text encoder (lumina2 type) and Flux VAE + SDiT Sampler."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2",
                                        "ae.safetensors", shift=3.0)
    positive, negative = text_pair(wf, clip, "a street market in the rain at dusk, neon reflections")
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 10, "cfg": 1.0, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.5, "warmup_steps": 2},
                 sockets, vae, "zimage_sdit", True)
    return wf.to_json()


def canny_model_patch(wf: "Workflow", node_type: str, patch_name: str, strength: float, model, vae) -> int:
    """A ControlNet of "Load Model Patch" applied to the model by `node_type` with canny edges of an image: the
    node applying it."""
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Control image")
    edges = wf.add("Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (image, 0)}, pos=(350, 550))
    patch = wf.add("ModelPatchLoader", {"name": patch_name}, pos=(0, 900))
    return wf.add(node_type, {"strength": strength},
                  {"model": model, "model_patch": (patch, 0), "vae": vae, "image": (edges, 0)}, pos=(700, 0))


def zimage_fun_controlnet_ras(info: dict) -> dict:
    """Z-Image Turbo with the Z-Image Fun ControlNet Union 2.1 (newer ComfyUI: "Load Model Patch" + "Apply Z-Image Fun
    ControlNet", canny edges of an image) + RAS Sampler (the ControlNet's blocks run on the tokens the model runs)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2",
                                        "ae.safetensors", shift=3.0)
    positive, negative = text_pair(wf, clip, "a lighthouse on a rocky cliff at golden hour, detailed photo")
    controlled = canny_model_patch(wf, "ZImageFunControlnet", "Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors",
                                   0.75, model, vae)
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 350))
    sockets = {"model": (controlled, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 10, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                    "sample_ratio": 0.5, "warmup_steps": 2}, sockets, vae, "zimage_fun_controlnet_ras",
                 True)
    return wf.to_json()


def zimage_pixel_ras(info: dict) -> dict:
    """Z-Image pixel space (newer ComfyUI): diffusion model, Qwen3 text encoder (lumina2 type), the pixel-space "VAE"
    and an empty RGB image (Chroma Radiance's node) + RAS Sampler."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "z_image_pixel_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2",
                                        "pixel_space", shift=3.0)
    positive, negative = text_pair(wf, clip, "a lighthouse on basalt cliffs under a stormy sky, film photo")
    latent = wf.add("EmptyChromaRadianceLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 28, "cfg": 4.0, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "zimage_pixel_ras", False)
    return wf.to_json()


def qwen_image_sdit(info: dict) -> dict:
    """Qwen-Image: diffusion model, Qwen2.5-VL text encoder, its VAE + SDiT Sampler."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                        "qwen_image", "qwen_image_vae.safetensors", shift=3.1)
    positive, negative = text_pair(wf, clip, 'a bakery shop window with a sign that says "Fresh Bread", morning light')
    latent = wf.add("EmptySD3LatentImage", {"width": 1328, "height": 1328, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 20, "cfg": 2.5, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "qwen_image_sdit", True)
    return wf.to_json()


def qwen_image_controlnet_ras(info: dict) -> dict:
    """Qwen-Image with a DiffSynth ControlNet of "Load Model Patch" (canny edges of an image), applied to the model by
    "Apply Qwen Image DiffSynth ControlNet" + RAS Sampler (the ControlNet's per-token blocks run on the tokens that
    run)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                        "qwen_image", "qwen_image_vae.safetensors", shift=3.1)
    positive, negative = text_pair(wf, clip, "a cozy reading corner with an armchair and a tall bookshelf, film photo")
    controlled = canny_model_patch(wf, "QwenImageDiffsynthControlnet", "qwen_image_canny_diffsynth_controlnet.safetensors",
                                   1.0, model, vae)
    latent = wf.add("EmptySD3LatentImage", {"width": 1328, "height": 1328, "batch_size": 1}, pos=(700, 350))
    sockets = {"model": (controlled, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 20, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple",
                                    "sample_ratio": 0.5}, sockets, vae, "qwen_image_controlnet_ras", True)
    return wf.to_json()


def qwen_image_fun_controlnet_sdit(info: dict) -> dict:
    """Qwen-Image 2512 with its Fun ControlNet Union (a depth map of an image; newer ComfyUI loads it with the core
    loader), applied to the prompts by ComfyUI's Apply ControlNet + SDiT Sampler (the ControlNet runs on the tokens the
    model runs)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "qwen_image_2512_fp8_e4m3fn.safetensors",
                                        "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image",
                                        "qwen_image_vae.safetensors", shift=3.1)
    positive, negative = text_pair(wf, clip, "a sunlit loft with a spiral staircase and hanging plants, film photo")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Control image (a depth map)")
    loader = wf.add("ControlNetLoader", {"control_net_name": "Qwen-Image-2512-Fun-Controlnet-Union.safetensors"},
                    pos=(0, 950))
    applied = wf.add("ControlNetApplyAdvanced", {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                     {"positive": positive, "negative": negative, "control_net": (loader, 0), "image": (image, 0),
                      "vae": vae}, pos=(700, 550))
    latent = wf.add("EmptySD3LatentImage", {"width": 1328, "height": 1328, "batch_size": 1}, pos=(700, 350))
    sockets = {"model": model, "positive": (applied, 0), "negative": (applied, 1), "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 20, "cfg": 4.0, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae,
                 "qwen_image_fun_controlnet_sdit", True)
    return wf.to_json()


def flux_controlnet_ras(info: dict) -> dict:
    """Flux dev with InstantX's Union ControlNet (canny edges of an image), applied to the prompts by ComfyUI's Apply
    ControlNet + RAS Sampler (the ControlNet runs on the tokens the model runs)."""
    wf = Workflow(info)
    sockets = flux_loaders(wf, "a glass greenhouse full of tropical plants, morning mist, detailed leaves")
    vae = sockets.pop("vae")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Control image")
    edges = wf.add("Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (image, 0)}, pos=(350, 550))
    loader = wf.add("ControlNetLoader", {"control_net_name": "instantx_flux_union_controlnet.safetensors"},
                    pos=(0, 950))
    union = wf.add("SetUnionControlNetType", {"type": "canny/lineart/anime_lineart/mlsd"}, {"control_net": (loader, 0)},
                   pos=(350, 950))
    applied = wf.add("ControlNetApplyAdvanced", {"strength": 0.7, "start_percent": 0.0, "end_percent": 0.8},
                     {"positive": sockets["positive"], "negative": sockets["negative"], "control_net": (union, 0),
                      "image": (edges, 0), "vae": vae}, pos=(700, 550))
    sockets.update(positive=(applied, 0), negative=(applied, 1))
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "flux_controlnet_ras", True)
    return wf.to_json()


def flux2_ras(info: dict) -> dict:
    """Flux 2 dev: diffusion model, Mistral text encoder (flux2 type), its VAE + FluxGuidance + RAS Sampler."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "flux2_dev_fp8mixed.safetensors", "mistral_3_small_flux2_fp8.safetensors",
                                        "flux2", "flux2-vae.safetensors")
    positive, negative = text_pair(wf, clip, "a macro photo of a dew-covered spider web at sunrise")
    guided = wf.add("FluxGuidance", {"guidance": 4.0}, {"conditioning": positive}, pos=(700, 100))
    latent = wf.add("EmptyFlux2LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": (guided, 0), "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "flux2_ras", True)
    return wf.to_json()


def flux2_edit_kv_cache_ras(info: dict) -> dict:
    """Flux 2 dev editing an image (ReferenceLatent, scaled to 1 megapixel) under newer ComfyUI's Flux KV Cache (the
    reference's keys and values kept from the first step, its tokens out of the later ones) + RAS Sampler."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "flux2_dev_fp8mixed.safetensors", "mistral_3_small_flux2_fp8.safetensors",
                                        "flux2", "flux2-vae.safetensors")
    cached = wf.add("FluxKVCache", {}, {"model": model}, pos=(350, 0))
    positive, negative = text_pair(wf, clip, "make it a snowy winter evening, warm light in the windows")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Image to edit")
    scaled = wf.add("ImageScaleToTotalPixels", {"megapixels": 1.0}, {"image": (image, 0)}, pos=(350, 550))
    encoded = wf.add("VAEEncode", {}, {"pixels": (scaled, 0), "vae": vae}, pos=(350, 700))
    reference = wf.add("ReferenceLatent", {}, {"conditioning": positive, "latent": (encoded, 0)}, pos=(700, 100))
    guided = wf.add("FluxGuidance", {"guidance": 4.0}, {"conditioning": (reference, 0)}, pos=(700, 250))
    latent = wf.add("EmptyFlux2LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 400))
    sockets = {"model": (cached, 0), "positive": (guided, 0), "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "flux2_edit_kv_cache_ras",
                 True)
    return wf.to_json()


def wan_loaders(wf: "Workflow", unet_name: str, vae_name: str = "wan_2.1_vae.safetensors", shift: float = 8.0) -> tuple:
    """Wan's diffusion model with its flow shift (ModelSamplingSD3), the umt5 text encoder and a Wan VAE: the
    model, CLIP and VAE sockets."""
    model, clip, vae = separate_loaders(wf, unet_name, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", vae_name)
    return (wf.add("ModelSamplingSD3", {"shift": shift}, {"model": model}, pos=(350, 0)), 0), clip, vae


def chroma_ras(info: dict) -> dict:
    """Chroma: diffusion model, T5-XXL text encoder (chroma type, padding kept short as Chroma expects), Flux VAE
    + RAS Sampler with real CFG (cond and uncond of different lengths run as separate calls)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "Chroma1-HD.safetensors", "t5xxl_fp16.safetensors", "chroma",
                                        "ae.safetensors")
    tokens = wf.add("T5TokenizerOptions", {"min_padding": 1, "min_length": 0}, {"clip": clip}, pos=(175, 150))
    positive, negative = text_pair(wf, (tokens, 0), "an old lighthouse keeper's desk, brass instruments, warm lamp",
                                   "low quality, blurry")
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 26, "cfg": 4.0, "sampler_name": "euler",
                                    "scheduler": "beta", "sample_ratio": 0.5}, sockets, vae, "chroma_ras", True)
    return wf.to_json()


def chroma_radiance_sdit(info: dict) -> dict:
    """Chroma Radiance (pixel space): diffusion model, T5-XXL text encoder (chroma type), the pixel-space "VAE" and
    Radiance's empty RGB image + SDiT Sampler with its region maps."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "Chroma1-Radiance.safetensors", "t5xxl_fp16.safetensors", "chroma",
                                        "pixel_space")
    tokens = wf.add("T5TokenizerOptions", {"min_padding": 1, "min_length": 0}, {"clip": clip}, pos=(175, 150))
    positive, negative = text_pair(wf, (tokens, 0), "a glass greenhouse full of ferns at golden hour, film grain",
                                   "low quality, blurry")
    latent = wf.add("EmptyChromaRadianceLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 26, "cfg": 4.0, "sampler_name": "euler",
                                     "scheduler": "beta", "sample_ratio": 0.5}, sockets, vae, "chroma_radiance_sdit",
                 True)
    return wf.to_json()


def guided_sampler(wf: "Workflow", sampler_type: str, steps: int, cfg: float, sampler_name: str, model, guided):
    """The sampler (ratio 0.4) after a video conditioning node `guided`, whose outputs are the positive and negative
    prompts and the latent."""
    return wf.add(sampler_type, {"seed": 42, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
                                 "scheduler": "simple", "sample_ratio": 0.4},
                  {"model": model, "positive": (guided, 0), "negative": (guided, 1), "latent_image": (guided, 2)},
                  pos=(1050, 100))


def video_tail(wf: "Workflow", latent_socket, vae, prefix: str, fps: float, x: int = 1400) -> None:
    """Latent video -> VAE decode -> animated WEBP (ComfyUI's own nodes)."""
    decode = wf.add("VAEDecode", {}, {"samples": latent_socket, "vae": vae}, pos=(x, 100))
    wf.add("SaveAnimatedWEBP", {"filename_prefix": prefix, "fps": fps}, {"images": (decode, 0)}, pos=(x + 250, 100))


def separate_text_to_video(wf: "Workflow", files: tuple, clip_type: str, prompt: str, negative: str, latent_type: str,
                           size: tuple, sampler_type: str, widgets: dict, prefix: str, fps: float):
    """Diffusion model, text encoder and VAE from their own `files` (unet, text encoder, VAE), the prompt pair, an empty
    video latent of `latent_type` and `size` (width, height, frames), the sampler (ratio 0.4) -> decode -> animated
    WEBP. Returns the sampler node."""
    model, clip, vae = separate_loaders(wf, *files[:2], clip_type, files[2])
    positive, negative = text_pair(wf, clip, prompt, negative)
    latent = wf.add(latent_type, dict(zip(("width", "height", "length"), size), batch_size=1), pos=(700, 300))
    sampler = wf.add(sampler_type, dict({"seed": 42, "sample_ratio": 0.4}, **widgets),
                     {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                     pos=(1050, 100))
    video_tail(wf, (sampler, 0), vae, prefix, fps)
    return sampler


def wan22_t2v_two_experts_ras(info: dict) -> dict:
    """Wan 2.2 A14B text-to-video: the high-noise and the low-noise expert, each with RAS Model Patch, through
    two KSamplerAdvanced (the second expert's run starts with a dense step)."""
    wf = Workflow(info)
    clip = wf.add("CLIPLoader", {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}, pos=(0, 300))
    vae = wf.add("VAELoader", {"vae_name": "wan_2.1_vae.safetensors"}, pos=(0, 500))
    positive, negative = text_pair(wf, (clip, 0), "a red fox trotting through fresh snow, slow camera pan",
                                   "blurry, static, low quality")
    latent = wf.add("EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 81, "batch_size": 1},
                    pos=(350, 500))
    experts = []
    for row, name in ((0, "high"), (700, "low")):
        unet = wf.add("UNETLoader", {"unet_name": f"wan2.2_t2v_{name}_noise_14B_fp8_scaled.safetensors",
                                     "weight_dtype": "default"}, pos=(0, row), title=f"{name}-noise expert")
        shifted = wf.add("ModelSamplingSD3", {"shift": 8.0}, {"model": (unet, 0)}, pos=(350, row))
        experts.append(wf.add("RASModelPatch", {"sample_ratio": 0.4}, {"model": (shifted, 0)}, pos=(700, row)))
    common = {"noise_seed": 42, "steps": 20, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple"}
    first = wf.add("KSamplerAdvanced", dict(common, add_noise="enable", start_at_step=0, end_at_step=10,
                                            return_with_leftover_noise="enable"),
                   {"model": (experts[0], 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                   pos=(1050, 0), title="High-noise steps")
    second = wf.add("KSamplerAdvanced", dict(common, add_noise="disable", start_at_step=10, end_at_step=10000,
                                             return_with_leftover_noise="disable"),
                    {"model": (experts[1], 0), "positive": positive, "negative": negative, "latent_image": (first, 0)},
                    pos=(1050, 700), title="Low-noise steps")
    video_tail(wf, (second, 0), (vae, 0), "wan22_t2v_ras", 16.0, x=1450)
    return wf.to_json()


def wan22_ti2v_5b_sdit(info: dict) -> dict:
    """Wan 2.2 TI2V 5B image-to-video: the start image's frame is kept (never computed on sparse steps), the
    per-frame timestep's modulation follows the tokens; SDiT Sampler with its region maps."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_vae.safetensors")
    positive, negative = text_pair(wf, clip, "the kite rises into a windy blue sky, ribbons fluttering")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(350, 500), title="Start image")
    latent = wf.add("Wan22ImageToVideoLatent", {"width": 1280, "height": 704, "length": 121, "batch_size": 1},
                    {"vae": vae, "start_image": (image, 0)}, pos=(700, 300))
    sampler = wf.add("SDiTSampler", {"seed": 42, "steps": 30, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                                     "sample_ratio": 0.4},
                     {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                     pos=(1050, 100))
    video_tail(wf, (sampler, 0), vae, "wan22_ti2v_sdit", 24.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1450, 450))
    return wf.to_json()


def wan21_context_windows_ras(info: dict) -> dict:
    """Wan 2.1 text-to-video longer than the model's 81 frames, in ComfyUI's context windows (windows kept in
    place by the standard_static schedule, so every window runs its tokens sparsely) + RAS Sampler."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.1_t2v_14B_fp8_scaled.safetensors")
    windows = wf.add("WanContextWindowsManual", {"context_length": 81, "context_overlap": 16,
                                                 "context_schedule": "standard_static"},
                     {"model": model}, pos=(700, 0))
    positive, negative = text_pair(wf, clip, "a sailboat crossing a calm bay at sunset, gulls overhead",
                                   "blurry, static, low quality")
    latent = wf.add("EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 161, "batch_size": 1},
                    pos=(700, 500))
    sampler = wf.add("RASSampler", {"seed": 42, "steps": 30, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                                    "sample_ratio": 0.4},
                     {"model": (windows, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                     pos=(1050, 100))
    video_tail(wf, (sampler, 0), vae, "wan21_context_windows_ras", 16.0)
    return wf.to_json()


def hunyuan_video_ras(info: dict) -> dict:
    """HunyuanVideo text-to-video: its diffusion model, the CLIP-L + LLaVA text encoders, its VAE + RAS Sampler."""
    wf = Workflow(info)
    unet, clip, vae = dual_clip_loaders(wf, "hunyuan_video_t2v_720p_bf16.safetensors",
                                        ("clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors"), "hunyuan_video",
                                        "hunyuan_video_vae_bf16.safetensors")
    shifted = wf.add("ModelSamplingSD3", {"shift": 7.0}, {"model": (unet, 0)}, pos=(350, 0))
    text = wf.add("CLIPTextEncode", {"text": "a paper boat drifting down a rain-soaked street, reflections"},
                  {"clip": (clip, 0)}, pos=(350, 150), title="Prompt")
    negative = wf.add("CLIPTextEncode", {"text": ""}, {"clip": (clip, 0)}, pos=(350, 350), title="Negative (unused at cfg 1)")
    guided = wf.add("FluxGuidance", {"guidance": 6.0}, {"conditioning": (text, 0)}, pos=(700, 100))
    latent = wf.add("EmptyHunyuanLatentVideo", {"width": 848, "height": 480, "length": 73, "batch_size": 1},
                    pos=(700, 300))
    sampler = wf.add("RASSampler", {"seed": 42, "steps": 30, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                    "sample_ratio": 0.4},
                     {"model": (shifted, 0), "positive": (guided, 0), "negative": (negative, 0),
                      "latent_image": (latent, 0)}, pos=(1050, 100))
    video_tail(wf, (sampler, 0), (vae, 0), "hunyuan_video_ras", 24.0)
    return wf.to_json()


def wan21_vace_sdit(info: dict) -> dict:
    """Wan 2.1 VACE 14B: a control video (pose, depth, edges, ...) and a reference image guide the video
    (WanVaceToVideo); the VACE blocks run the same tokens as the video's blocks. The reference image's frame
    leads the latent and is trimmed after sampling (TrimVideoLatent, by the count WanVaceToVideo gives)."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.1_vace_14B_fp16.safetensors")
    positive, negative = text_pair(wf, clip, "a dancer in a red dress spinning on a rooftop at golden hour",
                                   "blurry, static, low quality")
    frames = video_frames(wf, "control_video.mp4", "Control video (pose, depth, edges)", 700)
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(350, 900), title="Reference image")
    guided = wf.add("WanVaceToVideo", {"width": 832, "height": 480, "length": 81, "batch_size": 1, "strength": 1.0},
                    {"positive": positive, "negative": negative, "vae": vae, "control_video": (frames, 0),
                     "reference_image": (image, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "SDiTSampler", 30, 6.0, "uni_pc", model, guided)
    trimmed = wf.add("TrimVideoLatent", {}, {"samples": (sampler, 0), "trim_amount": (guided, 3)}, pos=(1400, 100),
                     title="Drop the reference frame")
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1400, 450))
    video_tail(wf, (trimmed, 0), vae, "wan21_vace_sdit", 16.0, x=1750)
    return wf.to_json()


def video_frames(wf: "Workflow", file: str, title: str, y: int):
    """A video file's frames (LoadVideo, at `y`, then GetVideoComponents): the components node."""
    loaded = wf.add("LoadVideo", {"file": file}, pos=(0, y), title=title)
    return wf.add("GetVideoComponents", {}, {"video": (loaded, 0)}, pos=(350, y))


def seen_image(wf: "Workflow", y: int, title: str) -> tuple:
    """An image to load (at `y`) and its CLIP-vision tokens (Wan's clip_vision_h): the image and encode nodes."""
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, y), title=title)
    vision = wf.add("CLIPVisionLoader", {"clip_name": "clip_vision_h.safetensors"}, pos=(0, 900))
    return image, wf.add("CLIPVisionEncode", {"crop": "none"}, {"clip_vision": (vision, 0), "image": (image, 0)},
                         pos=(350, 900))


def wan22_animate_ras(info: dict) -> dict:
    """Wan 2.2 Animate 14B: a reference image's character moved by a pose video and a face video
    (WanAnimateToVideo; the pose and face videos as a pose and a face preprocessor give them); the face blocks
    run the same tokens as the video's blocks, each attending to its own frame's face motion. The reference
    image's frame leads the latent and is trimmed after sampling (TrimVideoLatent, by WanAnimateToVideo's count)."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.2_animate_14B_bf16.safetensors")
    positive, negative = text_pair(wf, clip, "the character dances on a sunlit stage, smooth natural motion",
                                   "blurry, static, low quality, distorted face")
    image, seen = seen_image(wf, 550, "Reference image (the character)")
    videos = {}
    for row, kind in ((1050, "pose"), (1250, "face")):
        videos[kind] = video_frames(wf, f"{kind}_video.mp4", f"{kind.title()} video", row)
    guided = wf.add("WanAnimateToVideo", {"width": 832, "height": 480, "length": 77, "batch_size": 1,
                                          "continue_motion_max_frames": 5, "video_frame_offset": 0},
                    {"positive": positive, "negative": negative, "vae": vae, "clip_vision_output": (seen, 0),
                     "reference_image": (image, 0), "pose_video": (videos["pose"], 0),
                     "face_video": (videos["face"], 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "RASSampler", 20, 5.0, "euler", model, guided)
    trimmed = wf.add("TrimVideoLatent", {}, {"samples": (sampler, 0), "trim_amount": (guided, 3)}, pos=(1400, 100),
                     title="Drop the reference frame")
    video_tail(wf, (trimmed, 0), vae, "wan22_animate_ras", 16.0, x=1750)
    return wf.to_json()


def audio_features(wf: "Workflow", encoder_name: str, audio_file: str) -> tuple:
    """An audio file and its features from an audio encoder (Whisper, wav2vec2): the audio and features nodes."""
    encoder = wf.add("AudioEncoderLoader", {"audio_encoder_name": encoder_name}, pos=(0, 900))
    audio = wf.add("LoadAudio", {"audio": audio_file}, pos=(0, 1050), title="Audio")
    return audio, wf.add("AudioEncoderEncode", {}, {"audio_encoder": (encoder, 0), "audio": (audio, 0)}, pos=(350, 950))


def video_with_audio_tail(wf: "Workflow", latent_socket, vae, audio, prefix: str, fps: float, x: int = 1400) -> None:
    """Latent video -> VAE decode -> a video file with the audio track (ComfyUI's own nodes)."""
    decode = wf.add("VAEDecode", {}, {"samples": latent_socket, "vae": vae}, pos=(x, 100))
    video = wf.add("CreateVideo", {"fps": fps}, {"images": (decode, 0), "audio": (audio, 0)}, pos=(x + 250, 100))
    wf.add("SaveVideo", {"filename_prefix": prefix, "format": "auto", "codec": "auto"}, {"video": (video, 0)},
           pos=(x + 500, 100))


def wan21_humo_sdit(info: dict) -> dict:
    """Wan HuMo 17B: a person from a reference image, speaking or singing to an audio track (Whisper features per
    frame, WanHuMoImageToVideo); the audio attention runs the same tokens as the video's blocks, each token
    attending to its own frame's audio. The video is saved with the audio."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "humo_17B_fp16.safetensors", shift=5.0)
    positive, negative = text_pair(wf, clip, "a woman sings on a small stage, warm spotlight, expressive face",
                                   "blurry, static, low quality, distorted face")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Reference image (the person)")
    audio, heard = audio_features(wf, "whisper_large_v3_fp16.safetensors", "song.wav")
    guided = wf.add("WanHuMoImageToVideo", {"width": 832, "height": 480, "length": 97, "batch_size": 1},
                    {"positive": positive, "negative": negative, "vae": vae, "audio_encoder_output": (heard, 0),
                     "ref_image": (image, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "SDiTSampler", 30, 5.0, "uni_pc", model, guided)
    video_with_audio_tail(wf, (sampler, 0), vae, audio, "wan21_humo_sdit", 25.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1400, 450))
    return wf.to_json()


def wan22_s2v_ras(info: dict) -> dict:
    """Wan 2.2 S2V 14B: a person from a reference image, speaking to an audio track (wav2vec2 features per frame,
    WanSoundImageToVideo); the audio injector runs the same tokens as the video's blocks, each attending to its
    own frame's audio. The video is saved with the audio."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.2_s2v_14B_bf16.safetensors")
    positive, negative = text_pair(wf, clip, "a man talks to the camera in a quiet library, natural gestures",
                                   "blurry, static, low quality, distorted face")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Reference image (the person)")
    audio, heard = audio_features(wf, "wav2vec2_large_english_fp16.safetensors", "speech.wav")
    guided = wf.add("WanSoundImageToVideo", {"width": 832, "height": 480, "length": 77, "batch_size": 1},
                    {"positive": positive, "negative": negative, "vae": vae, "audio_encoder_output": (heard, 0),
                     "ref_image": (image, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "RASSampler", 20, 4.5, "uni_pc", model, guided)
    video_with_audio_tail(wf, (sampler, 0), vae, audio, "wan22_s2v_ras", 16.0)
    return wf.to_json()


# HunyuanVideo 1.5 and HunyuanImage 2.1 read the prompt with Qwen2.5-VL and quoted text with ByT5 (glyph tokens)
QWEN_AND_GLYPH_ENCODERS = ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "byt5_small_glyphxl_fp16.safetensors")


def hunyuan_video15_i2v_sdit(info: dict) -> dict:
    """HunyuanVideo 1.5 image-to-video: the start image by channels and as CLIP-vision tokens beside the text
    (which run on every step, as the text does) + SDiT Sampler with its region maps."""
    wf = Workflow(info)
    unet, clip, vae = dual_clip_loaders(wf, "hunyuanvideo1.5_720p_i2v_fp16.safetensors", QWEN_AND_GLYPH_ENCODERS,
                                        "hunyuan_video_15", "hunyuanvideo15_vae_fp16.safetensors")
    vision = wf.add("CLIPVisionLoader", {"clip_name": "sigclip_vision_patch14_384.safetensors"}, pos=(0, 500))
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 650), title="Start image")
    seen = wf.add("CLIPVisionEncode", {"crop": "center"}, {"clip_vision": (vision, 0), "image": (image, 0)},
                  pos=(350, 500))
    positive, negative = text_pair(wf, (clip, 0), "the lantern's flame flickers as snow begins to fall around it",
                                   "blurry, static, low quality")
    conditioned = wf.add("HunyuanVideo15ImageToVideo", {"width": 1280, "height": 720, "length": 121, "batch_size": 1},
                         {"positive": positive, "negative": negative, "vae": (vae, 0), "start_image": (image, 0),
                          "clip_vision_output": (seen, 0)}, pos=(700, 300))
    sampler = wf.add("SDiTSampler", {"seed": 42, "steps": 50, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple",
                                     "sample_ratio": 0.4},
                     {"model": (unet, 0), "positive": (conditioned, 0), "negative": (conditioned, 1),
                      "latent_image": (conditioned, 2)}, pos=(1050, 100))
    video_tail(wf, (sampler, 0), (vae, 0), "hunyuan_video15_i2v_sdit", 24.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1450, 450))
    return wf.to_json()


def hidream_i1_ras(info: dict) -> dict:
    """HiDream-I1 Full: diffusion model with its flow shift, the four text encoders (ComfyUI's QuadrupleCLIPLoader:
    CLIP-L, CLIP-G, T5-XXL, Llama 3.1 8B), Flux VAE + RAS Sampler with HiDream's recommended uni_pc sampler."""
    wf = Workflow(info)
    unet = wf.add("UNETLoader", {"unet_name": "hidream_i1_full_fp16.safetensors", "weight_dtype": "default"})
    clip = wf.add("QuadrupleCLIPLoader", {"clip_name1": "clip_l_hidream.safetensors",
                                          "clip_name2": "clip_g_hidream.safetensors",
                                          "clip_name3": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                                          "clip_name4": "llama_3.1_8b_instruct_fp8_scaled.safetensors"}, pos=(0, 150))
    vae = wf.add("VAELoader", {"vae_name": "ae.safetensors"}, pos=(0, 350))
    shifted = wf.add("ModelSamplingSD3", {"shift": 3.0}, {"model": (unet, 0)}, pos=(350, 0))
    positive, negative = text_pair(wf, (clip, 0), "a lighthouse on a cliff at sunset, waves crashing, oil painting",
                                   "blurry, low quality")
    latent = wf.add("EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (shifted, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 50, "cfg": 5.0, "sampler_name": "uni_pc",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, (vae, 0), "hidream_i1_ras",
                 True)
    return wf.to_json()


def kandinsky5_t2v_ras(info: dict) -> dict:
    """Kandinsky 5 Video Lite text-to-video (newer ComfyUI): its diffusion model with its flow shift, the Qwen2.5-VL
    + CLIP-L text encoders (kandinsky5 type), HunyuanVideo's VAE + RAS Sampler."""
    wf = Workflow(info)
    unet, clip, vae = dual_clip_loaders(wf, "kandinsky5lite_t2v_sft_5s.safetensors",
                                        ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "clip_l.safetensors"), "kandinsky5",
                                        "hunyuan_video_vae_bf16.safetensors")
    shifted = wf.add("ModelSamplingSD3", {"shift": 10.0}, {"model": (unet, 0)}, pos=(350, 0))
    positive, negative = text_pair(wf, (clip, 0),
                                   "a red fox trotting through fresh snow in a pine forest, morning light",
                                   "static, blurry, low quality")
    latent = wf.add("EmptyHunyuanLatentVideo", {"width": 768, "height": 512, "length": 121, "batch_size": 1},
                    pos=(700, 300))
    sampler = wf.add("RASSampler", {"seed": 42, "steps": 50, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
                                    "sample_ratio": 0.4},
                     {"model": (shifted, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)},
                     pos=(1050, 100))
    video_tail(wf, (sampler, 0), (vae, 0), "kandinsky5_t2v_ras", 24.0)
    return wf.to_json()


def ltx_sampler(wf: "Workflow", sampler_type: str, cfg: float, checkpoint, rate, latent):
    """LTX-Video's (and LTX-2's) flow shift for the latent's size (ModelSamplingLTXV) and the sampler (30 steps, ratio
    0.4) after LTXVConditioning `rate`, over the `latent` socket."""
    shifted = wf.add("ModelSamplingLTXV", {"max_shift": 2.05, "base_shift": 0.95},
                     {"model": (checkpoint, 0), "latent": latent}, pos=(700, 0))
    return wf.add(sampler_type, {"seed": 42, "steps": 30, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                                 "sample_ratio": 0.4},
                  {"model": (shifted, 0), "positive": (rate, 0), "negative": (rate, 1), "latent_image": latent},
                  pos=(1050, 100))


def ltxv_i2v_sdit(info: dict) -> dict:
    """LTX-Video image-to-video: its checkpoint (diffusion model and VAE), the T5-XXL text encoder (ltxv type), the
    start image through LTXVImgToVideo (its frame is kept, never computed on sparse steps), the frame rate through
    LTXVConditioning + SDiT Sampler with its region maps."""
    wf = Workflow(info)
    checkpoint = wf.add("CheckpointLoaderSimple", {"ckpt_name": "ltx-video-2b-v0.9.5.safetensors"})
    clip = wf.add("CLIPLoader", {"clip_name": "t5xxl_fp16.safetensors", "type": "ltxv"}, pos=(0, 250))
    positive, negative = text_pair(wf, (clip, 0), "the lighthouse beam sweeps across a stormy sea, waves crash on "
                                                  "the rocks, clouds race overhead",
                                   "low quality, worst quality, deformed, distorted, motion smear, blurry")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(350, 500), title="Start image")
    start = wf.add("LTXVImgToVideo", {"width": 768, "height": 512, "length": 97, "batch_size": 1, "strength": 1.0},
                   {"positive": positive, "negative": negative, "vae": (checkpoint, 2), "image": (image, 0)},
                   pos=(700, 300))
    rate = wf.add("LTXVConditioning", {"frame_rate": 25.0}, {"positive": (start, 0), "negative": (start, 1)},
                  pos=(700, 100))
    sampler = ltx_sampler(wf, "SDiTSampler", 3.0, checkpoint, rate, (start, 2))
    video_tail(wf, (sampler, 0), (checkpoint, 2), "ltxv_i2v_sdit", 25.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1450, 450))
    return wf.to_json()


def mochi_ras(info: dict) -> dict:
    """Mochi text-to-video: its diffusion model, the T5-XXL text encoder (mochi type), its VAE + RAS Sampler."""
    wf = Workflow(info)
    separate_text_to_video(wf, ("mochi_preview_bf16.safetensors", "t5xxl_fp16.safetensors", "mochi_vae.safetensors"),
                           "mochi", "a hummingbird hovering at a red flower in slow motion, garden bokeh",
                           "blurry, low quality", "EmptyMochiLatentVideo", (848, 480, 37), "RASSampler",
                           {"steps": 30, "cfg": 4.5, "sampler_name": "euler", "scheduler": "simple"}, "mochi_ras", 24.0)
    return wf.to_json()


def auraflow_sdit(info: dict) -> dict:
    """AuraFlow 0.3 (checkpoint with its T5 text encoder and SDXL's VAE; Pony Diffusion V7 loads the same way) with
    its flow shift + SDiT Sampler with its region maps."""
    wf = Workflow(info)
    ckpt = wf.add("CheckpointLoaderSimple", {"ckpt_name": "aura_flow_0.3.safetensors"})
    shifted = wf.add("ModelSamplingAuraFlow", {"shift": 1.73}, {"model": (ckpt, 0)}, pos=(350, 0))
    positive, negative = text_pair(wf, (ckpt, 1), "a close-up of a glass terrarium with moss and a tiny red mushroom, "
                                                  "soft window light", "blurry, low quality")
    latent = wf.add("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (shifted, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 25, "cfg": 3.5, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.5}, sockets, (ckpt, 2), "auraflow_sdit",
                 True)
    return wf.to_json()


def reference_edit(info: dict, files: tuple, clip_type: str, prompt: str, sampler_type: str, widgets: dict,
                   prefix: str) -> dict:
    """Diffusion model, text encoder and VAE from their own `files` (unet, text encoder, VAE); the image to edit
    encoded and given to both prompts by ReferenceLatent (its tokens run on every step), and as the latent to sample
    (denoise 1) + the sampler -> decode -> save, with the Region Visualizer."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, *files[:2], clip_type, files[2])
    positive, negative = text_pair(wf, clip, prompt, "blurry, low quality")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 550), title="Image to edit")
    encoded = wf.add("VAEEncode", {}, {"pixels": (image, 0), "vae": vae}, pos=(350, 550))
    references = [wf.add("ReferenceLatent", {}, {"conditioning": p, "latent": (encoded, 0)}, pos=(700, row))
                  for p, row in ((positive, 100), (negative, 250))]
    sockets = {"model": model, "positive": (references[0], 0), "negative": (references[1], 0),
               "latent_image": (encoded, 0)}
    sampler_tail(wf, sampler_type, dict({"seed": 42, "steps": 30, "sampler_name": "euler", "scheduler": "simple",
                                         "sample_ratio": 0.5, "denoise": 1.0}, **widgets), sockets, vae, prefix, True)
    return wf.to_json()


def joyimage_edit_ras(info: dict) -> dict:
    """JoyImage edit (newer ComfyUI): its diffusion model, its text encoder (joyimage type), Wan 2.1's VAE; the image
    to edit by ReferenceLatent + RAS Sampler."""
    return reference_edit(info, ("joyimage_edit_bf16.safetensors", "joyimage_text_encoder.safetensors",
                                 "wan_2.1_vae.safetensors"), "joyimage",
                          "make it a snowy winter evening, warm light in the windows", "RASSampler", {"cfg": 4.0},
                          "joyimage_edit_ras")


def omnigen2_edit_sdit(info: dict) -> dict:
    """OmniGen2: its diffusion model, the Qwen2.5-VL text encoder (omnigen2 type), Flux's VAE; the image to edit by
    ReferenceLatent (its tokens run before the image's) + SDiT Sampler with its region maps."""
    return reference_edit(info, ("omnigen2_fp16.safetensors", "qwen_2.5_vl_fp16.safetensors", "ae.safetensors"),
                          "omnigen2", "replace the sky with a dramatic sunset, keep everything else", "SDiTSampler",
                          {"cfg": 5.0}, "omnigen2_edit_sdit")


def boogu_ras(info: dict) -> dict:
    """Boogu-Image (newer ComfyUI): its diffusion model, the Qwen3-VL text encoder (boogu type), Flux's VAE, an empty
    16-channel image latent + RAS Sampler."""
    return separate_text_to_image(
        info, ("boogu_image_0.1_bf16.safetensors", "qwen3vl_8b_boogu.safetensors", "ae.safetensors"), "boogu",
        "a cozy reading nook by a rainy window, soft lamp light, film photo", "EmptySD3LatentImage", "RASSampler",
        {"scheduler": "simple", "sample_ratio": 0.5}, "boogu_ras", False)


def separate_text_to_image(info: dict, files: tuple, clip_type: str, prompt: str, latent_type: str, sampler_type: str,
                           widgets: dict, prefix: str, regions: bool) -> dict:
    """Diffusion model, text encoder and VAE from their own `files` (unet, text encoder, VAE), a prompt and a plain
    negative, an empty 1024² latent of `latent_type`, the sampler -> decode -> save."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, *files[:2], clip_type, files[2])
    positive, negative = text_pair(wf, clip, prompt, "blurry, low quality")
    latent = wf.add(latent_type, {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, sampler_type, dict({"seed": 42, "steps": 28, "cfg": 4.0, "sampler_name": "euler"}, **widgets),
                 sockets, vae, prefix, regions)
    return wf.to_json()


def pixeldit_sdit(info: dict) -> dict:
    """PixelDiT (pixel space, newer ComfyUI), as ComfyUI's own template: its diffusion model, the Gemma 2 2B text
    encoder (pixeldit type), the pixel-space "VAE", an empty RGB image (one image: batch size 1) + SDiT Sampler with
    its region maps (euler: the template's er_sde adds noise every step, which SDiT follows only by refreshing more)."""
    return separate_text_to_image(
        info, ("pixeldit_1300m_1024px_bf16.safetensors", "gemma_2_2b_it_elm_bf16.safetensors", "pixel_space"),
        "pixeldit", "a lighthouse on a basalt cliff at dawn, long exposure sea, soft pastel sky",
        "EmptyChromaRadianceLatentImage", "SDiTSampler",
        {"steps": 30, "scheduler": "simple", "sample_ratio": 0.5}, "pixeldit_sdit", True)


def krea2_ras(info: dict) -> dict:
    """Krea 2 (newer ComfyUI): its diffusion model, the Qwen3-VL text encoder (krea2 type), Wan 2.1's VAE, an empty
    16-channel image latent + RAS Sampler."""
    return separate_text_to_image(
        info, ("krea2_bf16.safetensors", "qwen3vl_4b_krea2.safetensors", "wan_2.1_vae.safetensors"), "krea2",
        "an editorial photo of a ceramicist at her wheel, clay-dusted hands, north light", "EmptySD3LatentImage",
        "RASSampler", {"scheduler": "simple", "sample_ratio": 0.5}, "krea2_ras", False)


def ideogram4_ras(info: dict) -> dict:
    """Ideogram 4 (newer ComfyUI): its diffusion model, the Qwen3-VL text encoder (ideogram4 type), Flux 2's VAE and
    latent + RAS Sampler (a scheduler of KSampler's: Ideogram 4's own schedule, newer ComfyUI's Ideogram 4 Scheduler,
    runs with RAS Model Patch under SamplerCustomAdvanced)."""
    return separate_text_to_image(
        info, ("ideogram4_bf16.safetensors", "qwen3vl_ideogram4.safetensors", "flux2-vae.safetensors"), "ideogram4",
        'a vintage travel poster of a lighthouse at dusk, the words "NORTH COAST" in bold letters',
        "EmptyFlux2LatentImage", "RASSampler", {"scheduler": "beta", "sample_ratio": 0.5}, "ideogram4_ras", True)


def mage_flow_sdit(info: dict) -> dict:
    """Mage-Flow (newer ComfyUI): its diffusion model, its text encoder (mage type), the Mage VAE, an empty 128-channel
    latent + SDiT Sampler with its region maps."""
    return separate_text_to_image(
        info, ("mage_flow_bf16.safetensors", "mage_text_encoder.safetensors", "mage_vae.safetensors"), "mage",
        "a red bicycle leaning on a whitewashed wall, bougainvillea overhead", "EmptyFlux2LatentImage", "SDiTSampler",
        {"scheduler": "simple", "sample_ratio": 0.5}, "mage_flow_sdit", True)


def pixart_sigma_ras(info: dict) -> dict:
    """PixArt-Σ: its diffusion model, the T5 text encoder (pixart type), SDXL's VAE, an empty 4-channel latent + RAS
    Sampler."""
    return separate_text_to_image(
        info, ("PixArt-Sigma-XL-2-1024-MS.safetensors", "t5xxl_fp16.safetensors", "sdxl_vae.safetensors"), "pixart",
        "a paper lantern festival over a river at night, long exposure", "EmptyLatentImage", "RASSampler",
        {"scheduler": "normal", "sample_ratio": 0.5}, "pixart_sigma_ras", False)


def ernie_image_sdit(info: dict) -> dict:
    """ERNIE-Image (newer ComfyUI): its diffusion model, the Ministral 3 3B text encoder (found by its weights, whatever
    the type), Flux 2's VAE and latent + SDiT Sampler with its region maps."""
    return separate_text_to_image(
        info, ("ernie_image_bf16.safetensors", "ministral_3_3b.safetensors", "flux2-vae.safetensors"), "flux2",
        'a hand-lettered cafe chalkboard menu, "SOUP OF THE DAY" at the top, warm window light',
        "EmptyFlux2LatentImage", "SDiTSampler", {"scheduler": "simple", "sample_ratio": 0.5}, "ernie_image_sdit", True)


def lens_ras(info: dict) -> dict:
    """Lens (newer ComfyUI): its diffusion model, its GPT-OSS text encoder (lens type), Flux 2's VAE and latent + RAS
    Sampler."""
    return separate_text_to_image(
        info, ("lens_bf16.safetensors", "gpt_oss_20b_lens.safetensors", "flux2-vae.safetensors"), "lens",
        "a foggy harbor at dawn, fishing boats, gulls, muted colors", "EmptyFlux2LatentImage", "RASSampler",
        {"scheduler": "simple", "sample_ratio": 0.5}, "lens_ras", False)


def cogvideox_t2v_sdit(info: dict) -> dict:
    """CogVideoX 5B text-to-video (newer ComfyUI): its diffusion model, the T5-XXL text encoder (cogvideox type), its
    VAE, a 720 x 480 x 49-frame latent + SDiT Sampler (batch size 1: the model's rotary table is one for the batch)."""
    wf = Workflow(info)
    sampler = separate_text_to_video(
        wf, ("cogvideox_5b_bf16.safetensors", "t5xxl_fp16.safetensors", "cogvideox_vae.safetensors"), "cogvideox",
        "a golden retriever runs along a beach at sunset, waves rolling in", "blurry, distorted, low quality",
        "EmptyHunyuanLatentVideo", (720, 480, 49), "SDiTSampler",
        {"steps": 50, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple"}, "cogvideox_t2v_sdit", 8.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1450, 450))
    return wf.to_json()


def anima_sdit(info: dict) -> dict:
    """Anima (Cosmos Predict2's network behind an LLM text adapter): diffusion model, Qwen3 0.6B text encoder
    (recognised by its weights, any CLIP type), Qwen-Image VAE + SDiT Sampler (a deterministic sampler: Anima's
    default er_sde adds noise every step, which SDiT follows only by refreshing more)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "anima-base-v1.0.safetensors", "qwen_3_06b_base.safetensors",
                                        "stable_diffusion", "qwen_image_vae.safetensors")
    positive, negative = text_pair(wf, clip, "masterpiece, best quality, 1girl, silver hair, reading a book in a "
                                             "sunlit library, detailed background",
                                   "worst quality, low quality, blurry, jpeg artifacts")
    latent = wf.add("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": model, "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "SDiTSampler", {"seed": 42, "steps": 30, "cfg": 4.0, "sampler_name": "euler",
                                     "scheduler": "simple", "sample_ratio": 0.5}, sockets, vae, "anima_sdit", True)
    return wf.to_json()


def cosmos1_t2w_ras(info: dict) -> dict:
    """Cosmos 1.0 7B Text2World: its diffusion model, the older T5-XXL text encoder (cosmos type), its 8x8x8 VAE and
    empty video latent (1280 x 704, 121 frames) + RAS Sampler with res_multistep, the sampler made for it."""
    wf = Workflow(info)
    separate_text_to_video(
        wf, ("Cosmos-1_0-Diffusion-7B-Text2World.safetensors", "oldt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "cosmos_cv8x8x8_1.0.safetensors"), "cosmos",
        "a robot arm in a bright warehouse picks up a cardboard box from a conveyor belt and places it on a shelf, "
        "smooth camera pan", "low quality, blurry, distorted, jittery motion, static, watermark",
        "EmptyCosmosLatentVideo", (1280, 704, 121), "RASSampler",
        {"steps": 30, "cfg": 7.0, "sampler_name": "res_multistep", "scheduler": "karras"}, "cosmos1_t2w_ras", 24.0)
    return wf.to_json()


def hunyuan_image21_ras(info: dict) -> dict:
    """HunyuanImage 2.1 at 2048²: its diffusion model, the Qwen2.5-VL + ByT5 glyph text encoders (quoted text in
    the prompt becomes glyph tokens beside the text), its VAE + RAS Sampler."""
    wf = Workflow(info)
    unet, clip, vae = dual_clip_loaders(wf, "hunyuanimage2.1_bf16.safetensors", QWEN_AND_GLYPH_ENCODERS, "hunyuan_image",
                                        "hunyuan_image_2.1_vae_fp16.safetensors")
    positive, negative = text_pair(wf, (clip, 0), 'a bakery shop window at night, a neon sign reading "OPEN LATE"',
                                   "blurry, low quality")
    latent = wf.add("EmptyHunyuanImageLatent", {"width": 2048, "height": 2048, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (unet, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", {"seed": 42, "steps": 20, "cfg": 3.5, "sampler_name": "euler",
                                    "scheduler": "simple", "sample_ratio": 0.5}, sockets, (vae, 0), "hunyuan_image21_ras",
                 False)
    return wf.to_json()


def wan21_scail2_ras(info: dict) -> dict:
    """Wan SCAIL-2 14B (newer ComfyUI): a reference image's character moved by a pose video (WanSCAILToVideo: the
    reference's tokens before the video's, the half-size pose video's after them, both running on every step)."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.1_14B_SCAIL_2_fp8_scaled.safetensors", shift=5.0)
    positive, negative = text_pair(wf, clip, "the character dances in a bright studio, smooth natural motion",
                                   "blurry, static, low quality, distorted body")
    image, seen = seen_image(wf, 550, "Reference image (the character)")
    pose = video_frames(wf, "pose_video.mp4", "Pose video", 1050)
    guided = wf.add("WanSCAILToVideo", {"width": 512, "height": 896, "length": 81, "batch_size": 1},
                    {"positive": positive, "negative": negative, "vae": vae, "clip_vision_output": (seen, 0),
                     "reference_image": (image, 0), "pose_video": (pose, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "RASSampler", 20, 4.0, "euler", model, guided)
    video_tail(wf, (sampler, 0), vae, "wan21_scail2_ras", 16.0)
    return wf.to_json()


def wandancer_sdit(info: dict) -> dict:
    """WanDancer 14B (newer ComfyUI): a dance from a start image to a music track (WanDancerEncodeAudio's beat and
    timbre features, eight music tokens a latent frame; its frame-rate words joined to the prompt as WanDancer was
    trained); the music injector runs the same tokens as the video's blocks. The video is saved with the music."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wandancer_14B_fp8_scaled.safetensors", shift=5.0)
    audio = wf.add("LoadAudio", {"audio": "music.wav"}, pos=(0, 1050), title="Music")
    heard = wf.add("WanDancerEncodeAudio", {"video_frames": 149, "audio_inject_scale": 1.0}, {"audio": (audio, 0)},
                   pos=(350, 1150))
    words = wf.add("StringConcatenate", {"string_a": "a dancer performs on a rooftop at sunset, full body",
                                         "delimiter": ""}, {"string_b": (heard, 1)}, pos=(0, 650),
                   title="Prompt and frame rate")
    positive = wf.add("CLIPTextEncode", {}, {"clip": clip, "text": (words, 0)}, pos=(350, 100), title="Prompt")
    negative = wf.add("CLIPTextEncode", {"text": "blurry, static, low quality, distorted body"}, {"clip": clip},
                      pos=(350, 300), title="Negative")
    image, seen = seen_image(wf, 350, "Start image (the dancer)")
    guided = wf.add("WanDancerVideo", {"width": 480, "height": 832, "length": 149},
                    {"positive": (positive, 0), "negative": (negative, 0), "vae": vae, "start_image": (image, 0),
                     "clip_vision_output": (seen, 0), "audio_encoder_output": (heard, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "SDiTSampler", 30, 5.0, "uni_pc", model, guided)
    video_with_audio_tail(wf, (sampler, 0), vae, audio, "wandancer_sdit", 30.0)
    wf.add("RegionVisualizer", {}, {"region_trace": (sampler, 1)}, pos=(1400, 450))
    return wf.to_json()


def wan21_uni3c_i2v_ras(info: dict) -> dict:
    """Wan 2.1 I2V 14B with the Uni3C camera ControlNet (newer ComfyUI: "Load Model Patch" + "Apply Wan Uni3C
    ControlNet"): a start image moved along the camera path of a render video (e.g. warped point-cloud renders of the
    image) + RAS Sampler (the ControlNet's own network runs whole on every step; the video's tokens that run get its
    rows)."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan2.1_i2v_480p_14B_fp8_scaled.safetensors", shift=5.0)
    positive, negative = text_pair(wf, clip, "a slow dolly shot through a sunlit greenhouse full of plants",
                                   "blurry, static, low quality")
    image, seen = seen_image(wf, 550, "Start image")
    render = video_frames(wf, "camera_render.mp4", "Camera render video", 1150)
    patch = wf.add("ModelPatchLoader", {"name": "wan21_uni3c_controlnet.safetensors"}, pos=(0, 1400))
    controlled = wf.add("WanUni3CControlnetApply", {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
                        {"model": model, "model_patch": (patch, 0), "vae": vae, "render_video": (render, 0)},
                        pos=(700, 0))
    guided = wf.add("WanImageToVideo", {"width": 832, "height": 480, "length": 81, "batch_size": 1},
                    {"positive": positive, "negative": negative, "vae": vae, "clip_vision_output": (seen, 0),
                     "start_image": (image, 0)}, pos=(700, 350))
    sampler = guided_sampler(wf, "RASSampler", 20, 5.0, "euler", (controlled, 0), guided)
    video_tail(wf, (sampler, 0), vae, "wan21_uni3c_i2v_ras", 16.0)
    return wf.to_json()


def wan_animate2_ras(info: dict) -> dict:
    """Wan Animate 2 14B (newer ComfyUI): a reference image's character moved by a pose video (WanAnimate2ToVideo;
    the pose branch runs whole beside the video's running tokens, and WanAnimate2Cache keeps it between steps). The
    reference image's frame leads the latent and is trimmed after sampling (TrimVideoLatent, by the node's count)."""
    wf = Workflow(info)
    model, clip, vae = wan_loaders(wf, "wan_animate_2_14B_bf16.safetensors", shift=5.0)
    cached = wf.add("WanAnimate2Cache", {"device": "cpu", "dtype": "default"}, {"model": model}, pos=(700, 0))
    positive, negative = text_pair(wf, clip, "the character dances in a bright studio, smooth natural motion",
                                   "blurry, static, low quality, distorted body")
    image, seen = seen_image(wf, 550, "Reference image (the character)")
    pose = video_frames(wf, "pose_video.mp4", "Pose video", 1050)
    guided = wf.add("WanAnimate2ToVideo", {"width": 832, "height": 480, "length": 81, "batch_size": 1,
                                           "video_frame_offset": 0},
                    {"positive": positive, "negative": negative, "vae": vae, "clip_vision_output": (seen, 0),
                     "reference_image": (image, 0), "pose_video": (pose, 0)}, pos=(700, 300))
    sampler = guided_sampler(wf, "RASSampler", 20, 5.0, "euler", (cached, 0), guided)
    trimmed = wf.add("TrimVideoLatent", {}, {"samples": (sampler, 0), "trim_amount": (guided, 3)}, pos=(1400, 100),
                     title="Drop the reference frame")
    video_tail(wf, (trimmed, 0), vae, "wan_animate2_ras", 16.0, x=1750)
    return wf.to_json()


def ltx2_t2av_ras(info: dict) -> dict:
    """LTX-2.3 text to video with audio (newer ComfyUI): its checkpoint (diffusion model and video VAE), the Gemma 3
    text encoder, its audio VAE; the video and audio latents joined (LTXVConcatAVLatent) and sampled together with the
    RAS Sampler (the video's tokens sparse, the audio's on every step), then parted, decoded and saved as one video."""
    wf = Workflow(info)
    checkpoint_name = "ltx-2.3-22b-dev-fp8.safetensors"
    checkpoint = wf.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint_name})
    clip = wf.add("LTXAVTextEncoderLoader", {"text_encoder": "gemma_3_12B_it_fp4_mixed.safetensors",
                                             "ckpt_name": checkpoint_name, "device": "default"}, pos=(0, 250))
    audio_vae = wf.add("LTXVAudioVAELoader", {"ckpt_name": checkpoint_name}, pos=(0, 500))
    positive, negative = text_pair(wf, (clip, 0), "a street musician plays a saxophone on a rainy night, neon "
                                                  "reflections on the wet pavement, the melody echoes between the "
                                                  "buildings", "low quality, worst quality, deformed, distorted, "
                                                                "motion smear, blurry, muffled audio")
    rate = wf.add("LTXVConditioning", {"frame_rate": 25.0}, {"positive": positive, "negative": negative},
                  pos=(700, 100))
    video = wf.add("EmptyLTXVLatentVideo", {"width": 768, "height": 512, "length": 121, "batch_size": 1},
                   pos=(350, 550))
    audio = wf.add("LTXVEmptyLatentAudio", {"frames_number": 121, "frame_rate": 25, "batch_size": 1},
                   {"audio_vae": (audio_vae, 0)}, pos=(350, 750))
    joined = wf.add("LTXVConcatAVLatent", {}, {"video_latent": (video, 0), "audio_latent": (audio, 0)}, pos=(700, 550))
    sampler = ltx_sampler(wf, "RASSampler", 4.0, checkpoint, rate, (joined, 0))
    parted = wf.add("LTXVSeparateAVLatent", {}, {"av_latent": (sampler, 0)}, pos=(1400, 100))
    sound = wf.add("LTXVAudioVAEDecode", {}, {"samples": (parted, 1), "audio_vae": (audio_vae, 0)}, pos=(1650, 350))
    video_with_audio_tail(wf, (parted, 0), (checkpoint, 2), sound, "ltx2_t2av_ras", 25.0, x=1650)
    return wf.to_json()


def minimax_h3_t2av_ras(info: dict) -> dict:
    """MiniMax H3 text to video with audio (newer ComfyUI), as ComfyUI's own template: its diffusion model, the
    Qwen3-VL text encoder (minimax type), its video and audio VAEs; MiniMaxH3ImageToVideo gives the prompt and the
    video-and-audio latent, sampled together with the RAS Sampler at cfg 1 (one video at a time; the video's tokens
    sparse, the audio's on every step), then decoded (each VAE takes its part) and saved as one video."""
    wf = Workflow(info)
    unet = wf.add("UNETLoader", {"unet_name": "minimax_h3_fl2va_pruned_int8_convrot.safetensors",
                                 "weight_dtype": "default"})
    clip = wf.add("CLIPLoader", {"clip_name": "qwen3vl_32b_minimax_h3_nvfp4_awq.safetensors", "type": "minimax"},
                  pos=(0, 150))
    vae = wf.add("VAELoader", {"vae_name": "minimax_h3_video_vae_fp16.safetensors"}, pos=(0, 350))
    audio_vae = wf.add("VAELoader", {"vae_name": "minimax_h3_audio_vae_fp32.safetensors"}, pos=(0, 500))
    prompted = wf.add("MiniMaxH3ImageToVideo", {
        "prompt": "a street musician plays a saxophone on a rainy night, neon reflections on the wet pavement, the "
                  "camera slowly circles him. Audio: the saxophone melody, rain on the pavement, distant traffic",
        "width": 1344, "height": 768, "length": 124}, {"clip": (clip, 0), "vae": (vae, 0)}, pos=(350, 100))
    unused = wf.add("ConditioningZeroOut", {}, {"conditioning": (prompted, 0)}, pos=(700, 350),
                    title="Negative (unused at cfg 1)")
    sampler = wf.add("RASSampler", {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "res_multistep",
                                    "scheduler": "simple", "sample_ratio": 0.4},
                     {"model": (unet, 0), "positive": (prompted, 0), "negative": (unused, 0),
                      "latent_image": (prompted, 1)}, pos=(1050, 100))
    sound = wf.add("VAEDecodeAudio", {}, {"samples": (sampler, 0), "vae": (audio_vae, 0)}, pos=(1400, 350))
    video_with_audio_tail(wf, (sampler, 0), (vae, 0), sound, "minimax_h3_t2av_ras", 24.0, x=1400)
    return wf.to_json()


def prism_i2av_ras(info: dict) -> dict:
    """Prism image to video with audio (newest ComfyUI), as its own notes describe the workflow: its diffusion model
    (both video towers and the audio tower), the umt5 text encoder (wan type), the Wan 2.1 VAE and its audio VAE;
    Prism Prepare AV gives the prompts (with the start image's latent and the audio's text) and the video-and-audio
    latent, sampled together with the RAS Sampler at 848x480, 81 frames (the video's tokens sparse, the audio's on
    every step; the low-noise tower starts with a dense step), then parted, decoded and saved as one video. Without
    Prism Sparse Attention Settings (its block-sparse attention passes the K/V cache by: refused)."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "prism_alpha_video_int8_convrot.safetensors",
                                        "prism_umt5_xxl_bf16.safetensors", "wan", "Wan2_1_VAE_bf16.safetensors")
    audio_vae = wf.add("VAELoader", {"vae_name": "prism_dac_audio_vae.safetensors"}, pos=(0, 500))
    positive, negative = text_pair(wf, clip, "a street musician plays a saxophone on a rainy night, neon reflections "
                                             "on the wet pavement, the melody echoes between the buildings",
                                   "blurry, static, low quality, distorted, muffled audio")
    image = wf.add("LoadImage", {"image": "example.png"}, pos=(0, 650), title="Start image")
    prepared = wf.add("PrismPrepareAV", {"width": 848, "height": 480, "frames": 81, "fps": 24.0,
                                         "reference_resize": "official_lanczos"},
                      {"positive": positive, "negative": negative, "video_vae": vae, "image": (image, 0)},
                      pos=(700, 300))
    sampler = guided_sampler(wf, "RASSampler", 30, 5.0, "euler", model, prepared)
    parted = wf.add("LTXVSeparateAVLatent", {}, {"av_latent": (sampler, 0)}, pos=(1400, 100))
    sound = wf.add("VAEDecodeAudio", {}, {"samples": (parted, 1), "vae": (audio_vae, 0)}, pos=(1650, 350))
    video_with_audio_tail(wf, (parted, 0), vae, sound, "prism_i2av_ras", 24.0, x=1650)
    return wf.to_json()


def helios_t2v_ras(info: dict) -> dict:
    """Helios text to video (newest ComfyUI): its diffusion model with RAS Model Patch, the umt5 text encoder (wan type)
    and the Wan 2.1 VAE; Helios Text to Video gives the prompts (with the history, empty at first) and the latent, the
    Helios Pyramid Sampler makes the video chunk by chunk (each chunk on a pyramid of three stages, each stage a run that
    starts with a dense step), Helios VAE Decode decodes it chunk by chunk."""
    wf = Workflow(info)
    model, clip, vae = separate_loaders(wf, "helios_base_bf16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                        "wan", "wan_2.1_vae.safetensors")
    patched = wf.add("RASModelPatch", {"sample_ratio": 0.4}, {"model": model}, pos=(350, 0))
    positive, negative = text_pair(wf, clip, "a lighthouse on a cliff at dawn, waves breaking below, the camera "
                                             "slowly circling", "blurry, static, low quality")
    prepared = wf.add("HeliosTextToVideo", {"width": 640, "height": 384, "length": 132, "batch_size": 1},
                      {"positive": positive, "negative": negative, "vae": vae}, pos=(700, 300))
    sampler = wf.add("HeliosPyramidSampler", {"noise_seed": 42, "cfg": 5.0},
                     {"model": (patched, 0), "positive": (prepared, 0), "negative": (prepared, 1),
                      "latent_image": (prepared, 2)}, pos=(1050, 100))
    decode = wf.add("HeliosVAEDecode", {}, {"samples": (sampler, 0), "vae": vae}, pos=(1400, 100))
    wf.add("SaveAnimatedWEBP", {"filename_prefix": "helios_t2v_ras", "fps": 24.0}, {"images": (decode, 0)},
           pos=(1650, 100))
    return wf.to_json()


def pixel_checkpoint_ras(info: dict, checkpoint_name: str, prompt: str, sampling: dict, name: str) -> dict:
    """A pixel-space model whose checkpoint holds the model, its tokenizer and the pixel-space "VAE": its prompts through
    CLIPTextEncode, an empty 2048² RGB image (EmptyHiDreamO1LatentImage) + RAS Sampler with `sampling`, saved as `name`."""
    wf = Workflow(info)
    checkpoint = wf.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint_name})
    positive, negative = text_pair(wf, (checkpoint, 1), prompt)
    latent = wf.add("EmptyHiDreamO1LatentImage", {"width": 2048, "height": 2048, "batch_size": 1}, pos=(700, 300))
    sockets = {"model": (checkpoint, 0), "positive": positive, "negative": negative, "latent_image": (latent, 0)}
    sampler_tail(wf, "RASSampler", dict(seed=42, **sampling, sample_ratio=0.4), sockets, (checkpoint, 2), name, False)
    return wf.to_json()


def hidream_o1_ras(info: dict) -> dict:
    """HiDream-O1 (pixel space, newer ComfyUI) at 2048² (the size it was trained at), as ComfyUI's own template without
    its Patch Seam Smoothing (it runs the model again on a shifted image: refused) and with dpmpp_2m for its
    dpmpp_2m_sde (fresh noise every step: RAS would run dense)."""
    return pixel_checkpoint_ras(info, "hidream_o1_image_bf16.safetensors",
                                "a watercolor map of an imaginary island, compass rose, hand-lettered place names, soft "
                                "paper texture",
                                {"steps": 40, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "normal"},
                                "hidream_o1_ras")


def sensenova_ras(info: dict) -> dict:
    """SenseNova U1.5 (pixel space, newest ComfyUI): the language model lives in the diffusion model, so the text
    encoder only tokenizes."""
    return pixel_checkpoint_ras(info, "sensenova_u1_5_bf16.safetensors",
                                "a ceramic teapot shaped like a sleeping cat on a wooden table, soft window light",
                                {"steps": 30, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple"},
                                "sensenova_ras")


EXAMPLES = {"sdit_demo.json": demo, "ras_flux.json": ras_flux, "sdit_flux.json": sdit_flux,
            "sd35_sdit.json": sd35_sdit, "sd35_controlnet_ras.json": sd35_controlnet_ras, "lumina2_ras.json": lumina2_ras, "zimage_sdit.json": zimage_sdit,
            "flux_controlnet_ras.json": flux_controlnet_ras,
            "qwen_image_sdit.json": qwen_image_sdit, "qwen_image_controlnet_ras.json": qwen_image_controlnet_ras,
            "qwen_image_fun_controlnet_sdit.json": qwen_image_fun_controlnet_sdit,
            "flux2_ras.json": flux2_ras, "chroma_ras.json": chroma_ras,
            "wan22_t2v_two_experts_ras.json": wan22_t2v_two_experts_ras,
            "wan22_ti2v_5b_sdit.json": wan22_ti2v_5b_sdit, "wan21_context_windows_ras.json": wan21_context_windows_ras,
            "wan21_vace_sdit.json": wan21_vace_sdit, "wan22_animate_ras.json": wan22_animate_ras,
            "wan21_humo_sdit.json": wan21_humo_sdit, "wan22_s2v_ras.json": wan22_s2v_ras,
            "hunyuan_video_ras.json": hunyuan_video_ras, "hunyuan_video15_i2v_sdit.json": hunyuan_video15_i2v_sdit,
            "hunyuan_image21_ras.json": hunyuan_image21_ras, "anima_sdit.json": anima_sdit,
            "cosmos1_t2w_ras.json": cosmos1_t2w_ras,
            "hidream_i1_ras.json": hidream_i1_ras, "kandinsky5_t2v_ras.json": kandinsky5_t2v_ras,
            "ltxv_i2v_sdit.json": ltxv_i2v_sdit, "mochi_ras.json": mochi_ras,
            "auraflow_sdit.json": auraflow_sdit, "krea2_ras.json": krea2_ras,
            "ideogram4_ras.json": ideogram4_ras, "mage_flow_sdit.json": mage_flow_sdit,
            "lens_ras.json": lens_ras, "joyimage_edit_ras.json": joyimage_edit_ras,
            "cogvideox_t2v_sdit.json": cogvideox_t2v_sdit, "omnigen2_edit_sdit.json": omnigen2_edit_sdit,
            "boogu_ras.json": boogu_ras, "ernie_image_sdit.json": ernie_image_sdit,
            "pixart_sigma_ras.json": pixart_sigma_ras, "chroma_radiance_sdit.json": chroma_radiance_sdit,
            "hunyuan_dit_ras.json": hunyuan_dit_ras, "zimage_pixel_ras.json": zimage_pixel_ras,
            "pixeldit_sdit.json": pixeldit_sdit}
# Workflows of families whose conditioning nodes only newer ComfyUI has (NEWER_NODES): built against such a tree,
# NEWER_GENERATED_WITH, by `COMFYUI_PATH=<tree> python scripts/make_workflows.py --newer`.
NEWER_EXAMPLES = {"wan21_scail2_ras.json": wan21_scail2_ras, "wandancer_sdit.json": wandancer_sdit,
                  "ltx2_t2av_ras.json": ltx2_t2av_ras, "wan_animate2_ras.json": wan_animate2_ras,
                  "minimax_h3_t2av_ras.json": minimax_h3_t2av_ras, "hidream_o1_ras.json": hidream_o1_ras,
                  "sensenova_ras.json": sensenova_ras, "wan21_uni3c_i2v_ras.json": wan21_uni3c_i2v_ras,
                  "prism_i2av_ras.json": prism_i2av_ras, "zimage_fun_controlnet_ras.json": zimage_fun_controlnet_ras,
                  "flux2_edit_kv_cache_ras.json": flux2_edit_kv_cache_ras, "helios_t2v_ras.json": helios_t2v_ras}
NEWER_NODES = ("WanSCAILToVideo", "WanDancerVideo", "WanDancerEncodeAudio", "StringConcatenate", "LTXVConcatAVLatent",
               "LTXVEmptyLatentAudio", "LTXAVTextEncoderLoader", "LTXVAudioVAELoader", "LTXVSeparateAVLatent",
               "LTXVAudioVAEDecode", "WanAnimate2ToVideo", "WanAnimate2Cache", "MiniMaxH3ImageToVideo",
               "EmptyHiDreamO1LatentImage", "WanUni3CControlnetApply", "ZImageFunControlnet", "FluxKVCache")
# newer examples whose nodes not even NEWER_GENERATED_WITH has (read in the search index, run on a local tree of it with
# those files): `--newer` builds them where the tree has the node
NEWEST_NODES = {"prism_i2av_ras.json": "PrismPrepareAV", "helios_t2v_ras.json": "HeliosPyramidSampler"}
NEWER_GENERATED_WITH = "0.33.0"


def main() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import os
    newer = "--newer" in sys.argv[1:]
    comfy = pathlib.Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui")
    with ComfyServer(comfy, REPO / ".comfyui-out") as server:
        info = server.get("/object_info")
    missing = [node for node in NEWER_NODES if node not in info]
    if newer and missing:
        sys.exit(f"--newer needs a ComfyUI with {', '.join(missing)}: set COMFYUI_PATH to a newer tree")
    for name, build in (NEWER_EXAMPLES if newer else EXAMPLES).items():
        needs = NEWEST_NODES.get(name) if newer else None
        if needs and needs not in info:
            print("skipped", name, f"(this tree has no {needs})")
            continue
        path = REPO / "example_workflows" / name
        path.write_text(json.dumps(build(info), indent=1) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
