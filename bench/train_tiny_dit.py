"""Trains the pack's demo model: ComfyUI's real Flux class at a tiny size, flow matching on procedural
class-conditional images (bench/demo_data.py) in a 16-channel latent of the pack's own (PCA of 8x8 RGB
patches, nodes/demo/codec.py). Writes models/sdit_demo_flux.safetensors (EMA weights in fp16, config,
codec, word embeddings; the training command in its metadata).

    .venv/bin/python bench/train_tiny_dit.py --minutes 40                       # CPU: 256x256 images
    python3 bench/train_tiny_dit.py --device cuda --size 512 --hidden 384 --minutes 10 --batch 32   # GPU

Conditioning is the class prompt's two word vectors (colour, shape) as "text" tokens and their mean as
the pooled vector; 10% of samples drop both to the null word (classifier-free guidance).
"""
import argparse
import copy
import datetime
import json
import math
import pathlib
import platform
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))
from pack_host import import_comfyui, load_pack  # noqa: E402


def fit_codec(generator: torch.Generator, size: int, latent_format, images: int = 256):
    """PCA of 8x8 RGB patches: the 16 leading components, all scaled by one factor so that, in the model's
    space (after ComfyUI's `latent_format.process_in`), the channels' mean variance is 1. The codec itself
    works in ComfyUI's LATENT space, which is what samplers return and SDiT Demo Decode receives.
    (Whitening each channel would blow the model's small errors in the weak components up into blocky,
    saturated patches when decoding.)"""
    from comfyui_sdit.nodes.demo.codec import CHANNELS, PATCH, PatchCodec
    from demo_data import render_batch
    batch, _, _ = render_batch(generator, images, size)
    patches = torch.nn.functional.unfold(batch, PATCH, stride=PATCH).transpose(1, 2).reshape(-1, 3 * PATCH * PATCH)
    mean = patches.mean(dim=0)
    _, singular, vectors = torch.linalg.svd(patches - mean, full_matrices=False)
    components = vectors[:CHANNELS]
    std = singular[:CHANNELS] / math.sqrt(patches.shape[0] - 1)
    explained = float((singular[:CHANNELS] ** 2).sum() / (singular ** 2).sum())
    model_scale = 1.0 / std.pow(2).mean().sqrt()
    # LATENT = model space / scale_factor + shift_factor, so process_in(LATENT) = coefficients x model_scale
    scale = (model_scale / latent_format.scale_factor).expand(CHANNELS).clone()
    shift = torch.full((CHANNELS,), float(latent_format.shift_factor))
    return PatchCodec(mean, components, scale, shift), explained


def parse_oversample(text: str):
    """'star=3' -> per-shape sampling weights (None: all shapes equally often)."""
    if not text:
        return None
    from comfyui_sdit.nodes.demo.vocabulary import SHAPES
    shape, _, weight = text.partition("=")
    if shape not in SHAPES or not weight:
        raise SystemExit(f"--oversample takes SHAPE=WEIGHT with SHAPE one of {', '.join(SHAPES)}; got '{text}'")
    return [float(weight) if s == shape else 1.0 for s in SHAPES]


def model_config(hidden: int, double: int, single: int) -> dict:
    heads = hidden // 64
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=64, context_in_dim=64,
                hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=double, depth_single_blocks=single,
                axes_dim=[8, 28, 28], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)


def initialise_(diffusion_model: torch.nn.Module, generator: torch.Generator) -> None:
    """ComfyUI allocates weights uninitialised: scaled normal matrices, zero biases, unit norms, and a zero
    output layer and zero modulation, so every block starts as the identity (DiT's adaLN-zero)."""
    with torch.no_grad():
        for name, p in diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            elif name.endswith("scale") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, module in diffusion_model.named_modules():
            if name.endswith("modulation.lin") or name == "final_layer.linear" or name.endswith("adaLN_modulation.1"):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()


class _CloneInput(torch.nn.Module):
    """ComfyUI's Flux blocks add residuals in place (`img += ...`, inference code). Their pre-norms would
    save the very tensor that is then modified, which autograd refuses; normalising a copy keeps the
    saved tensor intact. Only used on the model being trained here; the norms have no parameters."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(x.clone())


def make_trainable_(diffusion_model: torch.nn.Module) -> None:
    for block in list(diffusion_model.double_blocks) + list(diffusion_model.single_blocks):
        for name in ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2", "pre_norm"):
            if hasattr(block, name):
                setattr(block, name, _CloneInput(getattr(block, name)))


def save(args, config, ema_model, ema_words, codec, explained, step, losses, previous=None) -> None:
    """Writes the EMA weights; `previous` is the metadata of the weights training continued from."""
    from safetensors.torch import save_file
    state = {"diffusion_model." + k: v.detach().to(torch.float16).cpu().contiguous()
             for k, v in ema_model.state_dict().items()}
    state.update({k: v.contiguous() for k, v in codec.state_dict().items()})
    state["text.word_embedding"] = ema_words.float().cpu().contiguous()
    previous = previous or {}
    command = "python bench/train_tiny_dit.py " + " ".join(sys.argv[1:])
    metadata = {"config": json.dumps(config), "image_size": str(args.size),
                "steps": str(step + int(previous.get("steps", 0))),
                "final_loss": f"{sum(losses[-100:]) / max(1, len(losses[-100:])):.4f}",
                "codec_explained_variance": previous.get("codec_explained_variance", f"{explained:.4f}"),
                "command": f"{previous['command']}; then {command}" if "command" in previous else command,
                "trained_on": f"{args.device} ({platform.processor() or platform.machine()}), torch {torch.__version__}",
                "date": datetime.date.today().isoformat()}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=metadata)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {step} steps, metadata {metadata}")


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_gpu_runbook.py parses every runbook command with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=2)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--minutes", type=float, default=40.0, help="stop after this much training time")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "models" / "sdit_demo_flux.safetensors"))
    parser.add_argument("--init-from", default="", help="continue training from these weights")
    parser.add_argument("--oversample", default="", metavar="SHAPE=WEIGHT",
                        help="draw this shape WEIGHT times as often as each other shape, e.g. star=3")
    return parser


def main() -> None:
    args = arguments().parse_args()

    import_comfyui(cpu=args.device == "cpu")
    load_pack()
    import comfy.supported_models
    import comfy.utils
    from comfyui_sdit.nodes.comfy_compat import flux_unet_config, load_state_dict_strictly
    from comfyui_sdit.nodes.demo.vocabulary import COLOURS, NULL_TOKEN, WORDS
    from demo_data import render_batch
    shape_weights = parse_oversample(args.oversample)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)
    config = model_config(args.hidden, args.double, args.single)
    model_config_ = comfy.supported_models.FluxSchnell(flux_unet_config(config))
    latent_format = model_config_.latent_format
    diffusion_model = model_config_.get_model({}).diffusion_model
    initialise_(diffusion_model, generator)
    words = torch.nn.Parameter(torch.randn(len(WORDS), config["context_in_dim"], generator=generator))
    if args.init_from:                                  # continue from earlier weights (and their codec)
        from comfyui_sdit.nodes.demo.codec import PatchCodec
        state, previous = comfy.utils.load_torch_file(args.init_from, safe_load=True, return_metadata=True)
        load_state_dict_strictly(diffusion_model, {k[len("diffusion_model."):]: v.float() for k, v in state.items()
                                                   if k.startswith("diffusion_model.")})
        with torch.no_grad():
            words.copy_(state["text.word_embedding"])
        codec, explained = PatchCodec.from_state_dict(state), float("nan")
    else:
        codec, explained = fit_codec(generator, args.size, latent_format)
        previous = {}
    print(f"codec: 16 PCA components explain {explained:.4f} of the patch variance")
    diffusion_model.to(device).train()
    words = torch.nn.Parameter(words.detach().to(device))
    parameters = list(diffusion_model.parameters()) + [words]
    print(f"model: {sum(p.numel() for p in parameters) / 1e6:.2f}M parameters, config {config}")
    optimiser = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_model, ema_words = copy.deepcopy(diffusion_model).eval(), words.detach().clone()
    make_trainable_(diffusion_model)
    for p in ema_model.parameters():
        p.requires_grad_(False)

    # Noise levels as ComfyUI's sampler visits them: its steps are uniform in u and shifted by the model's
    # sampling shift (Flux: logit(sigma) = shift + logit(u)). Logit-normal times centred on 0 barely trained
    # the first, noisiest steps, where the model then committed to blobs that later steps only sharpened.
    shift = model_config_.sampling_settings.get("shift", 0.0)
    started, step, losses = time.monotonic(), 0, []
    budget = args.minutes * 60
    while step < args.max_steps and time.monotonic() - started < budget:
        images, colours, shapes = render_batch(generator, args.batch, args.size, shape_weights)
        x0 = latent_format.process_in(codec.encode(images)).to(device)      # the model's own space
        tokens = torch.stack([1 + colours, 1 + len(COLOURS) + shapes], dim=1)     # indices into WORDS
        drop = torch.rand(args.batch, generator=generator) < 0.1
        tokens[drop] = NULL_TOKEN
        context = words[tokens.to(device)]                                  # (B, 2, dim)
        pooled = context.mean(dim=1)
        u = torch.rand(args.batch, generator=generator).clamp(1e-4, 1 - 1e-4)
        t = torch.sigmoid(torch.logit(u) + shift).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        prediction = diffusion_model(xt, t, context, y=pooled, transformer_options={})
        loss = torch.nn.functional.mse_loss(prediction.float(), noise - x0)
        progress = (time.monotonic() - started) / budget
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for target, source in zip(ema_model.parameters(), diffusion_model.parameters()):
                target.lerp_(source, 1 - decay)
            ema_words.lerp_(words, 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        if step % 1000 == 0:          # a session can end at any time: keep what is trained so far
            save(args, config, ema_model, ema_words, codec, explained, step, losses, previous)
        if step % 50 == 0:
            print(f"step {step}  loss {sum(losses[-50:]) / 50:.4f}  lr {lr:.2e}  "
                  f"{(time.monotonic() - started) / step:.2f}s/step", flush=True)

    save(args, config, ema_model, ema_words, codec, explained, step, losses, previous)


if __name__ == "__main__":
    main()
