"""File I/O every part of mmtok shares: atomic writes, compact JSON, and the pickle-free
checkpoint format of training runs.

* `atomic_write(path, write)`: write to a temporary file in the same folder, fsync, rename. An
  interrupted job never leaves a half-written file under its real name.
* `write_json` / `read_json`: deterministic compact JSON; a read error names the file.
* `open_safetensors` / `read_safetensors`: the one way mmtok opens a safetensors file. A missing,
  truncated or lying file (header length, JSON, offsets, shapes) is a one-line `DamagedFileError`
  naming the file, what it is and what to do, never a raw ``SafetensorError``.
* `write_checkpoint` / `read_checkpoint`: ``model.safetensors`` + ``optimizer.safetensors`` (the
  optimiser state as flat tensors) + ``state.json``, written into a temporary folder that is then
  renamed, so a checkpoint folder is either complete or absent. No pickle anywhere.
* `OutputLock`: one writer per output folder (``fcntl.flock`` on a lock file beside it; the kernel
  releases it when the holder exits, however it exits, so a lock is never stale).
"""

import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mmtok.distributed import full_tensor, like
from mmtok.errors import MmtokError, warn

__all__ = ["DamagedFileError", "OutputLock", "atomic_write", "checkpoint_folders", "full_optimizer_state",
           "load_weights_into",
           "open_safetensors", "read_checkpoint",
           "read_json", "read_safetensors", "write_checkpoint", "write_json"]


class DamagedFileError(MmtokError, OSError):
    """A file mmtok wrote earlier is missing, truncated or inconsistent."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then atomically rename the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        _normal_permissions(Path(tmp))
        with open(tmp, "rb") as fh:  # durable before it becomes visible under its real name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # disk full, file size limit, read-only folder
        if isinstance(err, MmtokError):
            raise
        raise MmtokError(f"{path}: cannot write ({_reason(err)}); nothing was written under this name") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _normal_permissions(path: Path) -> None:
    """``0666 & ~umask``, as ``open()`` gives: mkstemp and safetensors' writer both create 0600 files,
    which would make shards and weights private while the JSON beside them is not."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def json_text(data: Any) -> str:
    """Compact, key-sorted JSON text with a final newline: what `write_json` writes (deterministic;
    no indent, so json's C encoder does the work: an indented index of many samples costs tens
    of microseconds each)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """`json_text` of ``data``, written atomically."""
    text = json_text(data)
    atomic_write(path, lambda p: p.write_text(text))


def write_pretrained(codec, directory: str | os.PathLike, metrics: dict) -> str:
    """A plugin's shipped codec: ``codec.save_pretrained(directory)`` (config.json +
    model.safetensors) and ``metrics.json`` = ``metrics`` plus ``model_sha256``, each file written
    atomically. Returns that sha256 (hex), which a refit must reproduce byte for byte."""
    directory = Path(directory)
    codec.save_pretrained(directory)
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    text = json.dumps({**metrics, "model_sha256": digest}, indent=2) + "\n"
    atomic_write(directory / "metrics.json", lambda p: p.write_text(text))
    return digest


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON of ``path``; an unreadable or invalid file is an `MmtokError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MmtokError(f"{path}: cannot read ({err})") from None


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).removeprefix("Error while deserializing header: ")


# ---------------------------------------------------------------------------- safetensors
def open_safetensors(path: str | os.PathLike, what: str = "tensor file", hint: str = ""):
    """A ``safe_open`` handle (memory-mapped) of ``path``; its header, offsets and length are
    validated here. A missing or damaged file is a `DamagedFileError`: ``path: <what> is damaged
    (<reason>); <hint>``."""
    path = Path(path)
    if not path.is_file():
        found = "is missing" if not path.exists() else "is not a regular file"
        raise DamagedFileError(f"{path}: {what} {found}" + (f"; {hint}" if hint else ""))
    try:
        return safe_open(str(path), "pt")
    except (SafetensorError, OSError) as err:
        raise _damaged(path, what, err, hint) from None


def read_safetensors(path: str | os.PathLike, what: str = "tensor file", hint: str = "",
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` (see `open_safetensors` for the checks)."""
    f = open_safetensors(path, what, hint)
    try:
        return {k: f.get_tensor(k).to(device) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise _damaged(path, what, err, hint) from None


def _damaged(path: Path, what: str, err: BaseException, hint: str) -> DamagedFileError:
    return DamagedFileError(f"{path}: {what} is damaged ({_reason(err)})" + (f"; {hint}" if hint else ""))


def load_weights_into(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(tensors)``; weights of another shape or with other names are a
    one-line `DamagedFileError` naming ``path``."""
    own = module.state_dict()
    try:
        module.load_state_dict({k: like(v, own[k]) if k in own else v for k, v in tensors.items()})
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise DamagedFileError(f"{path}: {what} does not fit the model ({detail[:300]})") from None


# ---------------------------------------------------------------------------- checkpoints
def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with every FSDP2-sharded state tensor gathered whole (a collective
    when the parameters are sharded: every rank calls it), as `write_checkpoint` takes it."""
    sd = opt.state_dict()
    return {"state": {pid: {n: full_tensor(v) if torch.is_tensor(v) else v for n, v in st.items()}
                      for pid, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def _optimizer_tensors(opt: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state as flat tensors (safetensors) + the JSON-able rest (no pickle)."""
    sd = opt if isinstance(opt, dict) else full_optimizer_state(opt)
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
    params = [p for group in opt.param_groups for p in group["params"]]  # sharded ones take their shard
    state = {pid: {n: like(v, params[pid]) for n, v in st.items()} if 0 <= pid < len(params) else st
             for pid, st in state.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_checkpoint(final: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | dict,
                     state: dict) -> None:
    """Write ``model.safetensors``, ``optimizer.safetensors`` and ``state.json`` (``state`` + the
    optimiser's param groups) into a temporary folder, fsync them, then rename it to ``final``.
    ``optimizer`` may be the optimiser or its `full_optimizer_state` (what FSDP2 ranks gather
    together before one of them writes). Always whole tensors: a checkpoint written by sharded
    ranks loads into one process and back (`read_checkpoint` re-shards on load)."""
    final = Path(final)
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}))
    for f in tmp.iterdir():
        _normal_permissions(f)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def read_checkpoint(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device | str = "cpu") -> dict:
    """Load a `write_checkpoint` folder into ``module`` and ``optimizer``; returns its state."""
    folder = Path(folder)
    what = f"checkpoint {folder.name}"
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise DamagedFileError(f"{folder}: {what} has no state.json")
    state = read_json(state_path)
    if not isinstance(state, dict) or not {"step", "optimizer"} <= set(state):
        raise DamagedFileError(f"{state_path}: {what} state lacks 'step' or 'optimizer'")
    weights = read_safetensors(folder / "model.safetensors", f"{what} weights", device=device)
    opt = read_safetensors(folder / "optimizer.safetensors", f"{what} optimizer state", device=device)
    load_weights_into(module, weights, folder / "model.safetensors", f"{what} weights")
    try:
        _load_optimizer(optimizer, opt, state["optimizer"])
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise DamagedFileError(f"{folder / 'optimizer.safetensors'}: {what} optimizer state does not fit "
                               f"the model ({err})") from None
    return state


def checkpoint_folders(ckdir: Path) -> list[Path]:
    """The ``step-*`` checkpoint folders of a run's ``checkpoints/``, newest first. ``latest.json``
    is only a pointer: a torn one, or one naming a missing folder, is reported and the folders
    themselves count (each is complete or absent, `write_checkpoint`)."""
    ckdir = Path(ckdir)
    found = sorted((d for d in ckdir.glob("step-*") if d.is_dir()), key=lambda d: d.name, reverse=True)
    latest = ckdir / "latest.json"
    if latest.is_file():
        try:
            name = read_json(latest)["checkpoint"]
            if not (ckdir / name).is_dir():
                warn(f"{latest} names checkpoint {name!r}, which does not exist; using the newest checkpoint folder")
        except (MmtokError, KeyError, TypeError) as err:
            warn(f"{latest} is damaged ({err}); using the newest checkpoint folder")
    return found


# ---------------------------------------------------------------------------- one writer per folder
class OutputLock:
    """Exclusive lock on output folder ``folder`` for ``command`` (``with OutputLock(out, "encode"):``).

    The lock is ``fcntl.flock`` on ``<parent>/.<name>.lock`` (beside the folder, so the folder's
    content stays exactly what the command writes, and a folder replaced by a rename stays
    locked). The kernel drops it when the holder exits, even by SIGKILL: a lock is never stale.
    The file holds the holder's pid, host and command, which a second writer's error names.
    """

    def __init__(self, folder: str | os.PathLike, command: str):
        self.folder, self.command = Path(folder), command
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise MmtokError(f"{self.folder}: exists and is not a folder; choose another --out")
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise MmtokError(f"{self.path}: cannot create the lock of {self.folder} ({_reason(err)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                h = json.loads(holder)
                who = f"`mmtok {h['command']}` (pid {h['pid']} on {h['host']}, since {h['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another mmtok process"
            raise MmtokError(f"{self.folder}: is being written by {who}; wait for it to finish or choose "
                             "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the flock
            self._fd = None

