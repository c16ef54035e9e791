import importlib, torch, pytest
import comfy.supported_models, comfy.nested_tensor, comfy.sample
from sdit_testkit import build_tiny, text_conditioning, noise_like

TINY = dict(image_model="ltxav", in_channels=128, num_layers=2, attention_head_dim=16, num_attention_heads=4,
            cross_attention_dim=64, caption_channels=32, audio_in_channels=128, audio_attention_head_dim=8,
            audio_num_attention_heads=4, audio_cross_attention_dim=32)

def test_run():
    model = build_tiny(comfy.supported_models.LTXAV, TINY, 0)
    dm = model.model.diffusion_model
    print(type(dm))
    video = torch.zeros(1, 128, 5, 4, 6)
    audio = torch.zeros(1, 8, 7, 16)
    latent = comfy.nested_tensor.NestedTensor((video, audio))
    pos = text_conditioning(1, 7, 64)
    neg = text_conditioning(2, 5, 64)
    noise = comfy.nested_tensor.NestedTensor((noise_like(video, 1), noise_like(audio, 2)))
    out = comfy.sample.sample(model, noise, 3, 3.0, "euler", "simple", pos, neg, latent, seed=1, disable_pbar=True)
    print(type(out), [t.shape for t in out.tensors], [t.abs().mean() for t in out.tensors])
