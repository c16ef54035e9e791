"""The fidelity benchmark's EasyCache baseline is run fairly: ComfyUI 0.3.75's EasyCache writes into the
transformer's input in place, which on an fp32 model (the demo model on a CPU) spoils every skipped step;
bench/fidelity.py's `easycache` hands the transformer a copy (without it, this run measured 15 dB)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from fidelity import Runner, counting_forwards, easycache, psnr  # noqa: E402

from comfyui_sdit.nodes.demo.model import load_demo_model


def test_easycache_skips_steps_and_stays_close_to_full_sampling():
    demo = load_demo_model()
    runner = Runner(demo, 20, 3.0, demo.image_size, "euler", "simple")
    reference, _ = runner.sample(demo.patcher, "a red circle", 1000)
    counted, forwards = counting_forwards(easycache(demo.patcher, 0.2))
    image, _ = runner.sample(counted, "a red circle", 1000)
    assert forwards[0] <= 12, "EasyCache skipped at least 8 of 20 steps"      # measured: 9 forwards
    assert psnr(image, reference) > 33.0                                    # measured: 39.8 dB
