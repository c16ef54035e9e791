"""Drawing helpers for the visualisation nodes: colour maps, region colours, boundaries, legends.
Images are float32 (H, W, 3) in [0, 1], as ComfyUI's IMAGE holds them."""
from typing import Tuple

import cv2
import numpy as np
import torch

Size = Tuple[int, int]


def upsample_nearest(grid: np.ndarray, size: Size) -> np.ndarray:
    return cv2.resize(grid, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def heatmap(values: np.ndarray, size: Size, vmin: float = None, vmax: float = None) -> np.ndarray:
    """(h, w) values -> (H, W, 3) viridis colours (nearest upsampling keeps tokens visible)."""
    values = values.astype(np.float32)
    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colours = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return upsample_nearest(colours, size).astype(np.float32) / 255.0


def with_legend(image: np.ndarray, vmin: float, vmax: float, title: str) -> np.ndarray:
    """Appends a vertical viridis colour bar with its range and title on the right."""
    height = image.shape[0]
    bar_width = max(64, height // 5)
    bar = np.zeros((height, bar_width, 3), dtype=np.float32)
    ramp = np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(bar_width // 3, axis=1)
    colours = cv2.applyColorMap((ramp * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1] / 255.0
    bar[:, 4:4 + colours.shape[1]] = colours
    canvas = (bar * 255).astype(np.uint8).copy()
    scale = max(0.3, height / 600)
    x = bar_width // 3 + 8
    for text, y in ((_fmt(vmax), int(14 * scale) + 4), (_fmt(vmin), height - 6)):
        cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (x, height // 2), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, (220, 220, 220), 1, cv2.LINE_AA)
    return np.concatenate([image, canvas.astype(np.float32) / 255.0], axis=1)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def region_colours(labels: np.ndarray) -> np.ndarray:
    """(h, w) labels -> (h, w, 3): well-separated hues from the golden ratio, fixed per label."""
    ids = labels.astype(np.int64)
    hue = (ids * 0.61803398875) % 1.0
    hsv = np.stack([hue * 179, np.full_like(hue, 170), np.full_like(hue, 230)], axis=-1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def labels_image(labels: np.ndarray, size: Size) -> np.ndarray:
    big = upsample_nearest(labels.astype(np.int32), size)
    image = region_colours(big)
    image[boundaries(big)] = 0.05
    return image


def mask_image(mask: np.ndarray, size: Size) -> np.ndarray:
    big = upsample_nearest(mask.astype(np.uint8), size).astype(np.float32)
    return np.repeat((0.15 + 0.85 * big)[..., None], 3, axis=-1)


def blend(overlay: np.ndarray, base: np.ndarray, opacity: float) -> np.ndarray:
    if base is None:
        return overlay
    return (opacity * overlay + (1 - opacity) * base).astype(np.float32)


def to_image_batch(images) -> torch.Tensor:
    height = max(i.shape[0] for i in images)
    width = max(i.shape[1] for i in images)
    padded = [np.pad(i, ((0, height - i.shape[0]), (0, width - i.shape[1]), (0, 0))) for i in images]
    return torch.from_numpy(np.stack(padded)).clamp(0, 1)


MAX_FRAMES = 8          # a video map shows at most this many of its frames, side by side
FRAME_GAP = 4           # pixels between frames


def shown_frames(frames: int) -> list:
    """Up to MAX_FRAMES evenly spaced frame indices, first and last included."""
    return sorted(set(np.linspace(0, frames - 1, min(MAX_FRAMES, frames)).round().astype(int).tolist()))


def frame_strip(images) -> np.ndarray:
    """(H, W, 3) images of frames -> one image, side by side with a dark gap between them."""
    gap = np.full((images[0].shape[0], FRAME_GAP, 3), 0.1, dtype=np.float32)
    parts = []
    for i, image in enumerate(images):
        parts += ([gap] if i else []) + [image]
    return np.concatenate(parts, axis=1)


def render(grid_map: np.ndarray, draw, size: Size, base_of=None) -> np.ndarray:
    """Draws a (h, w) map with draw(map, size, base), or a video's (t, h, w) map frame by frame into a
    strip; base_of(frame) gives the image to draw a frame over (None: no image)."""
    base_of = base_of or (lambda frame: None)
    if grid_map.ndim == 2:
        return draw(grid_map, size, base_of(None))
    return frame_strip([draw(grid_map[f], size, base_of(f)) for f in shown_frames(grid_map.shape[0])])
