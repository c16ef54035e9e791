"""A fixed linear patch codec: 8x8 RGB pixel patches <-> 16 latent channels (PCA of the data).

encode: (B, 3, H, W) in [0, 1] -> (B, 16, H/8, W/8); decode is its least-squares inverse.
"""
import torch
import torch.nn.functional as F

PATCH = 8
CHANNELS = 16


class PatchCodec:
    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
        self.mean = mean.float()                 # (192,) mean patch
        self.components = components.float()     # (16, 192) orthonormal rows
        self.scale = scale.float()               # (16,) latent = coefficient * scale + shift
        self.shift = shift.float()

    @classmethod
    def placeholder(cls, seed: int = 0) -> "PatchCodec":
        """Seeded orthonormal components, used until trained weights exist."""
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(3 * PATCH * PATCH, CHANNELS, generator=g))
        return cls(torch.full((3 * PATCH * PATCH,), 0.5), q.T.contiguous(), torch.ones(CHANNELS), torch.zeros(CHANNELS))

    def state_dict(self) -> dict:
        return {"codec.mean": self.mean, "codec.components": self.components,
                "codec.scale": self.scale, "codec.shift": self.shift}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "PatchCodec":
        return cls(sd["codec.mean"], sd["codec.components"], sd["codec.scale"], sd["codec.shift"])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        patches = F.unfold(images.float(), PATCH, stride=PATCH).transpose(1, 2)          # (B, L, 192)
        coeffs = (patches - self.mean.to(images.device)) @ self.components.T.to(images.device)
        latent = coeffs * self.scale.to(images.device) + self.shift.to(images.device)
        return latent.transpose(1, 2).reshape(b, CHANNELS, h // PATCH, w // PATCH)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, _, h, w = latent.shape
        coeffs = (latent.float().flatten(2).transpose(1, 2) - self.shift.to(latent.device)) / self.scale.to(latent.device)
        patches = coeffs @ self.components.to(latent.device) + self.mean.to(latent.device)   # (B, L, 192)
        images = F.fold(patches.transpose(1, 2), (h * PATCH, w * PATCH), PATCH, stride=PATCH)
        return images.clamp(0.0, 1.0)
