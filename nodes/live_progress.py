"""Live region maps and the after-run summary, sent to the sampler's node in ComfyUI's UI.

While a region-adaptive run samples, every evaluation can send `sdit.live` (step, tokens computed,
a small PNG of the update counts so far with the latest active tokens tinted); sends are throttled
to one per `min_interval` seconds (plus the last evaluation), so they never slow sampling
measurably. When the run ends, `sdit.summary` carries the token-work fraction vs dense, dense and
sparse evaluation counts and the wall time. web/sdit.js draws both on the node. Outside a running
ComfyUI server nothing is sent.
"""
import base64
import math
import io
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch

from ..sdit_core.tokens import index_to_mask
from ..sdit_core.trace import evaluation_tokens

LIVE_EVENT = "sdit.live"
SUMMARY_EVENT = "sdit.summary"
ACTIVE_TINT = np.array([255, 140, 0], dtype=np.float32)   # latest active tokens, over the count heatmap


def server_send(event: str, data: dict) -> None:
    """PromptServer.send_sync when a ComfyUI server runs in this process; otherwise nothing. Sent to the
    client that queued the running prompt, as ComfyUI sends its own progress (other browser tabs and
    users have other graphs, where the node id means another node); to everyone when the prompt came
    without a client id."""
    server_module = sys.modules.get("server")
    instance = getattr(getattr(server_module, "PromptServer", None), "instance", None)
    if instance is not None:
        instance.send_sync(event, data, getattr(instance, "client_id", None))


MAX_FRAMES = 8      # a video's live map shows at most this many of its frames, side by side


def active_mask(run, record, image: int = 0) -> torch.Tensor:
    """The (*grid) bool mask of the tokens one evaluation computed for one image (or video)."""
    total = math.prod(run.grid)
    if record.active is None or evaluation_tokens(record, total)[1]:
        return torch.ones(run.grid, dtype=torch.bool)
    return index_to_mask(record.active[image: image + 1], total).view(run.grid)


def frame_strip(grid_map: torch.Tensor) -> torch.Tensor:
    """(h, w) unchanged; (t, h, w) -> up to MAX_FRAMES evenly spaced frames side by side, a 1-token gap."""
    if grid_map.ndim == 2:
        return grid_map
    frames = torch.linspace(0, grid_map.shape[0] - 1, min(MAX_FRAMES, grid_map.shape[0])).round().long()
    gap = torch.zeros(grid_map.shape[1], 1, dtype=grid_map.dtype)
    parts = []
    for i, f in enumerate(frames.tolist()):
        parts += ([gap] if i else []) + [grid_map[f]]
    return torch.cat(parts, dim=1)


def map_png(counts: torch.Tensor, latest: torch.Tensor, evaluations: int) -> str:
    """Update counts (grey levels) with the latest evaluation's active tokens tinted, as a PNG data URL
    (a video: a strip of its frames)."""
    counts, latest = frame_strip(counts), frame_strip(latest)
    grey = 40 + 180 * counts.float().numpy() / max(1, evaluations)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mask = latest.numpy()
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * ACTIVE_TINT
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def live_payload(run, node_id: str, method: str, counts: torch.Tensor, latest: torch.Tensor) -> dict:
    record = run.evals[-1]
    total = math.prod(run.grid)
    tokens, dense = evaluation_tokens(record, total)
    return {"node": str(node_id), "method": method, "evaluation": record.info.index, "step": record.info.step,
            "steps": record.info.steps, "dense": dense, "tokens": tokens, "total": total,
            "map": map_png(counts, latest, len(run.evals))}


def summary_payload(run, node_id: str, method: str, seconds: float) -> dict:
    total = math.prod(run.grid)
    per_eval = [evaluation_tokens(record, total) for record in run.evals]
    dense = sum(1 for _, is_dense in per_eval if is_dense)
    work = sum(tokens for tokens, _ in per_eval) / max(1, len(per_eval) * total)
    return {"node": str(node_id), "method": method, "work_fraction": round(work, 4), "dense": dense,
            "sparse": len(per_eval) - dense, "evaluations": len(per_eval), "seconds": round(seconds, 2),
            "note": run.note}


class ProgressReporter:
    def __init__(self, node_id, method: str, min_interval: float = 0.5,
                 send: Optional[Callable[[str, dict], None]] = None):
        self.node_id = None if node_id is None else str(node_id)
        self.method = method
        self.min_interval = min_interval
        self.send = send or (lambda event, data: server_send(event, data))   # looked up when sending
        self._last_sent: Optional[float] = None
        self._run, self._seen = None, 0
        self._counts: Optional[torch.Tensor] = None     # (*grid) evaluations that computed each token (image 0)
        self._latest: Optional[torch.Tensor] = None     # (*grid) the latest evaluation's tokens

    def evaluation_done(self, run) -> None:
        if self.node_id is None or not run.evals:
            return
        # counts are kept up to date every evaluation (cheap); the PNG is made only when sent
        if self._run is not run:
            self._run, self._seen, self._counts = run, 0, torch.zeros(run.grid, dtype=torch.int32)
        for record in run.evals[self._seen:]:
            self._latest = active_mask(run, record)
            self._counts += self._latest
        self._seen = len(run.evals)
        now = time.monotonic()
        info = run.evals[-1].info
        last = info.step >= info.steps - 1
        if self._last_sent is not None and now - self._last_sent < self.min_interval and not last:
            return
        self._last_sent = now
        self.send(LIVE_EVENT, live_payload(run, self.node_id, self.method, self._counts, self._latest))

    def run_done(self, run, seconds: float) -> None:
        if self.node_id is not None and run.evals:
            self.send(SUMMARY_EVENT, summary_payload(run, self.node_id, self.method, seconds))
