"""Procedural, seeded images for the demo model: one coloured, textured object on a smooth background.

    images, colours, shapes = render_batch(generator, batch, size)

Images are (B, 3, size, size) in [0, 1]. What region-adaptive sampling exploits is built in: a
detailed object (edges, fine texture, stripes, text-like glyphs) covers a minority of the image;
the rest is a smooth gradient. Classes are (colour, shape) from nodes/demo/vocabulary.py.
"""
import math

import torch

from comfyui_sdit.nodes.demo.vocabulary import COLOURS, SHAPES

RGB = {"red": (0.90, 0.15, 0.15), "green": (0.20, 0.75, 0.25), "blue": (0.15, 0.30, 0.90),
       "yellow": (0.95, 0.85, 0.15), "purple": (0.60, 0.20, 0.75), "orange": (0.95, 0.55, 0.10),
       "white": (0.95, 0.95, 0.95), "cyan": (0.10, 0.80, 0.85)}
COLOUR_RGB = torch.tensor([RGB[c] for c in COLOURS])
# Objects stand upright, tilted by at most ~9 degrees: a tiny model trained on a CPU learns one outline per
# shape this way; with free rotation it only learned blobs of the right colour and texture.
UPRIGHT = {"triangle": math.pi, "star": -math.pi / 2}          # spin that puts the apex / a point on top


def _uniform(g, n, low, high):
    return low + (high - low) * torch.rand(n, generator=g)


def _signed_distance(shape: str, x, y, r, g):
    """Signed distance (negative inside) of one object, in its own rotated frame; x, y: (H, W)."""
    radius = torch.sqrt(x * x + y * y)
    angle = torch.atan2(y, x)
    if shape == "circle":
        return radius - r
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) - 0.8 * r
    if shape == "triangle":
        k = math.sqrt(3.0)
        return torch.maximum(x.abs() * k / 2 + y / 2, -y) - 0.5 * r
    if shape == "star":
        # five fat points, the radius running linearly with the angle from half the outer radius up to it
        # (slightly concave sides): a 16x16-token model drew the thin petals of a cosine star as scattered bits
        tip = 1 - (torch.remainder(angle * 5 / (2 * math.pi), 1.0) - 0.5).abs() * 2    # 1 at a point, 0 between
        return radius - r * (0.5 + 0.5 * tip)
    if shape == "ring":
        return (radius - 0.75 * r).abs() - 0.22 * r
    if shape == "cross":
        arm = torch.minimum(torch.maximum(x.abs() - r, y.abs() - 0.3 * r), torch.maximum(x.abs() - 0.3 * r, y.abs() - r))
        return arm
    # stripes and glyphs: a square panel whose inside carries the pattern
    return torch.maximum(x.abs(), y.abs()) - 0.85 * r


def _pattern(shape: str, x, y, r, g):
    """Inside pattern in [0, 1] (1 = object colour): stripes, glyph strokes, or a fine texture."""
    if shape == "stripes":
        period = r * float(_uniform(g, 1, 0.18, 0.3))
        return (torch.sin(2 * math.pi * y / period) > 0).float()
    if shape == "glyphs":
        cells = 12                                                   # 3x3 glyphs of 4x4 strokes cells
        u = ((x / (1.7 * r) + 0.5) * cells).floor().clamp(0, cells - 1).long()
        v = ((y / (1.7 * r) + 0.5) * cells).floor().clamp(0, cells - 1).long()
        strokes = (torch.rand(cells, cells, generator=g) > 0.45).float()
        gaps = ((torch.arange(cells) % 4) == 3).float()             # blank row/column between glyphs
        strokes = strokes * (1 - gaps[:, None]) * (1 - gaps[None, :])
        return 1.0 - 0.8 * strokes[v, u]
    frequency = float(_uniform(g, 1, 25.0, 45.0))
    theta = float(_uniform(g, 1, 0.0, math.pi))
    wave = torch.sin(frequency * (x * math.cos(theta) + y * math.sin(theta)))
    return 0.85 + 0.15 * wave


def render(g: torch.Generator, colour: int, shape: int, size: int) -> torch.Tensor:
    """One (3, size, size) image of class (colour, shape)."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    # background: a smooth two-colour gradient in muted tones
    tones = 0.25 + 0.5 * torch.rand(2, 3, generator=g)
    tones = 0.6 * tones + 0.4 * tones.mean(dim=1, keepdim=True)         # desaturate
    direction = float(_uniform(g, 1, 0.0, 2 * math.pi))
    t = ((x * math.cos(direction) + y * math.sin(direction)) * 0.5 + 0.5).clamp(0, 1)
    image = tones[0, :, None, None] * (1 - t) + tones[1, :, None, None] * t
    # the object, near the centre and large: a model this small, trained on a CPU, drew blobs while objects
    # wandered over most of the image; with place and size varying little it learned each class's outline
    cx, cy = _uniform(g, 2, -0.12, 0.12).tolist()
    r = float(_uniform(g, 1, 0.4, 0.55))
    name = SHAPES[shape]
    spin = UPRIGHT.get(name, 0.0) + float(_uniform(g, 1, -0.15, 0.15))
    ox, oy = x - cx, y - cy
    ux, uy = ox * math.cos(spin) + oy * math.sin(spin), -ox * math.sin(spin) + oy * math.cos(spin)
    inside = (0.5 - _signed_distance(name, ux, uy, r, g) * size / 2).clamp(0, 1)   # ~1 pixel anti-aliasing
    brightness = float(_uniform(g, 1, 0.85, 1.1))
    rgb = (COLOUR_RGB[colour] * brightness).clamp(0, 1)[:, None, None]
    fill = rgb * _pattern(name, ux, uy, r, g)
    return (image * (1 - inside) + fill * inside).clamp(0, 1)


def render_batch(g: torch.Generator, batch: int, size: int, shape_weights=None):
    """Random classes: (images (B, 3, S, S), colour indices, shape indices) into COLOURS / SHAPES.
    `shape_weights` (one per shape, default all equal) makes some shapes more frequent."""
    colours = torch.randint(len(COLOURS), (batch,), generator=g)
    if shape_weights is None:
        shapes = torch.randint(len(SHAPES), (batch,), generator=g)
    else:
        shapes = torch.multinomial(torch.as_tensor(shape_weights, dtype=torch.float), batch, replacement=True,
                                   generator=g)
    images = torch.stack([render(g, int(c), int(s), size) for c, s in zip(colours, shapes)])
    return images, colours, shapes
