"""Reading the official checkpoints safely, and our own format.

Nothing from a checkpoint is ever executed:
- the official ``model_512.pkl`` (and ``inversion_trigrid.pkl``) are plain pickles of
  ``torch_utils.persistence`` records that embed source code. :class:`RestrictedUnpickler` maps
  the persistent-class records to inert :class:`Record` objects (the embedded ``module_src`` is
  kept as a string, never run), every module class to an inert :class:`Stub`, tensors' nested
  storage payloads to ``torch.load(weights_only=True)``, and refuses any other global;
- ``torch.save`` files (``decoder_512.ckpt``, ``df.pth``, ``epoch_*.pth``, the gallery's
  ``NNN_pyramid_trigrid.pth``, plain state dicts) are read with ``torch.load(weights_only=True)``;
- our own files are safetensors plus a JSON config.

Every failure raises :class:`CheckpointError` with one line naming the file and what was expected.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import zipfile
from typing import Any, Mapping, Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import atomic_path
from .pyramid_trigrid import level_key

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
FORMAT_VERSION = 1
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a non-zip torch.save file


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of the wrong kind, or unsafe."""


def _fail(path: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


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


_ALLOWED: dict[tuple[str, str], Any] = {
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
    **{("torch", str(d).split(".")[1]): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                                    torch.uint8, torch.int8, torch.int16, torch.int32,
                                                    torch.int64, torch.bool)},
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
            return _ALLOWED[(module, name)]
        if module.startswith(_STUB_MODULE_PREFIXES) and name[:1].isupper():
            return _stub_class(module, name)
        raise _fail(self.path, f"refused to load '{module}.{name}': the file asks to call code outside "
                               "the allow-list of an official Portrait3D checkpoint (not loading it)")

    def persistent_load(self, pid):
        raise _fail(self.path, "unexpected persistent id in a plain pickle; is this a torch.save file?")


def _open(path: str):
    if not os.path.isfile(path):
        raise _fail(path, "file not found")
    return open(path, "rb")


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _fail(path, f"refused by the weights-only loader ({_one_line(e)}); "
                          "this file holds objects other than tensors and plain containers") from None
    except Exception as e:  # truncated zip, bad magic, ...
        raise _fail(path, f"not a readable torch.save file ({type(e).__name__}: {_one_line(e)})") from None


def read_checkpoint(path: str) -> Any:
    """Load any supported file as plain data: zip/legacy ``torch.save`` via the weights-only
    loader, plain pickles via :class:`RestrictedUnpickler`."""
    with _open(path) as f:
        head = f.read(4)
    if head[:2] == b"PK":
        if not zipfile.is_zipfile(path):
            raise _fail(path, "truncated or corrupt torch.save (zip) file")
        return _torch_load(path)
    if not head or head[0] != 0x80:
        raise _fail(path, "not a pickle or torch.save file (expected an official .pkl/.pth/.ckpt)")
    with _open(path) as f:
        try:
            obj = RestrictedUnpickler(f, path).load()
        except CheckpointError:
            raise
        except _UnsafePayload as e:
            raise _fail(path, str(e)) from None
        except Exception as e:
            raise _fail(path, f"corrupt or truncated pickle ({type(e).__name__}: {_one_line(e)})") from None
    if isinstance(obj, int) and obj == LEGACY_TORCH_MAGIC:
        return _torch_load(path)
    return obj


# ---------------------------------------------------------------------------- TorchScript archives
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


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
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _fail(self.path, f"unexpected persistent id {pid!r:.60} in a TorchScript archive")
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
        raise _fail(path, "not a TorchScript archive (no data.pkl beside a code/ folder)")
    with zipfile.ZipFile(path) as archive:
        prefix = data_pkl[:-len("data.pkl")]
        try:
            root = _ScriptUnpickler(io.BytesIO(archive.read(data_pkl)), path, archive, prefix).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise _fail(path, f"corrupt TorchScript archive ({type(e).__name__}: {_one_line(e)})") from None

    out: dict[str, torch.Tensor] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, torch.Tensor):
            out[name] = node.detach()
        elif isinstance(node, Stub):
            for key, child in node.state.items():
                walk(child, f"{name}.{key}" if name else str(key))

    walk(root, "")
    return out


# ---------------------------------------------------------------------------- generator weights
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


def _max_block(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Largest r among ``{prefix}b{r}.*`` keys (2D blocks only, not ``b3d{r}``)."""
    sizes = [int(k[len(prefix) + 1:].split(".")[0]) for k in state
             if k.startswith(prefix + "b") and k[len(prefix) + 1:].split(".")[0].isdigit()]
    return max(sizes) if sizes else 0


def infer_config(state: Mapping[str, torch.Tensor], path: str, base=None):
    """Architecture from tensor shapes of an official-key state dict (defaults from ``base``)."""
    from .generator import PortraitGANConfig

    cfg = base or PortraitGANConfig()
    try:
        w_dim, zw = state["backbone.mapping.fc0.weight"].shape
        c_dim = state["backbone.mapping.embed.weight"].shape[1] - cfg.pose_dim
        layers = len({k.split(".")[2] for k in state if k.startswith("backbone.mapping.fc")})
        synth = _max_block(state, "backbone.synthesis.")
    except KeyError as e:
        raise _fail(path, f"missing generator weight {e}; expected a 3DPortraitGAN generator "
                          "(official model_512.pkl or its state dict)") from None
    changes = dict(w_dim=int(w_dim), z_dim=int(zw - w_dim), c_dim=int(c_dim), mapping_layers=layers,
                   synthesis_resolution=synth)
    bcg = "bcg_synthesis.b4.const"
    changes["background"] = bcg in state
    if bcg in state:
        res = _max_block(state, "bcg_synthesis.")
        ch = {r: state[f"bcg_synthesis.b{r}.conv1.weight"].shape[0] for r in (2 ** i for i in range(2, res.bit_length()))}
        changes.update(background_resolution=res, background_channel_max=max(ch.values()),
                       background_channel_base=max(c * r for r, c in ch.items()))
    sr = "superresolution.block0.conv0.weight"
    changes["superresolution"] = sr in state
    if sr in state:
        changes["superresolution_channels"] = (int(state[sr].shape[0]),
                                               int(state["superresolution.block1.conv0.weight"].shape[0]))
        # SR input side = background side (official: the bcg is built at the SR input resolution)
        changes["background_resolution"] = int(state["superresolution.block0.conv0.noise_const"].shape[0]) // 2
    return type(cfg)(**{**cfg.to_dict(), "render": cfg.render, **changes})


def _official_generator_state(obj: Any, path: str) -> tuple[dict, dict]:
    """``(state_dict, init_kwargs)`` of ``G_ema`` from an official pickle's top-level dict."""
    if not isinstance(obj, dict) or "G_ema" not in obj:
        raise _fail(path, "no 'G_ema' entry; expected the official model_512.pkl network snapshot")
    g = obj["G_ema"]
    if not isinstance(g, (Record, Stub)):
        raise _fail(path, "'G_ema' is not a network record")
    kwargs = g.init_kwargs if isinstance(g, Record) else {}
    return flatten_module(g), kwargs


def _config_from_init_kwargs(kwargs: dict, state: dict, path: str):
    from .generator import PortraitGANConfig
    from .renderer import RenderConfig

    rk = dict(kwargs.get("rendering_kwargs") or {})
    render = RenderConfig(
        # ray_start: every official stage after training overrides the training value (2.385) with 2.35
        ray_end=float(rk.get("ray_end", RenderConfig.ray_end)),
        box_warp=float(rk.get("box_warp", RenderConfig.box_warp)),
        depth_resolution=int(rk.get("depth_resolution", RenderConfig.depth_resolution)),
        depth_resolution_importance=int(rk.get("depth_resolution_importance", RenderConfig.depth_resolution_importance)),
    )
    # official SuperresolutionHybrid8XDC: conv_clamp = 256 if sr_num_fp16_res > 0 else None
    sr_clamp = 256.0 if int(kwargs.get("sr_num_fp16_res", 4)) > 0 else None
    base = PortraitGANConfig(trigrid_depth=int(rk.get("triplane_depth", 3)), render=render,
                             superresolution_conv_clamp=sr_clamp)
    return infer_config(state, path, base)


def load_generator(path: str, map_location="cpu"):
    """Build a :class:`~gan_prior.generator.PortraitGAN` from any supported generator file."""
    from .generator import PortraitGAN, PortraitGANConfig

    if os.path.isdir(path):
        cfg_path = os.path.join(path, MODEL_CONFIG)
        if not os.path.isfile(cfg_path):
            raise _fail(path, f"folder has no {MODEL_CONFIG}; expected a folder written by PortraitGAN.save")
        try:
            meta = json.load(open(cfg_path))
        except json.JSONDecodeError as e:
            raise _fail(cfg_path, f"invalid JSON ({e})") from None
        if meta.get("kind") != "portrait-gan":
            raise _fail(cfg_path, f"kind is {meta.get('kind')!r}, expected 'portrait-gan'")
        cfg = PortraitGANConfig.from_dict(meta.get("config", {}), cfg_path)
        state = read_safetensors(os.path.join(path, MODEL_WEIGHTS))
    else:
        obj = read_checkpoint(path)
        if isinstance(obj, dict) and "G_ema" in obj:
            state, kwargs = _official_generator_state(obj, path)
            cfg = _config_from_init_kwargs(kwargs, state, path)
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
            if not any(k.startswith("backbone.") for k in state):
                kind = "a decoder checkpoint" if "decoder.net.0.weight" in state else "a state dict"
                raise _fail(path, f"this is {kind} without the generator backbone; expected model_512.pkl, "
                                  "a full official-key state dict, or a PortraitGAN.save folder")
            cfg = infer_config(state, path)
        elif isinstance(obj, dict) and "state_dict" in obj:
            raise _fail(path, "this is a decoder checkpoint (decoder_512.ckpt): it has no generator; "
                              "use gan_prior.checkpoint.load_decoder_checkpoint")
        else:
            raise _fail(path, "not a generator checkpoint; expected model_512.pkl, an official-key "
                              "state dict, or a PortraitGAN.save folder")
    g = PortraitGAN(cfg)
    load_state_into(g, state, path)
    return g.to(map_location).eval().requires_grad_(False)


# Official entries that this port does not build (body-pose branch, SMPL buffers, the dataset
# label statistics).
_UNUSED_PREFIXES = ("pose_branch.", "renderer.", "dataset_label_std")


def load_state_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Strictly load ``state`` (ignoring the official modules we do not build)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise _fail(path, f"weights do not match the architecture: missing {missing[:4]}"
                          f"{'…' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                          f"{'…' if len(unexpected) > 4 else ''}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise _fail(path, f"shape mismatch for {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise _fail(path, "file not found")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise _fail(path, f"corrupt or truncated safetensors file ({e})") from None


def _looks_like_safetensors(path: str) -> bool:
    """safetensors files start with an 8-byte header length, then the JSON header's '{'."""
    with _open(path) as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK" and head[0] != 0x80


def save_generator(model, folder: str) -> None:
    """Our format: ``config.json`` (architecture) + ``model.safetensors`` (official key names)."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(os.path.join(folder, MODEL_WEIGHTS), ".safetensors") as tmp:
        save_file(state, tmp)
    with atomic_path(os.path.join(folder, MODEL_CONFIG), ".json") as tmp:
        json.dump({"kind": "portrait-gan", "format_version": FORMAT_VERSION, "config": model.cfg.to_dict()},
                  open(tmp, "w"), indent=2)


def load_decoder_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The official ``decoder_512.ckpt``: ``decoder.*`` and ``torgb.*`` weights (pose branch dropped)."""
    obj = read_checkpoint(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "decoder.net.0.weight" not in state:
        raise _fail(path, "expected the official decoder checkpoint {'params', 'state_dict'} with decoder.* keys")
    return {k: v for k, v in state.items() if k.startswith(("decoder.", "torgb."))}


# ---------------------------------------------------------------------------- pyramid files
def _find_levels(d: Mapping) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    levels, ws = {}, None
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            continue
        leaf = k.split(".")[-1]
        if leaf.startswith("trigrids_") and leaf[9:].isdigit():
            levels[int(leaf[9:])] = v
        elif leaf == "ws":
            ws = v
    return levels, ws


def load_pyramid(path: str) -> tuple[dict[int, torch.Tensor], Optional[torch.Tensor]]:
    """Read any pyramid tri-grid file → ``({R: [B, 3, C·D, R, R]}, ws [B, num_ws, w_dim] or None)``.

    Supported: ours (``.safetensors``), the official ``inversion_trigrid.pkl`` (a plain pickle of
    a dict), ``df.pth`` / ``df_ep*.pth`` (``{'model': state}``), ``log/ckpt/epoch_*.pth`` and the
    gallery's ``NNN_pyramid_trigrid.pth`` (``{'model': {'trigrids_*', 'ws'}}``).
    """
    if path.endswith(".safetensors") or _looks_like_safetensors(path):
        state = read_safetensors(path)
    else:
        obj = read_checkpoint(path)
        if not isinstance(obj, dict):
            raise _fail(path, "expected a dict of tri-grid levels (trigrids_8 … trigrids_512)")
        state = obj.get("model", obj)
        if not isinstance(state, dict):
            raise _fail(path, "'model' entry is not a state dict")
    levels, ws = _find_levels(state)
    if not levels:
        raise _fail(path, "no 'trigrids_<R>' tensors found; expected a pyramid tri-grid file "
                          "(ours, inversion_trigrid.pkl, df.pth, epoch_*.pth or NNN_pyramid_trigrid.pth)")
    out = {}
    for r, t in sorted(levels.items()):
        t = t.detach().float().cpu()
        if t.ndim == 4:  # [B·3, C·D, R, R]
            t = t.reshape(-1, 3, *t.shape[1:])
        if t.ndim != 5 or t.shape[1] != 3 or t.shape[-1] != r or t.shape[-2] != r:
            raise _fail(path, f"level trigrids_{r} has shape {tuple(t.shape)}, expected [B, 3, C, {r}, {r}]")
        out[r] = t
    return out, (ws.detach().float().cpu() if ws is not None else None)


def save_pyramid(path: str, levels: Mapping[int, torch.Tensor], ws: Optional[torch.Tensor] = None,
                 fmt: str = "ours", metadata: Optional[dict] = None) -> None:
    """Write a pyramid atomically. ``fmt='ours'``: safetensors (+ JSON metadata);
    ``fmt='official'``: the gallery/``epoch_*.pth`` layout ``torch.save({'model': {...}})``."""
    state = {level_key(r): t.detach().float().contiguous().cpu() for r, t in sorted(levels.items())}
    if ws is not None:
        state["ws"] = ws.detach().float().contiguous().cpu()
    if fmt == "ours":
        meta = {"kind": "pyramid-trigrid", "format_version": str(FORMAT_VERSION)}
        if metadata:
            meta["info"] = json.dumps(metadata)
        with atomic_path(path, ".safetensors") as tmp:
            save_file(state, tmp, metadata=meta)
    elif fmt == "official":
        with atomic_path(path, ".pth") as tmp:
            torch.save({"model": state}, tmp)
    else:
        raise ValueError(f"unknown pyramid format {fmt!r}; use 'ours' or 'official'")
