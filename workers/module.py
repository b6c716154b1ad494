"""Lightning pieces of a trial: the classifier module, the tensor data module, the monitor.

The monitor callback is where a trial is observed and steered: per-epoch metrics, the
reporter (pruning), NaN/inf loss and the time limit.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from workers.config import TrainConfig
from workers.data import TensorBatches, augment_batch
from workers.results import Reporter

# On CUDA the loss is checked for NaN every this many steps (a check is a device sync);
# on CPU every step (free).
NAN_CHECK_EVERY_CUDA = 25


class TrialStop(Exception):
    """Raised by the monitor to end training at once; `reason` goes into the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW; weight decay on weights, not on norms/biases.

    Args:
        net: the network.
        config: the recipe (optimizer, lr, weight_decay).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule over `epochs * steps_per_epoch` steps (None for `none`).

    Args:
        optimizer: the optimizer.
        config: the recipe (schedule, lr, epochs).
        steps_per_epoch: optimizer steps per epoch.
    """
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        # OneCycleLR divides by zero when its warm-up ends on step 0 (0.25 x 4 steps - 1).
        pct_start = 0.3 if total == 4 else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=pct_start
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
        )
    if config.schedule == "step":
        milestones = (0.5 * total, 0.75 * total)  # x0.1 at half and three quarters
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.1 ** sum(s >= m for m in milestones)
        )
    return None


class TensorDataModule(pl.LightningDataModule):
    """Serves in-memory tensors as shuffled batches (no DataLoader workers: the data is
    already decoded and normalised, so workers would only copy it between processes).

    Args:
        x_train, y_train, x_val, y_val: tensors on the device the batches should live on.
        batch_size: training batch size.
        seed: seed of the shuffling order.
        val_batch_size: evaluation batch size (no activations kept, so it can be larger).
        drop_last: drop the final partial training batch (fixed shapes for torch.compile).
        augment: random shifts (and flips if `flip`) on training batches, on the device.
        flip: horizontal flips keep labels (natural images).
        channels_last: hand out channels-last batches.
    """

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        val_batch_size: int,
        drop_last: bool = False,
        augment: bool = False,
        flip: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.augment, self.flip, self.channels_last = augment, flip, channels_last
        self.train_batches = TensorBatches(
            x_train, y_train, batch_size, shuffle=True, seed=seed, drop_last=drop_last
        )
        self.val_batches = TensorBatches(x_val, y_val, val_batch_size, shuffle=False)

    def train_dataloader(self) -> TensorBatches:
        return self.train_batches

    def val_dataloader(self) -> TensorBatches:
        return self.val_batches

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        if self.augment and self.trainer is not None and self.trainer.training:
            x = augment_batch(x, flip=self.flip)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of `net`; keeps per-epoch sums on the device (no `self.log`,
    no per-step host sync) for the monitor to read once per epoch.

    Args:
        net: the network from `search_spaces.build_model`.
        config: the recipe.
        steps_per_epoch: optimizer steps per epoch (for the schedule).
        forward_net: what to call in steps (a `torch.compile` wrapper of `net`, or `net`).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        config: TrainConfig,
        steps_per_epoch: int,
        *,
        forward_net: Any = None,
    ) -> None:
        super().__init__()
        # Lightning's manual optimisation: the same loop, hooks and precision plugins, without
        # the closure machinery of automatic optimisation, which cost ~1 ms per step (7% of a
        # batch-64 step on a small CPU model, bench/throughput.py).
        self.automatic_optimization = False
        self.net = net
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        # Not registered as a submodule: it wraps `net`, whose parameters are already ours.
        self.__dict__["forward_net"] = forward_net if forward_net is not None else net
        self.train_loss_sum: torch.Tensor | None = None
        self.train_count = 0
        self.val_loss_sum: torch.Tensor | None = None
        self.val_correct: torch.Tensor | None = None
        self.val_count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_net(x)

    # 1. training: loss with label smoothing; the sum stays on the device
    def on_train_epoch_start(self) -> None:
        self.train_loss_sum = torch.zeros((), device=self.device)
        self.train_count = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        logits = self.forward_net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        self.manual_backward(loss)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # per-step schedules (one-cycle, cosine, step)
        self.train_loss_sum = self.train_loss_sum + loss.detach() * len(y)
        self.train_count += len(y)
        return loss.detach()

    # 2. validation: plain cross-entropy (comparable across recipes) and accuracy
    def on_validation_epoch_start(self) -> None:
        self.val_loss_sum = torch.zeros((), device=self.device)
        self.val_correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.val_count = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.forward_net(x).float()
        self.val_loss_sum = self.val_loss_sum + F.cross_entropy(logits, y, reduction="sum")
        self.val_correct = self.val_correct + (logits.argmax(dim=1) == y).sum()
        self.val_count += len(y)

    # 3. optimisation: per-step schedule
    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.net, self.config)
        scheduler = make_scheduler(optimizer, self.config, self.steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


class TrialMonitor(pl.Callback):
    """Per-epoch metrics, reporting/pruning, NaN/inf loss and time-limit checks.

    Args:
        reporter: gets each epoch's metrics; True back means stop now (pruned).
        started: `time.perf_counter()` at the start of the trial.
        deadline: `time.perf_counter()` value after which the trial times out (or None).
    """

    def __init__(self, reporter: Reporter | None, started: float, deadline: float | None) -> None:
        self.reporter = reporter
        self.started = started
        self.deadline = deadline
        self.epochs: list[dict[str, Any]] = []
        self.pruned = False
        self.setup_s: float | None = None
        self._epoch_start = 0.0
        self._train_end: float | None = None
        self._cuda = False

    def _check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise TrialStop("timeout")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cuda = pl_module.device.type == "cuda"
        self._check_time()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._train_end = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.setup_s is None:
            self.setup_s = time.perf_counter() - self.started

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._cuda or batch_idx % NAN_CHECK_EVERY_CUDA == NAN_CHECK_EVERY_CUDA - 1:
            if not bool(torch.isfinite(pl_module.train_loss_sum)):
                raise TrialStop("nan_loss")
        self._check_time()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._cuda:
            torch.cuda.synchronize(pl_module.device)
        self._train_end = time.perf_counter()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check_time()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        now = time.perf_counter()
        train_loss = float(pl_module.train_loss_sum) / max(1, pl_module.train_count)
        val_loss = float(pl_module.val_loss_sum) / max(1, pl_module.val_count)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrialStop("nan_loss")
        train_end = self._train_end if self._train_end is not None else now
        metrics = {
            "epoch": len(self.epochs) + 1,  # epochs trained so far (1-based)
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": int(pl_module.val_correct) / max(1, pl_module.val_count),
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            "seconds": now - self._epoch_start,
            "train_seconds": train_end - self._epoch_start,
            "train_samples": pl_module.train_count,
        }
        self.epochs.append(metrics)
        if self.reporter is not None and self.reporter.report(metrics["epoch"], dict(metrics)):
            self.pruned = True
            trainer.should_stop = True
