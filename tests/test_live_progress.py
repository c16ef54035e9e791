"""Live maps and run summaries sent to the UI: payloads match the run, sends are throttled."""
import base64
import io

import numpy as np
import torch
from PIL import Image

from comfyui_sdit.nodes.live_progress import LIVE_EVENT, SUMMARY_EVENT, ProgressReporter
from comfyui_sdit.nodes.region_patch import patch_region_adaptive
from comfyui_sdit.sdit_core.ras import RASConfig, RASPolicy
from comfyui_sdit.sdit_core.trace import trace_from_run
from sdit_testkit import ksample, tiny_flux


def sample_with_reporter(reporter, steps=8):
    model = tiny_flux(seed=41)
    config = RASConfig(sample_ratio=0.25, warmup_steps=2, reset_steps=(), dynamic_ratio=False)
    patched, slot = patch_region_adaptive(model, lambda run: RASPolicy(config, run.patch_size), "RAS Sampler", reporter)
    ksample(patched, torch.zeros(1, 16, 16, 16), steps=steps, cfg=2.0)
    return slot.last_run


def test_every_evaluation_reported_without_throttle_and_summary_matches_the_trace():
    sent = []
    reporter = ProgressReporter("7", "RAS", min_interval=0.0, send=lambda event, data: sent.append((event, data)))
    run = sample_with_reporter(reporter)
    live = [d for e, d in sent if e == LIVE_EVENT]
    summary = [d for e, d in sent if e == SUMMARY_EVENT]
    assert [d["step"] for d in live] == list(range(8)) and all(d["node"] == "7" for d in live)
    trace = trace_from_run(run, "RAS")
    assert [d["tokens"] for d in live] == trace.tokens_per_step == [64, 64] + [16] * 6
    assert [d["dense"] for d in live] == [True, True] + [False] * 6
    (result,) = summary
    assert result == {"node": "7", "method": "RAS", "work_fraction": round(trace.work_fraction, 4), "dense": 2,
                      "sparse": 6, "evaluations": 8, "seconds": result["seconds"], "note": ""}
    assert 0 < result["seconds"] < 600
    # the map: update counts with the latest active tokens tinted, as a PNG data URL of the token grid
    prefix = "data:image/png;base64,"
    assert live[-1]["map"].startswith(prefix)
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(live[-1]["map"][len(prefix):]))))
    assert pixels.shape == (8, 8, 3)
    tinted = (pixels[..., 0] > pixels[..., 2] + 60)
    assert tinted.sum() == 16, "the 16 tokens of the last evaluation are tinted"


def test_sends_are_throttled_but_the_last_evaluation_always_arrives():
    sent = []
    reporter = ProgressReporter("3", "RAS", min_interval=3600.0, send=lambda event, data: sent.append((event, data)))
    sample_with_reporter(reporter)
    live_steps = [d["step"] for e, d in sent if e == LIVE_EVENT]
    assert live_steps == [0, 7]


def test_nothing_is_sent_without_a_node_id_or_a_server():
    sent = []
    sample_with_reporter(ProgressReporter(None, "RAS", send=lambda event, data: sent.append(event)))
    assert sent == []
    sample_with_reporter(ProgressReporter("5", "RAS", min_interval=0.0))   # no PromptServer here: a no-op


def test_messages_go_to_the_client_that_queued_the_prompt(monkeypatch):
    """Other tabs and users have other graphs (the node id means another node there): ComfyUI's own
    progress goes to the prompt's client, and so do ours; a prompt without a client id reaches all."""
    import sys
    import types
    from comfyui_sdit.nodes.live_progress import server_send
    sent = []

    class Server:
        client_id = "tab-1"

        def send_sync(self, event, data, sid=None):
            sent.append((event, sid))
    fake = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=Server()))
    monkeypatch.setitem(sys.modules, "server", fake)
    server_send(LIVE_EVENT, {})
    fake.PromptServer.instance.client_id = None
    server_send(SUMMARY_EVENT, {})
    assert sent == [(LIVE_EVENT, "tab-1"), (SUMMARY_EVENT, None)]
