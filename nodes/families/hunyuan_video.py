"""HunyuanVideo (comfy/ldm/hunyuan_video/model.py): text-to-video and image-to-video, and the models
ComfyUI runs on the same class: HunyuanVideo 1.5 (and its super-resolution model), HunyuanImage 2.1 (image
latents, a 2-D patch: a (rows, cols) token grid) and its refiner.

`forward_orig(img, img_ids, txt, ...)` embeds the video with a 3-D patch embedding (`img_in`) into
tokens numbered over (frames, rows, cols), runs Flux-style double blocks with joint attention over
the video and the text and single blocks over their concatenation, and a per-token final layer. The
order of that concatenation changed between ComfyUI versions ([video | text] in 0.3.x, [text | video]
later): the adapter reads it from the positions the model embeds. It hooks, never that function's code:
- `forward_orig`'s arguments: the running tokens' positions (`img_ids`, for RoPE) and ControlNet
  residuals are gathered;
- `pe_embedder`'s input (text and video positions, concatenated as the blocks will be) tells the engine
  which comes first;
- `img_in`'s output: the video tokens are gathered;
- image-to-video by token replacement (`guiding_frame_index`) modulates the first frame's tokens apart
  by position: each block and the final layer get those positions in the gathered sequence;
- the text refiner's attention (text alone, after the video was gathered) passes the K/V cache by;
- the final layer's output is scattered back to every token;
- each block may replay from a CUDA graph of its own, but for token replacement, whose spans follow the active set.
Image channels (image-to-video, the refiners) are concatenated to the latent before `img_in`, so they are
gathered with the tokens. HunyuanVideo 1.5 and HunyuanImage 2.1 join a CLIP-vision image's tokens and ByT5
glyph tokens to the text: they run on every step as the text does (the memory plan counts them).
A reference latent (`ref_latent`, HunyuanImageToVideo's "custom" guidance) is embedded by `img_in` too and put
before the video's tokens, [reference | video]: its tokens run on every step, beside the text, as part of
what is not the video (before the text, image first; after it, text first: [text | reference | video]). The
model cuts them off before the final layer. With token replacement (`guiding_frame_index`), whose modulation
spans count from the reference's first token, it is refused.
"""
import torch

from .base import (FamilyAdapter, gather_control, passthrough_method, patch_method, patch_module_forward,
                   runs_class_methods)


class HunyuanVideoFamily(FamilyAdapter):
    names = ("HunyuanVideo",)

    def matches(self, diffusion_model) -> bool:
        return runs_class_methods(diffusion_model, "comfy.ldm.hunyuan_video.model", "HunyuanVideo",
                                  ("forward_orig", "_forward", "forward"))

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[-1])

    def takes_frames(self, diffusion_model) -> bool:
        return len(diffusion_model.patch_size) == 3          # HunyuanImage 2.1's 2-D patch: images only

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[0]) if len(diffusion_model.patch_size) == 3 else 1

    def prompt_tokens(self, base_model, tokens, values):
        """HunyuanVideo 1.5 and HunyuanImage 2.1 join more tokens to the text: the CLIP-vision image's
        (1.5's image-to-video) and ByT5's glyph text, where the model has the layer that embeds them."""
        dm = base_model.diffusion_model
        vision = values.get("clip_vision_output")
        if vision is not None and getattr(dm, "vision_in", None) is not None:
            tokens += int(vision.last_hidden_state.shape[1])
        glyphs = values.get("conditioning_byt5small")
        if glyphs is not None and getattr(dm, "byt5_in", None) is not None:
            tokens += int(glyphs.shape[1])
        return tokens

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        blocks = len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
        return [(image_tokens + text_tokens, diffusion_model.hidden_size)] * blocks

    def install(self, patcher, slot) -> None:
        dm = patcher.model.diffusion_model
        patch_method(patcher, slot, "diffusion_model.forward_orig", before=_prepare)
        patch_module_forward(patcher, slot, "diffusion_model.pe_embedder", before=_read_layout)
        patch_module_forward(patcher, slot, "diffusion_model.img_in", after=_gather_video)
        passthrough_method(patcher, slot, "diffusion_model.txt_in.forward")      # the text refiner: text alone
        for i in range(len(dm.double_blocks)):
            patch_method(patcher, slot, f"diffusion_model.double_blocks.{i}.forward",
                         before=lambda call, a: _map_modulation_dims(call, a, "modulation_dims_img"), graph=True)
        for i in range(len(dm.single_blocks)):
            patch_method(patcher, slot, f"diffusion_model.single_blocks.{i}.forward",
                         before=lambda call, a: _map_modulation_dims(call, a, "modulation_dims", joint="x"), graph=True)
        patch_method(patcher, slot, "diffusion_model.final_layer.forward",
                     before=lambda call, a: _map_modulation_dims(call, a, "modulation_dims"),
                     after=lambda call, out: call.scatter(out))

    def sequence_references(self, diffusion_model, values):
        reference = values.get("ref_latent")
        return [] if reference is None else [reference]

    def refused_conditioning(self, diffusion_model, values: dict):
        both = values.get("ref_latent") is not None and values.get("guiding_frame_index") is not None
        return REFERENCE_AND_REPLACE if both else None


REFERENCE_AND_REPLACE = ("HunyuanVideo with both a reference latent and image-to-video by token replacement "
                         "(guiding_frame_index) is not supported by region-adaptive sampling; sample it with KSampler")
REFERENCE_TOKENS = ("hunyuan video", "reference tokens")      # per-forward layout keys: how many,
VIDEO_EMBEDDED = ("hunyuan video", "video embedded")          # and whether `img_in` embedded the video yet


def _prepare(call, arguments) -> None:
    if arguments.get("ref_latent") is not None and arguments.get("guiding_frame_index") is not None:
        raise NotImplementedError(REFERENCE_AND_REPLACE)
    arguments["img_ids"] = call.scratch["img_ids"] = call.gather(arguments["img_ids"])
    arguments["control"] = gather_control(call, arguments.get("control"))


def _gather_video(call, tokens):
    """`img_in` embeds the video first, then any reference latent: the video's tokens are gathered, the
    reference's counted (they stay whole and run on every step)."""
    if VIDEO_EMBEDDED not in call.layout:
        call.layout[VIDEO_EMBEDDED] = True
        return call.gather(tokens)
    call.layout[REFERENCE_TOKENS] = tokens.shape[1]
    return tokens


def _read_layout(call, ids):
    """Which comes first in joint attention: the (gathered) video positions at the start of the embedded
    positions (after a reference's), or at their end."""
    video = call.scratch.get("img_ids")
    n = 0 if video is None else video.shape[1]
    lead = call.layout.get(REFERENCE_TOKENS, 0)
    if video is not None and ids.shape[1] > n + lead and torch.equal(ids[:, lead:lead + n], video):
        call.image_first, call.image_lead = True, lead
    elif video is not None and ids.shape[1] > n and torch.equal(ids[:, -n:], video):
        call.image_first = False
    else:
        raise NotImplementedError("HunyuanVideo: this ComfyUI orders the text and video positions in a way the "
                                  "pack does not know; sample it with KSampler")
    return ids


def _map_modulation_dims(call, arguments, name: str, joint: str = None) -> None:
    """[(start, end, which), ...] over the dense sequence -> the same spans over the gathered one. The
    running tokens keep their order, so a span boundary p becomes the number of running tokens before
    p; it must be the same for every row (one span list serves the batch). `joint`: the argument holding
    the [text | video] concatenation when the text comes first (single blocks): the spans count the text."""
    dims = arguments.get(name)
    if dims is None or call.dense:
        return
    call.stays_eager = True             # the spans follow where the first frame's running tokens are
    if joint is not None and not call.image_first:
        text = arguments[joint].shape[1] - call.image_index_now().shape[1]
        key = ("modulation_dims", "text first", tuple(dims))
        if key not in call.scratch:
            video = _video_positions(call)
            shifted = [(_shift(start, text, video), _shift(end, text, video), which) for start, end, which in dims]
            call.scratch[key] = shifted
        arguments[name] = call.scratch[key]
        return
    key = ("modulation_dims", tuple(dims))
    if key in call.scratch:                 # once per forward: it reads the index on the host
        arguments[name] = call.scratch[key]
        return
    video = _video_positions(call)

    def position(p):
        return None if p is None else video(p)
    arguments[name] = call.scratch[key] = [(position(start), position(end), which) for start, end, which in dims]


def _video_positions(call):
    """p (a position among the dense video tokens) -> its position among the running ones."""
    index = call.image_index_now()

    def position(p):
        if p > call.grid_tokens:
            return index.shape[1] + (p - call.grid_tokens)
        before = (index < p).sum(dim=1)
        if bool((before != before[0]).any()):
            raise NotImplementedError("HunyuanVideo image-to-video (token replace) with a different number of "
                                      "first-frame tokens per video is not supported; use batch 1")
        return int(before[0])
    return position


def _shift(p, text: int, video_position):
    """A boundary in [text | video] (dense) -> the same boundary in [text | running video]."""
    if p is None or p <= text:
        return p
    return text + video_position(p - text)
