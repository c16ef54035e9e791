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
run on every step, like Flux Kontext's references; a reference latent embedded before the video
(`ref_conv`, Wan Fun) is refused when it runs.
Wan Fun Camera (`CameraWanModel`) adds its camera features to the embedded video before the blocks: the
same hooks. VACE, Animate and HuMo have adapters of their own (wan_vace.py, wan_animate.py, wan_humo.py); other
variants with a forward of their own (S2V, ...) are other models: not covered.
"""
import torch

from .base import FamilyAdapter, gathered_freqs, passthrough_method, patch_method, patch_module_forward


class WanFamily(FamilyAdapter):
    names = ("Wan 2.1", "Wan 2.2")

    def matches(self, diffusion_model) -> bool:
        import comfy.ldm.wan.model as wan
        # Wan Fun Camera's forward_orig adds the camera adapter's features to the embedded video before the
        # blocks and is Wan's otherwise: the same hooks
        camera = getattr(wan, "CameraWanModel", None)
        owners = (wan.WanModel,) if camera is None else (wan.WanModel, camera)
        return isinstance(diffusion_model, wan.WanModel) and runs_wan_forward(diffusion_model, owners)

    def patch_size(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[-1])

    def takes_frames(self, diffusion_model) -> bool:
        return True

    def temporal_patch(self, diffusion_model) -> int:
        return int(diffusion_model.patch_size[0])

    def kv_cache_layers(self, diffusion_model, image_tokens, text_tokens, values):
        return [(image_tokens, diffusion_model.dim)] * len(diffusion_model.blocks)   # self-attention: video alone

    def sequence_references(self, diffusion_model, values):
        # Phantom's subject frames, concatenated after the video's in time; in-context latents (newer ComfyUI)
        subject = values.get("time_dim_concat")
        return ([] if subject is None else [subject]) + list(values.get("context_latents") or [])

    def install(self, patcher, slot) -> None:
        blocks = len(patcher.model.diffusion_model.blocks)
        for i in range(blocks):
            patch_method(patcher, slot, f"diffusion_model.blocks.{i}.forward", before=_gather_block_inputs)
            passthrough_method(patcher, slot, f"diffusion_model.blocks.{i}.cross_attn.forward")
        patch_method(patcher, slot, "diffusion_model.head.forward", before=_gather_head_modulation,
                     after=lambda call, out: call.scatter(out))
        if getattr(patcher.model.diffusion_model, "ref_conv", None) is not None:
            patch_module_forward(patcher, slot, "diffusion_model.ref_conv", before=_refuse_leading_reference)

    def refused_conditioning(self, diffusion_model, values: dict):
        # ComfyUI hands `reference_latents` to a model with ref_conv as its leading reference latent
        if getattr(diffusion_model, "ref_conv", None) is not None and values.get("reference_latents") is not None:
            return LEADING_REFERENCE
        return None


def runs_wan_forward(diffusion_model, owners: tuple) -> bool:
    """The model's class runs `forward_orig` as one of the `owners` classes defines it and WanModel's own
    `_forward` and `forward` (a subclass with a forward of its own is another model)."""
    import comfy.ldm.wan.model as wan
    kind = type(diffusion_model)
    return (any(kind.forward_orig is owner.forward_orig for owner in owners)
            and all(getattr(kind, name) is getattr(wan.WanModel, name)
                    for name in ("_forward", "forward") if hasattr(wan.WanModel, name)))


BLOCK_MODULATION_DIMS = 4      # a block's modulation is (rows, frames | tokens, 6, channels), the head's has no 6
LEADING_REFERENCE = ("Wan with a reference latent (ref_conv, e.g. Wan Fun) is not supported by region-adaptive "
                     "sampling; sample it with KSampler")


def _refuse_leading_reference(call, reference):
    # its tokens precede the video's in the sequence, where the engine keeps nothing but the grid
    raise NotImplementedError(LEADING_REFERENCE)


def _gather_block_inputs(call, arguments) -> None:
    if call.image_rows is None:     # the first block that runs
        arguments["x"] = call.gather(arguments["x"])     # dense: unchanged, but counted; extra tokens follow the grid
    if call.dense:
        return
    arguments["freqs"] = gathered_freqs(call, arguments["freqs"], prefix=0)
    arguments["e"] = gathered_modulation(call, arguments["e"], BLOCK_MODULATION_DIMS)


def _gather_head_modulation(call, arguments) -> None:
    if not call.dense:
        arguments["e"] = gathered_modulation(call, arguments["e"], BLOCK_MODULATION_DIMS - 1)


def gathered_modulation(call, e: torch.Tensor, dims: int) -> torch.Tensor:
    """Modulation per video stays; per frame or per token (Wan 2.2 TI2V's per-token timestep) it is spread
    over every token as the model's own `repeat_e` spreads it, then gathered. Per frame or token it has
    `dims` dimensions, (rows, frames | tokens, [6,] channels); fewer (VACE's older layout) or one entry on
    dim 1 is per video."""
    if e.ndim < dims or e.shape[1] == 1:
        return e
    key = ("modulation", e.data_ptr(), tuple(e.shape))
    if key not in call.scratch:
        from comfy.ldm.wan.model import repeat_e
        every_token = e.new_empty(e.shape[0], call.image_sequence_length, 0)   # only its length is read
        call.scratch[key] = call.gather_grid(repeat_e(e, every_token))
    return call.scratch[key]
