"""AudioClassifier: the LightningModule that trains any network of `audio_cls.model` (or your own).

    batch {"inputs": (B, T, F), "lengths": (B,), "targets": (B,)} -> net -> logits (B, C)
        -> loss, torchmetrics accuracy and macro-F1 per split; softmax probabilities in predict_step.

Multi-label (task=multilabel): targets are multi-hot (B, C), the loss a sigmoid one (BCE, focal), the
metrics mAP (the headline), AUROC and F1 at decision thresholds that every validation tunes per class
(maximizing F1) and the checkpoint keeps (`thresholds`). Sound event detection: with strong labels
(batch["events"]) and a network with a frame head (`has_frame_head`), frame logits are trained on frame
targets built from the event times as well, and every validation tunes the frame thresholds
(`frame_thresholds`) on the median-filtered frame scores of its recordings, which the checkpoint keeps too.

Loss, optimizer and scheduler arrive as Hydra configs (`{"_target_": ...}`) or as callables.
Configs are stored in the checkpoint as plain data, which keeps checkpoints loadable with
`torch.load(weights_only=True)`; `audio_cls.checkpoints.load_model` (or `AudioClassifier.from_checkpoint`)
rebuilds the network and the feature extractor from the training config saved with them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelPrecisionRecallCurve,
)
from torchmetrics.functional.classification import (
    binary_precision_recall_curve,
    multilabel_f1_score,
)

from audio_cls.augment import mixup
from audio_cls.errors import ConfigError, TrainingDiverged
from audio_cls.features import FeatureExtractor, frame_mask
from audio_cls.model.layers import backbone_parameters, has_frame_head
from audio_cls.runs import log_figure, log_text
from audio_cls.tta import average_views

Spec = Mapping | Callable


def skip_failing_nvml_check() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported, so that `torch.cuda.is_available()` asks NVML
    and leaves CUDA uninitialized (forking stays possible). Where NVML cannot be loaded (a CUDA build of torch
    on a machine without a GPU driver), every such call tries to load it again and then makes the check it would
    have made without the variable: once per optimizer step (Adam checks for CUDA graph capture), 40-80 us on
    a 2-core CPU machine. Unset it there: the same answer, without the failing attempt. Not on ROCm, where
    torch asks amdsmi instead and the variable keeps forking safe."""
    # private torch functions: if a future torch drops them, keep Lightning's setting
    is_compiled = getattr(torch.cuda, "_is_compiled", None)
    count_nvml = getattr(torch.cuda, "_device_count_nvml", None)
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or torch.version.hip or not (is_compiled and count_nvml):
        return
    if is_compiled() and count_nvml() < 0:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


skip_failing_nvml_check()  # after `import lightning` above


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
        multilabel: multi-hot targets, sigmoid outputs (task=multilabel).
        thresholds: multi-label decision thresholds: "per_class" (tuned on every validation, maximizing each
            class's F1), "global" (one, tuned for macro F1) or "fixed" (`threshold` for every class).
        frame_seconds: seconds per input frame (the extractor's hop), to place event times on frames.
        frame_loss_weight: weight of the frame-level loss (strong labels) beside the clip-level one.
        frame_thresholds: sound event detection's frame thresholds, as `thresholds` but tuned for frame-level
            F1 on the validation recordings' frame scores after the median filter; "fixed": `frame_threshold`.
        frame_threshold: the fixed frame threshold, and the start before the first validation.
        median_frames: the median filter (frames, odd; 1: none) that turns frame scores into events.
        backbone_lr_scale: the learning rate of the network's backbone (every part but its `head`) relative to
            the optimizer's; other than 1, the backbone is a second param group, which the scheduler scales too.
        distill_alpha, distill_temperature: knowledge distillation, once `set_teacher` gave the teacher's outputs:
            the loss is alpha * loss(labels) + (1 - alpha) * T^2 * KL(teacher || student) at temperature T
            (audio_cls/distill.py).

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
        multilabel: bool = False,
        thresholds: str = "per_class",
        threshold: float = 0.5,
        frame_seconds: float | None = None,
        frame_loss_weight: float = 1.0,
        frame_thresholds: str = "per_class",
        frame_threshold: float = 0.5,
        median_frames: int = 1,
        backbone_lr_scale: float = 1.0,
        distill_alpha: float = 0.5,
        distill_temperature: float = 4.0,
    ):
        super().__init__()
        if mixup_alpha < 0:
            raise ConfigError(f"augment.mixup_alpha={mixup_alpha}: must be >= 0 (0 switches mixup off)")
        if thresholds not in THRESHOLD_MODES:
            raise ConfigError(f"task.thresholds={thresholds!r}: expected one of {', '.join(THRESHOLD_MODES)}")
        if frame_thresholds not in THRESHOLD_MODES:
            raise ConfigError(
                f"task.frame_thresholds={frame_thresholds!r}: expected one of {', '.join(THRESHOLD_MODES)}"
            )
        self.save_hyperparameters(ignore=["net", "features"], logger=False)
        self.net = net
        # A copy: moving this module to a device must not move the datamodule's CPU extractor.
        self.features = copy.deepcopy(features)
        self.class_names = list(class_names)
        self.criterion = self._build_loss(loss)
        self.multilabel = multilabel
        # Distillation: the teacher's log probabilities at the temperature, one row per training item (set_teacher);
        # not saved with the weights (the student needs no teacher to predict).
        self.register_buffer("teacher_log_probs", None, persistent=False)
        self._test_items: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_items: tuple[torch.Tensor, torch.Tensor] | None = None  # the last test's, see _gather_test_items
        if multilabel:
            self._init_multilabel(len(class_names), threshold, frame_threshold)
            return

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
        # Calibration: expected calibration error of the test probabilities before and after temperature
        # scaling; the temperature is fitted on every validation and saved with the weights (eval and predict use it).
        self.test_ece = MulticlassCalibrationError(num_classes, n_bins=15)
        self.test_ece_scaled = MulticlassCalibrationError(num_classes, n_bins=15)
        self.register_buffer("temperature", torch.ones(()))
        self.register_load_state_dict_pre_hook(_temperature_one_if_missing)
        self._val_logits: list[tuple[torch.Tensor, torch.Tensor]] = []
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

    def _init_multilabel(self, num_classes: int, threshold: float, frame_threshold: float) -> None:
        metrics = MetricCollection(
            {
                "mAP": MultilabelAveragePrecision(num_classes, average="macro"),
                "auroc": MultilabelAUROC(num_classes, average="macro"),
            }
        )
        self.train_sums = None
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_map_best = MaxMetric()
        self.val_map_best.persistent(True)
        self.test_ap = MultilabelAveragePrecision(num_classes, average=None)
        # Decision thresholds, tuned on validation and saved with the weights (eval, predict and export use them).
        self.register_buffer("thresholds", torch.full((num_classes,), float(threshold)))
        # Sound event detection: frame thresholds likewise; a binned precision-recall curve of the validation
        # frames (constant memory however long the recordings, summed across processes).
        self.register_buffer("frame_thresholds", torch.full((num_classes,), float(frame_threshold)))
        self.val_frame_curve = MultilabelPrecisionRecallCurve(num_classes, thresholds=FRAME_THRESHOLD_GRID)
        self.register_load_state_dict_pre_hook(_keep_fixed_frame_thresholds)
        self._scores: list[tuple[torch.Tensor, torch.Tensor]] = []  # this validation's / test's (probs, targets)
        self.test_confusion_matrix = None
        self.test_per_class = None

    @staticmethod
    def _build_loss(loss: Spec | None) -> nn.Module:
        if loss is None:
            return nn.CrossEntropyLoss()
        if callable(loss):
            return loss()
        loss = dict(loss)
        kwargs = {}
        for key in ("weight", "pos_weight"):  # lists in the config, tensors for the loss
            value = loss.pop(key, None)
            if value is not None:
                kwargs[key] = torch.tensor(value, dtype=torch.float32)
        return instantiate(loss, **kwargs)

    def set_teacher(self, log_probs: torch.Tensor) -> None:
        """Distill from a teacher: its log softmax(logits / distill_temperature) (items, classes), one row per item
        of the training split in order (`audio_cls.distill.teacher_log_probs`); batches carry `index`."""
        if self.multilabel:
            raise ConfigError("distill.teacher: distillation is for single-label models (task=multiclass)")
        self.teacher_log_probs = log_probs.float()

    @property
    def detects_events(self) -> bool:
        """A sound event detection model: multi-label, and its network has a frame head."""
        return self.multilabel and has_frame_head(self.net)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(inputs, lengths)

    def _logits_and_loss(
        self, batch: dict, mix: tuple[torch.Tensor, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, loss and the targets metrics count. `mix` = (partner index, weight) of a mixup batch: the
        loss is weight * loss(targets) + (1 - weight) * loss(partners' targets), and metrics count the
        label with the larger weight. Multi-label: the label vectors are mixed the same way (one loss on
        the soft targets); with strong labels and a frame head, a frame-level loss is added."""
        if "views" in batch:  # test-time augmentation (audio_cls/tta.py): the views' mean probability
            logits = self.view_logits(batch)
            targets = batch["targets"].float() if self.multilabel else batch["targets"]
            return logits, self.criterion(logits, targets), targets
        if self.multilabel:
            return self._multilabel_logits_and_loss(batch, mix)
        logits = self(batch["inputs"], batch["lengths"])
        targets = batch["targets"]
        loss = self.criterion(logits, targets)
        if mix is not None:
            perm, lam = mix
            loss = lam * loss + (1 - lam) * self.criterion(logits, targets[perm])
            targets = targets if lam >= 0.5 else targets[perm]
        return logits, loss, targets

    def view_logits(self, batch: dict) -> torch.Tensor:
        """(batch, classes) logits of a batch: those of its views' mean probability when it holds test-time views."""
        if "views" not in batch:
            return self(batch["inputs"], batch["lengths"])
        views = batch["views"]  # one forward per view: the memory of a batch without views
        chunks = zip(batch["inputs"].chunk(views), batch["lengths"].chunk(views))
        return average_views(torch.cat([self(x, n) for x, n in chunks]), views, self.multilabel)

    def _multilabel_logits_and_loss(self, batch: dict, mix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = batch["targets"].float()
        strong = "events" in batch and has_frame_head(self.net)
        if strong:
            logits, frame_logits, frame_lengths = self.net.forward_frames(batch["inputs"], batch["lengths"])
            seconds = frame_hop(self.hparams.frame_seconds, self.net)
            frame_targets = frame_targets_from_events(batch["events"], frame_logits.shape[1], seconds, targets.shape[1])
            # For validation: frame-threshold tuning and the TensorBoard picture.
            self._last_frames = (frame_logits.detach(), frame_lengths, seconds, frame_targets)
        else:
            logits = self(batch["inputs"], batch["lengths"])
        if mix is not None:
            perm, lam = mix
            targets = lam * targets + (1 - lam) * targets[perm]
            if strong:
                frame_targets = lam * frame_targets + (1 - lam) * frame_targets[perm]
        loss = self.criterion(logits, targets)
        if strong:
            mask = frame_mask(frame_lengths.to(frame_logits.device), frame_logits.shape[1])
            frame_loss = nn.functional.binary_cross_entropy_with_logits(
                frame_logits[mask], frame_targets[mask].to(frame_logits.dtype)
            )
            loss = loss + self.hparams.frame_loss_weight * frame_loss
        return logits, loss, targets

    def _shared_step(self, batch: dict, metrics: MetricCollection, split: str) -> torch.Tensor:
        """Loss, metrics and logging of a validation or test batch; returns the logits."""
        logits, loss, targets = self._logits_and_loss(batch)
        if self.multilabel:
            # Probabilities in float32: torchmetrics would apply the sigmoid itself only to batches with a
            # logit outside [0, 1], and in half precision, where close scores become ties.
            targets, scores = targets.long(), torch.sigmoid(logits.detach().float())
            self._scores.append((scores, targets))
            metrics.update(scores, targets)
        else:
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
        if self.teacher_log_probs is not None:
            loss = self._distilled(loss, logits, batch["index"], mix)
        with torch.no_grad():
            lengths, items = batch["lengths"], targets.shape[0]
            if self.multilabel:  # the share of right yes/no answers at 0.5, summed over items
                right = ((logits > 0) == (targets >= 0.5)).float().mean(-1).sum()
            else:
                right = (logits.argmax(-1) == targets).sum().float()
            step = torch.stack(
                [
                    loss.detach().float() * items,
                    right,
                    lengths.new_tensor(items).float(),
                    lengths.sum().float(),
                    lengths.new_tensor(items * batch["inputs"].shape[1]).float(),
                ]
            )
            self.train_sums = step if self.train_sums is None else self.train_sums + step
        if loss.device.type == "cpu" or batch_idx % self.hparams.nan_check_every_n_steps == 0:
            self._check_finite(loss, batch_idx)
        return loss

    def _distilled(self, loss: torch.Tensor, logits: torch.Tensor, index: torch.Tensor, mix) -> torch.Tensor:
        """alpha * the labels' loss + (1 - alpha) * the distillation loss against the teacher's outputs for these
        items (mixed as the inputs were, under mixup)."""
        from audio_cls.distill import distillation_loss

        teacher = self.teacher_log_probs[index.to(self.teacher_log_probs.device)]
        if mix is not None:
            perm, lam = mix
            teacher = (lam * teacher.exp() + (1 - lam) * teacher[perm].exp()).clamp_min(1e-12).log()
        alpha, temperature = self.hparams.distill_alpha, self.hparams.distill_temperature
        return alpha * loss + (1 - alpha) * distillation_loss(logits, teacher, temperature)

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
        accuracy = "train/label_acc" if self.multilabel else "train/acc"
        self.log_dict(
            {"train/loss": loss_sum / items, accuracy: correct / items, "train/padding_share": 1 - valid / frames},
            sync_dist=True,
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._last_frames = None
        logits = self._shared_step(batch, self.val_metrics, "val")
        if not self.multilabel:
            self._val_logits.append((logits.detach().float(), batch["targets"]))
        if self._last_frames is None:
            return
        frame_logits, frame_lengths, seconds, frame_targets = self._last_frames
        self._update_frame_curve(frame_logits, frame_lengths, frame_targets)
        if batch_idx == 0:  # a few recordings' frame scores, for TensorBoard
            n = min(4, len(frame_logits))
            self._frames_example = (
                torch.sigmoid(frame_logits[:n].float()).cpu(),
                frame_lengths[:n].cpu(),
                batch["events"][:n].cpu(),
                seconds,
            )

    def _update_frame_curve(self, frame_logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> None:
        """Add each recording's valid frames, median-filtered as events will be, to the validation curve."""
        from audio_cls.sed import smooth

        probs = torch.sigmoid(frame_logits.float()).cpu().numpy()
        scores = [smooth(row[:n], self.hparams.median_frames) for row, n in zip(probs, lengths.tolist())]
        mask = frame_mask(lengths.to(targets.device), targets.shape[1])
        self.val_frame_curve.update(
            torch.as_tensor(np.concatenate(scores), device=targets.device), (targets[mask] >= 0.5).long()
        )

    def on_validation_epoch_start(self) -> None:
        if self.multilabel:
            self._scores = []
        else:
            self._val_logits = []

    def on_test_epoch_start(self) -> None:
        if self.multilabel:
            self._scores = []

    def on_validation_epoch_end(self) -> None:
        if self.multilabel:
            probs, targets = self._gathered_scores()
            if not self.trainer.sanity_checking:
                tuned = tune_thresholds(probs, targets, self.hparams.thresholds, self.hparams.threshold)
                self.thresholds.copy_(tuned.to(self.thresholds.device))
            self.log_dict(f1_scores(probs, targets, self.thresholds, "val/"), sync_dist=False)
            self._tune_frame_thresholds()
            if not self.trainer.sanity_checking:
                self.val_map_best.update(self.val_metrics["mAP"].compute())
                self.log("val/mAP_best", self.val_map_best.compute(), prog_bar=True, sync_dist=True)
                self._log_frame_scores()
            return
        if self.trainer.sanity_checking:
            return  # the sanity check's accuracy is no result
        if self._val_logits:  # validation runs whole on every process: each fits the same temperature
            logits, targets = (torch.cat(x) for x in zip(*self._val_logits))
            self._val_logits = []
            self.temperature.fill_(fit_temperature(logits, targets))
            self.log("val/temperature", self.temperature, sync_dist=False)
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def _tune_frame_thresholds(self) -> None:
        """Sound event detection: frame thresholds from this validation's frames; logs their macro frame F1."""
        if not self.val_frame_curve.update_called:
            return
        precision, recall, grid = self.val_frame_curve.compute()
        self.val_frame_curve.reset()
        f1 = (2 * precision * recall / (precision + recall).clamp(min=1e-12)).nan_to_num(0.0)[:, :-1]  # (C, grid)
        if not self.trainer.sanity_checking:
            tuned = thresholds_from_f1(f1, grid, self.hparams.frame_thresholds, self.hparams.frame_threshold)
            self.frame_thresholds.copy_(tuned.to(self.frame_thresholds.device))
        at = torch.searchsorted(grid.to(self.frame_thresholds.device), self.frame_thresholds).clamp(max=len(grid) - 1)
        self.log("val/frame_f1", f1.gather(1, at[:, None].to(f1.device)).mean(), sync_dist=False)

    def _log_frame_scores(self) -> None:
        """The first validation recordings' frame scores per class, reference events drawn on them, to the trackers
        that show figures (TensorBoard, MLflow, W&B)."""
        example, self._frames_example = getattr(self, "_frames_example", None), None
        if example is None or not self.trainer.is_global_zero:
            return
        log_figure(
            self.loggers, "val/frame_scores", lambda: frame_scores_figure(*example, self.class_names), self.global_step
        )

    def _gathered_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This validation's or test's (probabilities, targets) (N, C) from every process."""
        probs = torch.cat([p for p, _ in self._scores]) if self._scores else self.thresholds.new_zeros(0, 0)
        targets = torch.cat([t for _, t in self._scores]) if self._scores else probs.long()
        self._scores = []
        if self.trainer.world_size > 1:
            probs, targets = (self.all_gather(x).flatten(0, 1) for x in (probs, targets))
        return probs, targets

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._shared_step(batch, self.test_metrics, "test")
        if self.multilabel:
            scores = torch.sigmoid(logits.float())
        else:  # calibrated: what eval writes and predict gives
            scores = torch.softmax(logits.float() / self.temperature, -1)
            self.test_ece.update(logits.float(), batch["targets"])
            self.test_ece_scaled.update(scores, batch["targets"])
            self.log_dict({"test/ece": self.test_ece, "test/ece_calibrated": self.test_ece_scaled}, on_epoch=True)
        if "index" in batch:  # per item, for test_predictions.csv (what `audio_cls.compare` pairs runs on)
            self._test_items.append((batch["index"].to(scores.device), scores.detach(), batch["targets"]))
        if self.multilabel:
            self.test_ap.update(scores, batch["targets"].long())
            return
        self.test_confusion.update(logits, batch["targets"])
        self.test_per_class_metrics.update(logits, batch["targets"])

    def on_test_start(self) -> None:
        self._test_items = []

    def _gather_test_items(self) -> None:
        """`test_items`: (indices into the test split, (N, C) probabilities, targets) of every process, each item
        once and in split order (a distributed sampler may give a few items to two processes)."""
        if not self._test_items:
            self.test_items = None
            return
        parts = [torch.cat(x) for x in zip(*self._test_items)]
        self._test_items = []
        if self.trainer.world_size > 1:
            parts = [self.all_gather(x).flatten(0, 1) for x in parts]
        order = torch.argsort(parts[0], stable=True).cpu()
        index, scores, targets = (x.cpu()[order] for x in parts)
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        self.test_items = (index[first], scores[first], targets[first])

    def on_test_epoch_end(self) -> None:
        self._gather_test_items()
        if self.multilabel:
            self._multilabel_test_end()
            return
        matrix = self.test_confusion.compute()
        self.test_confusion_matrix = matrix.cpu().tolist()
        per_class = {name: values.cpu().tolist() for name, values in self.test_per_class_metrics.compute().items()}
        support = matrix.sum(dim=1).cpu().tolist()
        self.test_per_class = {
            label: {**{name: per_class[name][i] for name in ("precision", "recall", "f1")}, "support": support[i]}
            for i, label in enumerate(self.class_names)
        }
        step = self.global_step  # figures to TensorBoard, MLflow and W&B, drawn only if one of them shows figures
        log_figure(
            self.loggers, "test/confusion_matrix", lambda: self.test_confusion.plot(labels=self.class_names)[0], step
        )
        log_text(self.loggers, "test/per_class", self.per_class_table(), step)
        if self.test_items is not None:
            _, probs, targets = self.test_items
            log_figure(
                self.loggers, "test/reliability", lambda: reliability_figure(probs, targets, self.temperature), step
            )
        self.test_confusion.reset()
        self.test_per_class_metrics.reset()

    def _multilabel_test_end(self) -> None:
        probs, targets = self._gathered_scores()
        self.log_dict(f1_scores(probs, targets, self.thresholds, "test/"), sync_dist=False)
        ap = self.test_ap.compute().cpu().tolist()
        self.test_ap.reset()
        f1 = multilabel_f1_score(
            (probs >= self.thresholds).int(), targets, len(self.class_names), threshold=0.5, average=None
        ).cpu()
        support = targets.sum(0).cpu().tolist() if len(targets) else [0] * len(self.class_names)
        self.test_per_class = {
            label: {"ap": ap[i], "f1": float(f1[i]), "threshold": float(self.thresholds[i]), "support": support[i]}
            for i, label in enumerate(self.class_names)
        }
        if len(targets):
            step = self.global_step
            log_figure(
                self.loggers,
                "test/precision_recall",
                lambda: precision_recall_figure(probs, targets, self.class_names),  # made only if shown
                step,
            )
            log_text(self.loggers, "test/per_class", self.per_class_table(), step)

    def per_class_table(self) -> str:
        """The last test's per-class metrics as a Markdown table."""
        if self.multilabel:
            rows = [
                f"| {label} | {m['ap']:.3f} | {m['f1']:.3f} | {m['threshold']:.3f} | {m['support']} |"
                for label, m in (self.test_per_class or {}).items()
            ]
            return "\n".join(["| class | AP | F1 | threshold | support |", "|---|---|---|---|---|", *rows])
        rows = [
            f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for label, m in (self.test_per_class or {}).items()
        ]
        return "\n".join(["| class | precision | recall | F1 | support |", "|---|---|---|---|---|", *rows])

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Probabilities (B, num_classes): the calibrated softmax (as a test gives them), or sigmoid for multi-label."""
        logits = self.view_logits(batch)
        return torch.sigmoid(logits) if self.multilabel else (logits / self.temperature).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        spec, scale = self.hparams.optimizer or {"_target_": "torch.optim.Adam"}, self.hparams.backbone_lr_scale
        if scale == 1:
            optimizer = build(spec, params=self.parameters())
        else:  # the head (and anything outside the network) at the optimizer's rate, the backbone at `scale` times it
            slower = backbone_parameters(self.net)
            ids = {id(p) for p in slower}
            optimizer = build(spec, params=[p for p in self.parameters() if id(p) not in ids])
            optimizer.add_param_group({"params": slower, "lr": optimizer.param_groups[0]["lr"] * scale})
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


THRESHOLD_MODES = ("per_class", "global", "fixed")
FRAME_THRESHOLD_GRID = torch.linspace(0.0, 1.0, 201)  # frame thresholds are tuned in steps of 0.005


def thresholds_from_f1(f1: torch.Tensor, grid: torch.Tensor, mode: str, default: float = 0.5) -> torch.Tensor:
    """Decision thresholds (C,) from F1 (C, G) measured at each threshold of `grid` (G,): per_class takes each
    class's best (a class whose F1 is 0 everywhere, e.g. one without positives, keeps `default`); global the one
    best for macro F1; fixed `default`."""
    out = torch.full((f1.shape[0],), float(default))
    if mode == "fixed" or f1.numel() == 0:
        return out
    grid, f1 = grid.cpu().float(), f1.cpu().float()
    if mode == "global":
        return out.fill_(float(grid[int(f1.mean(0).argmax())]))
    best = f1.max(1)
    found = best.values > 0
    out[found] = grid[best.indices[found]]
    return out


def _temperature_one_if_missing(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before temperature scaling: their probabilities stay the plain softmax."""
    state_dict.setdefault(prefix + "temperature", torch.ones(()))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T > 0 that minimizes the cross-entropy of softmax(logits / T) on (N, C) `logits` and (N,)
    class `targets` (Guo et al., 2017: one parameter, so the ranking, and the accuracy, are unchanged)."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().clone().cpu(), targets.detach().clone().cpu()
        log_t = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _keep_fixed_frame_thresholds(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before frame thresholds were tuned keep the fixed one they were trained with."""
    if prefix + "frame_thresholds" not in state_dict:
        state_dict[prefix + "frame_thresholds"] = module.frame_thresholds.clone()


def tune_thresholds(probs: torch.Tensor, targets: torch.Tensor, mode: str, default: float = 0.5) -> torch.Tensor:
    """Decision thresholds (C,) for probabilities `probs` (N, C) and 0/1 `targets` (N, C).

    per_class: each class's threshold maximizes its F1 on these scores (a class without positives keeps
    `default`); global: one threshold for all, maximizing macro F1 over 0.01..0.99; fixed: `default`."""
    num_classes = targets.shape[1] if targets.dim() == 2 else 0
    out = torch.full((num_classes,), float(default))
    if mode == "fixed" or len(targets) == 0:
        return out
    if mode == "global":
        grid = torch.linspace(0.01, 0.99, 99)
        scores = [
            multilabel_f1_score((probs >= t).int(), targets, num_classes, threshold=0.5, average="macro") for t in grid
        ]
        return out.fill_(float(grid[int(torch.stack(scores).argmax())]))
    for c in range(num_classes):
        if targets[:, c].sum() == 0:
            continue  # no positives to tune on (and recall is undefined)
        precision, recall, thresholds = binary_precision_recall_curve(probs[:, c], targets[:, c])
        p, r = precision[:-1], recall[:-1]  # the curve's last point (recall 0) has no threshold
        f1 = 2 * p * r / (p + r).clamp(min=1e-12)
        out[c] = float(thresholds[int(f1.argmax())])
    return out


def f1_scores(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor, prefix: str) -> dict:
    """Macro (`f1`) and micro (`f1_micro`) F1 of multi-label predictions at `thresholds` (C,)."""
    if len(targets) == 0:
        return {}
    preds = (probs >= thresholds.to(probs.device)).int()
    num_classes = targets.shape[1]
    return {
        f"{prefix}f1": multilabel_f1_score(preds, targets, num_classes, threshold=0.5, average="macro"),
        f"{prefix}f1_micro": multilabel_f1_score(preds, targets, num_classes, threshold=0.5, average="micro"),
    }


def frame_hop(input_seconds: float, net: nn.Module) -> float:
    """Seconds per frame of a frame head: the input's hop times the network's `frame_stride()` (1 without it)."""
    stride = getattr(net, "frame_stride", None)
    return input_seconds * (int(stride()) if callable(stride) else 1)


def frame_targets_from_events(
    events: torch.Tensor, num_frames: int, frame_seconds: float, num_classes: int
) -> torch.Tensor:
    """Frame targets (B, num_frames, C) from strong labels `events` (B, E, 3) (onset s, offset s, class index;
    class -1 pads): a class is on in a frame whose centre lies within one of its events."""
    centres = (torch.arange(num_frames, device=events.device) + 0.5) * frame_seconds  # (T,)
    onset, offset, cls = events[..., 0:1], events[..., 1:2], events[..., 2].long()  # (B, E, 1) x2, (B, E)
    active = ((centres >= onset) & (centres < offset) & (cls >= 0).unsqueeze(-1)).float()  # (B, E, T)
    one_hot = nn.functional.one_hot(cls.clamp(min=0), num_classes).float()  # (B, E, C)
    return torch.einsum("bet,bec->btc", active, one_hot).clamp(max=1.0)


def reliability_figure(probs: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor, bins: int = 10):
    """Reliability diagram of the test: accuracy against confidence (the top class's probability, at the fitted
    temperature) in `bins` equal-width bins; a calibrated model lies on the diagonal."""
    import matplotlib.pyplot as plt

    confidence, predicted = probs.max(-1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centres, accuracy, counts = [], [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            centres.append(float(confidence[inside].mean()))
            accuracy.append(float(correct[inside].mean()))
            counts.append(int(inside.sum()))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    ax.bar(centres, accuracy, width=1 / bins, alpha=0.6, edgecolor="k", label="accuracy per bin")
    for x, y, n in zip(centres, accuracy, counts):
        ax.annotate(str(n), (x, y), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"test reliability (temperature {float(temperature):.3g}); items per bin")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def precision_recall_figure(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]):
    """A matplotlib figure: each class's precision-recall curve on these scores (AP in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(class_names):
        if targets[:, c].sum() > 0:  # a curve needs positives
            precision, recall, _ = binary_precision_recall_curve(probs[:, c], targets[:, c])
            ax.plot(recall.cpu(), precision.cpu(), label=name, linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall per class")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


class FocalLoss(nn.Module):
    """Sigmoid focal loss for multi-label targets (torchvision.ops.sigmoid_focal_loss), averaged:
    logits (B, C), targets (B, C) in [0, 1] -> scalar."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits, targets.to(logits.dtype), self.alpha, self.gamma, reduction="mean")


def frame_scores_figure(probs, lengths, events, frame_seconds: float, class_names: list[str]):
    """A matplotlib figure, one panel per recording: frame probabilities (classes x time) as an image, and each
    reference event (onset s, offset s, class index; class -1 pads) as a white line on its class's row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(probs), 1, figsize=(8, 1.2 + 0.25 * len(class_names) * len(probs)), squeeze=False)
    for ax, p, n, ev in zip(axes[:, 0], probs, lengths.tolist(), events):
        seconds = n * frame_seconds
        extent = (0, seconds, -0.5, len(class_names) - 0.5)
        ax.imshow(p[:n].T, aspect="auto", origin="lower", vmin=0, vmax=1, extent=extent)
        for onset, offset, c in ev.tolist():
            if c >= 0:
                ax.plot([onset, offset], [c, c], color="white", linewidth=2)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=6)
        ax.set_xlabel("seconds", fontsize=7)
    fig.tight_layout()
    return fig
