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
import pickle
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_object, instantiate
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score,
                                         MulticlassPrecision, MulticlassRecall)

from audio_cls.augment import mixup
from audio_cls.errors import ConfigError, TrainingDiverged
from audio_cls.features import FeatureExtractor

Spec = Mapping | Callable

# Modules whose classes a checkpoint's config may name as `_target_` (see AudioClassifier.from_checkpoint).
TRUSTED_MODULES = ("audio_cls.", "torch.nn.", "torch.optim.")

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
        mixup_alpha: > 0 mixes pairs of training items (Beta(alpha, alpha) weights; `audio_cls.augment.mixup`);
            training accuracy then counts the label with the larger weight.
        config: the run's resolved config (plain dict), saved so a checkpoint alone rebuilds the model.

    Training metrics stay off the hot path: loss, accuracy and the padding share of the batches are summed
    on the device as they come and logged once per epoch (train/loss, train/acc, train/padding_share);
    nothing in a training step waits for the device, apart from the check for a non-finite loss, which
    runs every step on the CPU and every `nan_check_every_n_steps` steps (and at the end of each epoch) on
    an accelerator.
    """

    def __init__(self, net: nn.Module, features: FeatureExtractor | None, class_names: list[str],
                 optimizer: Spec = None, scheduler: Spec | None = None, loss: Spec | None = None,
                 mixup_alpha: float = 0.0, config: dict | None = None, nan_check_every_n_steps: int = 50):
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
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })
        self.train_sums = None  # (loss x items, correct, items, valid frames, frames) of this epoch, on the device
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_per_class_metrics = MetricCollection({
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
            "f1": MulticlassF1Score(num_classes, average=None),
        })
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

    def _logits_and_loss(self, batch: dict, mix: tuple[torch.Tensor, float] | None = None
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
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=split != "test",
                 batch_size=batch_size, sync_dist=True)
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
            step = torch.stack([loss.detach().float() * items, (logits.argmax(-1) == targets).sum().float(),
                                lengths.new_tensor(items).float(), lengths.sum().float(),
                                lengths.new_tensor(items * batch["inputs"].shape[1]).float()])
            self.train_sums = step if self.train_sums is None else self.train_sums + step
        if loss.device.type == "cpu" or batch_idx % self.hparams.nan_check_every_n_steps == 0:
            self._check_finite(loss, batch_idx)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            # Stop before the optimizer writes NaNs into the weights; the last checkpoint stays good.
            raise TrainingDiverged(f"the training loss is {loss.item()} at step {self.global_step} "
                                   f"(epoch {self.current_epoch}, batch {batch_idx}); lower optimizer.lr "
                                   f"or set trainer.gradient_clip_val")

    def _check_epoch_finite(self) -> None:
        """On an accelerator the loss is checked every few steps only: check the epoch's sum before validation
        (and the checkpoints written after it) and at the end of the epoch."""
        if self.train_sums is not None and not torch.isfinite(self.train_sums[0]):
            raise TrainingDiverged(f"the training loss became {self.train_sums[0].item()} in epoch "
                                   f"{self.current_epoch}; lower optimizer.lr or set trainer.gradient_clip_val")

    def on_validation_start(self) -> None:
        self._check_epoch_finite()

    def on_train_epoch_end(self) -> None:
        if self.train_sums is None:
            return
        self._check_epoch_finite()
        loss_sum, correct, items, valid, frames = self.train_sums
        self.train_sums = None
        self.log_dict({"train/loss": loss_sum / items, "train/acc": correct / items,
                       "train/padding_share": 1 - valid / frames}, sync_dist=True)

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
            for i, label in enumerate(self.class_names)}
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_figure"):  # TensorBoard
                fig, _ = self.test_confusion.plot(labels=self.class_names)
                logger.experiment.add_figure("test/confusion_matrix", fig, global_step=self.global_step)
                logger.experiment.add_text("test/per_class", self.per_class_table(), global_step=self.global_step)
        self.test_confusion.reset()
        self.test_per_class_metrics.reset()

    def per_class_table(self) -> str:
        """The last test's per-class precision, recall, F1 and support as a Markdown table."""
        rows = [f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                for label, m in (self.test_per_class or {}).items()]
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
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"}}

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str | torch.device = "cpu",
                        trusted_modules: tuple[str, ...] = TRUSTED_MODULES) -> "AudioClassifier":
        """Rebuild network and feature extractor from the config saved in a checkpoint written by
        `audio_cls.train`, then load the weights.

        Safe on a file from elsewhere: `torch.load(weights_only=True)` unpickles tensors and plain data
        only, and every `_target_` of the saved config must be a class defined under `trusted_modules`
        (this package, torch.nn and torch.optim; add your own package for networks defined outside
        audio_cls), because instantiating a config calls what it names. Every problem (no such file, a
        corrupt or truncated file, another program's checkpoint, weights that do not fit the network the
        config describes) is a ConfigError naming the file.
        """
        checkpoint = _read_checkpoint(path, map_location)
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        config = hparams.get("config")
        if not isinstance(config, dict) or not config:
            raise ConfigError(f"{path}: no training config saved in it (not written by audio_cls.train); use "
                              f"AudioClassifier.load_from_checkpoint(path, net=..., features=...)")
        for key in ("features", "model"):
            if not isinstance(config.get(key), dict) or "_target_" not in config[key]:
                raise ConfigError(f"{path}: its training config has no `{key}` to rebuild the network from")
        if not (config.get("data") or {}).get("sample_rate"):
            raise ConfigError(f"{path}: its training config has no data.sample_rate")
        if not hparams.get("class_names"):
            raise ConfigError(f"{path}: no class_names saved in it")
        for key, node in (("features", config["features"]), ("model", config["model"]), ("loss", hparams.get("loss")),
                          ("optimizer", hparams.get("optimizer")), ("scheduler", hparams.get("scheduler"))):
            _check_targets(node, key, path, trusted_modules)

        try:
            features = instantiate(config["features"])
            net = instantiate(config["model"], in_features=features.num_features,
                              num_classes=len(hparams["class_names"]))
            model = cls(net=net, features=features, **hparams)
        except Exception as err:
            reason = _first_line(err)
            if err.__cause__ is not None:  # hydra's InstantiationException names the target, its cause the problem
                reason = f"{reason} {_first_line(err.__cause__)}"
            raise ConfigError(f"{path}: cannot rebuild the model from its saved config ({reason})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            # Lightning's message lists every missing/unexpected/mis-shaped tensor; the first says enough.
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise ConfigError(f"{path}: its weights do not fit the {config['model']['_target_']} its config describes "
                              f"({details[0] if details else _first_line(err)})") from None
        return model


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch's go on for a paragraph), or the error's type."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(err).__name__


def _read_checkpoint(path: str, map_location) -> dict:
    """torch.load(weights_only=True) with one clear message per way a file can fail."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if refused:  # e.g. "GLOBAL mypackage.MyClass was not an allowed global by default"
            name = refused[0].split("GLOBAL ", 1)[-1].split(" ", 1)[0]
            raise ConfigError(f"{path}: holds a pickled Python object ({name}) that is not loaded, since loading it "
                              f"could run code (torch.load weights_only=True); audio_cls.train checkpoints hold "
                              f"only tensors and plain data") from None
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # truncated zip, text, empty file: torch raises RuntimeError, EOFError, KeyError...
        reason = ("an empty file" if Path(path).stat().st_size == 0 else
                  f"corrupt, truncated or not a PyTorch file; {type(err).__name__}: {_first_line(err)}")
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(f"{path}: not a checkpoint of audio_cls.train (no state_dict and hyper_parameters; "
                          f"found {found})")
    return checkpoint


def _check_targets(node: Any, key: str, path: str, trusted: tuple[str, ...]) -> None:
    """Every `_target_` under `node` must be a class defined in a trusted module. The class is looked
    up by its defining module, so `audio_cls.runs.shutil.rmtree` (reachable through an import) is refused."""
    if isinstance(node, list):
        for item in node:
            _check_targets(item, key, path, trusted)
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        target = str(node["_target_"])
        try:
            obj = get_object(target)
        except Exception:
            raise ConfigError(f"{path}: {key}._target_={target} cannot be imported here "
                              f"(a checkpoint of another project or version?)") from None
        module = f"{getattr(obj, '__module__', '')}."
        if not isinstance(obj, type) or not module.startswith(trusted):
            raise ConfigError(f"{path}: {key}._target_={target} is not a class of {', '.join(trusted)}; refusing "
                              f"to call it (pass trusted_modules=... to from_checkpoint if you trust this file)")
    for name, value in node.items():
        if name != "_target_":
            _check_targets(value, f"{key}.{name}", path, trusted)
