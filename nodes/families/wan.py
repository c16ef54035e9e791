"""Wan 2.1 / 2.2 (comfy/ldm/wan/model.py, WanModel): text-to-video, image-to-video, TI2V 5B.

`forward_orig` embeds the video with a 3-D patch convolution into tokens numbered over (frames, rows,
cols), runs the blocks (self-attention over the video tokens with 3-D RoPE, cross-attention of the
video tokens to the text and CLIP-image context, a feed-forward) and a per-token head. The adapter
hooks modules, never that function's code:
- the first block that runs gathers the video tokens (another node may replace earlier ones: Skip Layer
  Guidance skipping block 0); every block gets the running tokens' RoPE frequencies and, where the
  timestep is per frame or per token (Wan 2.2 TI2V), their modulation;
- cross-attention passes the K/V cache by (its keys are the context, complete as they are);
- the head gets the running tokens' modulation and its output is scattered back to every token.
Self-attention has no text prefix: the K/V cache holds the video tokens alone. Tokens that follow the
latent's (Phantom's subject frames concatenated in time, newer ComfyUI's in-context `context_latents`)
run on every step, like Flux Kontext's references. So does Wan Fun's reference image (`ref_conv`), whose
tokens the model puts before the video's: the first block moves them after the others (with their RoPE
frequencies and modulation), where the engine keeps tokens that always run, and the head's output moves
them back. Self-attention and every per-token layer give each token the same result in any order.
Wan Fun Camera (`CameraWanModel`) adds its camera features to the embedded video before the blocks: the
same hooks. On sparse forwards `forward_orig` hands the Uni3C ControlNet's block patch (newer ComfyUI) a
stand-in that adds what it computes to the tokens that run (uni3c_controlnet.py), and InfiniteTalk's audio patch one
that computes it for the running tokens (infinitetalk_audio.py). VACE, Animate, HuMo and S2V
have adapters of their own (wan_vace.py, wan_animate.py, wan_humo.py, wan_s2v.py); other variants with a forward
of their own are other models: not covered.
"""
import importlib

import torch

from . import infinitetalk_audio, uni3c_controlnet
from .base import VideoFamilyAdapter, gathered_freqs, passthrough_method, patch_method, patch_module_forward


class WanFamily(VideoFamilyAdapter):
    names = ("Wan 2.1", "Wan 2.2")
    # the variants' adapters (subclasses) leave them refused: untested there
    handled_patches = (uni3c_controlnet.PATCH_CLASS, infinitetalk_audio.PATCH_CLASS)

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.wan.model as wan
        # Wan Fun Camera's forward_orig adds the camera adapter's features to the embedded video before the
        # blocks and is Wan's otherwise: the same hooks
        camera = getattr(wan, "CameraWanModel", None)
        owners = (wan.WanModel,) if camera is None else (wan.WanModel, camera)
        return isinstance(diffusion_model, wan.WanModel) and runs_wan_forward(diffusion_model, owners)

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.dim)] * len(diffusion_model.blocks)   # self-attention: video alone

    def sequence_references(self, diffusion_model, values):
        # Phantom's subject frames, concatenated after the video's in time; in-context latents (newer ComfyUI);
        # Wan Fun's reference image (the first frame of the last reference latent), before the video
        subject = values.get("time_dim_concat")
        references = ([] if subject is None else [subject]) + list(values.get("context_latents") or [])
        image = last_reference_latent(values)
        if image and getattr(diffusion_model, "ref_conv", None) is not None:
            references.append(image[0][:, :, :1])
        return references

    def install(self, patcher, slot) -> None:
        if self.handled_patches:      # (variants that patch forward_orig themselves leave them out)
            patch_method(patcher, slot, "diffusion_model.forward_orig", before=_block_patches_for_sparse_forward)
        blocks = len(patcher.model.diffusion_model.blocks)
        for i in range(blocks):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=gather_block_inputs, graph=True)
            passthrough_method(patcher, slot, f"diffusion_model.blocks.{i}.cross_attn.forward")
        patch_head(patcher, slot, "diffusion_model.head")
        if getattr(patcher.model.diffusion_model, "ref_conv", None) is not None:
            patch_module_forward(patcher, slot, "diffusion_model.ref_conv", after=_count_leading_reference)


def _block_patches_for_sparse_forward(call, arguments) -> None:
    """On a sparse forward, the Uni3C ControlNet's block patch adds to the tokens that run (uni3c_controlnet.py), and
    InfiniteTalk's audio patch runs on them (infinitetalk_audio.py)."""
    if arguments.get("transformer_options") is not None:
        options = uni3c_controlnet.token_sparse_options(call, arguments["transformer_options"])
        arguments["transformer_options"] = infinitetalk_audio.token_sparse_options(call, options)


def patch_head(patcher, slot, path: str) -> None:
    """The head at `path` gets the running tokens' modulation; its output is scattered back to every token."""
    patch_method(patcher, slot, path + ".forward", before=_gather_head_modulation, after=_scatter_head_output)


def runs_wan_forward(diffusion_model, owners: tuple) -> bool:
    """The model's class runs `forward_orig` as one of the `owners` classes defines it and WanModel's own
    `_forward` and `forward` (a subclass with a forward of its own is another model)."""
    import comfy.ldm.wan.model as wan
    kind = type(diffusion_model)
    return (any(kind.forward_orig is owner.forward_orig for owner in owners)
            and all(getattr(kind, name) is getattr(wan.WanModel, name)
                    for name in ("_forward", "forward") if hasattr(wan.WanModel, name)))


def is_wan_variant(diffusion_model, class_name: str, part: str, module: str = "comfy.ldm.wan.model") -> bool:
    """The model is ComfyUI's Wan variant `class_name` (where the running ComfyUI has it), running that class's
    `forward_orig` and WanModel's `forward`, with the `part` its adapter patches."""
    try:
        variant = getattr(importlib.import_module(module), class_name, None)
    except ImportError:
        return False
    return (variant is not None and isinstance(diffusion_model, variant)
            and runs_wan_forward(diffusion_model, (variant,)) and hasattr(diffusion_model, part))


def last_reference_latent(values: dict) -> list:
    """The reference latent a prompt's `reference_latents` give a Wan model ([] or [latent]): it embeds the last."""
    return list(values.get("reference_latents") or [])[-1:]


BLOCK_MODULATION_DIMS = 4      # a block's modulation is (rows, frames | tokens, 6, channels), the head's has no 6
LEADING = ("wan", "reference tokens before the video's")     # a per-forward layout key: how many


def _count_leading_reference(call, reference):
    call.layout[LEADING] = reference.shape[-2] * reference.shape[-1]     # (batch, channels, token rows, cols)
    return reference


def _lead_last(tokens: torch.Tensor, lead: int) -> torch.Tensor:
    """[leading reference | video | ...] (the model's order) -> [video | ... | leading reference] (the engine's)."""
    return torch.cat([tokens[:, lead:], tokens[:, :lead]], dim=1) if lead else tokens


def gather_block_inputs(call, arguments) -> None:
    """The first block that runs gathers the video's tokens; every block gets the running tokens' RoPE rows and
    modulation."""
    lead = call.layout.get(LEADING, 0)
    if call.image_rows is None:     # the first block that runs
        if lead and (arguments.get("transformer_options") or {}).get("patches", {}).get("double_block"):
            raise NotImplementedError("Wan with reference images before the video's tokens (Wan Fun's ref_conv, "
                                      "SCAIL) and other nodes' block patches is not supported by region-adaptive "
                                      "sampling; sample it with KSampler")
        # dense: unchanged (but for a leading reference), and counted; extra tokens follow the grid
        arguments["x"] = call.gather(_lead_last(arguments["x"], lead))
    if call.dense and not lead:
        return
    arguments["freqs"] = _block_freqs(call, arguments["freqs"], lead)
    arguments["e"] = gathered_modulation(call, arguments["e"], BLOCK_MODULATION_DIMS, lead)


def _block_freqs(call, freqs: torch.Tensor, lead: int) -> torch.Tensor:
    key = ("wan freqs", freqs.data_ptr(), tuple(freqs.shape), lead)
    if key not in call.scratch:
        ordered = _lead_last(freqs, lead)
        # the reordered tensor stays in the memo: gathered_freqs memoises by its address
        call.scratch[key] = (ordered, ordered if call.dense else gathered_freqs(call, ordered, prefix=0))
    return call.scratch[key][1]


def _gather_head_modulation(call, arguments) -> None:
    lead = call.layout.get(LEADING, 0)
    if not call.dense or lead:
        arguments["e"] = gathered_modulation(call, arguments["e"], BLOCK_MODULATION_DIMS - 1, lead)


def _scatter_head_output(call, out: torch.Tensor) -> torch.Tensor:
    lead = call.layout.get(LEADING, 0)
    full = call.scatter(out)
    return torch.cat([full[:, -lead:], full[:, :-lead]], dim=1) if lead else full    # back to the model's order


def gathered_modulation(call, e: torch.Tensor, dims: int, lead: int = 0) -> torch.Tensor:
    """Modulation per video stays; per frame or per token (Wan 2.2 TI2V's per-token timestep) it is spread
    over every token as the model's own `repeat_e` spreads it, then gathered (`lead`: tokens of a reference
    that the model puts first and the engine last). Per frame or token it has `dims` dimensions, (rows,
    frames | tokens, [6,] channels); fewer (VACE's older layout) or one entry on dim 1 is per video."""
    if e.ndim < dims or e.shape[1] == 1:
        return e
    key = ("modulation", e.data_ptr(), tuple(e.shape))
    if key not in call.scratch:
        from comfy.ldm.wan.model import repeat_e
        length = call.image_rows if call.dense else call.image_sequence_length
        every_token = e.new_empty(e.shape[0], length, 0)   # only its length is read
        call.scratch[key] = call.gather_grid(_lead_last(repeat_e(e, every_token), lead))
    return call.scratch[key]
