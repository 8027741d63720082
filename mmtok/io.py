"""File I/O every part of mmtok shares: atomic writes, compact JSON, and the pickle-free
checkpoint format of training runs.

* `atomic_write(path, write)`: write to a temporary file in the same folder, fsync, rename. An
  interrupted job never leaves a half-written file under its real name.
* `write_json` / `read_json`: deterministic compact JSON; a read error names the file.
* `write_checkpoint` / `read_checkpoint`: ``model.safetensors`` + ``optimizer.safetensors`` (the
  optimiser state as flat tensors) + ``state.json``, written into a temporary folder that is then
  renamed, so a checkpoint folder is either complete or absent. No pickle anywhere.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtok.errors import MmtokError

__all__ = ["atomic_write", "read_checkpoint", "read_json", "write_checkpoint", "write_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then atomically rename the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:  # durable before it becomes visible under its real name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Compact, key-sorted JSON, written atomically (deterministic; no indent, so json's C
    encoder does the work: an indented index of many samples costs tens of microseconds each)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON of ``path``; an unreadable or invalid file is an `MmtokError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MmtokError(f"{path}: cannot read ({err})") from None


# ---------------------------------------------------------------------------- checkpoints
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state as flat tensors (safetensors) + the JSON-able rest (no pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"state.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_checkpoint(final: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     state: dict) -> None:
    """Write ``model.safetensors``, ``optimizer.safetensors`` and ``state.json`` (``state`` + the
    optimiser's param groups) into a temporary folder, fsync them, then rename it to ``final``."""
    final = Path(final)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def read_checkpoint(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device | str = "cpu") -> dict:
    """Load a `write_checkpoint` folder into ``module`` and ``optimizer``; returns its state."""
    folder = Path(folder)
    module.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    state = read_json(folder / "state.json")
    _load_optimizer(optimizer, load_file(str(folder / "optimizer.safetensors"), device=str(device)),
                    state["optimizer"])
    return state
