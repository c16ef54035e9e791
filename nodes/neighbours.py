"""Other nodes on the same MODEL that region-adaptive sampling cannot work with. Each is named in a clear
error when sampling starts, instead of a wrong image or a shape error deep in a block.

Checked, and why:
- ComfyUI's "Model Sparse Attention" (BlockSparseAttention) puts its attention override on top of ours
  again at every step and computes attention itself, so our K/V cache would not see those calls.
- ComfyUI's "Flux KV Cache" strips reference tokens from the image sequence after the first step and
  appends their cached keys/values inside attention: keys no longer match the tokens that ran.
Works with (tested): EasyCache / LazyCache (whole skipped steps), other attention overrides that keep
the call's shape (they are chained), block patches (forwards stay eager), Skip Layer Guidance (its
perturbed network is a stream of its own: sparse_patch._stream_key)."""
from .errors import SDiTInputError

_BLOCK_SPARSE_CALLBACK = "block_sparse_attention"     # its ON_PREPARE_STATE callback key
_FLUX_KV_CACHE_PATCH = "KV_Attn_Input"                 # its attn1_patch class


def conflicting_node(patcher) -> str:
    """The display name of a node on `patcher` that we cannot run with, or ''."""
    import comfy.patcher_extension as patcher_extension
    get_callbacks = getattr(patcher, "get_callbacks", None)
    if callable(get_callbacks) and get_callbacks(patcher_extension.CallbacksMP.ON_PREPARE_STATE,
                                                 _BLOCK_SPARSE_CALLBACK):
        return "Model Sparse Attention"
    patches = patcher.model_options.get("transformer_options", {}).get("patches", {})
    if any(type(p).__name__ == _FLUX_KV_CACHE_PATCH for p in patches.get("attn1_patch", [])):
        return "Flux KV Cache"
    return ""


def check_neighbours(patcher, node: str) -> None:
    other = conflicting_node(patcher)
    if other:
        raise SDiTInputError(node, "model", f"the model also has ComfyUI's '{other}' node applied, which changes "
                                            f"attention in a way region-adaptive sampling cannot follow; remove "
                                            f"'{other}' or use KSampler")
