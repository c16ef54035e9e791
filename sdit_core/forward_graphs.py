"""Replays token-sparse forwards from CUDA graphs (on by default where CUDA is; SDIT_CUDA_GRAPHS=0 turns
it off). Validated on an H200 (graph == eager tests, docs/BENCHMARKS.md).

At batch 1 and low ratios a sparse forward is bound by the CPU launching the model's kernels, not by
the GPU (docs/BENCHMARKS.md): ComfyUI's Flux launches about 5,300 kernels per forward whatever the
token count. A CUDA graph records those launches once and replays them with one call.

What is graphed is a method an adapter marks: the whole token-sparse part of the forward where one
method spans it (Flux, SD3), else each layer (Lumina 2 / Z-Image, whose sparse part starts inside
`patchify_and_embed`; the blocks of Qwen-Image, which return a pair of tensors, of Cosmos and of the
other families listed in docs/ARCHITECTURE.md): one graph per layer, each writing its own layer's K/V,
keyed by where it sits and by its plain arguments' values (baked in at capture).
Static buffers are the stream's, shared by every graph of the same signature (replays run one at a
time and copy their inputs in first), so graphing 30 layers does not hold 30 copies of the hidden state.

A replayed forward may depend only on
- its static input buffers: every tensor argument of the graphed method (and each tensor of a tuple, list or dict
  argument: HunyuanDiT's RoPE tables, ControlNet's residuals), copied in before a replay;
- the static index buffer: the forward's active rows of the image sequence (`ForwardCall`);
- the stream's K/V cache buffers (fixed addresses; a reallocation changes the cache's generation,
  which is part of the graph key) and the weights (fixed while a sampling run lasts).
Everything derived from these (the joint K/V rows, gathered RoPE) is computed inside the graph.

Policy: a forward signature (argument shapes, active-set size, index kind, cache generation) seen the
first time runs eagerly, which also warms up cuBLAS and compiles Triton kernels; the second time it is
captured, then replayed from then on, if the token policy plans that count for at least MIN_USES more
evaluations: a capture costs about three eager forwards, a replay saves a fraction of one. RAS with
`dynamic_ratio` off plans one count for every sparse step; the default dynamic schedules hold a count for
2-3 steps even on the token grid (count_grid.py), too few to repay a capture, so they run eagerly, as do
policies whose counts follow the image (SDiT). A capture that fails turns graphs off for that stream,
which then runs eagerly.
"""
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple, Union

import torch

ENV_FLAG = "SDIT_CUDA_GRAPHS"
# A count is captured only when the policy plans it for at least this many more evaluations. From the
# H200 runs (docs/BENCHMARKS.md, Flux-dev 1024², 0.125): the forward that captures costs ~130 ms more
# than an eager one at batch 1 (~200 ms at batch 2: the warm-up, the recording with the GPU idle,
# instantiation), a replay saves ~9 ms of 45 at batch 1 (~3-8 ms at batch 2), so a capture pays after
# ~15 replays: 17 uses with the eager first sighting and the capture itself. (The warm-up, one forward
# of that, now runs once per process: to be measured again, runbook part `graphs1024`.)
MIN_USES_FLAG = "SDIT_GRAPH_MIN_USES"
MIN_USES = 17
# Graphs pay where launching kernels takes longer than running them: image sizes. Beyond a 2048² image at 16
# pixels a token (Flux's 16,384 tokens) the sparse rows should keep the GPU busy while the host launches (an
# estimate: Flux-dev at 1024² and 0.125 was launch-bound with 768 rows, docs/BENCHMARKS.md; 2048² is runbook part
# `speed2048`), and a captured graph would keep a forward's whole working memory in the graphs' pool, outside
# ComfyUI's memory plan: videos (32,760 tokens for Wan 480p x 81 frames) run eagerly.
MAX_TOKENS_FLAG = "SDIT_GRAPH_MAX_TOKENS"
MAX_TOKENS = 16384
# Arguments a graph does not copy: the options dict (its Python values are read only at capture, so its plain
# top-level values, flags such as LTX-2's `run_vx` among them, are part of the key: `_option_flags`)
PASSTHROUGH = ("transformer_options",)


def capturing_graph(tensor: torch.Tensor) -> bool:
    """Is a CUDA graph being captured on the current stream (host reads of `tensor` would fail)?"""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def min_uses() -> int:
    return int(os.environ.get(MIN_USES_FLAG, MIN_USES))


def max_tokens() -> int:
    return int(os.environ.get(MAX_TOKENS_FLAG, MAX_TOKENS))


def graphs_requested() -> bool:
    return os.environ.get(ENV_FLAG, "1") != "0" and torch.cuda.is_available()


class CudaGraphBackend:
    """Captures with torch.cuda.CUDAGraph; the graphs of one run share one memory pool (they are
    replayed one at a time, and every replay's output is copied out before the next)."""

    def __init__(self):
        self._pool = None

    def supports(self, tensor: torch.Tensor) -> bool:
        return tensor.is_cuda

    def capture(self, body: Callable[[], torch.Tensor]):
        """Returns (replay, static output). Capture records kernels without running them, so the
        caller replays once to compute the first output."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        stream = _capture_stream(body)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
            output = body()
        return graph.replay, output


# The stream every capture of the process runs on, per device. Lazy per-stream state (cuBLAS handles
# and workspaces) must not be created during a capture, so PyTorch's recipe warms up first, on the
# stream that then captures (a warm-up on another stream leaves the capture stream cold). One warm-up
# per process, not per run: each costs a whole forward, and a key's first sighting already ran eagerly
# (plans and Triton kernels exist); its K/V writes repeat the eager ones.
_CAPTURE_STREAMS: Dict[int, Any] = {}


def _capture_stream(warm_up: Callable[[], Any]):
    device = torch.cuda.current_device()
    if device not in _CAPTURE_STREAMS:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            warm_up()
        torch.cuda.current_stream().wait_stream(stream)
        _CAPTURE_STREAMS[device] = stream          # kept only once warm
    return _CAPTURE_STREAMS[device]


def default_backend():
    return CudaGraphBackend() if graphs_requested() else None


def _is_structure(value: Any) -> bool:
    """A tuple, list or dict of named items whose tensors get static buffers (RoPE pairs, modulation lists,
    ControlNet's residuals: {"input": [a tensor or None per block], ...})."""
    return type(value) in (tuple, list) or (type(value) is dict and all(isinstance(key, str) for key in value))


def _items(value: Any):
    """(name, item) of a structure, in the order its signature and its buffers follow."""
    return sorted(value.items()) if type(value) is dict else enumerate(value)


def _signature(value: Any, seen: Optional[Dict[int, int]] = None) -> Hashable:
    """A graphed method's argument as its graph's key sees it: a tensor by its layout (a static buffer holds it), a
    structure item by item (a pair of RoPE tables gets a buffer each), anything else by value (`_plain`). A tensor a
    structure holds more than once (a ControlNet's residual handed to several blocks) has one buffer, so where it
    recurs the key says so (`seen`: the structure's tensors so far, by identity)."""
    seen = {} if seen is None else seen
    if torch.is_tensor(value):
        if id(value) in seen:
            return ("same as", seen[id(value)])
        seen[id(value)] = len(seen)
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.stride())
    if _is_structure(value):
        return (type(value).__name__,) + tuple((name, _signature(item, seen)) for name, item in _items(value))
    return _plain(value)


def _plain(value: Any) -> Hashable:
    """A value the graph bakes in at capture (a grid's (rows, cols)): keyed by value. Anything else (an object, a
    dict with other keys) makes the call ungraphable (TypeError)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(type(value).__name__)


def _option_flags(arguments: Dict[str, Any]) -> Hashable:
    """The plain top-level values of a graphed method's options (block index, LTX-2's `run_vx` / `a2v_cross_attn`):
    what the model's code reads there at capture is baked in, so a graph serves only the values it was captured with."""
    options = arguments.get("transformer_options") or {}
    return tuple(sorted((name, value) for name, value in options.items()
                        if value is None or isinstance(value, (bool, int, float, str))))


def tensors_in(value: Any) -> List[torch.Tensor]:
    """The tensors a graph copies in for an argument: itself, or those of a structure (nested)."""
    if torch.is_tensor(value):
        return [value]
    if _is_structure(value):
        return [tensor for _, item in _items(value) for tensor in tensors_in(item)]
    return []


def copied_tensors(arguments: Dict[str, Any]) -> List[torch.Tensor]:
    """Every tensor a graph copies in for a call's arguments: the options are not copied (their own tensors, the
    sigmas, the graph never reads), so they never decide whether a call can be graphed."""
    return [tensor for name, value in arguments.items() if name not in PASSTHROUGH for tensor in tensors_in(value)]


def _copy_in(static: Any, value: Any, done: Optional[set] = None) -> None:
    """Copies an argument's tensors into its static buffers (`static` has the argument's structure, and the same
    tensor where `value` has: the key says), each buffer once."""
    done = set() if done is None else done
    if torch.is_tensor(static):
        if id(static) not in done:
            static.copy_(value)
            done.add(id(static))
    elif _is_structure(static):
        for name, static_item in _items(static):
            _copy_in(static_item, value[name], done)


@dataclass
class _Graph:
    replay: Callable[[], None]
    output: Union[torch.Tensor, Tuple[torch.Tensor, ...]]     # a layer may return several tensors (Qwen-Image's pair)
    static_args: Dict[str, Any]               # argument name -> its static buffer (or its structure of them)
    static_index: torch.Tensor
    attention_image_rows: List[int]
    attention_calls: int                      # the forward's attention calls the graph makes


class GraphedForwards:
    """The captured forwards of one stream (owned by the stream, dropped with its caches)."""

    def __init__(self, backend):
        self.backend = backend
        self.enabled = True
        self._graphs: Dict[Hashable, _Graph] = {}
        self._sightings: Counter = Counter()
        # Static buffers by (role, signature), shared by the graphs of this stream: graphs replay one
        # at a time and each copies its inputs in first, so the layers of a per-layer forward need
        # one set of inputs and one output between them, not one per layer.
        self._buffers: Dict[Hashable, torch.Tensor] = {}
        self.replays = 0                        # forwards replayed from a graph (for benchmarks)
        self.captures = 0

    def key(self, call, arguments: Dict[str, Any], site: str = "") -> Optional[Hashable]:
        """The graph key of this forward (of the part of it at `site`), or None when it cannot be graphed."""
        try:
            args = tuple((name, _signature(value)) for name, value in arguments.items() if name not in PASSTHROUGH)
        except TypeError:
            return None                         # an argument of another kind (an object): run eagerly
        index = call.image_index_now()
        if index is None:
            return None
        return (site, call.attention_calls, args, _option_flags(arguments), tuple(index.shape), index.device,
                call.shared_index, call.stream.kv.generation)

    def run(self, call, arguments: Dict[str, Any], forward: Callable[[Dict[str, Any]], torch.Tensor],
            site: str = "") -> torch.Tensor:
        """Runs `forward(arguments)` for a sparse forward call: eagerly, by capture, or by replay.
        `site` names the graphed part of the forward: the whole token-sparse part (Flux, SD3), or one
        layer of it (Lumina 2: a graph per layer, each writing its own layer's K/V). Callers ask
        `worth_keying` first (families/base.py _may_graph)."""
        key = self.key(call, arguments, site)
        if key is None:
            return forward(arguments)
        graph = self._graphs.get(key)
        if graph is None:
            self._sightings[key] += 1
            if self._sightings[key] < 2 or not self._capture_pays(call):
                return forward(arguments)
            recorded_before = len(call.record.attention_image_rows)
            attention_before = call.attention_calls
            try:
                graph = self._capture(key, call, arguments, forward)
            except RuntimeError as error:       # CUDA refused an operation (an interrupt still propagates)
                logging.warning("SDiT: CUDA graph capture failed (%s); this run continues without graphs", error)
                self.enabled = False
                del call.record.attention_image_rows[recorded_before:]
                call.forget_derived()           # what the failed capture derived is not to be trusted
                call.attention_calls = attention_before
                return forward(arguments)
        for name, static in graph.static_args.items():
            _copy_in(static, arguments[name])
        graph.static_index.copy_(call.image_index_now())
        first_layer = call.attention_calls
        graph.replay()
        self.replays += 1
        call.record.attention_image_rows.extend(graph.attention_image_rows)
        call.attention_calls = first_layer + graph.attention_calls
        if isinstance(graph.output, tuple):
            return tuple(output.clone() for output in graph.output)
        return graph.output.clone()

    def worth_keying(self, call) -> bool:
        """Could this forward replay or be captured? With nothing captured and nothing worth capturing
        the caller skips the key and the argument checks (a forward graphed by layer asks per layer)."""
        return self.enabled and (bool(self._graphs) or self._capture_pays(call))

    @staticmethod
    def _capture_pays(call) -> bool:
        """Will this count come back often enough to repay a capture, on a grid small enough to gain from
        one (MAX_TOKENS)? Only the policy knows its plan. Asked once per forward (a forward graphed layer
        by layer asks at every layer)."""
        if "capture pays" not in call.scratch:
            uses = call.run.policy.planned_uses(call.info, int(call.grid_index.shape[1]))
            call.scratch["capture pays"] = (uses is not None and uses >= min_uses()
                                            and call.grid_tokens <= max_tokens())
        return call.scratch["capture pays"]

    def _buffer(self, role: str, like: torch.Tensor) -> torch.Tensor:
        """The stream's static buffer for `role` and `like`'s signature, holding `like`'s values."""
        key = (role, _signature(like))
        if key not in self._buffers:
            self._buffers[key] = torch.empty_like(like)
        return self._buffers[key].copy_(like)

    def _static(self, role: str, value: Any, made: Optional[Dict[int, torch.Tensor]] = None) -> Any:
        """`value` with each of its tensors replaced by the stream's static buffer for it (`_buffer`); a tensor that
        recurs in a structure by the same buffer (`made`: the structure's buffers so far, by the tensor's identity)."""
        made = {} if made is None else made
        if torch.is_tensor(value):
            if id(value) not in made:
                made[id(value)] = self._buffer(role, value)
            return made[id(value)]
        if type(value) is dict:
            return {name: self._static(f"{role}.{name}", item, made) for name, item in value.items()}
        if type(value) in (tuple, list):
            return type(value)(self._static(f"{role}.{i}", item, made) for i, item in enumerate(value))
        return value

    def _capture(self, key, call, arguments, forward) -> _Graph:
        static_args = {name: self._static("argument " + name, value) for name, value in arguments.items()
                       if tensors_in(value) and name not in PASSTHROUGH}
        static_index = self._buffer("index", call.image_index_now())
        capture_arguments = dict(arguments, **static_args)
        recorded: List[int] = []
        first_layer = call.attention_calls
        made = [0]                              # attention calls the graphed part makes

        def body() -> torch.Tensor:
            # Runs once, at capture, as this call. (A stand-in backend that replays by running it
            # again still sees only the capture's call and buffers, as a CUDA graph does.)
            call.use_static_index(static_index)  # this graph's own index buffer (one graph per layer: several)
            call.forget_derived()               # recomputed from the static buffers, inside the graph
            call.attention_calls = first_layer  # each run of the body writes the same layers' K/V
            rows = call.record.attention_image_rows
            start, current = len(rows), call.run.current
            call.run.current = call
            try:
                output = forward(capture_arguments)
            finally:
                call.run.current = current
            recorded[:] = rows[start:]          # what a replay adds to its call's record
            del rows[start:]
            made[0] = call.attention_calls - first_layer
            # into the stream's shared output buffers (allocated in the graphs' pool at the first capture
            # and kept), so the output the capture allocated goes back to the pool
            if isinstance(output, tuple):
                return tuple(self._buffer(f"output {i}", part) for i, part in enumerate(output))
            return self._buffer("output", output)

        replay, output = self.backend.capture(body)
        call.attention_calls = first_layer      # the replay that follows the capture moves it on
        graph = _Graph(replay, output, static_args, static_index, recorded, made[0])
        self._graphs[key] = graph
        self.captures += 1
        return graph
