"""AudioClassifier: the LightningModule that trains any network of `audio_cls.model` (or your own).

    batch {"inputs": (B, T, F), "lengths": (B,), "targets": (B,)} -> net -> logits (B, C)
        -> loss, torchmetrics accuracy and macro-F1 per split; softmax probabilities in predict_step.

Loss, optimizer and scheduler arrive as Hydra configs (`{"_target_": ...}`) or as callables.
Configs are stored in the checkpoint as plain data, which keeps checkpoints loadable with
`torch.load(weights_only=True)`; `audio_cls.checkpoints.load_model` (or `AudioClassifier.from_checkpoint`)
rebuilds the network and the feature extractor from the training config saved with them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from audio_cls.augment import mixup
from audio_cls.errors import ConfigError, TrainingDiverged
from audio_cls.features import FeatureExtractor

Spec = Mapping | Callable


def build(spec: Spec, *args, **kwargs):
    """Call a partial/callable, or instantiate a Hydra config, with the runtime arguments."""
    return spec(*args, **kwargs) if callable(spec) else instantiate(spec, *args, **kwargs)


class AudioClassifier(L.LightningModule):
    """Args:
        net: maps (inputs (B, T, F), lengths (B,)) to logits (B, num_classes).
        features: the extractor that made the inputs; kept here so its statistics (and, for
            prediction, the whole front end) are saved with the weights. May be None.
        class_names: label of each output index.
        optimizer: e.g. {"_target_": "torch.optim.Adam", "lr": 1e-3}; called with `params`.
        scheduler: e.g. {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 30},
            called with `optimizer`; None for a constant learning rate. ReduceLROnPlateau watches val/loss.
        loss: e.g. {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1, "weight": [..]};
            a `weight` list becomes a tensor of per-class weights. Default: plain cross entropy.
        mixup_alpha: > 0 mixes pairs of training items (Beta(alpha, alpha) weights; `audio_cls.augment.mixup`);
            training accuracy then counts the label with the larger weight.
        config: the run's resolved config (plain dict), saved so a checkpoint alone rebuilds the model.

    Training metrics stay off the hot path: loss, accuracy and the padding share of the batches are summed
    on the device as they come and logged once per epoch (train/loss, train/acc, train/padding_share);
    nothing in a training step waits for the device, apart from the check for a non-finite loss, which
    runs every step on the CPU and every `nan_check_every_n_steps` steps (and at the end of each epoch) on
    an accelerator.
    """

    def __init__(
        self,
        net: nn.Module,
        features: FeatureExtractor | None,
        class_names: list[str],
        optimizer: Spec = None,
        scheduler: Spec | None = None,
        loss: Spec | None = None,
        mixup_alpha: float = 0.0,
        config: dict | None = None,
        nan_check_every_n_steps: int = 50,
    ):
        super().__init__()
        if mixup_alpha < 0:
            raise ConfigError(f"augment.mixup_alpha={mixup_alpha}: must be >= 0 (0 switches mixup off)")
        self.save_hyperparameters(ignore=["net", "features"], logger=False)
        self.net = net
        # A copy: moving this module to a device must not move the datamodule's CPU extractor.
        self.features = copy.deepcopy(features)
        self.class_names = list(class_names)
        self.criterion = self._build_loss(loss)

        num_classes = len(class_names)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_sums = None  # (loss x items, correct, items, valid frames, frames) of this epoch, on the device
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_per_class_metrics = MetricCollection(
            {
                "precision": MulticlassPrecision(num_classes, average=None),
                "recall": MulticlassRecall(num_classes, average=None),
                "f1": MulticlassF1Score(num_classes, average=None),
            }
        )
        # Filled at the end of testing, for metrics.json.
        self.test_confusion_matrix: list[list[int]] | None = None
        self.test_per_class: dict[str, dict[str, float]] | None = None

    @staticmethod
    def _build_loss(loss: Spec | None) -> nn.Module:
        if loss is None:
            return nn.CrossEntropyLoss()
        if callable(loss):
            return loss()
        loss = dict(loss)
        weight = loss.pop("weight", None)
        kwargs = {"weight": torch.tensor(weight, dtype=torch.float32)} if weight is not None else {}
        return instantiate(loss, **kwargs)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(inputs, lengths)

    def _logits_and_loss(
        self, batch: dict, mix: tuple[torch.Tensor, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, loss and the targets metrics count. `mix` = (partner index, weight) of a mixup batch: the
        loss is weight * loss(targets) + (1 - weight) * loss(partners' targets), and metrics count the
        label with the larger weight."""
        logits = self(batch["inputs"], batch["lengths"])
        targets = batch["targets"]
        loss = self.criterion(logits, targets)
        if mix is not None:
            perm, lam = mix
            loss = lam * loss + (1 - lam) * self.criterion(logits, targets[perm])
            targets = targets if lam >= 0.5 else targets[perm]
        return logits, loss, targets

    def _shared_step(self, batch: dict, metrics: MetricCollection, split: str) -> torch.Tensor:
        """Loss, metrics and logging of a validation or test batch; returns the logits."""
        logits, loss, targets = self._logits_and_loss(batch)
        metrics.update(logits, targets)
        batch_size = targets.shape[0]
        self.log(
            f"{split}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=split != "test",
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=batch_size)
        return logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        mix = None
        if self.hparams.mixup_alpha > 0:
            inputs, lengths, perm, lam = mixup(batch["inputs"], batch["lengths"], self.hparams.mixup_alpha)
            batch, mix = {**batch, "inputs": inputs, "lengths": lengths}, (perm, lam)
        logits, loss, targets = self._logits_and_loss(batch, mix)
        with torch.no_grad():
            lengths, items = batch["lengths"], targets.shape[0]
            step = torch.stack(
                [
                    loss.detach().float() * items,
                    (logits.argmax(-1) == targets).sum().float(),
                    lengths.new_tensor(items).float(),
                    lengths.sum().float(),
                    lengths.new_tensor(items * batch["inputs"].shape[1]).float(),
                ]
            )
            self.train_sums = step if self.train_sums is None else self.train_sums + step
        if loss.device.type == "cpu" or batch_idx % self.hparams.nan_check_every_n_steps == 0:
            self._check_finite(loss, batch_idx)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            # Stop before the optimizer writes NaNs into the weights; the last checkpoint stays good.
            raise TrainingDiverged(
                f"the training loss is {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower optimizer.lr "
                f"or set trainer.gradient_clip_val"
            )

    def _check_epoch_finite(self) -> None:
        """On an accelerator the loss is checked every few steps only: check the epoch's sum before validation
        (and the checkpoints written after it) and at the end of the epoch."""
        if self.train_sums is not None and not torch.isfinite(self.train_sums[0]):
            raise TrainingDiverged(
                f"the training loss became {self.train_sums[0].item()} in epoch "
                f"{self.current_epoch}; lower optimizer.lr or set trainer.gradient_clip_val"
            )

    def on_validation_start(self) -> None:
        self._check_epoch_finite()

    def on_train_epoch_end(self) -> None:
        if self.train_sums is None:
            return
        self._check_epoch_finite()
        loss_sum, correct, items, valid, frames = self.train_sums
        self.train_sums = None
        self.log_dict(
            {"train/loss": loss_sum / items, "train/acc": correct / items, "train/padding_share": 1 - valid / frames},
            sync_dist=True,
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check's accuracy is no result
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._shared_step(batch, self.test_metrics, "test")
        self.test_confusion.update(logits, batch["targets"])
        self.test_per_class_metrics.update(logits, batch["targets"])

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute()
        self.test_confusion_matrix = matrix.cpu().tolist()
        per_class = {name: values.cpu().tolist() for name, values in self.test_per_class_metrics.compute().items()}
        support = matrix.sum(dim=1).cpu().tolist()
        self.test_per_class = {
            label: {**{name: per_class[name][i] for name in ("precision", "recall", "f1")}, "support": support[i]}
            for i, label in enumerate(self.class_names)
        }
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_figure"):  # TensorBoard
                fig, _ = self.test_confusion.plot(labels=self.class_names)
                logger.experiment.add_figure("test/confusion_matrix", fig, global_step=self.global_step)
                logger.experiment.add_text("test/per_class", self.per_class_table(), global_step=self.global_step)
        self.test_confusion.reset()
        self.test_per_class_metrics.reset()

    def per_class_table(self) -> str:
        """The last test's per-class precision, recall, F1 and support as a Markdown table."""
        rows = [
            f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for label, m in (self.test_per_class or {}).items()
        ]
        return "\n".join(["| class | precision | recall | F1 | support |", "|---|---|---|---|---|", *rows])

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Softmax probabilities (B, num_classes)."""
        return self(batch["inputs"], batch["lengths"]).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        optimizer = build(self.hparams.optimizer or {"_target_": "torch.optim.Adam"}, params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = build(self.hparams.scheduler, optimizer=optimizer)
        # `monitor` is read only by ReduceLROnPlateau; other schedulers step every epoch.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }

    @classmethod
    def from_checkpoint(
        cls, path: str, map_location: str | torch.device = "cpu", trusted_modules: tuple[str, ...] | None = None
    ) -> AudioClassifier:
        """Rebuild the network and feature extractor from the training config saved in a checkpoint of
        `audio_cls.train`, then load the weights; see `audio_cls.checkpoints.load_model`."""
        from audio_cls.checkpoints import TRUSTED_MODULES, load_model  # it builds this class

        trusted = TRUSTED_MODULES if trusted_modules is None else trusted_modules
        return load_model(path, map_location, trusted, module_class=cls)
