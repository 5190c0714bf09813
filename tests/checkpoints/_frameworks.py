"""Real checkpoint series of the frameworks, written by their own trainers, and the brute
force they are checked against (tests/checkpoints/test_frameworks.py and the regression
tests). Also the ``--entry`` file of the Lightning series (``lightning_target``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE = Path(__file__).resolve()
BLOCK = 32  # GPT-2's n_positions, the evaluation windows' length


# ---------------------------------------------------------------- Hugging Face

def pydoc_text(characters: int = 40_000) -> str:
    """The start of the pydoc corpus trajreg's ``text`` data set reads."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))[:characters]


def character_vocab(text: str) -> dict[str, int]:
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    vocab.update({"[UNK]": len(vocab), "[PAD]": len(vocab) + 1})
    return vocab


def character_tokenizer(vocab: dict[str, int]) -> Any:
    """A character tokenizer (``tokenizers``' WordLevel over single characters), wrapped
    as the Trainer's processing_class; [PAD] because its collator asks for one."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]")


class Windows(torch.utils.data.Dataset):
    def __init__(self, ids: list[int]) -> None:
        n = len(ids) // BLOCK * BLOCK
        self.windows = torch.tensor(ids[:n]).view(-1, BLOCK)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


def train_gpt2(output_dir: Path, text: str, steps: int = 12, save_steps: int = 4,
               save_model: bool = False, tokenizer: bool = True) -> None:
    """A tiny GPT-2 (2 layers, width 32, lm_head tied to wte) trained by the Trainer with
    ``save_steps``: output_dir/checkpoint-N/, each with the tokenizer (``tokenizer``);
    with ``save_model``, the final model and trainer_state.json in output_dir too."""
    import transformers

    vocab = character_vocab(text)
    tok = character_tokenizer(vocab)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=BLOCK, n_embd=32,
                                     n_layer=2, n_head=2, bos_token_id=None,
                                     eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, save_strategy="steps",
        save_steps=save_steps, per_device_train_batch_size=8, learning_rate=3e-3, seed=0,
        use_cpu=True, report_to=[], logging_strategy="no", dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Windows([vocab[c] for c in text]),
        processing_class=tok if tokenizer else None,
        data_collator=transformers.default_data_collator)
    trainer.train()
    if save_model:
        trainer.save_model()
        trainer.save_state()


def gpt2_brute_force(folders: list[Path], ids: np.ndarray, n_batches: int, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each checkpoint loaded by ``from_pretrained`` (transformers' own loader, ties
    included), F the mean of the batch losses on consecutive windows of ``ids`` in eval
    mode and its gradient by autograd: x_k, grad F(x_k) (K, d) and F (K,)."""
    import transformers

    windows = torch.from_numpy(ids[: n_batches * batch_size * BLOCK].copy()).view(
        n_batches, batch_size, BLOCK)
    xs, grads, losses = [], [], []
    for folder in folders:
        model = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
        model.eval()
        assert model.lm_head.weight is model.transformer.wte.weight  # tied: once in x
        F = torch.stack([model(input_ids=w, labels=w).loss for w in windows]).mean()
        F.backward()
        params = list(model.parameters())  # tied weights once
        xs.append(torch.cat([p.detach().reshape(-1) for p in params]).double().numpy())
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]).double().numpy())
        losses.append(F.item())
    return np.array(xs), np.array(grads), np.array(losses)


# ---------------------------------------------------------------- Lightning

def mlp() -> torch.nn.Module:
    """Dropout and batch norm: F only in eval mode with the checkpoint's running
    statistics (buffers under the same ``model.`` prefix) is the brute force's."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.Tanh(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(16, 1))


def regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    return x, torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]


def mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = regression_data()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]


def lightning_target() -> tuple[torch.nn.Module, Any, list[Any]]:
    """The ``--entry`` of the Lightning series: the bare torch model (the checkpoint
    holds it under the LightningModule's ``model.``), the loss and the batches."""
    return mlp(), mse, eval_batches()


def train_lightning(dirpath: Path, every: int = 4, steps: int = 16,
                    hparams_module: bool = False) -> type:
    """A LightningModule wrapping ``mlp()`` as ``self.model``, fitted for one epoch of
    ``steps`` steps with ``ModelCheckpoint(every_n_train_steps=every, save_top_k=-1,
    save_last=True)``; with ``hparams_module``, ``save_hyperparameters()`` keeps the
    module and a ``functools.partial`` of the optimizer in the checkpoints (as
    lightning-hydra-template's modules do). Returns the LightningModule class."""
    import functools

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Wrapped(pl.LightningModule):
        def __init__(self, net: torch.nn.Module | None = None, optimizer: Any = None
                     ) -> None:
            super().__init__()
            if hparams_module:
                self.save_hyperparameters()
            self.model = net if net is not None else mlp()
            self.optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.1,
                                                            momentum=0.9)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return mse(self.model, batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return self.optimizer(self.parameters())

    x, y = regression_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=len(x) // steps, shuffle=True,
        generator=torch.Generator().manual_seed(0))
    callback = ModelCheckpoint(dirpath=str(dirpath), every_n_train_steps=every,
                               save_top_k=-1, save_last=True)
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice (num_workers, ignore=[net])
        module = (Wrapped(mlp(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
                  if hparams_module else Wrapped())
        trainer.fit(module, loader)
    return Wrapped


def lightning_brute_force(cls: type, files: list[Path]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each .ckpt loaded by Lightning's own ``load_from_checkpoint``; F the mean of
    ``mse`` over ``eval_batches()`` in eval mode, its gradient by autograd."""
    xs, grads, losses = [], [], []
    for file in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = cls.load_from_checkpoint(str(file), map_location="cpu",
                                              weights_only=False)
        model = module.model
        model.eval()
        F = torch.stack([mse(model, b) for b in eval_batches()]).mean()
        F.backward()
        params = list(model.parameters())
        xs.append(torch.cat([p.detach().reshape(-1) for p in params]).double().numpy())
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]).double().numpy())
        losses.append(F.item())
    return np.array(xs), np.array(grads), np.array(losses)


# ---------------------------------------------------------------- the comparison

def relative_errors(table: Any, xs: np.ndarray, grads: np.ndarray, losses: np.ndarray,
                    k_star: int) -> dict[str, float]:
    """max |metrics - brute force| / scale of each quantity: F, D, a, b, s (b against
    F's scale: it is a difference of two F), a_disp and dist_init; the epochwise a, b,
    s from ``trajreg.principle.epochwise_quantities``."""
    from trajreg.principle import epochwise_quantities

    q = epochwise_quantities(xs, grads, losses, xs[k_star], losses[k_star])
    diff = xs - xs[k_star]
    u = xs[:-1] - xs[1:]
    expected = {
        "F": losses, "D": np.einsum("ij,ij->i", diff, diff), "a": q.a, "b": q.b, "s": q.s,
        "a_disp": np.append(np.einsum("ij,ij->i", diff[:-1], u), np.nan),
        "dist_init": np.linalg.norm(xs - xs[0], axis=1)}
    out = {}
    for name, want in expected.items():
        got = table[name].to_numpy()
        scale = np.nanmax(np.abs(losses if name == "b" else want))
        out[name] = float(np.nanmax(np.abs(got - want)) / scale)
    return out
