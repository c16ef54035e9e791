"""End-to-end sampling speed at real sizes: ComfyUI's real model classes with random bf16 weights, full
sampling vs RAS and SDiT, batch 2 (cond + uncond, CFG), through ComfyUI's own sampling.

    python3 bench/speed.py --models flux-dev sd35-medium sd35-large lumina2 --res 1024 2048   # GPU
    python3 bench/speed.py --models cosmos-predict2-2b --res 1024                            # Anima's DiT
    python3 bench/speed.py --models flux-dev --res 1024 --methods RAS --cuda-graphs          # graph replay
    .venv/bin/python bench/speed.py --smoke                                                   # CI, CPU

cfg 1 samples the cond pass alone (batch 1), cfg > 1 cond + uncond (batch 2). Per model, resolution,
cfg, method and ratio: wall time of the whole sampling run and its speedup over full
sampling; the schedule's FLOP-ideal speedup (full sampling's FLOPs over the run's, `forward_flops` per
evaluation from the REGION_TRACE's token counts: for joint attention that is sum(T + N) / sum(T + n_e),
as sparse queries attend to every key; cross-attention families differ slightly); achieved / ideal;
peak memory over full sampling next to the K/V cache's own size (attention layers x 2 x rows x
(T + N) x hidden x bytes); and a per-step breakdown from the profiler's named ranges
(sdit_core/profiling.py): policy (plan + observe, which includes the segmentation), gather/scatter,
cache writes; the rest is the transformer. On a GPU every forward is also timed with CUDA events
(median dense and sparse forward, and the sum of all forwards: the rest of the wall time is the
sampler and the policy between forwards). Sparse rows also say what the K/V caches held, what the memory
plan counted for them (nodes/memory_plan.py) and how much of the weights sat in VRAM; `--vram-gib N`
samples as on an N-GiB GPU (weights in RAM, ComfyUI's plan and torch's allocator held to N GiB).
`--context-windows L O` samples a video in ComfyUI's context windows (L latent frames overlapping by O, the
static schedule), full and sparse alike; the ideal then counts each window's forward (`calls_ideal`).
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from typing import NamedTuple, Optional

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pack_host import (comfyui_version, enable_dynamic_vram, import_comfyui, load_pack,  # noqa: E402
                       with_context_windows)

class Spec(NamedTuple):
    """A benchmark model: ComfyUI's supported_models class and unet config, its conditioning, and what the
    FLOP model needs (hidden size, MLP ratio, attention layers; joint: text tokens run in self-attention,
    else they enter by cross-attention)."""
    cls: str
    config: dict
    context_dim: int
    pooled_dim: Optional[int]
    guidance: Optional[float]
    attention_layers: int
    hidden: int
    mlp_ratio: float = 4.0
    joint: bool = True
    video: bool = False
    vae_scale: int = 8          # pixels per latent pixel (side)
    latent_channels: int = 16
    patch: int = 2              # latent pixels per token (side)
    single_frame: bool = False  # an image model that takes one-frame 5-D latents (ComfyUI unsqueezes an empty one)
    time_scale: int = 4         # video: pixel frames per latent frame (the first frame alone)
    text_mask: bool = False     # the prompt comes with its attention mask (LTX-Video's T5 conditioning)
    audio_hidden: int = 0       # a stream of audio tokens beside the video's, this wide (LTX-2), which always runs
    audio_layers: int = 0       # the layers that have it (0: every attention layer; Prism: its 30 fused blocks of 40)
    audio_mlp_ratio: float = 0.0    # its MLP ratio (0: the video's)
    video_to_audio_width: int = 0   # the video's attention to the audio this wide (0: the audio's; Prism: the video's)
    audio_rate: tuple = (25, 25)    # (audio tokens a second, video frames a second): LTX-2's 25 and 25
    # Wan Animate 2's pose branch, a frame fewer than the video's (whose first latent frame is the reference image's):
    # "run" every step in full, or "cached" between steps by WanAnimate2Cache (its blocks' K/V projections only)
    pose: str = ""
    # a ControlNet with a transformer of its own over every video token, run whole on every step whatever the ratio (Wan's
    # Uni3C): (its blocks, their width, their MLP ratio, the width its per-block output projection writes)
    whole_branch: tuple = ()
    # ComfyUI's ControlNet (Apply ControlNet) beside the model, token-sparse with it, blocks of the model's kind at its
    # width: Flux's ControlNetFlux (double, single) (InstantX's Union: 5 + 10); Qwen-Image's Fun ControlNet (blocks,)
    # (Qwen-Image 2512's Fun ControlNet Union: 5)
    controlnet: tuple = ()
    # ComfyUI's SD3.5 ControlNet (ControlNetEmbedder) beside an SD3.5 model, token-sparse with it: its blocks of
    # image-only self-attention at the model's width (Stability's SD3.5 Large blur / canny / depth: 19)
    image_only_controlnet: int = 0


FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
TINY_FLUX = dict(FLUX_DEV, vec_in_dim=32, context_in_dim=64, hidden_size=128, num_heads=4, depth=2,
                 depth_single_blocks=2, axes_dim=[8, 12, 12])
WAN21_14B = dict(image_model="wan2.1", model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40,
                 in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6)
TINY_WAN = dict(WAN21_14B, dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=64, freq_dim=32)
# Wan 2.1 VACE 14B: 8 VACE blocks (after every 5th Wan block) over a control video's 96 channels; without a
# control video in the prompt ComfyUI adds an empty one, which costs what a real one does
WAN21_VACE_14B = dict(WAN21_14B, model_type="vace", vace_layers=8, vace_in_dim=96)
TINY_WAN_VACE = dict(TINY_WAN, model_type="vace", vace_layers=1, vace_in_dim=96)
HUNYUAN_VIDEO = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768,
                     context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=20,
                     depth_single_blocks=40, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                     guidance_embed=True)
TINY_HUNYUAN_VIDEO = dict(HUNYUAN_VIDEO, vec_in_dim=32, context_in_dim=64, hidden_size=64, num_heads=4, depth=1,
                          depth_single_blocks=1, axes_dim=[4, 6, 6])
# HunyuanVideo 1.5 (8.3B): 54 double blocks, no single ones, patch 1 over a 16x VAE's 32-channel latent, the
# latent's image channels and mask concatenated (65 in), Qwen2.5-VL text (3584 wide) and ByT5 glyph tokens
HUNYUAN_VIDEO_15 = dict(HUNYUAN_VIDEO, in_channels=65, out_channels=32, vec_in_dim=None, context_in_dim=3584,
                        hidden_size=2048, num_heads=16, depth=54, depth_single_blocks=0, patch_size=[1, 1, 1],
                        guidance_embed=False, byt5=True, vision_in_dim=1152, use_cond_type_embedding=True)
TINY_HUNYUAN_VIDEO_15 = dict(HUNYUAN_VIDEO_15, context_in_dim=64, hidden_size=64, num_heads=4, depth=2,
                             axes_dim=[4, 6, 6], vision_in_dim=32)

# Cosmos Predict2 2B Text2Image (model_detection.py's config), the DiT Anima runs behind its LLM text adapter: 28
# blocks of self-attention, cross-attention to the 1024-wide text and a 4x MLP at 2048 wide
COSMOS_PREDICT2_2B = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                          out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=2048, num_blocks=28,
                          num_heads=16, concat_padding_mask=True, crossattn_emb_channels=1024, pos_emb_cls="rope3d",
                          pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
                          use_adaln_lora=True, adaln_lora_dim=256, extra_per_block_abs_pos_emb=False,
                          rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0,
                          rope_t_extrapolation_ratio=1.0)
TINY_COSMOS = dict(COSMOS_PREDICT2_2B, model_channels=64, num_blocks=2, num_heads=4, crossattn_emb_channels=64,
                   adaln_lora_dim=16)

# LTX-Video 0.9.x (model_detection.py's config with the class defaults): 2B is 28 blocks at 2048 wide, 13B 48 at 4096,
# self-attention over the video's tokens (one latent voxel each of a 32x / 8x VAE's 128 channels), cross-attention to
# T5 (4096 wide, projected to the hidden size) and a 4x MLP
LTXV_2B = dict(image_model="ltxv", in_channels=128, num_layers=28, attention_head_dim=64, num_attention_heads=32,
               cross_attention_dim=2048, caption_channels=4096)
LTXV_13B = dict(LTXV_2B, num_layers=48, attention_head_dim=128, cross_attention_dim=4096)
TINY_LTXV = dict(LTXV_2B, num_layers=2, attention_head_dim=16, num_attention_heads=4, cross_attention_dim=64,
                 caption_channels=64)
LTXV_LATENT = dict(joint=False, video=True, vae_scale=32, latent_channels=128, patch=1, time_scale=8, text_mask=True)

# LTX-2 19B (LTXAVModel's defaults; newer ComfyUI): LTX-Video 13B's video stream beside an audio stream 2048 wide (32 x
# 64 heads, 25 latent frames a second: one per video frame at 25 fps); each block adds the audio's self-attention,
# text cross-attention and MLP, and attention from the video to the audio and from the audio to the video. The text
# arrives processed for both streams (2 x 3840 wide)
LTX2_19B = dict(image_model="ltxav", in_channels=128, num_layers=48, attention_head_dim=128, num_attention_heads=32,
                cross_attention_dim=4096, caption_channels=3840, audio_in_channels=128, audio_attention_head_dim=64,
                audio_num_attention_heads=32, audio_cross_attention_dim=2048)
TINY_LTX2 = dict(LTX2_19B, num_layers=2, attention_head_dim=16, num_attention_heads=4, cross_attention_dim=64,
                 caption_channels=32, audio_attention_head_dim=8, audio_num_attention_heads=4,
                 audio_cross_attention_dim=32, connector_attention_head_dim=8, connector_num_attention_heads=4,
                 connector_num_layers=1)
QWEN_IMAGE21 = Spec("QwenImage21", {}, 4096, None, None, 32, 4096, 4.5, vae_scale=16, latent_channels=64, patch=1)
# Wan Animate 2 14B: Wan 2.1 I2V 14B's blocks beside its pose branch (every step here; WanAnimate2Cache: `pose="cached"`)
WAN_ANIMATE2_14B = Spec("WAN_Animate2", dict(WAN21_14B, model_type="animate2", in_dim=36), 4096, None, None, 40, 5120,
                        13824 / 5120, joint=False, video=True, pose="run")

# Qwen-Image 20B (model_detection.py's config with the class's defaults): 60 double-stream blocks 3072 wide (24 heads of
# 128) over [text | image], the prompt from Qwen2.5-VL (3584 wide), a 4x MLP; 64 channels a token (16 latent channels,
# 2 x 2 patches)
QWEN_IMAGE = dict(image_model="qwen_image", in_channels=64, out_channels=16, patch_size=2, num_layers=60,
                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584)
TINY_QWEN_IMAGE = dict(QWEN_IMAGE, num_layers=2, attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                       axes_dims_rope=(4, 6, 6))

# Z-Image (Turbo) 6B (model_detection.py's config): 30 layers 3840 wide (30 heads of 128) over [caption | image] after
# 2 image-only noise-refiner layers, a SwiGLU MLP of 10240 (8 d^2 a token: `mlp_ratio` 4), Qwen3 4B's prompt (2560 wide)
Z_IMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30,
               n_refiner_layers=2, qk_norm=True, n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48],
               axes_lens=[1536, 512, 512], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True,
               time_scale=1000.0, pad_tokens_multiple=32)
TINY_Z_IMAGE = dict(Z_IMAGE, dim=256, cap_feat_dim=64, n_layers=4, n_heads=4, n_kv_heads=4, axes_dims=[16, 24, 24],
                    ffn_dim_multiplier=0.25, multiple_of=16)

SD35_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, input_size=None, adm_in_channels=2048,
                  context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096,
                                                                                   "out_features": 2432}},
                  num_patches=36864, pos_embed_max_size=192, pos_embed_scaling_factor=None, qk_norm="rms",
                  x_block_self_attn_layers=[])
TINY_SD35 = dict(SD35_LARGE, depth=2, adm_in_channels=32,
                 context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}})

MODELS = {
    "flux-dev": Spec("Flux", FLUX_DEV, 4096, 768, 3.5, 57, 3072),
    "sd35-medium": Spec("SD3", dict(in_channels=16, out_channels=16, patch_size=2, depth=24, input_size=None,
                                    adm_in_channels=2048, context_embedder_config={"target": "torch.nn.Linear", "params": {
                                        "in_features": 4096, "out_features": 1536}}, num_patches=147456,
                                    pos_embed_max_size=384, pos_embed_scaling_factor=None, qk_norm="rms",
                                    x_block_self_attn_layers=list(range(13))), 4096, 2048, None, 24 + 13, 1536),
    "sd35-large": Spec("SD3", SD35_LARGE, 4096, 2048, None, 38, 2432),
    # with a ControlNet of Stability's SD3.5 Large ControlNets' size (19 blocks: their 8.61 GB in fp32 is 2.1 billion
    # parameters, 19 of SD3.5 Large's 2432-wide blocks and the embedders)
    "sd35-large-cn": Spec("SD3", SD35_LARGE, 4096, 2048, None, 38, 2432, image_only_controlnet=19),
    "tiny-sd35-cn": Spec("SD3", TINY_SD35, 64, 32, None, 2, 128, image_only_controlnet=1),
    "lumina2": Spec("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304,
                                    n_layers=26, n_refiner_layers=2, qk_norm=True, n_heads=24, n_kv_heads=8,
                                    axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
                                    ffn_dim_multiplier=4.0), 2304, None, None, 28, 2304),
    "z-image": Spec("ZImage", Z_IMAGE, 2560, None, None, 32, 3840),
    # with the Z-Image Fun ControlNet Union 2.1 (newer ComfyUI, "Load Model Patch"): 15 control blocks and 2 refiner
    # blocks of image-only self-attention at the model's width (ZImage_Control), token-sparse with the model
    "z-image-fun-cn": Spec("ZImage", Z_IMAGE, 2560, None, None, 32, 3840, image_only_controlnet=17),
    # (4 layers: the patch's schedule, made for 30, reaches 2 of the 15 control blocks after the 2 refiner ones)
    "tiny-z-image-fun-cn": Spec("ZImage", TINY_Z_IMAGE, 64, None, None, 6, 256, image_only_controlnet=4),
    "tiny-flux": Spec("Flux", TINY_FLUX, 64, 32, 3.5, 4, 128),
    "flux-dev-union-cn": Spec("Flux", FLUX_DEV, 4096, 768, 3.5, 57, 3072, controlnet=(5, 10)),
    "tiny-flux-cn": Spec("Flux", TINY_FLUX, 64, 32, 3.5, 4, 128, controlnet=(1, 1)),
    "qwen-image": Spec("QwenImage", QWEN_IMAGE, 3584, None, None, 60, 3072, single_frame=True),
    "qwen-image-fun-cn": Spec("QwenImage", QWEN_IMAGE, 3584, None, None, 60, 3072, single_frame=True, controlnet=(5,)),
    "tiny-qwen-image-fun-cn": Spec("QwenImage", TINY_QWEN_IMAGE, 64, None, None, 2, 64, single_frame=True,
                                   controlnet=(2,)),
    "tiny-qwen-image": Spec("QwenImage", TINY_QWEN_IMAGE, 64, None, None, 2, 64, single_frame=True),
    "cosmos-predict2-2b": Spec("CosmosT2IPredict2", COSMOS_PREDICT2_2B, 1024, None, None, 28, 2048, joint=False,
                               single_frame=True),
    "tiny-cosmos": Spec("CosmosT2IPredict2", TINY_COSMOS, 64, None, None, 2, 64, joint=False, single_frame=True),
    # video: --res is the frame height (480 -> 832 x 480, 720 -> 1280 x 720), --frames the pixel frames
    "wan21-14b": Spec("WAN21_T2V", WAN21_14B, 4096, None, None, 40, 5120, 13824 / 5120, joint=False, video=True),
    "hunyuan-video": Spec("HunyuanVideo", HUNYUAN_VIDEO, 4096, 768, 6.0, 60, 3072, video=True),
    "tiny-wan": Spec("WAN21_T2V", TINY_WAN, 64, None, None, 2, 64, 2.0, joint=False, video=True),
    # the VACE blocks are Wan blocks over the control video's tokens: attention layers 40 + 8 (one control video)
    "wan21-vace-14b": Spec("WAN21_Vace", WAN21_VACE_14B, 4096, None, None, 48, 5120, 13824 / 5120, joint=False,
                           video=True),
    "tiny-wan-vace": Spec("WAN21_Vace", TINY_WAN_VACE, 64, None, None, 3, 64, 2.0, joint=False, video=True),
    "tiny-hunyuan-video": Spec("HunyuanVideo", TINY_HUNYUAN_VIDEO, 64, 32, 6.0, 2, 64, video=True),
    # its model type asks for a pooled vector that no layer reads (768 here)
    "hunyuan-video-1.5": Spec("HunyuanVideo15", HUNYUAN_VIDEO_15, 3584, 768, None, 54, 2048, video=True, vae_scale=16,
                              latent_channels=32, patch=1),
    "tiny-hunyuan-video-1.5": Spec("HunyuanVideo15", TINY_HUNYUAN_VIDEO_15, 64, 32, None, 2, 64, video=True,
                                   vae_scale=16, latent_channels=32, patch=1),
    "ltxv-2b": Spec("LTXV", LTXV_2B, 4096, None, None, 28, 2048, **LTXV_LATENT),
    "ltxv-13b": Spec("LTXV", LTXV_13B, 4096, None, None, 48, 4096, **LTXV_LATENT),
    "tiny-ltxv": Spec("LTXV", TINY_LTXV, 64, None, None, 2, 64, **LTXV_LATENT),
    # FLOP ideals only (the benchmark has no pose video to sample with yet): run() skips them
    "wan-animate2-14b": WAN_ANIMATE2_14B,
    "wan-animate2-14b-cached": WAN_ANIMATE2_14B._replace(pose="cached"),
    # Wan 2.1 14B with the Uni3C camera ControlNet (ComfyUI's WanUni3CControlnet defaults: 20 blocks 1024 wide, an 8x
    # MLP, each block's output projected to Wan's 5120): no render video to sample with: run() skips it
    "wan21-14b-uni3c": Spec("WAN21_T2V", WAN21_14B, 4096, None, None, 40, 5120, 13824 / 5120, joint=False, video=True,
                            whole_branch=(20, 1024, 8.0, 5120)),
    "ltx2-19b": Spec("LTXAV", LTX2_19B, 2 * 3840, None, None, 48, 4096, audio_hidden=2048, **LTXV_LATENT),
    "tiny-ltx2": Spec("LTXAV", TINY_LTX2, 64, None, None, 2, 64, audio_hidden=32, **LTXV_LATENT),
    # Prism (newest ComfyUI; ideal only: no ComfyUI tree here has it to time): one of its two Wan 14B-sized video
    # towers per forward (40 blocks) beside a 1536-wide audio tower (30 blocks, an 8960 MLP) fused with the first 30
    # (the video's queries to the audio at the video's width, the audio's to the video at its own); 50 audio tokens a
    # second, 24 fps
    "prism": Spec("Prism", {}, 4096, None, None, 40, 5120, 13824 / 5120, joint=False, video=True, audio_hidden=1536,
                  audio_layers=30, audio_mlp_ratio=8960 / 1536, video_to_audio_width=5120, audio_rate=(50, 24)),
    # Kandinsky 6 Pro (newest ComfyUI; ideal only: no ComfyUI tree here has it to time): 60 fused blocks, each a
    # Kandinsky 5 video block 4096 wide (a 16384 MLP, cross-attention to the Qwen2.5-VL prompt) beside an audio block
    # 2048 wide (a 7168 MLP, its own text cross-attention), the video's queries to the audio at the video's width, the
    # audio's to the video at its own; 44.1 kHz audio, a token per 1024 samples (the ratio as 44100 / (1024 x 24))
    # Qwen-Image 2.1 (newer ComfyUI; ideal only: no ComfyUI tree here has it to time): 32 single-stream blocks 4096 wide
    # over [prompt | target], a token per latent pixel of a 16x VAE's 64 channels, a SwiGLU MLP of 3 x 4096 (three
    # matrices: a 4.5x plain MLP's FLOPs); its block-causal attention counted as joint. With its Fun ControlNet: a tower
    # of 16 blocks of the same kind, on the running tokens (`controlnet`) or, as before, whole (`whole_branch`, its
    # prompt rows left out)
    "qwen-image-21": QWEN_IMAGE21,
    "qwen-image-21-fun-cn": QWEN_IMAGE21._replace(controlnet=(16,)),
    "qwen-image-21-fun-cn-whole": QWEN_IMAGE21._replace(whole_branch=(16, 4096, 4.5, 4096)),
    "kandinsky6-pro": Spec("Kandinsky6", {}, 3584, 768, None, 60, 4096, 4.0, joint=False, video=True, audio_hidden=2048,
                           audio_mlp_ratio=7168 / 2048, video_to_audio_width=4096, audio_rate=(44100, 1024 * 24)),
}
# the families' standard sizes (LTX-Video's 768 x 512 and 1216 x 704; smaller heights: square)
VIDEO_WIDTH = {480: 832, 720: 1280, 512: 768, 704: 1216}


def latent_shape(spec: Spec, res: int, frames: int) -> tuple:
    """The empty latent for a sampling run: the VAE's spatial compression (8x; HunyuanVideo 1.5 16x, LTX-Video 32x);
    video VAEs also compress time (Wan, HunyuanVideo 4x, LTX-Video 8x), keeping the first frame: 81 frames -> 21
    latent frames (Wan Animate 2: one more, the reference image's)."""
    s, c = spec.vae_scale, spec.latent_channels
    if not spec.video:
        return (1, c, 1, res // s, res // s) if spec.single_frame else (1, c, res // s, res // s)
    return (1, c, (frames - 1) // spec.time_scale + 1 + bool(spec.pose), res // s, VIDEO_WIDTH.get(res, res) // s)


def audio_tokens(spec: Spec, frames: int) -> int:
    """The audio stream's tokens for a video of `frames` pixel frames at its frame rate (0: no audio stream)."""
    per_second, fps = spec.audio_rate
    return -(-frames * per_second // fps) if spec.audio_hidden else 0


def sampled_latent(spec: Spec, res: int, frames: int):
    """The empty latent a run samples: the video's, or with an audio stream ComfyUI's latent of two parts (video,
    audio: 8 channels x 16 frequency bins a token, as LTXVConcatAVLatent joins them)."""
    video = torch.zeros(latent_shape(spec, res, frames))
    if not spec.audio_hidden:
        return video
    import comfy.nested_tensor
    return comfy.nested_tensor.NestedTensor((video, torch.zeros(1, 8, audio_tokens(spec, frames), 16)))


def image_tokens(shape: tuple, patch: int = 2) -> int:
    """Tokens of a latent: patch x patch per token in space, one latent frame per token in time."""
    frames = shape[2] if len(shape) == 5 else 1
    return frames * (shape[-2] // patch) * (shape[-1] // patch)


def forward_flops(spec: Spec, running: int, tokens: int, text: int, audio: int = 0, frames: int = 1) -> float:
    """FLOPs of one forward per batch row with `running` of `tokens` video/image tokens computed and `text`
    prompt tokens, summed over the attention layers (multiply-add = 2):
    - projections (q, k, v, out: 4 d^2) and MLP (2 r d^2) over every row that runs;
    - attention of the running queries against every key, 2 x 2d per query-key pair (scores and values):
      quadratic in the tokens when all run, running x all when sparse (the K/V cache holds the rest);
    - joint families run the text rows in self-attention too; cross-attention families (Wan) add q/out
      projections per running row, the text's k/v projections once, and running x text pairs.
    - an audio stream (LTX-2, `audio` tokens at width a, always running): its own self-attention, text
      cross-attention and MLP, the video's running queries to the audio's keys (q/out projections d x a per running
      row, the audio's k/v a x a; Prism's at the video's width: d x d and a x d), and the audio's queries to every
      video token's keys (k/v projections of the running rows only: the rest come from the K/V cache); in every
      layer (LTX-2) or the first `audio_layers` (Prism's fused blocks).
    - Wan Animate 2's pose branch over `frames` - 1 frames of the video's `tokens` / `frames` tokens each: the running
      queries outside the first frame also attend to one pose frame's keys; the branch's blocks run in full over its
      tokens every step ("run"), or only their k/v projections ("cached", WanAnimate2Cache).
    - a Flux ControlNet's blocks (`controlnet`) as the model's, on the same running tokens (sparse_controlnet.py), each
      with its per-token residual projection (d x d); an SD3.5 ControlNet's (`image_only_controlnet`) likewise, their
      self-attention over the image's tokens alone.
    Embedding, modulation and the head are left out (a few per mille; a ControlNet's hint encoder too)."""
    d, r = spec.hidden, spec.mlp_ratio
    if spec.joint:
        rows, keys = text + running, text + tokens
        per_layer = rows * (4 + 2 * r) * d * d * 2 + rows * keys * 4 * d
    else:
        self_attention = running * (4 + 2 * r) * d * d * 2 + running * tokens * 4 * d
        cross_attention = (running * 2 + text * 2) * d * d * 2 + running * text * 4 * d
        per_layer = self_attention + cross_attention
    a, audio_per_layer = spec.audio_hidden, 0.0
    if a and audio:
        ra, w = spec.audio_mlp_ratio or r, spec.video_to_audio_width or a
        audio_own = audio * (4 + 2 * ra) * a * a * 2 + audio * audio * 4 * a
        audio_text = (audio * 2 + text * 2) * a * a * 2 + audio * text * 4 * a
        video_to_audio = (running * 2 * d * w + audio * 2 * a * w) * 2 + running * audio * 4 * w
        audio_to_video = (audio * 2 * a * a + running * 2 * d * a) * 2 + audio * tokens * 4 * a
        audio_per_layer = audio_own + audio_text + video_to_audio + audio_to_video
    if spec.pose:
        frame = tokens // frames
        pose = tokens - frame
        per_layer += running * (frames - 1) / frames * frame * 4 * d
        if spec.pose == "run":
            per_layer += (pose * (4 + 2 * r) * d * d * 2 + pose * pose * 4 * d
                          + (pose * 2 + text * 2) * d * d * 2 + pose * text * 4 * d)
        else:
            per_layer += pose * 2 * d * d * 2
    controlnet = sum(spec.controlnet) * (per_layer + running * d * d * 2)
    controlnet += spec.image_only_controlnet * (running * (4 + 2 * r) * d * d * 2 + running * tokens * 4 * d
                                                + running * d * d * 2)
    return (spec.attention_layers * per_layer + (spec.audio_layers or spec.attention_layers) * audio_per_layer
            + whole_branch_flops(spec, tokens) + controlnet)


def whole_branch_flops(spec: Spec, tokens: int) -> float:
    """A ControlNet transformer over all `tokens` video tokens (`whole_branch`), whatever runs in the model: per block
    projections and MLP, self-attention over every token pair, and the output projection to the model's width (its
    patch embedding and modulation left out, as the model's are)."""
    if not spec.whole_branch:
        return 0.0
    blocks, w, r, out = spec.whole_branch
    return blocks * (tokens * (4 + 2 * r) * w * w * 2 + tokens * tokens * 4 * w + tokens * w * out * 2)


def flop_ideal(spec: Spec, tokens_per_evaluation: list, tokens: int, text: int, audio: int = 0,
               frames: int = 1) -> float:
    """The schedule's FLOP-ideal speedup: full sampling's FLOPs over the run's (one entry per evaluation)."""
    full = forward_flops(spec, tokens, tokens, text, audio, frames) * len(tokens_per_evaluation)
    return full / sum(forward_flops(spec, n, tokens, text, audio, frames) for n in tokens_per_evaluation)


def calls_ideal(spec: Spec, calls: list, text: int, audio: int = 0) -> float:
    """The FLOP-ideal speedup from the forwards a run made (its evaluations' CallRecords; one per context window
    in windowed sampling): each forward's FLOPs with every token of its latent (its window's) over those with
    the tokens that ran. One forward per evaluation over the whole latent: `flop_ideal`."""
    full = sum(forward_flops(spec, call.grid_tokens, call.grid_tokens, text, audio) for call in calls)
    return full / sum(forward_flops(spec, call.image_tokens, call.grid_tokens, text, audio) for call in calls)


def attention_share(spec: Spec, tokens: int, text: int, audio: int = 0, frames: int = 1) -> float:
    """The part of a dense forward's FLOPs that is the video's (image's) attention scores and values (grows with
    the tokens)."""
    d = spec.hidden
    keys = text + tokens if spec.joint else tokens
    rows = keys
    pairs = rows * keys + (0 if spec.joint else tokens * text)
    layers = spec.attention_layers + sum(spec.controlnet)
    image_only = spec.image_only_controlnet * tokens * tokens
    return (layers * pairs + image_only) * 4 * d / forward_flops(spec, tokens, tokens, text, audio, frames)


def build(name: str, device, dtype, dynamic_vram: bool = False, in_ram: bool = False):
    """The model with random weights on `device`; with dynamic_vram, as a newer ComfyUI server loads it:
    weights in RAM, `CoreModelPatcher` (then ModelPatcherDynamic) staging them onto the GPU on demand.
    `in_ram`: weights drawn on `device` (fast), then kept in RAM: ComfyUI's loader moves what its memory
    plan allows and offloads to RAM (a small GPU)."""
    import comfy.model_patcher
    import comfy.supported_models
    class_name, config = MODELS[name].cls, MODELS[name].config
    from comfyui_sdit.nodes.comfy_compat import flux_unet_config, hunyuan_video_unet_config
    if class_name in ("Flux", "FluxSchnell", "Flux2", "Chroma"):
        config = flux_unet_config(config)
    elif class_name in ("HunyuanVideo", "HunyuanVideo15"):
        config = hunyuan_video_unet_config(config)
    model_config = getattr(comfy.supported_models, class_name)(dict(config))
    model_config.set_inference_dtype(dtype, None)
    home = torch.device("cpu") if dynamic_vram else device
    model = model_config.get_model({}, device=home)
    generator = torch.Generator(device=home).manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02, generator=generator)
        for buffer_name, buffer in model.diffusion_model.named_buffers():
            if buffer_name.endswith("pos_embed"):
                buffer.normal_(0.0, 0.5, generator=generator)
    if dynamic_vram:
        return comfy.model_patcher.CoreModelPatcher(model, load_device=device, offload_device=home)
    if in_ram:
        model.to("cpu")
        model.device = torch.device("cpu")
        torch.cuda.empty_cache()
        return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def simulate_vram(device, gib: float) -> None:
    """A GPU of `gib` GiB: torch's allocator stops there, and ComfyUI plans within it (its --reserve-vram
    keeps the rest out of every plan)."""
    import comfy.model_management
    total = torch.cuda.get_device_properties(device).total_memory
    limit = int(gib * 2 ** 30)
    if limit >= total:
        raise SystemExit(f"--vram-gib {gib} is not below this GPU's {total / 2 ** 30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(limit / total, device)
    comfy.model_management.EXTRA_RESERVED_VRAM = total - limit


def conditioning(name: str, text: int, seed: int):
    spec = MODELS[name]
    context_dim, pooled_dim, guidance = spec.context_dim, spec.pooled_dim, spec.guidance
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if pooled_dim:
        extra["pooled_output"] = torch.randn(1, pooled_dim, generator=g)
    if guidance:
        extra["guidance"] = guidance
    if spec.text_mask:
        extra["attention_mask"] = torch.ones(1, text, dtype=torch.long)
    return [[torch.randn(1, text, context_dim, generator=g), extra]]


def with_controlnet(name: str, positive, negative, res: int, device, dtype):
    """The prompts under a random-weight ControlNet of the spec's size (Flux: a ControlNetFlux; SD3.5: a
    ControlNetEmbedder; Qwen-Image: a Fun ControlNet, newer ComfyUI), applied by ComfyUI's ControlNetApplyAdvanced
    (strength 0.7, every step) with a random hint image of `res` px (a latent hint through a stand-in VAE)."""
    import importlib
    control, vae = {"Flux": flux_controlnet, "SD3": sd35_controlnet, "QwenImage": qwen_fun_controlnet}[
        MODELS[name].cls](MODELS[name], device, dtype)
    generator = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for p in control.control_model.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02, generator=generator)
    image = torch.rand(1, res, res, 3, generator=torch.Generator().manual_seed(2))
    nodes = importlib.import_module("nodes")        # ComfyUI's nodes.py
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, image, 0.7, 0.0, 1.0, vae=vae)


def with_zimage_fun_controlnet(model, spec: Spec, res: int, device, dtype):
    """The model under a random-weight Z-Image Fun ControlNet Union 2.1 of the spec's width (ZImage_Control: 15 blocks,
    2 refiner blocks, inpainting channels) as "Apply Z-Image Fun ControlNet" puts it on (strength 0.75), with a random
    control image of `res` px (through a stand-in VAE); newer ComfyUI."""
    import importlib
    import comfy.ldm.lumina.controlnet
    import comfy.model_patcher
    import comfy.ops
    config = spec.config
    network = comfy.ldm.lumina.controlnet.ZImage_Control(
        dim=config["dim"], n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"],
        multiple_of=config.get("multiple_of", 256), ffn_dim_multiplier=config["ffn_dim_multiplier"], qk_norm=True,
        n_control_layers=15, additional_in_dim=17, refiner_control=True, device=device, dtype=dtype,
        operations=comfy.ops.manual_cast)
    generator = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, p[0].numel() ** -0.5 if p.ndim >= 2 else 0.02, generator=generator)
    patch = comfy.model_patcher.ModelPatcher(network, load_device=device, offload_device=device)
    image = torch.rand(1, res, res, 3, generator=torch.Generator().manual_seed(2))
    nodes = importlib.import_module("comfy_extras.nodes_model_patch")
    with torch.no_grad():
        return nodes.ZImageFunControlnet().diffsynth_controlnet(model, patch, RandomLatentVAE(), image, 0.75)[0]


def zimage_fun_controlnet_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("comfy.ldm.lumina.controlnet") is not None


def qwen_fun_controlnet_available() -> bool:
    import comfy.controlnet
    return hasattr(comfy.controlnet, "QwenFunControlNet")


def flux_controlnet(spec: Spec, device, dtype) -> tuple:
    """A ControlNetFlux of `spec.controlnet`'s (double, single) blocks (an image hint: no VAE)."""
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops
    from comfyui_sdit.nodes.comfy_compat import flux_unet_config
    double, single = spec.controlnet
    config = {k: v for k, v in flux_unet_config(spec.config).items() if k != "image_model"}
    config.update(depth=double, depth_single_blocks=single)
    network = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.manual_cast, dtype=dtype, device=device,
                                                       **config)
    return comfy.controlnet.ControlNet(network, load_device=device, manual_cast_dtype=dtype,
                                       extra_conds=["y", "guidance"]), None


def sd35_controlnet(spec: Spec, device, dtype) -> tuple:
    """load_controlnet_sd35's network for SD3.5 Large (its y embedding doubled) of `spec.image_only_controlnet` blocks."""
    import comfy.cldm.dit_embedder
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ops
    depth = spec.config["depth"]
    network = comfy.cldm.dit_embedder.ControlNetEmbedder(
        img_size=None, patch_size=2, in_chans=16, num_layers=spec.image_only_controlnet, main_model_double=depth,
        double_y_emb=True, attention_head_dim=64, num_attention_heads=depth,
        adm_in_channels=spec.config["adm_in_channels"], device=device, dtype=dtype, operations=comfy.ops.manual_cast)
    return comfy.controlnet.ControlNetSD35(network, compression_ratio=1, latent_format=comfy.latent_formats.SD3(),
                                           load_device=device, manual_cast_dtype=dtype), RandomLatentVAE()


def qwen_fun_controlnet(spec: Spec, device, dtype) -> tuple:
    """load_controlnet_qwen_fun's network (newer ComfyUI) of `spec.controlnet`'s blocks, injected as the real ones are
    (every twelfth block of 60)."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.qwen_image.controlnet
    import comfy.ops
    (blocks,), heads, head_dim = spec.controlnet, spec.config["num_attention_heads"], spec.config["attention_head_dim"]
    layers = spec.config["num_layers"]
    network = comfy.ldm.qwen_image.controlnet.QwenImageFunControlNetModel(
        control_in_features=33 * 4, inner_dim=heads * head_dim, num_attention_heads=heads, attention_head_dim=head_dim,
        num_control_blocks=blocks, main_model_double=layers,
        injection_layers=tuple(range(0, layers, max(1, layers // blocks)))[:blocks], operations=comfy.ops.manual_cast,
        device=device, dtype=dtype)
    return comfy.controlnet.QwenFunControlNet(network, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                              concat_mask=False, load_device=device, manual_cast_dtype=dtype,
                                              extra_conds=[]), RandomLatentVAE(frames=True)


class RandomLatentVAE:
    """A VAE as Apply ControlNet uses one for a latent hint (16 channels, 8 pixels a latent pixel; `frames`: with a
    frame axis, as Qwen-Image's Wan VAE): a random latent of the image's size (what the hint holds does not change
    what a forward costs)."""

    def __init__(self, frames: bool = False):
        self.frames = frames

    def encode(self, pixels):
        generator = torch.Generator().manual_seed(3)
        shape = (pixels.shape[0], 16) + ((1,) if self.frames else ()) + (pixels.shape[1] // 8, pixels.shape[2] // 8)
        return torch.randn(shape, generator=generator)

    def spacial_compression_encode(self):
        return 8


def planned_cache_gib(model, latent_shape, prompts, kv_cache) -> float:
    """The K/V cache of a run over `prompts` (ComfyUI conditioning), as the memory plan computes it."""
    from comfyui_sdit.nodes.families import adapter_for
    from comfyui_sdit.nodes.memory_plan import planned_cache_bytes
    from comfyui_sdit.nodes.sparse_controlnet import controlnet_cache_layers
    adapter = adapter_for(model, "bench")
    diffusion_model = model.model.diffusion_model
    entries = [dict(values, cross_attn=text) for text, values in prompts]
    return planned_cache_bytes(adapter, model, latent_shape, entries, kv_cache, adapter.patch_size(diffusion_model),
                               adapter.temporal_patch(diffusion_model),
                               side_layers=lambda *entry: controlnet_cache_layers(adapter, *entry)) / 2 ** 30


def warm_profiler(device) -> None:
    """Starts and stops the profiler once on a few small operators. The first profiled run of a process
    counted its policy's kernels 5-7x longer than every later run did (H200, 2026-11-26: RAS plan 1.9-2.3 ms
    a step in each process's first profiled run, 0.3-0.4 ms in the others): the tracer's own start-up.
    Without this, the first profiled configuration carries it in its per-step breakdown."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities):
        x = torch.randn(256, 256, device=device)
        for _ in range(8):
            x = (x @ x).sort(dim=1).values.clamp(-1, 1)
        if device.type == "cuda":
            torch.cuda.synchronize()


def breakdown(prof, device) -> dict:
    """Milliseconds spent in each of the pack's named ranges (device time on the GPU)."""
    from comfyui_sdit.sdit_core import profiling
    totals = {}
    for event in prof.key_averages():
        if event.key in profiling.RANGES:
            micros = getattr(event, "device_time_total", 0) if device.type == "cuda" else event.cpu_time_total
            totals[event.key] = round(micros / 1000, 3)
    return totals


class ForwardTimer:
    """Times every model forward of a sampling run with CUDA events (no sync until the run ends): an
    APPLY_MODEL wrapper added after the pack's, so it runs inside the engine's forward call."""

    def __init__(self, slot=None):
        self.slot, self.events = slot, []

    def install(self, model):
        import comfy.patcher_extension as patcher_extension
        timed = model.clone()

        def wrapper(executor, *args, **kwargs):
            call = self.slot.current_call() if self.slot is not None else None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = executor(*args, **kwargs)
            end.record()
            self.events.append((call is None or call.dense, start, end))
            return out
        timed.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, "bench_forward_timer", wrapper)
        return timed

    def summary(self) -> dict:
        """Median forward ms of dense and sparse forwards, and their sum (after a synchronize)."""
        dense = [s.elapsed_time(e) for d, s, e in self.events if d]
        sparse = [s.elapsed_time(e) for d, s, e in self.events if not d]
        return {"dense_forward_ms": round(statistics.median(dense), 2) if dense else None,
                "sparse_forward_ms": round(statistics.median(sparse), 2) if sparse else None,
                "forwards_ms": round(sum(dense) + sum(sparse), 1), "sparse_forwards": len(sparse)}


def run(args) -> dict:
    device = torch.device(args.device)
    if args.dynamic_vram and device.type != "cuda":
        raise SystemExit(f"--dynamic-vram needs a CUDA device (comfy-aimdo), not {device}")
    if args.vram_gib and device.type != "cuda":
        raise SystemExit(f"--vram-gib simulates a smaller GPU: it needs a CUDA device, not {device}")
    import_comfyui(cpu=device.type == "cpu")
    if args.dynamic_vram:
        enable_dynamic_vram(device.index or 0)
    load_pack()
    import comfy.sample
    if args.no_memory_plan:         # what sampling did before the K/V cache was in ComfyUI's plan
        from comfyui_sdit.nodes import sparse_patch
        sparse_patch.make_room_for_cache = lambda *a, **k: False
    from comfyui_sdit.nodes.ras_nodes import patch_ras
    from comfyui_sdit.nodes.sdit_nodes import patch_sdit, sdit_trace
    from comfyui_sdit.sdit_core import profiling
    from comfyui_sdit.sdit_core.ras import RASConfig
    from comfyui_sdit.sdit_core.sdit import SDiTConfig
    from comfyui_sdit.sdit_core.trace import trace_from_run
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "comfyui": comfyui_version(), "dynamic_vram": args.dynamic_vram, "vram_gib": args.vram_gib,
               "memory_plan": not args.no_memory_plan,
               "steps": args.steps, "text_tokens": args.text, "kv_cache": args.kv_cache,
               "context_windows": args.context_windows, "rows": []}
    import comfy.supported_models
    if args.profile_ratios:
        warm_profiler(device)
    for name in args.models:
        if not hasattr(comfy.supported_models, MODELS[name].cls):
            print(f"{name}: this ComfyUI has no {MODELS[name].cls} model, skipped", flush=True)
            continue
        if MODELS[name].cls == "QwenImage" and MODELS[name].controlnet and not qwen_fun_controlnet_available():
            print(f"{name}: this ComfyUI has no Qwen-Image Fun ControlNet, skipped", flush=True)
            continue
        if MODELS[name].cls == "ZImage" and MODELS[name].image_only_controlnet and not zimage_fun_controlnet_available():
            print(f"{name}: this ComfyUI has no Z-Image Fun ControlNet, skipped", flush=True)
            continue
        if MODELS[name].pose or MODELS[name].whole_branch:
            print(f"{name}: FLOP ideals only (no pose or render video to sample with yet), skipped", flush=True)
            continue
        model = build(name, device, dtype, args.dynamic_vram, in_ram=bool(args.vram_gib))
        if args.vram_gib:           # after drawing the weights on the GPU (build moved them to RAM)
            simulate_vram(device, args.vram_gib)
        if args.context_windows:
            model = with_context_windows(model, *args.context_windows)
        base_model = model          # (a model patch goes on it anew for each resolution)
        spec = MODELS[name]
        positive, negative = conditioning(name, args.text, 1), conditioning(name, args.text, 2)
        for res in args.res:
            if spec.cls == "ZImage" and spec.image_only_controlnet:     # a model patch (Load Model Patch)
                model = with_zimage_fun_controlnet(base_model, spec, res, device, dtype)
            elif spec.controlnet or spec.image_only_controlnet:     # (their networks: with_controlnet)
                positive, negative = with_controlnet(name, conditioning(name, args.text, 1),
                                                     conditioning(name, args.text, 2), res, device, dtype)
            latent = sampled_latent(spec, res, args.frames)
            tokens, audio = image_tokens(latent.shape, spec.patch), audio_tokens(spec, args.frames)
            noise = comfy.sample.prepare_noise(latent, 0)
            # --fresh-seed: timed runs sample other noise than the warm-up (a user's next seed: SDiT's
            # token counts change with the image, so attention meets counts the warm-up did not)
            timed_noise = comfy.sample.prepare_noise(latent, 1) if args.fresh_seed else noise
            for cfg in args.cfg:
                batch = 1 if cfg == 1.0 else 2          # ComfyUI skips the uncond pass at cfg 1

                def sample(m, steps=args.steps, timer=None, noise=noise):
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    started = time.perf_counter()
                    comfy.sample.sample(timer.install(m) if timer and cuda else m, noise, steps, cfg, "euler",
                                        "simple", positive, negative, latent, seed=0, disable_pbar=True)
                    if cuda:
                        torch.cuda.synchronize()
                    # torch's allocator only: with dynamic VRAM the staged weights are comfy-aimdo's
                    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0
                    return time.perf_counter() - started, peak

                sample(model, steps=3)                                  # load, warm up kernels
                dense_timer = ForwardTimer()
                dense = [sample(model, timer=dense_timer if i == 0 else None, noise=timed_noise)
                         for i in range(args.repeats)]
                dense_s, dense_peak = statistics.median(d[0] for d in dense), max(d[1] for d in dense)
                # the cache a sparse run holds, as the pack plans it (the sparse rows record what it held)
                kv_gib = planned_cache_gib(model, latent.shape, positive + (negative if batch == 2 else []),
                                           args.kv_cache)
                base = {"model": name, "res": res, "latent": list(latent.shape), "cfg": cfg, "batch": batch,
                        "image_tokens": tokens, "audio_tokens": audio,
                        "attention_share": round(attention_share(spec, tokens, args.text, audio), 3)}
                dense_row = dict(base, method="full", ratio=1.0, seconds=dense_s, speedup=1.0, ideal=1.0,
                                 peak_gib=dense_peak, kv_cache_gib=kv_gib, step_ms=1000 * dense_s / args.steps)
                if cuda:
                    dense_row.update(dense_timer.summary())
                results["rows"].append(dense_row)
                print(json.dumps(dense_row), flush=True)
                for method in args.methods:
                    for ratio in args.ratios:
                        if method in ("RAS", "RAS-static"):
                            patched, slot = patch_ras(model, RASConfig(sample_ratio=ratio,
                                                                       dynamic_ratio=method == "RAS"), "bench",
                                                      kv_cache=args.kv_cache)
                            trace_of = lambda run: trace_from_run(run, "RAS")  # noqa: E731
                        else:
                            config = SDiTConfig(sample_ratio=ratio)
                            patched, slot = patch_sdit(model, config, "bench", kv_cache=args.kv_cache)
                            trace_of = lambda run, c=config: sdit_trace(run, c)  # noqa: E731
                        per_step = {}
                        if ratio in args.profile_ratios:
                            # also the warm-up: the profiled run compiles what a first run compiles
                            profiling.ENABLED = True
                            try:
                                from torch.profiler import ProfilerActivity, profile
                                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                                with profile(activities=activities) as prof:
                                    sample(patched)
                            finally:
                                profiling.ENABLED = False
                            per_step = {k: round(v / args.steps, 3) for k, v in breakdown(prof, device).items()}
                        else:
                            sample(patched, steps=3)                    # warm-up (segmentation kernels)
                        timer = ForwardTimer(slot)
                        timings = [sample(patched, timer=timer if i == 0 else None, noise=timed_noise)
                                   for i in range(args.repeats)]
                        seconds, peak = statistics.median(t[0] for t in timings), max(t[1] for t in timings)
                        run_state = slot.last_run
                        trace = trace_of(run_state)
                        calls = [call for record in run_state.evals for call in record.calls]
                        ideal = (calls_ideal(spec, calls, args.text, audio) if args.context_windows else
                                 flop_ideal(spec, trace.tokens_per_step, tokens, args.text, audio))
                        row = dict(
                            base, method=method, ratio=ratio, seconds=seconds, speedup=dense_s / seconds, ideal=ideal,
                            of_ideal=dense_s / seconds / ideal, work_fraction=trace.work_fraction, peak_gib=peak,
                            peak_over_dense_gib=peak - dense_peak, kv_cache_gib=kv_gib,
                            step_ms=1000 * seconds / len(trace.steps), per_step_ms=per_step,
                            graph_captures=run_state.graph_captures, graph_replays=run_state.graph_replays,
                            kv_planned_gib=run_state.kv_planned_bytes / 2 ** 30,    # what ComfyUI's plan got
                            kv_held_gib=run_state.kv_peak_bytes / 2 ** 30,          # what the caches held
                            weights_vram_gib=patched.loaded_size() / 2 ** 30,
                            token_counts=sorted(set(trace.tokens_per_step)))   # the shapes attention met
                        if args.context_windows:        # each window a forward, of its own token count
                            row.update(forwards=len(calls), windows=len({c.stream for c in calls}),
                                       window_token_counts=sorted({c.image_tokens for c in calls if not c.dense}))
                        if cuda:
                            row.update(timer.summary())
                        results["rows"].append(row)
                        print(json.dumps(row), flush=True)
                        if args.json:       # partial results survive a time limit
                            pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        del model, base_model
        if cuda:
            torch.cuda.empty_cache()
    return results


def ideal_table(ratios=(0.5, 0.25, 0.125), text=512) -> list:
    """FLOP ideals of the real-size configurations for a constant fraction of tokens running (what a
    schedule's sparse steps can give at most; its dense steps pull the run's ideal lower)."""
    rows = []
    for name, res, frames in [("flux-dev", 1024, 1), ("flux-dev-union-cn", 1024, 1), ("sd35-large", 1024, 1),
                              ("sd35-large-cn", 1024, 1), ("cosmos-predict2-2b", 1024, 1),
                              ("qwen-image", 1024, 1), ("qwen-image-fun-cn", 1024, 1), ("z-image", 1024, 1),
                              ("z-image-fun-cn", 1024, 1),
                              ("wan21-14b", 480, 81),
                              ("wan21-14b", 720, 81),
                              ("wan21-vace-14b", 480, 81), ("wan21-vace-14b", 720, 81),
                              ("hunyuan-video", 480, 81), ("hunyuan-video", 720, 81), ("hunyuan-video-1.5", 480, 121),
                              ("hunyuan-video-1.5", 720, 121), ("ltxv-2b", 512, 97), ("ltxv-13b", 512, 97),
                              ("ltxv-13b", 704, 121), ("ltx2-19b", 512, 121), ("ltx2-19b", 704, 121),
                              ("wan-animate2-14b", 480, 81), ("wan-animate2-14b-cached", 480, 81),
                              ("wan-animate2-14b", 720, 81), ("wan-animate2-14b-cached", 720, 81),
                              ("wan21-14b-uni3c", 480, 81), ("wan21-14b-uni3c", 720, 81), ("prism", 480, 81),
                              ("prism", 720, 81), ("kandinsky6-pro", 480, 121), ("kandinsky6-pro", 720, 121),
                              ("qwen-image-21", 1024, 1), ("qwen-image-21-fun-cn", 1024, 1),
                              ("qwen-image-21-fun-cn-whole", 1024, 1)]:
        spec = MODELS[name]
        shape = latent_shape(spec, res, frames)
        tokens, audio = image_tokens(shape, spec.patch), audio_tokens(spec, frames)
        token_frames = shape[2] if len(shape) == 5 else 1
        rows.append({"model": name, "res": res, "frames": frames, "tokens": tokens, "audio_tokens": audio,
                     "text": text,
                     "dense_tflop_per_row": round(forward_flops(spec, tokens, tokens, text, audio, token_frames) / 1e12,
                                                  1),
                     "attention_share": round(attention_share(spec, tokens, text, audio, token_frames), 3),
                     **{f"ideal_{r}": round(flop_ideal(spec, [max(1, round(r * tokens))], tokens, text, audio,
                                                       token_frames), 3)
                        for r in ratios}})
    return rows


def table(results: dict) -> str:
    lines = ["| model | res | batch | method | ratio | s | speedup | ideal | achieved/ideal | peak GiB (+ over full) | "
             "K/V cache GiB | graphs captured/replayed | per step ms: policy (of it segmentation) / gather+scatter / "
             "cache writes |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        b = r.get("per_step_ms", {})
        policy = b.get("sdit.plan", 0) + b.get("sdit.observe", 0)
        parts = f"{policy:.2f} ({b.get('sdit.segmentation', 0):.2f}) / " \
            f"{b.get('sdit.gather', 0) + b.get('sdit.scatter', 0):.2f} / {b.get('sdit.kv_write', 0):.2f}"
        graphs = f"{r['graph_captures']}/{r['graph_replays']}" if "graph_captures" in r else "-"
        lines.append(f"| {r['model']} | {r['res']} | {r.get('batch', 2)} | {r['method']} | {r['ratio']} | "
                     f"{r['seconds']:.2f} | {r['speedup']:.2f}x | {r['ideal']:.2f}x | {r.get('of_ideal', 1.0) * 100:.0f}% | "
                     f"{r['peak_gib']:.1f} (+{r.get('peak_over_dense_gib', 0.0):.2f}) | {r['kv_cache_gib']:.2f} | "
                     f"{graphs} | {parts if b else '-'} |")
    return "\n".join(lines)


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["flux-dev"], choices=sorted(MODELS))
    parser.add_argument("--res", type=int, nargs="+", default=[1024],
                        help="image side, or for video models the frame height (480: 832 x 480, 720: 1280 x 720; "
                             "LTX-Video's 512: 768 x 512, 704: 1216 x 704)")
    parser.add_argument("--frames", type=int, default=81, help="video models: pixel frames (81 -> 21 latent frames)")
    parser.add_argument("--methods", nargs="+", default=["RAS", "SDiT"], choices=["RAS", "RAS-static", "SDiT"],
                        help="RAS-static: RAS with dynamic_ratio off (one token count: CUDA graphs replay)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--cfg", type=float, nargs="+", default=[3.5],
                        help="1 runs the cond pass alone (batch 1), above 1 cond + uncond (batch 2)")
    parser.add_argument("--text", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile-ratios", type=float, nargs="*", default=None,
                        help="ratios whose runs are also profiled for the per-step breakdown (default: all)")
    parser.add_argument("--kv-cache", default=None, choices=["model dtype", "fp8_e4m3"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay sparse forwards from CUDA graphs (sets SDIT_CUDA_GRAPHS=1)")
    parser.add_argument("--smoke", action="store_true", help="tiny Flux (alone and with a Flux ControlNet), tiny "
                                                             "SD3.5 with an SD3.5 ControlNet, tiny Qwen-Image with a Fun ControlNet (newer ComfyUI) "
                                                             "and tiny Cosmos Predict2, 256 px, 8 steps, one ratio (CI)")
    parser.add_argument("--smoke-video", action="store_true",
                        help="tiny Wan, Wan VACE, HunyuanVideo, HunyuanVideo 1.5, LTX-Video and LTX-2 (where the "
                             "ComfyUI has it), 128 px x 9 frames, 8 steps, one ratio (CI)")
    parser.add_argument("--ideals", action="store_true",
                        help="print the FLOP ideal of every real-size configuration at constant ratios, run nothing")
    parser.add_argument("--fresh-seed", action="store_true",
                        help="time runs with other noise than their warm-up (what a user's next seed costs)")
    parser.add_argument("--token-grid", type=int, default=None,
                        help="sparse token counts on a grid of this many tokens (SDIT_TOKEN_GRID; 1: off; "
                             "default: 64 on a GPU)")
    parser.add_argument("--dynamic-vram", action="store_true",
                        help="load the model as a newer ComfyUI server does by default on NVIDIA (ModelPatcherDynamic, "
                             "comfy-aimdo); needs COMFYUI_PATH at such a tree. CUDA graphs are refused there (weights "
                             "may move)")
    parser.add_argument("--vram-gib", type=float, default=None,
                        help="simulate a GPU of this many GiB: weights start in RAM, ComfyUI plans within the limit "
                             "and torch's allocator enforces it (the K/V cache must then share it with the weights)")
    parser.add_argument("--no-memory-plan", action="store_true",
                        help="leave the K/V cache out of ComfyUI's memory plan (as before it was in it)")
    parser.add_argument("--context-windows", type=int, nargs=2, metavar=("LENGTH", "OVERLAP"), default=None,
                        help="video models: sample in ComfyUI's context windows of LENGTH latent frames overlapping by "
                             "OVERLAP (static schedule, as the pack needs)")
    parser.add_argument("--json", default="")
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.token_grid is not None:
        os.environ["SDIT_TOKEN_GRID"] = str(args.token_grid)
    if args.ideals:
        print(json.dumps(ideal_table(), indent=1))
        return
    if args.smoke:
        args.models, args.res, args.steps, args.ratios, args.text = ["tiny-flux", "tiny-flux-cn", "tiny-sd35-cn",
                                                                     "tiny-qwen-image-fun-cn", "tiny-z-image-fun-cn",
                                                                     "tiny-cosmos"], \
            [256], 8, [0.5], 16
    if args.smoke_video:
        args.models = ["tiny-wan", "tiny-wan-vace", "tiny-hunyuan-video", "tiny-hunyuan-video-1.5", "tiny-ltxv",
                       "tiny-ltx2"]
        args.res, args.frames, args.steps, args.ratios, args.text = [128], 9, 8, [0.5], 16
    if args.profile_ratios is None:
        args.profile_ratios = args.ratios
    os.environ["SDIT_CUDA_GRAPHS"] = "1" if args.cuda_graphs else "0"     # explicit either way
    results = run(args)
    results["cuda_graphs"] = args.cuda_graphs
    results["token_grid"] = os.environ.get("SDIT_TOKEN_GRID", "default")
    results["fresh_seed"] = args.fresh_seed
    print(table(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
