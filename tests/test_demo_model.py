"""The shipped demo model is trained: its metadata says how, and full sampling draws the prompted object
(a saturated object of the prompt's colour on a desaturated background)."""
import importlib
import pathlib
import statistics
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from shape_metrics import OUTLINE_SHAPES, OutlineClassifier, object_mask, rendered_outlines  # noqa: E402

from comfyui_sdit.nodes.demo.model import WEIGHTS, load_demo_model
from comfyui_sdit.nodes.demo_nodes import SDiTDemoDecode, SDiTDemoModelLoader

comfy_nodes = importlib.import_module("nodes")
RECOGNISED_AT_LEAST = 0.75      # shipped weights: 1.00 on demo_quality's 36 images (BENCHMARKS), 0.92 on these 24
EACH_SHAPE_AT_LEAST = 0.5       # every outline, stars included, in at least 2 of its 4 images (measured: 0.75 or more)
EXPECTED_RGB = {"red": (0.90, 0.15, 0.15), "blue": (0.15, 0.30, 0.90), "yellow": (0.95, 0.85, 0.15)}


def test_weights_are_shipped_with_their_training_command():
    import safetensors
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 30e6
    with safetensors.safe_open(str(WEIGHTS), "pt") as f:
        metadata = f.metadata()
    assert metadata["command"].startswith("python bench/train_tiny_dit.py")
    assert int(metadata["steps"]) >= 1000 and "hidden_size" in metadata["config"]
    assert load_demo_model().trained


@pytest.mark.parametrize("colour", sorted(EXPECTED_RGB))
def test_full_sampling_draws_an_object_of_the_prompted_colour(colour):
    """A small CPU-trained model misses now and then: two of three seeds must show the object."""
    model, positive, negative = SDiTDemoModelLoader().load(f"a {colour} circle")
    latent = {"samples": load_demo_model().empty_latent(3)}             # three different noises
    sampled = comfy_nodes.KSampler().sample(model, 11, 20, 3.0, "euler", "simple", positive, negative, latent)[0]
    good = []
    for image in SDiTDemoDecode().decode(sampled)[0]:                   # (H, W, 3) each
        mask = torch.from_numpy(object_mask(image))
        fraction = mask.float().mean().item()
        close = fraction > 0.02 and torch.dist(image[mask].mean(dim=0), torch.tensor(EXPECTED_RGB[colour])) < 0.3
        good.append(bool(fraction < 0.6 and close))
    assert sum(good) >= 2, good


@pytest.fixture(scope="module")
def outline_classifier():
    return OutlineClassifier.fit()


def test_outline_classifier_names_held_out_training_images(outline_classifier):
    """The yardstick of "recognisable": it names the outline of training images it was not fitted on, and
    names nothing on a plain background."""
    for shape in OUTLINE_SHAPES:
        assert [outline_classifier.classify(image) for image in rendered_outlines(shape, 4, 256, 777)] == [shape] * 4
    assert outline_classifier.classify(torch.full((256, 256, 3), 0.5)) is None


def test_full_sampling_draws_recognisable_outlines(outline_classifier):
    """The issue's bar for the demo model: full sampling at 20 steps draws the prompted outline. Four noises
    per outline shape; the classifier must clearly name the prompted outline in three of four images overall
    and in at least half of each shape's (chance: 1/6)."""
    from demo_quality import measure_shape
    rows = [measure_shape(shape, 4, 20, 3.0, outline_classifier, seed=21) for shape in OUTLINE_SHAPES]
    named = {row["shape"]: row["named"] for row in rows}
    assert statistics.mean(row["recognised"] for row in rows) >= RECOGNISED_AT_LEAST, named
    assert min(row["recognised"] for row in rows) >= EACH_SHAPE_AT_LEAST, named
