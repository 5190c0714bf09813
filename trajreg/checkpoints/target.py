"""What a checkpoint series is measured with: the model, its loss and the evaluation set.

Three ways to name them:

- ``from_config(RUN.yaml)``: trajreg's own nets; the model and data sections of a run
  config, F evaluated exactly as a run evaluates F_k (eval mode, the training set in
  the loop's evaluation chunks, the mean over every counted target);
- ``from_entry("module:function")`` (or ``path/to/file.py:function``): anyone's code; the
  function returns ``(model, loss_fn, batches)``, ``loss_fn(model, batch)`` a scalar
  tensor, ``batches`` an iterable of evaluation batches read once; F is the mean of
  ``loss_fn`` over the batches;
- ``from_huggingface(checkpoint folder, text=... | tokens=...)``: the model class named in
  the checkpoint's ``config.json`` (``AutoModelForCausalLM`` otherwise) built from that
  config, and windows of the tokenized text as batches (``labels = input_ids``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajreg.errors import UserError

__all__ = ["Target", "from_config", "from_entry", "from_huggingface", "from_objects"]

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
# the files a saved Hugging Face tokenizer has at least one of
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class Target:
    """The model a checkpoint is loaded into, and F: ``sum_b loss_fn(model, batch_b) /
    denominator`` (the gradient likewise), in eval mode."""

    model: torch.nn.Module
    loss_fn: LossFn
    batches: list[Any]
    denominator: float
    task: str = "custom"
    facts: dict[str, Any] = field(default_factory=dict)  # how it was built (config.yaml)

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise UserError(f"the model must be a torch.nn.Module, got "
                            f"{type(self.model).__name__}")
        if not callable(self.loss_fn):
            raise UserError(f"loss_fn must be callable as loss_fn(model, batch), got "
                            f"{type(self.loss_fn).__name__}")
        if not self.batches:
            raise UserError("no evaluation batches (the batches iterable was empty)")


def from_objects(model: torch.nn.Module, loss_fn: LossFn, batches: Any,
                 n_batches: int | None = None, where: str = "batches") -> Target:
    """A target of your objects: ``batches`` (any iterable) is read once, its first
    ``n_batches`` when given; F is the mean of the batch losses."""
    try:
        iterator = iter(batches)
    except TypeError:
        raise UserError(f"{where}: must be an iterable of batches, got "
                        f"{type(batches).__name__}") from None
    kept: list[Any] = []
    for batch in iterator:
        if n_batches is not None and len(kept) >= n_batches:
            break
        kept.append(batch)
    if n_batches is not None and len(kept) < n_batches:
        raise UserError(f"{where}: {n_batches} batches asked for, the iterable has "
                        f"{len(kept)}")
    return Target(model, loss_fn, kept, float(len(kept)))


def _import_entry(entry: str) -> Callable[[], Any]:
    module_name, sep, func_name = entry.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"--entry: must be MODULE:FUNCTION or FILE.py:FUNCTION, got {entry!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"--entry: {path}: no such file")
            spec = importlib.util.spec_from_file_location(f"_trajreg_entry_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # as python -m does
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise UserError(f"--entry: importing {module_name} failed: {type(exc).__name__}: "
                        f"{exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"--entry: {module_name} has no function {func_name!r}")
    return func


def from_entry(entry: str, n_batches: int | None = None) -> Target:
    """The target ``MODULE:FUNCTION`` returns: ``(model, loss_fn, batches)``."""
    func = _import_entry(entry)
    try:
        got = func()
    except Exception as exc:  # noqa: BLE001 - the user's function failed
        raise UserError(f"--entry: {entry}() raised {type(exc).__name__}: {exc}") from None
    if not (isinstance(got, tuple | list) and len(got) == 3):
        raise UserError(f"--entry: {entry}() must return (model, loss_fn, batches), got "
                        f"{type(got).__name__}")
    model, loss_fn, batches = got
    target = from_objects(model, loss_fn, batches, n_batches, where=f"{entry}() batches")
    target.facts = {"entry": entry}
    return target


def from_config(config: str | Path | dict[str, Any], n_batches: int | None = None,
                device: str = "cpu") -> Target:
    """trajreg's own net and data from a run config; F as the run evaluates F_k (the
    whole training set, or its first ``n_batches`` evaluation chunks)."""
    from trajreg.train.config import load_config, read_yaml
    from trajreg.train.data import load_data
    from trajreg.train.loop import eval_chunk, objective
    from trajreg.train.models import build_model

    raw = dict(read_yaml(config, "--config"))
    raw.pop("versions", None)  # a run directory's config.yaml
    cfg = load_config(raw)
    data = load_data(cfg.data, max_memory_gb=cfg.train.max_memory_gb,
                     block_size=getattr(cfg.model, "block_size", None))
    with torch.random.fork_rng(devices=[]):  # the init is replaced by every checkpoint
        torch.manual_seed(0)
        model = build_model(cfg.model, data.input_shape, data.n_classes).to(device)
    x, y = data.eval_train
    chunk = eval_chunk(data)
    starts = list(range(0, len(x), chunk))
    if n_batches is not None:
        if n_batches > len(starts):
            raise UserError(f"--batches: {n_batches} asked for, the training set has "
                            f"{len(starts)} evaluation chunks of {chunk}")
        starts = starts[:n_batches]
    batches = [(x[i : i + chunk], y[i : i + chunk]) for i in starts]
    obj = objective(data)
    counted = sum(int(obj.counted(yb)) for _, yb in batches)

    def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return obj.loss(model(xb.to(device)), yb.to(device), "sum")

    facts = {"config": cfg.to_dict(), "eval_chunk": chunk}
    return Target(model, loss_fn, batches, float(counted), task=data.task, facts=facts)


def _tokens(folder: Path, text: str | Path | None, tokens: str | Path | None) -> np.ndarray:
    if (text is None) == (tokens is None):
        raise UserError("a Hugging Face checkpoint is evaluated on --text FILE or --tokens "
                        "FILE (one of them)")
    if tokens is not None:
        path = Path(tokens)
        try:
            ids = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise UserError(f"--tokens: {path}: not readable as token ids (.npy, or integers "
                            f"as text): {exc}") from None
        ids = np.asarray(ids).reshape(-1)
        if not np.issubdtype(ids.dtype, np.integer):
            raise UserError(f"--tokens: {path}: token ids must be integers, got {ids.dtype}")
        return ids.astype(np.int64)
    path = Path(str(text))
    try:
        corpus = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--text: {path}: not readable as UTF-8 text ({exc})") from None
    # without its files, AutoTokenizer builds the config's tokenizer class empty (GPT-2's
    # with a vocabulary of 0), which turns any text into no tokens
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{folder}: no tokenizer saved with the checkpoint (none of "
                        f"{', '.join(TOKENIZER_FILES)}; the Trainer saves one given "
                        "processing_class=tokenizer); give --tokens FILE (the token ids, .npy)")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or incomplete tokenizer files
        raise UserError(f"{folder}: the tokenizer saved with the checkpoint cannot be "
                        f"loaded ({exc}); give --tokens FILE (the token ids, .npy)") from None
    ids = np.asarray(tokenizer(corpus)["input_ids"], dtype=np.int64).reshape(-1)
    if corpus and not len(ids):
        raise UserError(f"{folder}: its tokenizer turned the {len(corpus)} characters of "
                        f"--text {path} into no tokens; give --tokens FILE (the token ids, "
                        ".npy)")
    return ids


def from_huggingface(folder: str | Path, *, text: str | Path | None = None,
                     tokens: str | Path | None = None, n_batches: int = 16,
                     batch_size: int = 8, block_size: int | None = None,
                     device: str = "cpu") -> Target:
    """A Hugging Face model built from ``folder``'s config.json (no weights are
    downloaded), evaluated on consecutive windows of ``block_size`` tokens (default: the
    model's context, at most 256), ``batch_size`` windows a batch, ``n_batches``
    batches, the language-model loss with ``labels = input_ids``."""
    try:
        import transformers
        from transformers import AutoConfig
    except ImportError:
        raise UserError("Hugging Face checkpoints need transformers (pip install "
                        "'trajreg[huggingface]')") from None
    folder = Path(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a missing or garbled config.json
        raise UserError(f"{folder}: no readable config.json ({exc}); name the model with "
                        "--config or --entry") from None
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        cls = transformers.AutoModelForCausalLM
        model = cls.from_config(config)
    else:
        model = cls(config)
    if getattr(model, "loss_type", "") is None:
        # transformers' own default for a class its loss table does not name (GPT-2's
        # LMHeadModel), named here so that it is used without a warning on every run
        model.loss_type = "ForCausalLM"
    model = model.to(device)
    ids = _tokens(folder, text, tokens)
    known = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None)
    context = int(known or 256)
    length = int(block_size or min(context, 256))
    if known and length > context:  # the position embeddings' index error otherwise
        raise UserError(f"--block-size: {length} tokens is more than the model's context "
                        f"({context} positions, config.json)")
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab and len(ids) and (ids.min() < 0 or ids.max() >= vocab):
        raise UserError(f"token ids must be in [0, {vocab}) (the model's vocabulary), got "
                        f"[{ids.min()}, {ids.max()}]")
    need = n_batches * batch_size * length
    if len(ids) < need:
        raise UserError(f"{n_batches} batches of {batch_size} windows of {length} tokens need "
                        f"{need} tokens, the data has {len(ids)} (lower --batches, "
                        "--batch-size or --block-size)")
    windows = torch.from_numpy(ids[:need].copy()).view(n_batches, batch_size, length)
    batches = [windows[i] for i in range(n_batches)]

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return model(input_ids=batch, labels=batch).loss

    facts = {"huggingface": type(model).__name__, "block_size": length,
             "batch_size": batch_size, "tokens": int(len(ids)),
             "data": str(text if text is not None else tokens)}
    return Target(model, loss_fn, batches, float(n_batches), task="language", facts=facts)


def parameter_names(model: torch.nn.Module, buffers: bool = False) -> list[str]:
    """The names of x's tensors, in the model's order: its trainable parameters (tied
    ones once), and with ``buffers`` its floating-point buffers."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if buffers:
        names += [n for n, b in model.named_buffers() if b.is_floating_point()]
    return names
