"""Tiny random-weight instances of ComfyUI's real model classes, and sampling helpers."""
import math

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models

from comfyui_sdit.nodes.comfy_compat import flux_unet_config

TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                 hidden_size=64, mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2,
                 axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI allocates weights uninitialised; give every parameter and buffer a seeded value."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        with torch.no_grad():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith("scale") or name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def make_patcher(model) -> comfy.model_patcher.ModelPatcher:
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_flux(seed: int = 0, **overrides) -> comfy.model_patcher.ModelPatcher:
    config = dict(TINY_FLUX, **overrides)
    model = comfy.supported_models.Flux(flux_unet_config(config)).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)


def flux_conditioning(seed: int, text_tokens: int = 7, context_dim: int = 32, pooled_dim: int = 32, guidance: float = 3.5):
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, text_tokens, context_dim, generator=generator)
    pooled = torch.randn(1, pooled_dim, generator=generator)
    return [[cond, {"pooled_output": pooled, "guidance": guidance}]]


def random_active(batch: int, num_tokens: int, n: int, seed: int) -> torch.Tensor:
    """(batch, n) seeded random active token sets, different per image, in random order."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_tokens, generator=g)[:n] for _ in range(batch)])


def sample_leaving_a_fun_controlnet_untouched(model, block, sample) -> None:
    """`sample()` leaves the block replacements other nodes put on `model` (a Fun ControlNet's, one on `block`) and the
    ControlNet's weights as they were."""
    replacements = dict(model.model_options["transformer_options"]["patches_replace"]["dit"])
    network = replacements[block].control_patch.model_patch.model
    weights = {name: p.clone() for name, p in network.state_dict().items()}
    sample()
    assert model.model_options["transformer_options"]["patches_replace"]["dit"] == replacements
    assert all(torch.equal(weights[name], p) for name, p in network.state_dict().items())


def assert_exact_on_active_tokens(by_stream: dict, tokens: int, tol: float = 1e-5, extra: int = 0) -> None:
    """{stream: [(dense output, computed), (sparse output, computed)]} of a dense and then a sparse forward on
    the same input: the sparse one equals the dense one on the tokens it computed (up to `tol`) and hands
    the others their cached output, the dense one's, unchanged. `extra`: tokens after the grid's `tokens`
    (references), which run on every step."""
    from comfyui_sdit.sdit_core.tokens import index_to_mask
    assert by_stream
    for (dense, _), (sparse, computed) in by_stream.values():
        mask = torch.cat([index_to_mask(computed, tokens), computed.new_ones(computed.shape[0], extra, dtype=torch.bool)],
                         dim=1)
        assert (sparse - dense).abs().amax(dim=-1)[mask].max().item() <= tol
        assert torch.equal(sparse[~mask], dense[~mask])


def noise_like(latent: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))


def ksample(model, latent, seed=0, steps=6, cfg=1.0, sampler="euler", scheduler="simple",
            positive=None, negative=None, denoise=1.0):
    positive = positive if positive is not None else flux_conditioning(1)
    negative = negative if negative is not None else flux_conditioning(2)
    return comfy.sample.sample(model, noise_like(latent, seed), steps, cfg, sampler, scheduler, positive, negative,
                               latent, denoise=denoise, seed=seed, disable_pbar=True)


def sample_with(model, latent, sampler_function, sigmas, cfg=1.0, positive=None, negative=None, seed=0,
                noise_mask=None):
    """Runs ComfyUI's sampling with a hand-written sampler function (model evaluations under control);
    `noise_mask`: the latent's, as KSampler hands it on."""
    positive = positive if positive is not None else flux_conditioning(1)
    negative = negative if negative is not None else flux_conditioning(2)
    sampler = comfy.samplers.KSAMPLER(sampler_function)
    return comfy.sample.sample_custom(model, noise_like(latent, seed), cfg, sampler, sigmas, positive, negative,
                                      latent, noise_mask=noise_mask, disable_pbar=True, seed=seed)


TINY_SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                  "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
                  "num_res_blocks": [1], "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 1,
                  "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 1, "num_head_channels": -1,
                  "transformer_depth_output": [1, 1]}


def tiny_sd15(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A real SD1.5-class UNet (not a transformer the pack can sparsify)."""
    model = comfy.supported_models.SD15(dict(TINY_SD15_UNET)).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)


TINY_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
                   mlp_ratio=2.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], theta=10000,
                   patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)


def tiny_chroma(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    model = comfy.supported_models.Chroma(flux_unet_config(TINY_CHROMA)).get_model({})
    init_weights_(model.diffusion_model, seed)
    return make_patcher(model)


# ---- the other DiT families, tiny (head counts chosen here, not by model_detection) -------------

def init_buffers_(module: torch.nn.Module, seed: int) -> None:
    """MMDiT's learned position embedding is a buffer ComfyUI leaves uninitialised."""
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in module.named_buffers():
        if name.endswith("pos_embed"):
            with torch.no_grad():
                buffer.copy_(0.5 * torch.randn(buffer.shape, generator=generator))


def build_tiny(model_config_class, config: dict, seed: int) -> comfy.model_patcher.ModelPatcher:
    model = model_config_class(dict(config)).get_model({})
    init_weights_(model.diffusion_model, seed)
    init_buffers_(model.diffusion_model, seed)
    return make_patcher(model)


TINY_SD3 = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=32,
                context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
                num_patches=32 * 32, pos_embed_max_size=32, pos_embed_scaling_factor=None, x_block_self_attn_layers=[])
TINY_SD35 = dict(TINY_SD3, qk_norm="rms", x_block_self_attn_layers=[0])
TINY_LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=32, n_layers=2,
                    n_refiner_layers=2, qk_norm=True, n_heads=4, n_kv_heads=2, axes_dims=[4, 6, 6],
                    axes_lens=[300, 512, 512], rope_theta=10000.0, ffn_dim_multiplier=4.0)
# Z-Image's modulation is sized for a hidden size of at least 256
TINY_ZIMAGE = dict(TINY_LUMINA2, dim=256, n_kv_heads=4, axes_dims=[16, 24, 24], rope_theta=256.0,
                   z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)
TINY_QWEN_IMAGE = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                       attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
TINY_FLUX2 = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
                  context_in_dim=32, hidden_size=64, mlp_ratio=3.0, num_heads=4, depth=2, depth_single_blocks=2,
                  axes_dim=[4, 4, 4, 4], theta=2000, qkv_bias=False, ops_bias=False, global_modulation=True,
                  mlp_silu_act=True, guidance_embed=True, default_ref_method="index", ref_index_scale=10.0)


def tiny_sd3(seed: int = 0):
    return build_tiny(comfy.supported_models.SD3, TINY_SD3, seed)


def tiny_sd35(seed: int = 0):
    return build_tiny(comfy.supported_models.SD3, TINY_SD35, seed)


def tiny_lumina2(seed: int = 0):
    return build_tiny(comfy.supported_models.Lumina2, TINY_LUMINA2, seed)


def tiny_zimage(seed: int = 0):
    return build_tiny(comfy.supported_models.ZImage, TINY_ZIMAGE, seed)


def tiny_qwen_image(seed: int = 0):
    return build_tiny(comfy.supported_models.QwenImage, TINY_QWEN_IMAGE, seed)


def tiny_flux2(seed: int = 0):
    """Where ComfyUI gives the text tokens position ids (newer ComfyUI), on the axis the real checkpoints' config sets."""
    import dataclasses

    import comfy.ldm.flux.model
    real_text_ids = "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    config = dict(TINY_FLUX2, txt_ids_dims=[3]) if real_text_ids else TINY_FLUX2
    return build_tiny(comfy.supported_models.Flux2, flux_unet_config(config), seed)


class StandInWanVAE:
    """Wan 2.1's VAE as ComfyUI's Wan conditioning nodes use it: a latent of the right shape for the pixels it encodes
    (4 frames and 8 pixels a latent pixel; random, fixed by the pixels' shape)."""

    def encode(self, pixels):
        frames = (pixels.shape[0] - 1) // 4 + 1
        generator = torch.Generator().manual_seed(pixels.shape[0] * 7 + pixels.shape[1])
        return torch.randn(1, 16, frames, pixels.shape[1] // 8, pixels.shape[2] // 8, generator=generator)


def text_conditioning(seed: int, text_tokens: int, context_dim: int = 32, **extra):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, text_tokens, context_dim, generator=generator), dict(extra)]]


def pooled_conditioning(seed: int, text_tokens: int = 7):
    """SD3: text tokens plus a pooled vector (y)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    return text_conditioning(seed, text_tokens, pooled_output=torch.randn(1, 32, generator=generator))


class TinyFamily:
    """A tiny model of one family and what sampling it needs."""

    def __init__(self, build, positive, negative, channels=16, patch=2, frames=False, cfg_streams=1,
                 attention_layers=4):
        self.build, self.positive, self.negative = build, positive, negative
        self.channels, self.patch, self.frames = channels, patch, frames
        self.cfg_streams = cfg_streams              # streams per evaluation when cfg > 1
        self.attention_layers = attention_layers    # attention calls per forward that see image tokens

    def latent(self, batch: int, height: int, width: int) -> torch.Tensor:
        """Zeros of the family's latent shape (Qwen-Image: a single-frame 5-D latent)."""
        if self.frames:
            return torch.zeros(batch, self.channels, 1, height, width)
        return torch.zeros(batch, self.channels, height, width)

    def same_grid(self, size) -> tuple:
        """The latent size whose token grid a patch-2 latent of `size` has (keeps patch-1 tests small)."""
        return tuple(side * self.patch // 2 for side in size)

    def tokens(self, height: int, width: int) -> int:
        return (height // self.patch) * (width // self.patch)


def chroma_conditioning(seed: int, text_tokens: int):
    return text_conditioning(seed, text_tokens, pooled_output=torch.zeros(1, 32))


FAMILIES = {
    "flux": TinyFamily(tiny_flux, lambda: flux_conditioning(1), lambda: flux_conditioning(2)),
    # Chroma gets prompts of different lengths, which ComfyUI runs as separate calls (two streams)
    "chroma": TinyFamily(tiny_chroma, lambda: chroma_conditioning(1, 7), lambda: chroma_conditioning(2, 5),
                         cfg_streams=2),
    "flux2": TinyFamily(tiny_flux2, lambda: text_conditioning(1, 7, guidance=3.5, pooled_output=None),
                        lambda: text_conditioning(2, 7, guidance=3.5, pooled_output=None), channels=128, patch=1),
    "sd3": TinyFamily(tiny_sd3, lambda: pooled_conditioning(1), lambda: pooled_conditioning(2), attention_layers=2),
    # SD3.5: QK-norm and a second, image-only attention in block 0
    "sd35": TinyFamily(tiny_sd35, lambda: pooled_conditioning(1), lambda: pooled_conditioning(2), attention_layers=3),
    # Lumina 2 / Z-Image: two image-only refiner layers, then two joint layers
    "lumina2": TinyFamily(tiny_lumina2, lambda: text_conditioning(1, 7), lambda: text_conditioning(2, 7)),
    "zimage": TinyFamily(tiny_zimage, lambda: text_conditioning(1, 7), lambda: text_conditioning(2, 7)),
    "qwen_image": TinyFamily(tiny_qwen_image, lambda: text_conditioning(1, 7), lambda: text_conditioning(2, 7),
                             frames=True, attention_layers=2),
}


# ---- video ----------------------------------------------------------------------------------------
TINY_WAN = dict(image_model="wan2.1", model_type="t2v", dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=16,
                out_dim=16, text_dim=32, freq_dim=32, eps=1e-6)
TINY_WAN_I2V = dict(TINY_WAN, model_type="i2v", in_dim=36)
TINY_WAN22_TI2V = dict(TINY_WAN, in_dim=48, out_dim=48)


def tiny_wan(seed: int = 0):
    return build_tiny(comfy.supported_models.WAN21_T2V, TINY_WAN, seed)


def tiny_wan_i2v(seed: int = 0):
    return build_tiny(comfy.supported_models.WAN21_I2V, TINY_WAN_I2V, seed)


def tiny_wan22_ti2v(seed: int = 0):
    return build_tiny(comfy.supported_models.WAN22_T2V, TINY_WAN22_TI2V, seed)


TINY_HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                          hidden_size=64, mlp_ratio=2.0, num_heads=4, depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6],
                          theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True)


def tiny_hunyuan_video(seed: int = 0):
    from comfyui_sdit.nodes.comfy_compat import hunyuan_video_unet_config
    return build_tiny(comfy.supported_models.HunyuanVideo, hunyuan_video_unet_config(TINY_HUNYUAN_VIDEO), seed)


# ---- the sampler nodes with their Options nodes ------------------------------------------------------
SAMPLER_ARGS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image", "denoise")


def split_options(options_node, values: dict) -> dict:
    """Node kwargs with every value the Options node takes moved into one built Options output (what a
    workflow with an Options node plugged into the sampler passes)."""
    names = options_node.INPUT_TYPES()["required"]
    moved = {name: values.pop(name) for name in list(values) if name in names}
    if moved:
        values["options"] = options_node().build(**moved)[0]
    return values


def _positional(options_node, args: tuple, kwargs: dict) -> dict:
    """Positional values after the model, in the order sample_ratio, then the Options node's inputs."""
    names = ["sample_ratio", *options_node.INPUT_TYPES()["required"]]
    return dict(zip(names, args), **kwargs)


def ras_sample(model, *args, **kwargs):
    from comfyui_sdit.nodes.ras_nodes import RASOptions, RASSampler
    return RASSampler().sample(model, **split_options(RASOptions, dict(zip(SAMPLER_ARGS, args), **kwargs)))


def ras_model_patch(model, *args, **kwargs):
    from comfyui_sdit.nodes.ras_nodes import RASModelPatch, RASOptions
    return RASModelPatch().patch(model, **split_options(RASOptions, _positional(RASOptions, args, kwargs)))



def sdit_sample(model, *args, **kwargs):
    from comfyui_sdit.nodes.sdit_nodes import SDiTOptions, SDiTSampler
    return SDiTSampler().sample(model, **split_options(SDiTOptions, dict(zip(SAMPLER_ARGS, args), **kwargs)))


def sdit_model_patch(model, *args, **kwargs):
    from comfyui_sdit.nodes.sdit_nodes import SDiTModelPatch, SDiTOptions
    return SDiTModelPatch().patch(model, **split_options(SDiTOptions, _positional(SDiTOptions, args, kwargs)))
