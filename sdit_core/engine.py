"""The token-sparse engine: one sampling run of forwards that compute only a subset of image tokens.

Data flow of one model forward (a model adapter drives it; see docs/ARCHITECTURE.md):

    run.open_forward(...)      -> ForwardCall: dense, or the active token index per batch row
    call.gather(img tokens)    -> only active image tokens (plus always-active extra tokens) enter
    call.attention(...)        -> every attention: write fresh K/V into the layer's joint cache,
                                  attend active queries against text + the whole image cache
    call.scatter(output)       -> full-size token output; inactive tokens take the policy's value
    run.close_forward(call)

Forwards are grouped into *streams*: the rows of one forward call (e.g. cond+uncond batched, or
cond alone when ComfyUI splits them; another network, e.g. Skip Layer Guidance's, is another stream).
Each stream owns its K/V cache and last output. A stream that has not yet run densely is run densely,
so the caches are always complete; one that sits out an evaluation is dropped. A context window of a
video (the host runs the model once per window of frames) is a stream of its own, running the planned
tokens of its frames (frame_windows.py).

Forwards of one evaluation may run at once in several threads (newer ComfyUI runs cond and uncond on
two GPUs in a thread pool): the forward in progress is kept per thread, and the run's bookkeeping is
under a lock.
"""
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from .count_grid import round_up_count
from .forward_graphs import GraphedForwards, capturing_graph
from .frame_windows import window_active, window_tokens
from .kv_cache import Dequantizer, JointKVCache, RowWriter, dequantize_reference, size_text, write_rows_reference
from . import profiling
from .policy import EvalInfo, TokenPolicy
from .schedule import step_of_sigma
from .tokens import gather_rows, is_latent_shape, same_rows, scatter_rows_, token_grid, validate_active_index

MOVING_WINDOWS = ("the context windows move from step to step (ComfyUI's uniform context schedules), so a window's "
                  "forward finds no cache of its frames and runs dense (no speed-up, and no cache kept); the "
                  "standard_static or batched context schedule keeps the windows in place")

OUTGREW_PLAN = ("the K/V caches hold {held}, more than the {planned} planned with ComfyUI's memory: another node "
                "evaluates the model more often per step (e.g. Skip Layer Guidance's perturbed network, a cache of "
                "its own); if memory runs short, kv_cache fp8_e4m3 halves the caches")

@dataclass
class CallRecord:
    """What one forward call actually pushed through the transformer."""
    stream: Hashable
    rows: int
    dense: bool
    image_tokens: int                   # grid tokens per row that entered the blocks
    grid_tokens: int = 0                # grid tokens per row the call covers (a context window: its frames')
    attention_image_rows: List[int] = field(default_factory=list)   # image query rows, per attention call


@dataclass
class EvalRecord:
    info: EvalInfo
    active: Optional[torch.Tensor]      # (batch, n) on CPU, None when planned dense
    calls: List[CallRecord] = field(default_factory=list)
    side_calls: List[CallRecord] = field(default_factory=list)     # networks that feed the model's (ControlNets)
    shared: bool = True                 # every image has the same active set
    windows: Dict[Tuple[int, ...], Tuple[torch.Tensor, bool]] = field(default_factory=dict)   # frame_windows.py

    @property
    def dense(self) -> bool:
        return all(c.dense for c in self.calls) if self.calls else self.active is None


class Stream:
    def __init__(self, key: Hashable, write_rows: RowWriter = write_rows_reference, graph_backend=None,
                 kv_store: Optional[str] = None, dequantize: Dequantizer = dequantize_reference):
        self.key = key
        self.kv = JointKVCache(write_rows, kv_store, dequantize)
        # captured sparse forwards (forward_graphs.py); None: every forward runs eagerly
        self.graphs = GraphedForwards(graph_backend) if graph_backend is not None else None
        self.last_output: Optional[torch.Tensor] = None
        self.primed = False             # a dense forward completed: caches hold every token
        self.window: Optional[Tuple[int, ...]] = None   # the context window's frames (frame_windows.py)
        self.last_eval = -1             # the evaluation that last ran it
        self.network: Hashable = None   # which of the model's networks it runs (SparseRun.open_forward)
        self.lineage: Hashable = None   # the forwards it continues under other weights (SparseRun.open_forward)
        self.carried: dict = {}         # what an adapter keeps between this stream's forwards, by its own key


class ForwardCall:
    """One forward of the diffusion model under the engine."""

    def __init__(self, run: "SparseRun", stream: Stream, info: EvalInfo, dense: bool,
                 grid_index: Optional[torch.Tensor], grid: Tuple[int, ...], shared_index: bool = False,
                 keeps_cache: bool = True):
        self.run = run
        self.stream = stream
        self.info = info
        self.dense = dense
        self.keeps_cache = keeps_cache    # a dense forward stores its K/V (not where nothing will read them)
        self.grid_index = grid_index      # (rows, n) active grid tokens, None when dense
        self.grid = tuple(grid)           # this call's latent token grid: (rows, cols) or (frames, rows, cols)
        self.grid_tokens = math.prod(grid)   # its tokens (extra tokens such as references follow)
        self.text_len = 0                 # adapters that need it: text tokens of this forward
        self.shared_index = shared_index  # every row has the same active tokens (known on the CPU)
        self.image_rows: Optional[int] = None   # image-sequence tokens that entered the blocks (None: not yet)
        self._image_index: Optional[torch.Tensor] = None   # grid index + always-active extra tokens
        self._image_index_key: Optional[Tuple[int, torch.device]] = None   # (image sequence length, device)
        self._joint_rows: Dict[Tuple[int, torch.device], torch.Tensor] = {}   # by text prefix length
        self.attention_calls = 0          # attention calls over the image tokens so far: the next one's K/V layer
        self.passthrough = 0              # > 0 inside attention that is not over the image tokens (cross-attention)
        self.image_keys = 0               # > 0 inside attention of others' queries to the image tokens (LTX-2's audio)
        # > 0 inside attention over the grid's tokens alone, one each, without the image sequence's extra tokens (a
        # control network's tokens beside the model's, Z-Image's Fun ControlNet: its own K/V cache layers)
        self.grid_keys = 0
        # set inside a layer of another network that runs beside the model's, token-sparse (a Fun ControlNet's tower
        # between the model's blocks): its K/V cache layer by this name, outside the model's numbered layers, so a
        # forward where that network does not run (its start or end percent) keeps the model's layers where they were
        self.layer_name: Optional[Hashable] = None
        self.image_first = False          # joint attention is [image | text] (HunyuanVideo), not [text | image]
        self.image_lead = 0               # image first: tokens that always run before the image sequence
        self.queries_end_keys = False     # a model's queries may be the keys' last rows (HiDream-O1, SenseNova)
        # trailing extra tokens (references) that a node took out of the queries after the gather while their keys
        # and values stay in attention (ComfyUI's Flux KV Cache): the model's output lacks their rows
        self.dropped_extras = 0
        # an adapter hands its graphed parts plain values that follow the active set, not only its size (HunyuanVideo's
        # token-replacement spans): a graph keyed by them would seldom come back, so this forward runs eagerly
        self.stays_eager = False
        self.scratch: Dict[Hashable, torch.Tensor] = {}   # adapters' per-forward memo (e.g. gathered RoPE)
        # adapters' facts of this forward's token layout (grid shape, leading tokens), learnt as it runs: unlike the
        # memos, kept when a graph capture recomputes what derives from the index
        self.layout: Dict[Hashable, object] = {}
        self.feeds = False                # another network's forward that feeds the model's (open_forward)
        self.feeds_index: Optional[torch.Tensor] = None   # (rows, n): the rows its output must come in
        self.record = CallRecord(stream.key, 0, dense, self.grid_tokens if dense else int(grid_index.shape[1]),
                                 self.grid_tokens)
        self.eval_record: Optional[EvalRecord] = None    # the evaluation this forward belongs to

    # ---- gather / scatter -------------------------------------------------------------------
    def image_index(self, total_tokens: int, device: torch.device) -> torch.Tensor:
        """Rows of the image sequence that run: active grid tokens, then every extra token
        (e.g. Flux Kontext reference tokens appended after the grid), which always run."""
        if self._image_index_key != (total_tokens, device):
            extra = total_tokens - self.grid_tokens
            if extra < 0:
                raise ValueError(f"image sequence of {total_tokens} tokens is shorter than the grid ({self.grid_tokens})")
            index = self.grid_index.to(device)
            if extra:
                tail = torch.arange(self.grid_tokens, total_tokens, device=device).expand(index.shape[0], -1)
                index = torch.cat([index, tail], dim=1)
            self._image_index, self._image_index_key = index, (total_tokens, device)
        return self._image_index

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, N_image, ...) -> (rows, n_active, ...): the image sequence (grid tokens, then any
        always-active extra tokens) entering the blocks. Attention calls before the first gather
        (e.g. text-only refiner layers) pass through untouched."""
        if self.dense:
            self.image_rows = tokens.shape[1]
            return tokens
        index = self.image_index(tokens.shape[1], tokens.device)
        self.image_rows = index.shape[1]
        with profiling.span(profiling.GATHER):
            return gather_rows(tokens, index)

    def position_after_gather(self, position: int) -> int:
        """Where `position` of the full image sequence sits in the gathered one: for a position at or
        after the grid (reference tokens and other always-running extras, which follow the active grid
        tokens in the same order). Models that mark reference tokens by position (Flux 2 / Qwen-Image
        edit with `index_timestep_zero`) need it."""
        if self.dense:
            return position
        if position < self.grid_tokens:
            raise NotImplementedError(f"a position inside the image grid ({position} < {self.grid_tokens}) "
                                      "cannot be mapped to a token-sparse sequence")
        return position - self.grid_tokens + int(self.grid_index.shape[1])

    @property
    def running_grid_tokens(self) -> int:
        """Grid tokens this forward runs: all of them dense, the active ones sparse (known on the host)."""
        return self.grid_tokens if self.dense else int(self.grid_index.shape[1])

    @property
    def image_sequence_length(self) -> int:
        """Tokens of the whole image sequence (grid, then extra tokens) as the last gather saw it."""
        return self._image_index_key[0] if self._image_index_key is not None else self.grid_tokens

    def image_index_now(self) -> Optional[torch.Tensor]:
        """The index the last gather used (None before the first gather)."""
        return self._image_index

    def use_static_index(self, buffer: torch.Tensor) -> None:
        """From now on read the image index from `buffer` (a CUDA graph's static copy of it)."""
        self._image_index = buffer

    def forget_derived(self) -> None:
        """Drops what attention derived from the index (joint rows, adapters' memos): a graphed
        forward computes them again from the static index buffer. `layout` stays: no index made it."""
        self._joint_rows.clear()
        self.scratch.clear()

    def gather_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Gathers a tensor that covers the grid tokens (or a prefix of the image sequence, as
        ControlNet residuals do) so it lines up with the gathered image sequence."""
        if self.dense:
            return tokens
        if tokens.shape[1] == self.grid_tokens:
            return gather_rows(tokens, self.grid_index.to(tokens.device))
        return gather_rows(tokens, self.image_index(tokens.shape[1], tokens.device))

    def scatter(self, output: torch.Tensor) -> torch.Tensor:
        """Full-size token output: computed rows from `output`, inactive rows from the policy. Rows of extra tokens
        that a node dropped from the queries (`dropped_extras`) come back zero: the model cuts the grid's rows from
        its output, and every forward of a stream keeps one length."""
        if self.dropped_extras and output.shape[1] + self.dropped_extras == self.image_rows:
            output = torch.cat([output, output.new_zeros(output.shape[0], self.dropped_extras, *output.shape[2:])], 1)
        if self.dense:
            full = output
        else:
            fill = self.run.policy.inactive_output(self.stream.key, self.info, self.stream.last_output)
            index = self.image_index(fill.shape[1], output.device)
            if output.shape[1] != index.shape[1]:
                raise ValueError(f"model returned {output.shape[1]} tokens, {index.shape[1]} were sent in")
            with profiling.span(profiling.SCATTER):
                full = scatter_rows_(fill.to(output.device, output.dtype, copy=True), index, output)
        self.stream.last_output = full.detach().clone()
        self.run.policy.on_output(self.stream.key, self.info, self.stream.last_output,
                                  None if self.dense else self.grid_index)
        return full

    def attention_went_past(self) -> bool:
        """Did attention over the image tokens of this sparse forward go past the engine (called without its
        override: a global replacement of ComfyUI's attention, an override another node set over ours, a model
        that does not hand attention ComfyUI's transformer_options)? Then it saw the running tokens only. Every
        supported model's image tokens attend to each other, so a dense forward that stored no layer, or a
        sparse forward that ran fewer layers through the cache than the dense one stored, tells."""
        if self.dense or self.image_rows is None:      # dense, or the model body never ran
            return False
        numbered = self.stream.kv.numbered_layers()
        return numbered == 0 or self.attention_calls != numbered

    # ---- attention ----------------------------------------------------------------------------
    def attention(self, attend: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  heads: int, kwargs: dict) -> torch.Tensor:
        """Runs one attention call of the forward. `attend(q, k, v, heads, **kwargs)` is the
        attention implementation ComfyUI chose (or an override another node installed)."""
        if self.image_rows is None or self.passthrough:   # text-only layers, cross-attention to the context
            return attend(q, k, v, heads, **kwargs)
        seq_dim = 2 if kwargs.get("skip_reshape", False) else 1
        running = self.image_rows          # the image rows of this call's keys that ran
        if self.grid_keys:
            # Self-attention over the grid's tokens alone (a control network's, one per grid token): queries and keys
            # are the running grid tokens in the image sequence's order; the layer's cache holds every grid token.
            others, running = None, self.running_grid_tokens
            if q.shape[seq_dim] != running or k.shape[seq_dim] != running or kwargs.get("mask") is not None:
                raise NotImplementedError(f"attention over {q.shape[seq_dim]} queries and {k.shape[seq_dim]} keys (or "
                                          f"with a mask) where the {running} grid tokens that run were expected")
        elif self.image_keys:
            # Queries of another sequence (LTX-2's audio, which always runs) attend to the image tokens alone:
            # their keys and values are completed from the cache as in self-attention, the queries stay as they are.
            others = 0
            if k.shape[seq_dim] != self.image_rows or kwargs.get("mask") is not None:
                raise NotImplementedError(f"attention to {k.shape[seq_dim]} keys with a mask or other than the "
                                          f"{self.image_rows} image tokens that run cannot use the K/V cache")
        else:
            # Image tokens come last; whatever precedes them (text, registers) always runs. Image-only
            # attention (SD3.5's second attention, Lumina's noise refiner) has no prefix. Families that put
            # the image first (HunyuanVideo) have the text as a suffix instead. Where the adapter says so, the
            # queries are the keys' last rows (the keys' first rows attend apart): the layout is the keys'.
            others = k.shape[seq_dim] - self.image_rows
            if k.shape[seq_dim] != q.shape[seq_dim] and not (self.queries_end_keys
                                                             and k.shape[seq_dim] > q.shape[seq_dim]):
                self._note_dropped_extras(k.shape[seq_dim] - q.shape[seq_dim], kwargs.get("mask"))
            if others < 0:
                raise ValueError(f"attention over {q.shape[seq_dim]} tokens, fewer than the {self.image_rows} image "
                                 "tokens")
        if self.layer_name is not None:
            layer = self.layer_name
        else:
            layer = self.attention_calls
            self.attention_calls += 1
            self.record.attention_image_rows.append(running)
        if self.dense:
            if self.keeps_cache:
                self.stream.kv.store_dense(layer, k, v, seq_dim)
            return attend(q, k, v, heads, **kwargs)
        rows = self.joint_rows(k.device, others) if others is not None else self.grid_rows(k.device, running)
        with profiling.span(profiling.KV_WRITE):
            k_full, v_full = self.stream.kv.write_sparse(layer, k, v, rows, seq_dim, self.shared_index)
        mask = kwargs.get("mask")
        if mask is not None:
            kwargs = dict(kwargs, mask=self._fit_mask(mask, rows, self.image_start(others), k_full.shape[seq_dim]))
        return attend(q, k_full, v_full, heads, **kwargs)

    def _note_dropped_extras(self, dropped: int, mask: Optional[torch.Tensor]) -> None:
        """Keys beyond the queries: the queries are the keys' first rows, [others | image] without the image sequence's
        last `dropped` extra tokens, whose keys and values a node keeps from an earlier step and hands attention again
        (ComfyUI's Flux KV Cache: the reference images' tokens). The keys keep the whole layout, so the cache path
        applies as it is; the output of the forward lacks those tokens' rows (scatter fills them)."""
        extras = self.image_rows - self.running_grid_tokens
        if self.image_first or not 0 < dropped <= extras or mask is not None:
            raise NotImplementedError(
                f"attention over {dropped} more keys than queries{' with a mask' if mask is not None else ''}: another "
                "node changes the keys/values of the model's attention in a way region-adaptive sampling cannot follow "
                "(it follows ComfyUI's Flux KV Cache on Flux, Qwen-Image and Krea 2, without an attention mask)")
        self.dropped_extras = dropped

    def grid_rows(self, device: torch.device, running: int) -> torch.Tensor:
        """(rows, running): the running grid tokens' rows among the grid's, the image index's first columns (a CUDA
        graph's static buffer, where one is read), once per forward."""
        key = ("grid", device)
        if key not in self._joint_rows:
            if self._image_index is None:
                raise RuntimeError("attention ran before the image tokens were gathered")
            self._joint_rows[key] = self._image_index.to(device)[:, :running]
        return self._joint_rows[key]

    def image_start(self, others: int) -> int:
        """Where the image sequence starts in a joint sequence with `others` tokens beside it: after them
        ([others | image]) or, image first, after the `image_lead` of them ([lead | image | the rest])."""
        return self.image_lead if self.image_first else others

    def joint_rows(self, device: torch.device, others: int) -> torch.Tensor:
        """(rows, others + n): where each row that runs sits in the full joint sequence, [others | image]
        or, image first, [lead | image | the other others] (the whole image sequence between them);
        computed once per forward, so attention layers launch no index arithmetic."""
        key = (others, device)
        if key not in self._joint_rows:
            if self._image_index is None:
                raise RuntimeError("attention ran before the image tokens were gathered")
            image = self._image_index.to(device)
            start, image_total = self.image_start(others), self.image_sequence_length
            before = torch.arange(start, device=device)
            after = torch.arange(start + image_total, image_total + others, device=device)
            self._joint_rows[key] = torch.cat([before.expand(image.shape[0], -1), image + start,
                                               after.expand(image.shape[0], -1)], dim=1)
        return self._joint_rows[key]

    def _fit_mask(self, mask: torch.Tensor, rows: torch.Tensor, image_start: int, full_len: int) -> torch.Tensor:
        """An attention mask as the model built it, fitted to the sparse call: queries are the rows that
        ran, keys the whole cache. A mask built for the dense sequence (older ComfyUI) keeps its active
        query rows; one built for the sequence that ran (newer ComfyUI builds it from the tensors it
        sees) gets its key columns spread over the cache."""
        sparse_len = rows.shape[1]
        if mask.shape[-1] == sparse_len != full_len:
            mask = self._spread_mask_keys(mask, rows, image_start, full_len)
        elif mask.shape[-1] != full_len:
            raise ValueError(f"attention mask over {mask.shape[-1]} keys, expected {sparse_len} or {full_len}")
        if mask.shape[-2] in (1, sparse_len):
            return mask
        return self._gather_mask_queries(mask, rows, full_len)

    def _spread_mask_keys(self, mask: torch.Tensor, rows: torch.Tensor, image_start: int, full_len: int) -> torch.Tensor:
        """Key columns of a mask over the rows that ran -> over the whole joint sequence. The image tokens
        that did not run take the value the image columns share; a mask that tells image tokens apart
        cannot be extended (checked on the forward's first masked call: one host sync)."""
        image = mask[..., image_start: image_start + self.image_rows]
        # (not while a CUDA graph is captured: the eager forward before the capture checked it)
        if "mask_checked" not in self.scratch and not capturing_graph(mask):
            if not bool((image == image[..., :1]).all()):
                raise NotImplementedError("an attention mask that differs between image tokens cannot be used "
                                          "with region-adaptive sampling")
            self.scratch["mask_checked"] = True
        batch = rows.shape[0]
        m = mask if mask.ndim > 2 else mask[None]                    # (rows|1, [heads,] Lq, Ls)
        if m.shape[0] != batch:
            m = m.expand(batch, *m.shape[1:])
        full = m[..., image_start:image_start + 1].expand(*m.shape[:-1], full_len).clone()
        index = rows.to(mask.device).view(batch, *([1] * (m.ndim - 2)), -1).expand(*m.shape)
        full.scatter_(-1, index, m)
        return full[0] if mask.ndim == 2 and batch == 1 else full

    def _gather_mask_queries(self, mask: torch.Tensor, query_rows: torch.Tensor, full_len: int) -> torch.Tensor:
        """An attention mask built for the dense sequence covers all query rows; keep the active ones."""
        if mask.shape[-2] != full_len:
            raise ValueError(f"attention mask with {mask.shape[-2]} query rows, expected 1 or {full_len}")
        rows = query_rows.shape[0]
        query_rows = query_rows.to(mask.device)
        m = mask[None] if mask.ndim == 2 else mask                             # (rows|1, [heads,] Lq, Lk)
        if m.shape[0] == 1 and rows > 1:
            m = m.expand(rows, *m.shape[1:])
        index = query_rows.view(rows, *([1] * (m.ndim - 3)), -1, 1).expand(*m.shape[:-2], -1, m.shape[-1])
        return torch.gather(m, m.ndim - 2, index)


class SparseRun:
    """State of one sampling run: the policy, per-stream caches and the record of every evaluation."""

    def __init__(self, policy: TokenPolicy, latent_shape: Tuple[int, ...], patch_size: int,
                 write_rows: RowWriter = write_rows_reference, graph_backend=None, kv_store: Optional[str] = None,
                 dequantize: Dequantizer = dequantize_reference,
                 temporal_patch: int = 1):
        if not is_latent_shape(latent_shape):
            raise ValueError(f"expected a (batch, channels, [frames,] height, width) latent, got shape "
                             f"{tuple(latent_shape)}")
        self.policy = policy
        self.batch = int(latent_shape[0])
        self.latent_shape = tuple(int(d) for d in latent_shape)   # the tokens' latent (a packed one's first part)
        self.patch_size = int(patch_size)
        self.temporal_patch = int(temporal_patch)
        self.write_rows = write_rows
        self.dequantize = dequantize    # fp8 K/V cache layers -> the model's dtype (kernels/fp8_dequant.py)
        self.graph_backend = graph_backend
        self.graph_captures = self.graph_replays = 0     # CUDA-graph counts of released streams
        self.dense_only = False         # run every evaluation dense (a sampler the policy cannot follow)
        self.note = ""                  # said in the after-run line (e.g. why the run was dense)
        self.kv_store = kv_store        # None / "model dtype": as the model computes them; "fp8_e4m3" (kv_cache.py)
        self.grid = self.grid_of(latent_shape)
        self.context_handler = None         # the host's context windows of this run (opaque here)
        self.windows_move = False           # they did: window forwards run dense and keep no cache
        self._windows_seen: set = set()     # every context window's frames run so far
        self.count_grid = 1                 # sparse counts rounded up to a multiple of this (count_grid.py; the host sets it)
        self.kv_planned_bytes = 0           # the K/V cache the host planned memory for (nodes/memory_plan.py)
        self.kv_peak_bytes = 0              # the most the streams' K/V caches held at once
        self._waited: Optional[torch.Tensor] = None      # (batch, N) evaluations since each token last ran
        self.streams: Dict[Hashable, Stream] = {}
        self.evals: List[EvalRecord] = []
        self._sigma: Optional[float] = None
        self._streams_in_eval: set = set()
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def current(self) -> Optional["ForwardCall"]:
        """The forward in progress in this thread."""
        return getattr(self._local, "call", None)

    @current.setter
    def current(self, call: Optional["ForwardCall"]) -> None:
        self._local.call = call

    def grid_of(self, latent_shape) -> Tuple[int, ...]:
        """(rows, cols), or (frames, rows, cols) for a video (sdit_core/tokens.py token_grid)."""
        return token_grid(latent_shape, self.patch_size, self.temporal_patch)

    def _begin_eval(self, sigma: float, sample_sigmas: Optional[torch.Tensor]) -> EvalRecord:
        self._drop_idle_streams()
        if self.evals:
            self.evals[-1].windows.clear()      # the finished evaluation's window indices are not read again
        steps = int(sample_sigmas.shape[-1]) - 1 if sample_sigmas is not None else 1
        step = step_of_sigma(sample_sigmas, sigma) if sample_sigmas is not None else len(self.evals)
        info = EvalInfo(index=len(self.evals), step=step, steps=max(steps, 1), sigma=sigma,
                        grid=self.grid, batch=self.batch, count_grid=self.count_grid)
        with profiling.span(profiling.PLAN):
            active = None if self.dense_only else self.policy.plan(info)
        if active is not None:
            # checked on a host copy: one copy per evaluation instead of a GPU read per check
            active = validate_active_index(active.cpu(), self.batch, info.num_tokens)
            active = round_up_count(active, self._waited, self.count_grid, info.num_tokens, self.policy.selectable)
        self._note_ran(active, info.num_tokens)
        record = EvalRecord(info, active)
        record.shared = active is None or same_rows(record.active)
        self.evals.append(record)
        self._sigma = sigma
        return record

    def _note_ran(self, active: Optional[torch.Tensor], num_tokens: int) -> None:
        if active is None or self._waited is None:
            self._waited = torch.zeros(self.batch, num_tokens, dtype=torch.int64)
        if active is not None:
            self._waited += 1
            self._waited.scatter_(1, active, 0)

    def open_forward(self, latent_shape: Tuple[int, ...], sigma: float,
                     sample_sigmas: Optional[torch.Tensor], stream_key: Hashable,
                     frames: Optional[Sequence[int]] = None, network: Hashable = None,
                     feeds: Hashable = None, lineage: Hashable = None) -> ForwardCall:
        """`frames`: the video frames the call's latent holds, in its order, when it is a context window
        of the run's video (frame_windows.py); None: the call covers the run's latent. `network`: which of the
        model's networks runs the call, where the model switches them by sigma (Prism's two video towers): each
        has streams of its own, and the first forward of one drops the other's (their caches are not read
        again, and two networks' caches at once would double the memory). `feeds`: the stream key of the model's
        forward that this call's output feeds at this evaluation (a ControlNet's, which ComfyUI runs before the
        model's): the call runs sparse only where that forward will, and `call.feeds_index` is the grid index that
        forward will run (None: dense), the rows its output must come in. `lineage`: the forwards a new stream
        continues under other weights (a prompt whose LoRA strength a hook keyframe changed): its first forward drops
        the other streams of that lineage, whose caches are not read again (and would exceed the memory plan)."""
        rows = int(latent_shape[0])
        grid = self.grid_of(latent_shape)
        window = self._window(grid, frames)
        key = (stream_key, network, rows, grid) if window is None else (stream_key, network, rows, grid, window)
        with self._lock:
            # A new evaluation starts when sigma moves, or when a stream comes back at the same sigma
            # (within one evaluation every stream runs once).
            if self._sigma is None or sigma != self._sigma or key in self._streams_in_eval:
                self._begin_eval(sigma, sample_sigmas)
                self._streams_in_eval = set()
            self._streams_in_eval.add(key)
            record = self.evals[-1]
            if window is not None:
                self._follow_window(window, record.info.index)
            keeps_cache = self._cache_is_read(grid, window, rows)
            stream = self.streams.get(key)
            if stream is None:
                for other in [k for k, s in self.streams.items()
                              if s.network != network or (lineage is not None and s.lineage == lineage)]:
                    self._drop_stream(other)
                stream = self.streams[key] = Stream(key, self.write_rows, self.graph_backend, self.kv_store,
                                                    self.dequantize)
                stream.window, stream.network, stream.lineage = window, network, lineage
            stream.last_eval = record.info.index
            # Dense when planned, when this stream's caches are not complete yet, or when it keeps none.
            dense = record.active is None or not stream.primed or not keeps_cache
            fed_sparse = feeds is not None and window is None and self._runs_sparse((feeds, network, rows, grid))
            if feeds is not None:
                dense = dense or not fed_sparse
            shared = record.shared
            if dense:
                index = None
            elif window is None:
                index = record.active
            else:
                index, shared = self._window_index(record, window)
        grid_index = None if dense else index.repeat(rows // self.batch, 1)
        call = ForwardCall(self, stream, record.info, dense, grid_index, grid, shared_index=shared,
                           keeps_cache=keeps_cache)
        call.record.rows = rows
        call.eval_record = record
        call.feeds = feeds is not None
        if call.feeds and fed_sparse:
            call.feeds_index = record.active.repeat(rows // self.batch, 1)
        self.current = call
        return call

    def _runs_sparse(self, key: Hashable) -> bool:
        """Will the stream `key`'s forward at the current evaluation run sparse (as open_forward decides)?"""
        stream = self.streams.get(key)
        return (self.evals[-1].active is not None and stream is not None and stream.primed
                and self._cache_is_read(key[3], None, key[2]))

    def _window(self, grid: Tuple[int, ...], frames: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
        """The frames of a context window the engine can follow, or None: a window of a video whose
        tokens are one latent frame deep, with the run's frame size, each frame in the video."""
        if frames is None or len(self.grid) != 3 or self.temporal_patch != 1 or len(grid) != 3:
            return None
        frames = tuple(int(f) for f in frames)
        if len(frames) != grid[0] or grid[1:] != self.grid[1:] or not all(0 <= f < self.grid[0] for f in frames):
            return None
        return None if frames == tuple(range(self.grid[0])) else frames

    def _cache_is_read(self, grid: Tuple[int, ...], window: Optional[Tuple[int, ...]], rows: int) -> bool:
        """Can a later forward of this call's stream run sparse on the cache it would store? Not a call over
        another grid than the run's or a window's (area conditioning's crop), over rows that are not whole
        images, in a run dense throughout, or in a window once the windows move: those always run dense."""
        if self.dense_only or rows % self.batch != 0:
            return False
        return not self.windows_move if window is not None else grid == self.grid

    def _follow_window(self, window: Tuple[int, ...], evaluation: int) -> None:
        """A window never run before while windows of an earlier evaluation are held: the windows move
        from step to step (ComfyUI's uniform schedules), so a window's forward will find no cache of its
        frames. Window caches are dropped then, and window forwards keep none from then on (each step's
        would otherwise stay held beside the next step's, and never be read)."""
        new = window not in self._windows_seen
        self._windows_seen.add(window)
        if not new or self.windows_move or not any(s.window is not None and s.last_eval < evaluation
                                                   for s in self.streams.values()):
            return
        self.windows_move = True
        for key in [k for k, s in self.streams.items() if s.window is not None]:
            self._drop_stream(key)
        self.note = self.note or MOVING_WINDOWS
        logging.warning("region-adaptive sampling: %s", MOVING_WINDOWS)

    def _window_index(self, record: EvalRecord, window: Tuple[int, ...]) -> Tuple[torch.Tensor, bool]:
        """The evaluation's active set in a window's numbering (once per evaluation and window)."""
        if window not in record.windows:
            tokens = window_tokens(window, self.grid[1] * self.grid[2])
            index = window_active(record.active, tokens, record.info.num_tokens, self._waited, self.count_grid,
                                  self.policy.selectable)
            record.windows[window] = (index, same_rows(index))
        return record.windows[window]

    def close_forward(self, call: ForwardCall, completed: bool) -> None:
        if self.current is call:
            self.current = None
        if completed:
            if call.image_rows is None:     # the model body never ran (e.g. EasyCache skipped the step)
                call.record.image_tokens = 0
            with self._lock:
                (call.eval_record.side_calls if call.feeds else call.eval_record.calls).append(call.record)
                if call.dense and call.keeps_cache:     # only dense forwards allocate cache layers
                    call.stream.primed = True
                    held = sum(stream.kv.nbytes() for stream in self.streams.values())
                    if self.kv_planned_bytes and self.kv_peak_bytes <= self.kv_planned_bytes < held:   # the first time
                        logging.warning("region-adaptive sampling: %s", OUTGREW_PLAN.format(
                            held=size_text(held), planned=size_text(self.kv_planned_bytes)))
                    self.kv_peak_bytes = max(self.kv_peak_bytes, held)

    def release(self) -> None:
        """Frees every cache; the run's record stays (with how many forwards were captured and replayed)."""
        for key in list(self.streams):
            self._drop_stream(key)
        self.current = None

    def _drop_stream(self, key: Hashable) -> None:
        stream = self.streams.pop(key)
        if stream.graphs is not None:
            self.graph_captures += stream.graphs.captures
            self.graph_replays += stream.graphs.replays
        self.policy.forget(key)        # what the policy keeps per stream (SDiT's output history)

    def _drop_idle_streams(self) -> None:
        """A stream that sat out the last evaluation is dropped with its caches: guidance that evaluates a
        perturbed network for part of the run (Skip Layer Guidance), or a prompt that ends (timestep
        ranges), would leave a cache it no longer reads. One that comes back runs dense."""
        last = len(self.evals) - 1
        for key in [k for k, s in self.streams.items() if s.last_eval < last]:
            self._drop_stream(key)
