"""A series of checkpoints: found, ordered by step, and read one tensor at a time.

A checkpoint is any of:

- a Hugging Face folder (``checkpoint-N/``: ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin`` [``.index.json``]); its step
  is ``global_step`` of its ``trainer_state.json``, else the N of its name;
- a Lightning ``.ckpt`` (its ``state_dict``; its step is the file's ``global_step``;
  objects in its ``hyper_parameters`` are read as inert placeholders);
- a ``torch.save`` file (``.pt``, ``.pth``, ``.bin``): a state dict, or a dict holding one
  under ``state_dict``, ``model_state_dict``, ``model`` or ``module``;
- a ``.safetensors`` file.

A PATH is one checkpoint or a directory of them (its checkpoint folders, even where it
holds a model itself, as a Trainer's output_dir after ``save_model()``; or else its
checkpoint files). Without a step in the file, the step is the number in the name
(``step=120``, ``step-120``, ``checkpoint-120``, ``epoch_3``: the last number). An
explicit list of steps (one per PATH, each PATH one checkpoint) overrides all of that.

Tensors are read lazily (safetensors one at a time, ``torch.load`` memory-mapped), so a
series of any length is read in the memory of a few tensors. Every read error (a
truncated or damaged file, a missing tensor) is a ``UserError`` naming the file.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trajreg.errors import UserError

__all__ = ["Checkpoint", "CheckpointState", "find_checkpoints", "open_state"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# files of a training run that hold no model weights (Hugging Face's, trajreg's)
NOT_WEIGHTS = {"optimizer.pt", "scheduler.pt", "training_args.bin", "scaler.pt",
               "final_state.pt"}
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module")
_STEP_NAMES = (re.compile(r"(?:^|[^a-z])step[=_-]?(\d+)", re.I),
               re.compile(r"checkpoint[=_-]?(\d+)", re.I),
               re.compile(r"iter(?:ation)?[=_-]?(\d+)", re.I))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: where it is, its step, and where the step came from
    (``trainer_state.json``, ``global_step``, ``name``, ``given``)."""

    path: Path
    step: int
    step_from: str

    @property
    def kind(self) -> str:
        """``huggingface`` (a folder), ``safetensors`` or ``torch`` (a file)."""
        if self.path.is_dir():
            return "huggingface"
        return "safetensors" if self.path.suffix == ".safetensors" else "torch"


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in WEIGHT_FILES)


def _is_weight_file(path: Path) -> bool:
    return (path.is_file() and path.suffix in FILE_SUFFIXES and path.name not in NOT_WEIGHTS
            and not path.name.startswith(("rng_state", ".")))


def _name_step(path: Path) -> int | None:
    name = path.name
    for pattern in _STEP_NAMES:
        found = pattern.findall(name)
        if found:
            return int(found[-1])
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) if numbers else None


def _trainer_state_step(folder: Path) -> int | None:
    path = folder / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        step = json.loads(path.read_text()).get("global_step")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: not a readable trainer_state.json ({exc})") from None
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


class _Opaque:
    """A Python object of a checkpoint that is no tensor (a Lightning hyper-parameter
    holding a module or an optimizer's ``functools.partial``), read as this inert
    placeholder: its class is never imported, none of its code runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _foreign_globals(path: Path) -> list[str]:
    """The classes and functions the file names beyond ``weights_only``'s allowlist
    (none where this torch cannot tell, before 2.6, or the file is not a zip)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is None:
        return []
    try:
        return list(find(path))
    except Exception:  # noqa: BLE001 - a legacy or damaged file: the load's error stands
        return []


def _weights_only(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError:
        # Lightning's save_hyperparameters() keeps whatever __init__ got (an nn.Module,
        # a partial): the tensors are still read, those objects become placeholders
        names = _foreign_globals(path)
        if not names:
            raise
        try:
            with torch.serialization.safe_globals([(_Opaque, name) for name in names]):
                return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        except pickle.UnpicklingError:  # torch refuses some (os.system) even so
            raise UserError(f"{path}: holds {', '.join(names[:3])}, which cannot be read "
                            "without running code (trajreg reads tensors and plain data; "
                            "no code in a checkpoint runs)") from None


def _load_torch(path: Path) -> Any:
    """``torch.load`` of a checkpoint file, memory-mapped where the format allows, tensors
    only (``weights_only``: no code in the file runs; objects of other classes are read
    as inert placeholders)."""
    try:
        try:
            return _weights_only(path, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) files cannot be mapped
                raise
            return _weights_only(path, mmap=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a readable checkpoint (truncated or damaged? "
                        f"{_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _file_step(path: Path) -> tuple[int | None, str]:
    if path.suffix == ".ckpt":  # Lightning: the step the trainer had taken
        obj = _load_torch(path)
        step = obj.get("global_step") if isinstance(obj, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            return step, "global_step"
    return _name_step(path), "name"


def _one(path: Path, step: int | None) -> Checkpoint:
    if step is not None:
        return Checkpoint(path, int(step), "given")
    if path.is_dir():
        found = _trainer_state_step(path)
        if found is not None:
            return Checkpoint(path, found, "trainer_state.json")
        named = _name_step(path)
        how = "name"
    else:
        named, how = _file_step(path)
    if named is None:
        raise UserError(f"{path}: no step in its name or contents; give the steps "
                        "explicitly (--steps, one per PATH)")
    return Checkpoint(path, named, how)


def _members(path: Path) -> list[Path]:
    """The checkpoints a PATH names: itself, or the checkpoints in a directory (its
    checkpoint folders first: a Trainer's output_dir also holds the final model once
    ``save_model()`` ran, the same weights as its last checkpoint-N)."""
    folders = sorted(p for p in path.iterdir() if _is_hf_folder(p)) if path.is_dir() else []
    if folders:
        return folders
    if _is_hf_folder(path) or _is_weight_file(path):
        return [path]
    if path.is_file():
        raise UserError(f"{path}: not a checkpoint (expected a folder with "
                        f"{WEIGHT_FILES[0]} or {WEIGHT_FILES[2]}, or a "
                        f"{', '.join(FILE_SUFFIXES)} file)")
    if not path.is_dir():
        raise UserError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if _is_weight_file(p))
    if not files:
        raise UserError(f"{path}: no checkpoints found (looked for folders with "
                        f"{WEIGHT_FILES[0]} or {WEIGHT_FILES[2]} and for "
                        f"{', '.join(FILE_SUFFIXES)} files)")
    return files


def find_checkpoints(paths: Sequence[str | Path], steps: Sequence[int] | None = None
                     ) -> list[Checkpoint]:
    """The checkpoints named by ``paths``, ordered by step.

    ``steps``: one step per path, each path one checkpoint (overrides the steps the
    files and names give). At least two checkpoints, no step twice (Lightning's
    ``last.ckpt`` is dropped when another file has its step).
    """
    if not paths:
        raise UserError("no checkpoints given")
    if steps is not None:
        if len(steps) != len(paths):
            raise UserError(f"--steps: {len(steps)} steps for {len(paths)} paths (give one "
                            "step per checkpoint)")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise UserError(f"--steps: must be whole numbers >= 0, got {list(steps)}")
        found = []
        for p, s in zip(paths, steps, strict=True):
            members = _members(Path(p))
            if len(members) != 1 or members[0] != Path(p):
                raise UserError(f"{p}: a directory of {len(members)} checkpoints; with "
                                "--steps each PATH must be one checkpoint")
            found.append(_one(Path(p), s))
    else:
        found = [_one(m, None) for p in paths for m in _members(Path(p))]
    by_step: dict[int, Checkpoint] = {}
    for ck in found:
        other = by_step.get(ck.step)
        if other is None:
            by_step[ck.step] = ck
            continue
        if ck.path == other.path:
            continue  # named twice
        if other.path.name == "last.ckpt":
            by_step[ck.step] = ck
        elif ck.path.name != "last.ckpt":
            raise UserError(f"step {ck.step} twice: {other.path} and {ck.path} (from their "
                            f"{other.step_from} and {ck.step_from}; give --steps)")
    out = [by_step[s] for s in sorted(by_step)]
    if len(out) < 2:
        raise UserError(f"{len(out)} checkpoint found in {', '.join(str(p) for p in paths)}; "
                        "a trajectory needs at least two")
    return out


class CheckpointState:
    """The tensors of one checkpoint by name, read on demand (``shape`` reads none).

    ``prefix``: the prefix every model name gets in the file (a Lightning module's
    ``model.``, DDP's ``module.``), found by ``resolve``.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.path = checkpoint.path
        self._files: dict[str, Path] = {}  # tensor name -> safetensors file
        self._handles: dict[Path, Any] = {}
        self._torch: dict[str, torch.Tensor] | None = None
        self.prefix = ""
        self._open()

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        path = self.path
        if path.is_dir():
            for name in WEIGHT_FILES:
                if (path / name).is_file():
                    self._open_file(path / name)
                    return
        self._open_file(path)

    def _open_file(self, file: Path) -> None:
        if file.name.endswith(".index.json"):
            try:
                weight_map = json.loads(file.read_text())["weight_map"]
                shards = {n: file.parent / f for n, f in weight_map.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(f"{file}: not a readable index ({_short(exc)})") from None
            if file.name.startswith("model.safetensors"):
                for shard in sorted(set(shards.values())):
                    self._safetensors(shard)
                self._files = shards
            else:
                state: dict[str, torch.Tensor] = {}
                for shard in sorted(set(shards.values())):
                    state.update(self._torch_state(shard))
                self._torch = state
        elif file.suffix == ".safetensors":
            handle = self._safetensors(file)
            self._files = {name: file for name in handle.keys()}
        else:
            self._torch = self._torch_state(file)

    def _safetensors(self, file: Path) -> Any:
        try:
            from safetensors import safe_open
        except ImportError:
            raise UserError(f"{file}: reading safetensors needs the safetensors package "
                            "(pip install safetensors)") from None
        if not file.is_file():
            raise UserError(f"{file}: no such file")
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds
            raise UserError(f"{file}: not a readable safetensors file (truncated or "
                            f"damaged? {_short(exc)})") from None
        self._handles[file] = handle
        return handle

    def _torch_state(self, file: Path) -> dict[str, torch.Tensor]:
        obj = _load_torch(file)
        if isinstance(obj, dict):
            for key in STATE_KEYS:
                inner = obj.get(key)
                if isinstance(inner, dict) and inner and all(
                        isinstance(v, torch.Tensor) for v in inner.values()):
                    return inner
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors and isinstance(next(iter(obj)), str):
                return tensors
        raise UserError(f"{file}: holds no state dict (a mapping of names to tensors, or "
                        f"one under {', '.join(STATE_KEYS)})")

    # ------------------------------------------------------------------ reading
    def keys(self) -> list[str]:
        return list(self._files) if self._torch is None else list(self._torch)

    def shape(self, name: str) -> tuple[int, ...]:
        name = self.prefix + name
        if self._torch is not None:
            return tuple(self._torch[name].shape)
        handle = self._handles[self._files[name]]
        return tuple(handle.get_slice(name).get_shape())

    def has(self, name: str) -> bool:
        name = self.prefix + name
        return name in (self._files if self._torch is None else self._torch)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor of model name ``name`` (a ``UserError`` naming the file when its
        bytes cannot be read)."""
        full = self.prefix + name
        try:
            if self._torch is not None:
                return self._torch[full]
            return self._handles[self._files[full]].get_tensor(full)
        except KeyError:
            raise UserError(f"{self.path}: no tensor {name!r}") from None
        except Exception as exc:  # noqa: BLE001 - a damaged file's bytes
            raise UserError(f"{self.path}: tensor {name!r} unreadable (truncated or "
                            f"damaged? {_short(exc)})") from None

    def float64(self, name: str) -> torch.Tensor:
        return self.tensor(name).detach().to(torch.float64).reshape(-1)

    def resolve(self, names: Sequence[str]) -> None:
        """Find the prefix under which the file holds every one of ``names`` (the model's
        parameter names): none, or the part of a key before the first name (a Lightning
        module's ``model.``, DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``); the
        shortest that holds them all (``model.`` before ``ema_model.``), two of the same
        length (``student.``, ``teacher.``) a ``UserError``."""
        keys = set(self.keys())
        if not names or all(n in keys for n in names):
            self.prefix = ""
            return
        first = names[0]
        prefixes = sorted({k[: -len(first)] for k in keys if k.endswith("." + first)})
        whole = sorted((p for p in prefixes if all(p + n in keys for n in names)), key=len)
        if len(whole) > 1 and len(whole[1]) == len(whole[0]):
            same = [p for p in whole if len(p) == len(whole[0])]
            raise UserError(f"{self.path}: the model's parameters are there under "
                            f"{' and '.join(repr(p) for p in same)}: ambiguous; give a model "
                            "whose parameter names are the checkpoint's (e.g. the whole "
                            "LightningModule)")
        if whole:
            self.prefix = whole[0]
            return
        missing = [n for n in names if n not in keys]
        sample = ", ".join(sorted(keys)[:3])
        raise UserError(f"{self.path}: no parameter {missing[0]!r} ({len(missing)} of the "
                        f"model's {len(names)} parameters are missing; the checkpoint has "
                        f"{len(keys)} tensors, e.g. {sample})")

    def items(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            yield name, self.tensor(name)


def open_state(checkpoint: Checkpoint) -> CheckpointState:
    return CheckpointState(checkpoint)
