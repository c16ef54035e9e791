"""Z-Image's Fun ControlNet ("Apply Z-Image Fun ControlNet" with a Z-Image Fun ControlNet of "Load Model Patch";
comfy_extras/nodes_model_patch.py `ZImageControlPatch`, comfy/ldm/lumina/controlnet.py `ZImage_Control`; newer
ComfyUI) on token-sparse forwards.

The ControlNet is a transformer over the control image's tokens, one per grid token (without Z-Image's padding
tokens). Its first block adds the model's hidden state of each image token (the noise refiner's input, or the joint
layers') to the control token's; after some of the model's layers the patch adds a control block's output to the image
tokens. Its blocks attend among the control tokens, so on a sparse forward it runs as the model does: the running
tokens' control tokens alone, each block's attention over every control token's keys and values, from K/V cache layers
of its own (engine.ForwardCall.grid_keys) that dense forwards store.

Each forward runs ComfyUI's own patch on a copy, whose control model is a view of ComfyUI's: ComfyUI's methods run
with the view as `self`, and the view's embedder embeds the running tokens' control patches (every image's rows of the
batch), its blocks take the forward's transformer_options (their attention reaches the engine). The copy is handed the
running tokens' RoPE rows and noise-refiner input. ComfyUI keeps the patch's state from layer to layer on the patch
(two forwards at once would share it): the copy keeps it for its forward. The control image the patch encodes again at
the latent's size is kept on the patch, as ComfyUI keeps it.
"""
import copy
import weakref
from typing import List, Tuple

from ..comfy_compat import zimage_control_blocks_take_transformer_options
from .base import every_row, gathered_freqs, is_patch_of

PATCH_CLASS = "ZImageControlPatch"
PATCH_LISTS = ("noise_refiner", "double_block")     # ComfyUI's node puts the patch in both
OMNI = ("the Z-Image Fun ControlNet with Z-Image Omni's reference images is not supported by region-adaptive "
        "sampling: remove 'Apply Z-Image Fun ControlNet' or the reference images, or sample with KSampler")
_CHECKED = weakref.WeakSet()        # control models whose blocks take transformer_options (checked once each)


def token_sparse_options(call, options: dict) -> dict:
    """This forward's transformer_options: each Z-Image Fun ControlNet patch replaced by a copy for this forward (the
    same one in both lists), dense forwards too (their control blocks store the K/V the sparse ones read); the same
    dict where there is none (the patches on the model are never changed)."""
    patches = options.get("patches") or {}
    if not any(is_patch_of(p, PATCH_CLASS) for kind in PATCH_LISTS for p in patches.get(kind) or []):
        return options
    forward_options = dict(options)
    copies = {}

    def for_this_forward(patch):
        if not is_patch_of(patch, PATCH_CLASS):
            return patch
        if id(patch) not in copies:
            copies[id(patch)] = ControlOnTokens(call, patch, forward_options)
        return copies[id(patch)]
    forward_options["patches"] = dict(patches, **{kind: [for_this_forward(p) for p in patches[kind]]
                                                  for kind in PATCH_LISTS if kind in patches})
    return forward_options


def cache_layers(transformer_options: dict, model_layers: int, refiner_layers: int, grid_tokens: int,
                 dim: int) -> List[Tuple[int, int]]:
    """The K/V cache layers of the Z-Image Fun ControlNets on a model (for the memory plan): one per control block
    call of a forward, as ComfyUI's ZImageControlPatch schedules them."""
    patches = (transformer_options.get("patches") or {}).get("double_block") or []
    layers = []
    for patch in {id(p): p for p in patches if is_patch_of(p, PATCH_CLASS)}.values():
        control = patch.model_patch.model
        n = int(control.n_control_layers)
        if not control.refiner_control:                 # its forward runs its own refiner blocks once
            refiner = len(control.control_noise_refiner)
        elif control.broken:                            # the first refiner layer: block 0, each later one: the rest
            refiner = 1 + (refiner_layers - 1) * (n - 1)
        else:                                           # a refiner block after each of the model's refiner layers
            refiner = refiner_layers
        every = round(30 / n)                           # a control block after every `every` of the model's layers
        joint = min(n - 1, (model_layers - 1) // every) + 1 if model_layers else 0
        layers += [(grid_tokens, dim)] * (refiner + joint)
    return layers


class ControlOnTokens:
    """One forward's stand-in for the patch: ComfyUI's patch on a copy of it, on the tokens that run."""

    def __init__(self, call, patch, options: dict):
        control = patch.model_patch.model
        if control not in _CHECKED and not zimage_control_blocks_take_transformer_options(control):
            raise NotImplementedError(
                f"this ComfyUI's Z-Image Fun ControlNet ({type(control).__name__}) has blocks that take no "
                "transformer_options, so region-adaptive sampling cannot run their attention with its K/V cache: remove "
                "'Apply Z-Image Fun ControlNet' or sample with KSampler")
        _CHECKED.add(control)
        self.call, self.patch = call, patch
        self.running = copy.copy(patch)
        self.running.temp_data = None       # this forward's state from layer to layer
        self.running.model_patch = _ModelPatchView(ControlModelOnTokens(call, control, options))

    def __call__(self, kwargs):
        from .lumina import LEAD        # (lumina.py imports this module)
        call = self.call
        if call.layout.get(LEAD):
            raise NotImplementedError(OMNI)
        kwargs = dict(kwargs, pe=self._running_rows(kwargs["pe"], freqs=True))
        if kwargs.get("block_type") == "noise_refiner":     # the refiner's input: the embedding before the gather
            kwargs["img_input"] = self._running_rows(kwargs["img_input"], freqs=False)
        out = self.running(kwargs)
        if self.running.encoded_image is not self.patch.encoded_image:     # encoded at the latent's size: keep it
            self.patch.encoded_image = self.running.encoded_image
            self.patch.encoded_image_size = self.running.encoded_image_size
        return out

    def _running_rows(self, tokens, freqs: bool):
        """The image sequence's rows (RoPE frequencies or hidden states of every image token, then padding) -> the
        running tokens' (then padding), once per forward."""
        call = self.call
        if call.dense:
            return tokens
        if freqs:
            return gathered_freqs(call, tokens, 0)
        key = ("zimage control input", tokens.data_ptr(), tuple(tokens.shape))
        if key not in call.scratch:
            call.scratch[key] = call.gather(tokens)
        return call.scratch[key]


class _ModelPatchView:
    """What the patch reads of "Load Model Patch"'s model patch: its `model`."""

    def __init__(self, model):
        self.model = model


class ControlModelOnTokens:
    """ComfyUI's ZImage_Control as the patch sees it on one forward: its own methods, with this view as `self`."""

    def __init__(self, call, control, options: dict):
        self._control = control
        self.control_all_x_embedder = {key: EmbedderOnTokens(call, embedder)
                                       for key, embedder in control.control_all_x_embedder.items()}
        self.control_layers = [BlockOnTokens(call, block, options) for block in control.control_layers]
        self.control_noise_refiner = [BlockOnTokens(call, block, options) for block in control.control_noise_refiner]

    def __getattr__(self, name):            # the rest as ComfyUI's (n_control_layers, broken, refiner_control, ...)
        return getattr(self._control, name)

    def __call__(self, *args, **kwargs):
        return type(self._control).forward(self, *args, **kwargs)

    def forward_noise_refiner_block(self, *args, **kwargs):
        return type(self._control).forward_noise_refiner_block(self, *args, **kwargs)

    def forward_control_block(self, *args, **kwargs):
        return type(self._control).forward_control_block(self, *args, **kwargs)


class EmbedderOnTokens:
    """The control embedder (per token: a linear map of each token's patch) on the running tokens' patches, for every
    row of the forward (ComfyUI's embeds one control image and lets it broadcast: the cache holds a row per image)."""

    def __init__(self, call, embedder):
        self.call, self.embedder = call, embedder

    def __call__(self, patches):
        call = self.call
        if patches.shape[1] != call.grid_tokens:
            raise NotImplementedError(
                f"the Z-Image Fun ControlNet's control image has {patches.shape[1]} tokens, not one for each of the "
                f"image's {call.grid_tokens}, so it cannot follow the tokens region-adaptive sampling runs (a latent of "
                "several frames?): remove 'Apply Z-Image Fun ControlNet' or sample with KSampler")
        return self.embedder(call.gather_grid(every_row(patches, call.record.rows)))


class BlockOnTokens:
    """A control block called with the forward's transformer_options, its attention over the grid's tokens alone."""

    def __init__(self, call, block, options: dict):
        self.call, self.block, self.options = call, block, options

    def __call__(self, *args, **kwargs):
        self.call.grid_keys += 1
        try:
            return self.block(*args, **dict(kwargs, transformer_options=self.options))
        finally:
            self.call.grid_keys -= 1
