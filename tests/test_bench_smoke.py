"""Every benchmark in bench/ runs end to end at a tiny size (seconds; no timing claims are checked here:
speed and fidelity numbers come from the full runs recorded in docs/BENCHMARKS.md)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from pack_host import comfyui_version

SMOKE_RUNS = {
    "demo_quality": ["bench/demo_quality.py", "--seeds", "1", "--shapes", "1", "--steps", "4"],
    "sdit_sweep": ["bench/sdit_sweep.py", "--smoke"],
    "fidelity": ["bench/fidelity.py", "--smoke"],
    "speed": ["bench/speed.py", "--smoke", "--device", "cpu", "--fresh-seed", "--token-grid", "4"],
    "speed_video": ["bench/speed.py", "--smoke-video", "--device", "cpu"],
    "speed_windows": ["bench/speed.py", "--models", "tiny-wan", "--res", "128", "--frames", "17",
                      "--context-windows", "3", "1", "--steps", "6", "--ratios", "0.5", "--methods", "RAS",
                      "--text", "16", "--device", "cpu"],
    "speed_forward": ["bench/speed_forward.py", "--size", "tiny", "--res", "128", "--batch", "1", "--ratios", "0.5",
                      "--iters", "1", "--warmup", "0", "--device", "cpu", "--cuda-graphs"],
    "speed_forward_counts": ["bench/speed_forward.py", "--size", "tiny", "--res", "128", "--batch", "1", "--text", "8",
                             "--count-sweep", "16", "48", "16", "--iters", "1", "--warmup", "0", "--device", "cpu",
                             "--graphs-only"],
    # as TorchCompileModel runs it (aot_eager: no C++ compile, the same numbers as eager)
    "speed_forward_compiled": ["bench/speed_forward.py", "--size", "tiny", "--res", "128", "--batch", "1",
                               "--ratios", "0.5", "--iters", "1", "--warmup", "0", "--device", "cpu",
                               "--torch-compile", "aot_eager"],
    "segmentation": ["bench/segmentation.py", "--grid", "16", "--seeds", "1", "--repeats", "1"],
    "policy_cost": ["bench/policy_cost.py", "--grid", "16", "--repeats", "2", "--gpu-path"],
    "kernels": ["bench/kernels.py", "--smoke"],
}


@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_benchmark_runs(name, tmp_path):
    out = tmp_path / f"{name}.json"
    result = subprocess.run([sys.executable, *SMOKE_RUNS[name], "--json", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["rows"], "results recorded"
    if name == "speed":             # the token grid reached the engine: every sparse count is on it
        assert data["comfyui"] == comfyui_version() != "" and data["dynamic_vram"] is False
        sparse = [r for r in data["rows"] if r["method"] != "full"]
        assert data["token_grid"] == "4" and sparse
        assert all(t % 4 == 0 for r in sparse for t in r["token_counts"] if t < r["image_tokens"])
        assert any(t < r["image_tokens"] for r in sparse for t in r["token_counts"]), "no sparse step ran"
        # the memory plan counted what the caches held; every weight in (CPU) memory
        assert all(r["kv_planned_gib"] == r["kv_held_gib"] > 0 and r["weights_vram_gib"] > 0 for r in sparse)
        dense = {(r["model"], r["res"], r["cfg"]): r["kv_cache_gib"] for r in data["rows"] if r["method"] == "full"}
        assert all(dense[r["model"], r["res"], r["cfg"]] == r["kv_cache_gib"] == r["kv_held_gib"] for r in sparse)
        fun = {"tiny-qwen-image-fun-cn"} if hasattr(importlib.import_module("comfy.controlnet"), "QwenFunControlNet") \
            else set()      # newer ComfyUI
        fun |= {"tiny-z-image-fun-cn"} if importlib.util.find_spec("comfy.ldm.lumina.controlnet") else set()
        assert {r["model"] for r in sparse} == {"tiny-flux", "tiny-flux-cn", "tiny-sd35-cn", "tiny-cosmos"} | fun
        # (the ControlNets' cache layers planned too: planned == held above)
    if name == "speed_video":               # every tiny video model sampled sparsely, its cache as planned
        ltx2 = {"tiny-ltx2"} if importlib.util.find_spec("comfy.ldm.lightricks.av_model") else set()  # newer ComfyUI
        assert {r["model"] for r in data["rows"]} == {"tiny-wan", "tiny-wan-vace", "tiny-hunyuan-video",
                                                      "tiny-hunyuan-video-1.5", "tiny-ltxv"} | ltx2
        sparse = [r for r in data["rows"] if r["method"] != "full"]
        assert all(r["kv_planned_gib"] == r["kv_held_gib"] > 0 for r in sparse)
        assert all(any(t < r["image_tokens"] for t in r["token_counts"]) for r in sparse if r["method"] == "RAS")
    if name == "speed_windows":             # 5 latent frames in two windows of 3: each window ran part of its tokens
        sparse = [r for r in data["rows"] if r["method"] != "full"]
        assert data["context_windows"] == [3, 1] and sparse
        for r in sparse:
            assert r["windows"] == 2 and r["forwards"] == 2 * 6          # a forward per window and step
            assert r["window_token_counts"] and max(r["window_token_counts"]) < 3 * 64 and r["ideal"] > 1
    if name == "kernels":                    # every kernel's reference timed, shared and per-image K/V rows
        assert {r["kernel"] for r in data["rows"]} == {"kv_write", "fp8_dequant", "quickshift_window"}
        assert {r["shared_rows"] for r in data["rows"] if r["kernel"] == "kv_write"} == {True, False}
    if name == "speed_forward_compiled":    # compiled, a sparse forward after a dense one is exact on its tokens
        assert data["torch_compile"] == "aot_eager"
        errors = [r["active_rel_error"] for r in data["rows"] if "active_rel_error" in r]
        assert len(errors) == 1 and errors[0] <= 1e-6
    if name == "policy_cost":               # every phase of both policies counted and timed
        assert {(r["policy"], r["gpu_path"]) for r in data["rows"]} == {("SDiT", True), ("RAS", True)}
        assert all(set(r["phases"]) == {"plan", "inactive_output", "on_output", "observe"} for r in data["rows"])
        assert all(r["total"]["launches"] > 0 and r["total"]["ms"] > 0 for r in data["rows"])
    if name == "speed_forward_counts":      # the swept counts, each timed once, as graph replays only
        sparse = [r for r in data["rows"] if r["mode"].startswith("sparse")]
        assert [r["rows"] for r in sparse] == [8 + 16, 8 + 32, 8 + 48]
        assert {r["mode"] for r in sparse} == {"sparse (CUDA graph)"}


# a kernel launched three times in Triton's interpreter, counted by policy_cost.py's counter
COUNT_TRITON_LAUNCHES = """
import sys, torch, triton, triton.language as tl
sys.path[:0] = ["bench", "scripts"]
from pack_host import import_comfyui, load_pack
import_comfyui(cpu=True)
load_pack()
from policy_cost import counting_mode

@triton.jit
def double(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=offsets < n) * 2, mask=offsets < n)

x, counter = torch.ones(8), counting_mode()
with counter.counting_triton(), counter:
    for _ in range(3):
        double[(1,)](x, 8, BLOCK=8)
print(counter.triton_launches, sum(counter.ops.values()), x.tolist())
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_policy_cost_counts_triton_launches_and_not_the_interpreters_own_operators():
    """SDiT's window pass runs as Triton kernels on a GPU: the launches the dispatcher cannot see are counted
    by hooking Triton's launchers, which moved between Triton versions (3.3, torch 2.7's, has no `run` on
    its interpreted functions)."""
    result = subprocess.run([sys.executable, "-c", COUNT_TRITON_LAUNCHES], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:2] == ["3", "0"], result.stdout
    assert "8.0" in result.stdout          # the kernel ran: 1 doubled three times


def test_speed_refuses_dynamic_vram_off_cuda():
    """Dynamic VRAM (comfy-aimdo) exists only on NVIDIA GPUs: asked for on the CPU, the benchmark says so
    before building anything."""
    result = subprocess.run([sys.executable, "bench/speed.py", "--smoke", "--device", "cpu", "--dynamic-vram"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--dynamic-vram needs a CUDA device" in result.stderr


def test_speed_refuses_a_simulated_gpu_off_cuda():
    result = subprocess.run([sys.executable, "bench/speed.py", "--smoke", "--device", "cpu", "--vram-gib", "24"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--vram-gib simulates a smaller GPU: it needs a CUDA device" in result.stderr


def test_dynamic_vram_is_set_up_as_a_newer_comfyui_server_does(monkeypatch):
    """On a tree with dynamic VRAM: comfy-aimdo initialised for the device, then models get
    ModelPatcherDynamic and ComfyUI's ops the dynamic path (the GPU itself is stood in for). On an older
    tree: a clear error naming what is missing."""
    import comfy.model_patcher
    from pack_host import enable_dynamic_vram
    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        with pytest.raises(SystemExit, match="has no dynamic VRAM"):
            enable_dynamic_vram(0)
        return
    import comfy.memory_management
    import comfy_aimdo.control
    asked = []
    monkeypatch.setattr(comfy_aimdo.control, "init", lambda *a, **k: True)
    monkeypatch.setattr(comfy_aimdo.control, "init_devices", lambda devices: asked.append(list(devices)) or True)
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.CoreModelPatcher)
    monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", comfy.memory_management.aimdo_enabled)
    enable_dynamic_vram(0)
    assert asked == [[0]]
    assert comfy.model_patcher.CoreModelPatcher is comfy.model_patcher.ModelPatcherDynamic
    assert comfy.memory_management.aimdo_enabled is True


def test_a_model_built_in_ram_is_offloaded_to_ram():
    """`speed.py --vram-gib`'s model (the option itself needs a GPU): its weights and ComfyUI's offload device
    are RAM (an offload device on the GPU would free nothing there), and it samples."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import speed
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    import comfy.sample
    import torch
    model = speed.build("tiny-flux", torch.device("cpu"), torch.float32, in_ram=True)
    assert model.offload_device == torch.device("cpu") and model.model.device == torch.device("cpu")
    latent = torch.zeros(1, 16, 8, 8)
    positive = speed.conditioning("tiny-flux", 4, 1)
    out = comfy.sample.sample(model, torch.randn_like(latent), 2, 1.0, "euler", "simple", positive, positive, latent,
                              seed=0, disable_pbar=True)
    assert out.shape == latent.shape and torch.isfinite(out).all()
