"""Shape measurements of demo images (H, W, 3) in [0, 1]: which pixels are the object, how whole it is, and
which outline it has.

Object pixels are the saturated ones (the data's backgrounds are desaturated, at most 0.3), closed by two
pixels so that the dark strokes of textured shapes do not split them. The outline classifier is a nearest
centroid over seven scale-free measures of the largest piece (area ratios, outline harmonics), fitted on
rendered training images: a generated object whose outline it names is a recognisable shape. Stripes and
glyphs are square panels told apart by their texture, so only the six outline shapes are classified.
"""
import numpy as np
import torch

OUTLINE_SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")


def object_mask(image: torch.Tensor) -> np.ndarray:
    from scipy import ndimage
    saturated = (image.max(dim=-1).values - image.min(dim=-1).values) > 0.35
    return ndimage.binary_closing(saturated.numpy(), iterations=2)


def _pieces(mask: np.ndarray):
    from scipy import ndimage
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    return labels, np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=np.int64)


def largest_piece_share(image: torch.Tensor) -> float:
    """Share of object pixels in the largest 8-connected piece (1.0: one solid object; 0: no object)."""
    _, sizes = _pieces(object_mask(image))
    return float(sizes.max() / sizes.sum()) if sizes.size else 0.0


def _outline_harmonics(piece: np.ndarray, bins: int = 90) -> np.ndarray:
    """Strength of 3-, 4- and 5-fold outlines: the piece's radius (farthest pixel from its centroid) per
    angle, and the amplitudes of that profile's 3rd, 4th and 5th harmonics relative to its mean radius.
    A triangle rings at 3, a square and (more) a cross at 4, a star at 5; discs, rings and round blobs at
    none. Unlike a rotated copy's overlap, a bumpy blob cannot pass for a star this way."""
    rows, cols = np.nonzero(piece)
    dy, dx = rows - rows.mean(), cols - cols.mean()
    angle_bin = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    profile = np.zeros(bins)
    np.maximum.at(profile, angle_bin, np.hypot(dy, dx))
    spectrum = np.abs(np.fft.rfft(profile))
    return spectrum[3:6] * 2 / spectrum[0]


def outline_features(image: torch.Tensor):
    """Scale-free measures of the largest piece: solidity (area / convex hull), extent (area / bounding box),
    hole share (holes / filled area), disc fill (area / disc of its longest diameter), and the strength of
    its 3-, 4- and 5-fold outline. None when there is no object of at least 64 pixels."""
    from skimage.measure import regionprops
    labels, sizes = _pieces(object_mask(image))
    if not sizes.size or sizes.max() < 64:
        return None
    mask = labels == 1 + int(sizes.argmax())
    piece = regionprops(mask.astype(np.uint8))[0]
    disc = np.pi * (piece.feret_diameter_max / 2) ** 2
    return np.concatenate([[piece.solidity, piece.extent, 1 - piece.area / piece.area_filled, piece.area / disc],
                           _outline_harmonics(mask)])


class OutlineClassifier:
    """Nearest centroid, in units of each feature's spread, over rendered images of the six outlines, with a
    reject option: an object about as near to two outlines (a blob between a circle and a star) is none."""

    CLEAR_MARGIN = 1.25       # the second-nearest outline must be at least this much farther than the nearest

    def __init__(self, centroids: np.ndarray, spread: np.ndarray):
        self.centroids, self.spread = centroids, spread

    @classmethod
    def fit(cls, images_per_shape: int = 12, size: int = 256, seed: int = 1234) -> "OutlineClassifier":
        features = np.stack([[outline_features(image) for image in rendered_outlines(shape, images_per_shape,
                                                                                     size, seed)]
                             for shape in OUTLINE_SHAPES])            # (shapes, images, features)
        spread = features.reshape(-1, features.shape[-1]).std(axis=0) + 1e-6
        return cls(features.mean(axis=1), spread)

    def classify(self, image: torch.Tensor):
        """The outline's name, or None when the image shows no object or no clear outline."""
        features = outline_features(image)
        if features is None:
            return None
        distances = np.linalg.norm((self.centroids - features) / self.spread, axis=1)
        nearest, second = np.sort(distances)[:2]
        return OUTLINE_SHAPES[int(distances.argmin())] if second >= self.CLEAR_MARGIN * nearest else None


def rendered_outlines(shape: str, count: int, size: int, seed: int):
    """Training-data images of one outline shape in red (H, W, 3), from bench/demo_data.py."""
    from comfyui_sdit.nodes.demo.vocabulary import COLOURS, SHAPES
    from demo_data import render
    generator = torch.Generator().manual_seed(seed + SHAPES.index(shape))
    return [render(generator, COLOURS.index("red"), SHAPES.index(shape), size).permute(1, 2, 0)
            for _ in range(count)]
