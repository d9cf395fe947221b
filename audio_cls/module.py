"""AudioClassifier: the LightningModule that trains any network of `audio_cls.model` (or your own).

    batch {"inputs": (B, T, F), "lengths": (B,), "targets": (B,)} -> net -> logits (B, C)
        -> loss, torchmetrics accuracy and macro-F1 per split; softmax probabilities in predict_step.

Loss, optimizer and scheduler arrive as Hydra configs (`{"_target_": ...}`) or as callables.
Configs are stored in the checkpoint as plain data, which keeps checkpoints loadable with
`torch.load(weights_only=True)`; `AudioClassifier.from_checkpoint` rebuilds the network and the
feature extractor from the training config saved with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import copy
import warnings

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from audio_cls.errors import TrainingDiverged
from audio_cls.features import FeatureExtractor

Spec = Mapping | Callable

# Lightning warns whenever a LightningModule overrides this hook next to a datamodule; ours is deliberate.
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")


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
        config: the run's resolved config (plain dict), saved so a checkpoint alone rebuilds the model.
    """

    def __init__(self, net: nn.Module, features: FeatureExtractor | None, class_names: list[str],
                 optimizer: Spec = None, scheduler: Spec | None = None, loss: Spec | None = None,
                 config: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "features"], logger=False)
        self.net = net
        # A copy: moving this module to a device must not move the datamodule's CPU extractor.
        self.features = copy.deepcopy(features)
        self.class_names = list(class_names)
        self.criterion = self._build_loss(loss)

        num_classes = len(class_names)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion_matrix: list[list[int]] | None = None  # filled at the end of testing

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

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """With features.placement=device, batches hold padded waveforms: extract features here, batched,
        on the accelerator (in float32, also under mixed precision), and augment training batches."""
        if self.features is not None and self.features.placement == "device":
            frames = self.features.num_frames(batch["lengths"])
            with torch.no_grad():
                inputs = self.features(batch["inputs"], batch["lengths"])
                if self.training:  # feature-domain augmentation follows extraction, as in the workers
                    inputs = self.features.augment(inputs, frames)
            batch = {**batch, "inputs": inputs, "lengths": frames}
        return batch

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(inputs, lengths)

    def _shared_step(self, batch: dict, metrics: MetricCollection, split: str) -> torch.Tensor:
        logits = self(batch["inputs"], batch["lengths"])
        loss = self.criterion(logits, batch["targets"])
        metrics.update(logits.detach(), batch["targets"])
        batch_size = batch["targets"].shape[0]
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=split != "test",
                 batch_size=batch_size, sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=batch_size)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._shared_step(batch, self.train_metrics, "train")
        if not torch.isfinite(loss):
            # Stop before the optimizer writes NaNs into the weights; the last checkpoint stays good.
            raise TrainingDiverged(f"the training loss is {loss.item()} at step {self.global_step} "
                                   f"(epoch {self.current_epoch}, batch {batch_idx}); lower optimizer.lr "
                                   f"or set trainer.gradient_clip_val")
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check's accuracy is no result
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._shared_step(batch, self.test_metrics, "test")
        self.test_confusion.update(logits, batch["targets"])

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute()
        self.test_confusion_matrix = matrix.cpu().tolist()
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_figure"):  # TensorBoard
                fig, _ = self.test_confusion.plot(labels=self.class_names)
                logger.experiment.add_figure("test/confusion_matrix", fig, global_step=self.global_step)
        self.test_confusion.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Softmax probabilities (B, num_classes)."""
        return self(batch["inputs"], batch["lengths"]).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        optimizer = build(self.hparams.optimizer or {"_target_": "torch.optim.Adam"}, params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = build(self.hparams.scheduler, optimizer=optimizer)
        # `monitor` is read only by ReduceLROnPlateau; other schedulers step every epoch.
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu") -> "AudioClassifier":
        """Rebuild network and feature extractor from the config saved in a checkpoint written by
        `audio_cls.train`, then load the weights (without unpickling code: weights_only=True)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        config = hparams.get("config")
        if not config:
            raise ValueError(f"{path}: no training config saved in it; use "
                             f"AudioClassifier.load_from_checkpoint(path, net=..., features=...)")
        features = instantiate(config["features"])
        net = instantiate(config["model"], in_features=features.num_features,
                          num_classes=len(hparams["class_names"]))
        model = cls(net=net, features=features, **hparams)
        model.load_state_dict(checkpoint["state_dict"])
        return model
