"""Reading the official checkpoints safely, and our own format.

Nothing from a checkpoint is ever executed:
- the official ``model_512.pkl`` (and ``inversion_trigrid.pkl``) are plain pickles of
  ``torch_utils.persistence`` records that embed source code. :class:`RestrictedUnpickler` maps
  the persistent-class records to inert :class:`Record` objects (the embedded ``module_src`` is
  kept as a string, never run), every module class to an inert :class:`Stub`, tensors' nested
  storage payloads to ``torch.load(weights_only=True)``, and refuses any other global;
- ``torch.save`` files (``decoder_512.ckpt``, ``df.pth``, ``epoch_*.pth``, the gallery's
  ``NNN_pyramid_trigrid.pth``, plain state dicts) are read with ``torch.load(weights_only=True)``;
- our own files are safetensors (:func:`read_safetensors`).

Every failure raises :class:`CheckpointError` with one line naming the file and what was expected.
The readers know no model: the generator is assembled in :mod:`gan_prior.generator`, pyramid files
in :mod:`gan_prior.pyramid_files`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any, Mapping, Optional

import numpy as np
import torch
from safetensors import safe_open

FORMAT_VERSION = 1  # of our own files (generator folders, pyramids)
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a non-zip torch.save file


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of the wrong kind, or unsafe."""

    @classmethod
    def at(cls, path: str, message: str) -> "CheckpointError":
        """The one-line error ``"<path>: <message>"``."""
        return cls(f"{path}: {message}")


def _one_line(e: BaseException) -> str:
    """The informative line of a (possibly multi-line) error: the one naming a GLOBAL if any."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(e).__name__)


class _UnsafePayload(Exception):
    """A tensor's nested storage payload that the weights-only loader refused."""


# ---------------------------------------------------------------------------- restricted pickle
class Record:
    """An official persistent-class instance, as data: its class name, init kwargs and state."""

    def __init__(self, meta: Mapping):
        self.class_name = str(meta.get("class_name"))
        self.state = dict(meta.get("state") or {})

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def __repr__(self) -> str:
        return f"Record({self.class_name})"


class Stub:
    """An inert stand-in for a plain class in the pickle (nn.Module subclasses, SMPL, ...)."""

    qualified_name = "?"

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"Stub({self.qualified_name})"


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"qualified_name": f"{module}.{name}"})


def _load_storage_bytes(data: bytes):
    # A tensor's storage inside a plain pickle: a nested legacy torch.save payload. Parse it with
    # the weights-only unpickler (never the unrestricted one torch would use here) onto the CPU.
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _UnsafePayload(f"refused a tensor's nested storage payload: {_one_line(e)}") from None


def _numpy_scalar(dtype, data=None):
    if data is None:
        return np.zeros((), dtype=dtype)[()]
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_array_stub(*args):
    return _stub_class("numpy", "ndarray")()


def _latin1_bytes(text, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (``encode(str, 'latin1')``), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _UnsafePayload(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r:.20}): only latin-1 bytes are data"
        )
    return text.encode("latin1")


def _fresh(obj: Any) -> Any:
    """A new object standing for an allow-listed global, so that a pickle's BUILD on it (which sets
    attributes) changes only that object — never the shared class or function, which would change
    every later file loaded in the process. Classes the pickle instantiates with NEWOBJ (``dict`` for
    EasyDict, the stubs) become fresh subclasses; other callables fresh factories; values stay."""
    if obj is dict or (isinstance(obj, type) and issubclass(obj, Stub)):
        return type(obj.__name__, (obj,), {"__module__": obj.__module__})
    if callable(obj):

        def factory(*args, **kwargs):
            return obj(*args, **kwargs)

        factory.__name__ = factory.__qualname__ = getattr(obj, "__name__", "factory")
        return factory
    return obj  # torch dtypes: immutable values


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol-2 pickles
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Record,
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_array_stub,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_array_stub,
    ("numpy", "ndarray"): _stub_class("numpy", "ndarray"),  # only an argument of _reconstruct (SMPL faces)
    # smplx's SMPL stores its dtype attribute (torch.float32) in the real model_512.pkl
    **{
        ("torch", str(d).split(".")[1]): d
        for d in (
            torch.float16,
            torch.bfloat16,
            torch.float32,
            torch.float64,
            torch.uint8,
            torch.int8,
            torch.int16,
            torch.int32,
            torch.int64,
            torch.bool,
        )
    },
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
# Plain classes whose instances become inert stubs (their state is kept as data).
_STUB_MODULE_PREFIXES = ("training.", "smplx.", "torch.nn.modules.", "numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles official files without importing or running anything outside the allow-list."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _fresh(_ALLOWED[(module, name)])
        if module.startswith(_STUB_MODULE_PREFIXES) and name[:1].isupper():
            return _stub_class(module, name)
        raise CheckpointError.at(
            self.path,
            f"refused to load '{module}.{name}': the file asks to call code outside "
            "the allow-list of an official Portrait3D checkpoint (not loading it)",
        )

    def persistent_load(self, pid):
        raise CheckpointError.at(
            self.path, "unexpected persistent id in a plain pickle; is this a torch.save file?"
        )


def _open(path: str):
    if os.path.isdir(path):
        raise CheckpointError.at(path, "is a folder; expected a file")
    if not os.path.isfile(path):
        raise CheckpointError.at(path, "file not found")
    try:
        return open(path, "rb")
    except PermissionError:
        raise CheckpointError.at(
            path, "permission denied; make the file readable for you (chmod u+r) or use a copy you can read"
        ) from None


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError.at(
            path,
            f"refused by the weights-only loader ({_one_line(e)}); "
            "this file holds objects other than tensors and plain containers",
        ) from None
    except Exception as e:  # truncated zip, bad magic, ...
        raise CheckpointError.at(
            path, f"not a readable torch.save file ({type(e).__name__}: {_one_line(e)})"
        ) from None


def read_checkpoint(path: str) -> Any:
    """Load any supported file as plain data: zip/legacy ``torch.save`` via the weights-only
    loader, plain pickles via :class:`RestrictedUnpickler`."""
    with _open(path) as f:
        head = f.read(4)
    if head[:2] == b"PK":
        if not zipfile.is_zipfile(path):
            raise CheckpointError.at(path, "truncated or corrupt torch.save (zip) file")
        return _torch_load(path)
    if not head or head[0] != 0x80:
        raise CheckpointError.at(
            path, "not a pickle or torch.save file (expected an official .pkl/.pth/.ckpt)"
        )
    with _open(path) as f:
        try:
            obj = RestrictedUnpickler(f, path).load()
        except CheckpointError:
            raise
        except _UnsafePayload as e:
            raise CheckpointError.at(path, str(e)) from None
        except Exception as e:
            raise CheckpointError.at(
                path, f"corrupt or truncated pickle ({type(e).__name__}: {_one_line(e)})"
            ) from None
    if isinstance(obj, int) and obj == LEGACY_TORCH_MAGIC:
        return _torch_load(path)
    return obj


# ---------------------------------------------------------------------------- TorchScript archives
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


_SCRIPT_LISTS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


def _plain_list(data):
    """``torch.jit._pickle.build_*list``: a scripted module's List[int] (e.g. a Conv2d's padding) as data."""
    if not isinstance(data, list):
        raise _UnsafePayload("a TorchScript typed list that is not a list")
    return list(data)


class _ScriptUnpickler(RestrictedUnpickler):
    """A TorchScript archive's ``data.pkl`` as data: script classes become inert stubs, tensors are
    rebuilt from the archive's storages; the archive's code is never compiled or run."""

    def __init__(self, file, path: str, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file, path)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _stub_class(module, name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _SCRIPT_LISTS:  # typed lists of scripted modules
            return _plain_list
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError.at(
                self.path, f"unexpected persistent id {pid!r:.60} in a TorchScript archive"
            )
        _, dtype, key, _location, _numel = pid
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _torchscript_data_pkl(path: str) -> Optional[str]:
    """The archive member ``<name>/data.pkl`` of a TorchScript file, or None for anything else."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
    for name in members:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            root = name.split("/")[0]
            if any(m.startswith(root + "/code/") for m in members):
                return name
    return None


def is_torchscript_archive(path: str) -> bool:
    return os.path.isfile(path) and _torchscript_data_pkl(path) is not None


def read_torchscript_tensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive (``torch.jit.save``), by dotted name in the
    archive's order — read as data, without ``torch.jit.load`` (which would run the archive's code)."""
    _open(path).close()  # one-line error for a missing file
    data_pkl = _torchscript_data_pkl(path)
    if data_pkl is None:
        raise CheckpointError.at(path, "not a TorchScript archive (no data.pkl beside a code/ folder)")
    with zipfile.ZipFile(path) as archive:
        prefix = data_pkl[: -len("data.pkl")]
        try:
            root = _ScriptUnpickler(io.BytesIO(archive.read(data_pkl)), path, archive, prefix).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError.at(
                path, f"corrupt TorchScript archive ({type(e).__name__}: {_one_line(e)})"
            ) from None

    out: dict[str, torch.Tensor] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, torch.Tensor):
            out[name] = node.detach()
        elif isinstance(node, Stub):
            for key, child in node.state.items():
                walk(child, f"{name}.{key}" if name else str(key))

    walk(root, "")
    return out


# ---------------------------------------------------------------------------- module trees, safetensors
def flatten_module(node: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a Record/Stub module tree into a ``prefix.name -> tensor`` state dict."""
    state = getattr(node, "state", None)
    if not isinstance(state, dict):
        return {}
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if isinstance(t, torch.Tensor):
                out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(flatten_module(child, f"{prefix}{name}."))
    return out


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (which holds nothing but tensors and string metadata)."""
    _open(path).close()  # one line for a missing or unreadable file, not "corrupt"
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError.at(path, f"corrupt or truncated safetensors file ({e})") from None


def looks_like_safetensors(path: str) -> bool:
    """safetensors files start with the JSON header's length (8 bytes, little-endian), then the
    header: ``{`` … ``}`` (padded with spaces). Checked in full, as the length's first byte may be
    0x80 or b"P", a pickle's or a zip's first byte."""
    with _open(path) as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return False
        n = int.from_bytes(head[:8], "little")
        if not 2 <= n <= min(os.fstat(f.fileno()).st_size - 8, 100 << 20):
            return False
        f.seek(8 + max(n - 8, 1))  # the header is padded to a multiple of 8 bytes with spaces
        return f.read(min(n - 1, 8)).rstrip(b" ").endswith(b"}")
