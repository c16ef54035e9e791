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


# ---- side panels: legends and captions beside a map, sized to fit their text ---------------------

FONT = cv2.FONT_HERSHEY_SIMPLEX
MARGIN = 8
BAR = 16                 # colour bar width
SWATCH = 12              # legend swatch side
COMPUTED_GREY = 1.0      # mask_image: computed tokens are white ...
SKIPPED_GREY = 0.15      # ... skipped ones dark


def text_scale(height: int) -> float:
    return float(np.clip(height / 640, 0.4, 0.7))


def line_height(height: int) -> int:
    return int(round(30 * text_scale(height)))


def text_width(text: str, height: int) -> int:
    return cv2.getTextSize(text, FONT, text_scale(height), 1)[0][0]


def colour_bar_width(height: int, vmin: float, vmax: float, title: str) -> int:
    """Width a colour bar panel needs so its range and title are not clipped."""
    return MARGIN + BAR + MARGIN + max(text_width(t, height) for t in (_fmt(vmin), _fmt(vmax), title)) + MARGIN


def colour_bar(height: int, width: int, vmin: float, vmax: float, title: str) -> np.ndarray:
    """A vertical viridis bar (top: vmax) with its range and title beside it."""
    panel = np.zeros((height, width, 3), dtype=np.uint8)
    ramp = np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(BAR, axis=1)
    panel[:, MARGIN:MARGIN + BAR] = cv2.applyColorMap((ramp * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    x, scale, rows = MARGIN + BAR + MARGIN, text_scale(height), line_height(height)
    for text, y, shade in ((_fmt(vmax), rows, 255), (title, height // 2 + rows // 3, 220), (_fmt(vmin), height - MARGIN, 255)):
        cv2.putText(panel, text, (x, y), FONT, scale, (shade,) * 3, 1, cv2.LINE_AA)
    return panel.astype(np.float32) / 255.0


def text_panel_width(height: int, lines) -> int:
    """lines: (grey level or None, text); a grey level draws a legend swatch before the text."""
    return max(MARGIN + (SWATCH + 6 if swatch is not None else 0) + text_width(text, height) + MARGIN
               for swatch, text in lines)


def text_panel(height: int, width: int, lines) -> np.ndarray:
    panel = np.zeros((height, width, 3), dtype=np.uint8)
    scale, rows = text_scale(height), line_height(height)
    for i, (swatch, text) in enumerate(lines):
        y = MARGIN + (i + 1) * rows
        x = MARGIN
        if swatch is not None:
            grey = int(round(255 * swatch))
            cv2.rectangle(panel, (x, y - SWATCH), (x + SWATCH, y), (grey,) * 3, thickness=-1)
            cv2.rectangle(panel, (x, y - SWATCH), (x + SWATCH, y), (128,) * 3, thickness=1)
            x += SWATCH + 6
        cv2.putText(panel, text, (x, y), FONT, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return panel.astype(np.float32) / 255.0


MASK_LEGEND = ((COMPUTED_GREY, "computed"), (SKIPPED_GREY, "skipped"))


def beside(image: np.ndarray, panel: np.ndarray) -> np.ndarray:
    return np.concatenate([image, panel], axis=1)


def with_legend(image: np.ndarray, vmin: float, vmax: float, title: str) -> np.ndarray:
    """Appends a colour bar with its range and title on the right, wide enough for its text."""
    height = image.shape[0]
    return beside(image, colour_bar(height, colour_bar_width(height, vmin, vmax, title), vmin, vmax, title))


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
    grey = SKIPPED_GREY + (COMPUTED_GREY - SKIPPED_GREY) * big
    return np.repeat(grey[..., None], 3, axis=-1)


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
