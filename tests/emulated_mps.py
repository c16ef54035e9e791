"""Apple's MPS device as far as float64 and float8 go, emulated on the CPU: inside `emulated_mps()`,
tensors on "mps" are CPU tensors in a wrapper that reports that device, and an operator that would leave
a float64 or float8 tensor there raises the TypeError MPS raises. Copies to the CPU are plain tensors
again. Nothing else of MPS is emulated (it lacks some other operators too; mixing devices is not checked)."""
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

DEVICE = torch.device("mps")
UNSUPPORTED = (torch.float64, torch.float8_e4m3fn)


class OnMPS(torch.Tensor):
    """A CPU tensor (`elem`) that says it is on MPS."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                   storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                   device=DEVICE, requires_grad=elem.requires_grad)

    def __init__(self, elem):
        self.elem = elem

    def __repr__(self):
        return f"OnMPS({self.elem!r})"

    # reading values to the host, indexing and `.to` go through torch's Python binding, which would first
    # ask for an MPS backend this build has not got
    def tolist(self):
        return self.elem.tolist()

    def item(self):
        return self.elem.item()

    def __int__(self):
        return int(self.elem)

    def __float__(self):
        return float(self.elem)

    def __bool__(self):
        return bool(self.elem)

    def __index__(self):
        return self.elem.__index__()

    def __invert__(self):
        return OnMPS(~self.elem)

    def contiguous(self, *args, **kwargs):
        return OnMPS(self.elem.contiguous(*args, **kwargs))

    def nonzero(self, *args, **kwargs):
        return OnMPS(self.elem.nonzero(*args, **kwargs))

    def __getitem__(self, index):
        return OnMPS(self.elem[tree_map(_elem, index)])

    def __setitem__(self, index, value):
        self.elem[tree_map(_elem, index)] = _elem(value)

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _elem(x):
    return x.elem if isinstance(x, OnMPS) else x


def _refuse(dtype):
    raise TypeError(f"Cannot convert a MPS Tensor to {str(dtype).replace('torch.', '')} dtype as the MPS framework "
                    f"doesn't support it.")


def _run(func, args, kwargs):
    on_device = False
    originals = {}

    def unwrap(x):
        nonlocal on_device
        if isinstance(x, OnMPS):
            on_device = True
            originals[id(x.elem)] = x
            return x.elem
        if isinstance(x, torch.Tensor):
            originals[id(x)] = x
        return x
    args, kwargs = tree_map(unwrap, (args, kwargs))
    target = kwargs.get("device")
    if target is not None:
        on_device = torch.device(target).type == "mps"       # a factory or a copy names where its result goes
        kwargs["device"] = torch.device("cpu")
    out = func(*args, **kwargs)

    def wrap(x):
        if not isinstance(x, torch.Tensor):
            return x
        if id(x) in originals:                  # in place: the tensor that was changed, where it was
            return originals[id(x)]
        if not on_device:
            return x
        if x.dtype in UNSUPPORTED:
            _refuse(x.dtype)
        return OnMPS(x)
    return tree_map(wrap, out)


class _FactoriesOnMPS(TorchDispatchMode):
    """Routes every operator through `_run`, so that factories and copies naming "mps" make wrapped tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _to(original):
    """Tensor.to, where a copy to "mps" makes a wrapped tensor."""
    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is None or device.type != "mps":
            return original(self, *args, **kwargs)
        source = self.elem if isinstance(self, OnMPS) else self
        dtype = dtype or source.dtype
        if dtype in UNSUPPORTED:
            _refuse(dtype)
        if isinstance(self, OnMPS) and dtype == source.dtype:
            return self
        return OnMPS(source.to(dtype))
    return to


@contextlib.contextmanager
def emulated_mps():
    original = torch.Tensor.to
    torch.Tensor.to = _to(original)
    try:
        with _FactoriesOnMPS():
            yield DEVICE
    finally:
        torch.Tensor.to = original
