"""Train a classifier: `python -m audio_cls.train [experiment=NAME] [key=value ...]`.

config -> feature extractor -> datamodule (scan, split, check files) -> network -> AudioClassifier
       -> Trainer.fit -> Trainer.test on the best checkpoint -> metrics.json in the run directory

With `transfer.init_from` the run starts from a trained model's weights and features (audio_cls/transfer.py);
with `distill.teacher` it also learns from a trained model's outputs (audio_cls/distill.py).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from audio_cls import CONF_DIR
from audio_cls.compare import write_run_predictions
from audio_cls.config_checks import check_config
from audio_cls.distill import teacher_log_probs
from audio_cls.errors import ConfigError
from audio_cls.model.layers import has_frame_head
from audio_cls.module import AudioClassifier
from audio_cls.runs import instantiate_group, log_hparams, run_task, scalar_metrics
from audio_cls.sed import test_detection
from audio_cls.transfer import callbacks as transfer_callbacks
from audio_cls.transfer import command_line, read_init
from audio_cls.tta import set_test_views

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    datamodule, module, config = build_run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    callbacks = [*instantiate_group(cfg.callbacks), *transfer_callbacks(cfg)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.logger))
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = scalar_metrics(trainer.callback_metrics)
    metrics["train_time_s"] = time.perf_counter() - started
    metrics["epochs"] = trainer.current_epoch

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    events_per_class = None
    if cfg.test:
        if not best:
            log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing the last weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(scalar_metrics({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
        log.info("Test results per class:\n%s", module.per_class_table())
        if trainer.is_global_zero:
            write_run_predictions(output_dir, module, datamodule)  # what `audio_cls.compare` pairs runs on
            detection = test_detection(module, datamodule)
            events_per_class = detection.pop("test/events_per_class", None)
            metrics.update(detection)
    if trainer.is_global_zero:
        log_hparams(trainer.loggers, config, metrics, best_checkpoint=best)
        log.info("Metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        log.info("Run directory: %s", output_dir)
    return {
        **metrics,
        "skipped_files": len(datamodule.skipped),
        "duplicate_files": len(datamodule.duplicates),
        "best_checkpoint": best,
        "class_names": module.class_names,
        "test/per_class": module.test_per_class,
        "test/confusion_matrix": module.test_confusion_matrix,
        **({"test/events_per_class": events_per_class} if events_per_class else {}),
    }


def build_run(cfg: DictConfig) -> tuple:
    """Everything a training run needs before the Trainer, from its config: (datamodule set up for fitting, with
    the splits written to the run directory; AudioClassifier; the resolved config as a dict). Shared by
    `audio_cls.tune`, which tunes what this builds."""
    check_config(cfg)  # before any data is read
    init = read_init(cfg)  # transfer.init_from: a checkpoint's features and sample rate become the run's
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)

    datamodule = build_datamodule(cfg)
    features = datamodule.features
    if init is not None:
        init.load_features(features)  # fitted statistics: not fitted again on this run's data
    datamodule.prepare_data()
    datamodule.setup("fit")
    if rank_zero_only.rank == 0:
        datamodule.write_split_files(output_dir)

    net = instantiate(cfg.model, in_features=features.num_features, num_classes=datamodule.num_classes)
    if init is not None:
        init.load_network(net, datamodule.class_names, strict=cfg.transfer.init_strict)
    check_shortest_input(net, datamodule)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = AudioClassifier(
        net,
        datamodule.features,
        datamodule.class_names,
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        loss=loss_config(config["loss"], datamodule),
        mixup_alpha=cfg.augment.mixup_alpha,
        config=config,
        backbone_lr_scale=cfg.transfer.backbone_lr_scale,
        distill_alpha=cfg.distill.alpha,
        distill_temperature=cfg.distill.temperature,
        **task_settings(config["task"], datamodule, net),
    )
    if cfg.distill.teacher is not None:
        module.set_teacher(teacher_log_probs(cfg.distill.teacher, datamodule, cfg.distill.temperature))
    set_test_views(datamodule, module, config, config)  # for the test after training
    log.info("Network %s: %.2fM parameters", type(net).__name__, sum(p.numel() for p in net.parameters()) / 1e6)
    return datamodule, module, config


def build_datamodule(cfg: DictConfig):
    """The datamodule of a training config with its feature extractor and training augmentation."""
    return instantiate(
        cfg.data,
        features=instantiate(cfg.features),
        waveform_augment=instantiate(cfg.augment.waveform),
        spec_augment=instantiate(cfg.augment.spec_augment),
        task=cfg.task.name,
    )


def task_settings(task: dict, datamodule, net: torch.nn.Module) -> dict:
    """AudioClassifier's task arguments; says in the log what multi-label training will use."""
    if task["name"] != "multilabel":
        return {}
    strong = datamodule.has_events and has_frame_head(net)
    if datamodule.has_events and not strong:
        log.info("The data has event times (strong labels), but the network has no frame head: clip labels only")
    log.info(
        "Multi-label: %d classes, sigmoid outputs, %s thresholds%s",
        datamodule.num_classes,
        task["thresholds"],
        ", frame-level loss on the event times (sound event detection)" if strong else "",
    )
    return {
        "multilabel": True,
        "thresholds": task["thresholds"],
        "threshold": task["threshold"],
        "frame_seconds": datamodule.features.hop_samples / datamodule.sample_rate,
        "frame_loss_weight": task["frame_loss_weight"],
        "frame_thresholds": task["frame_thresholds"],
        "frame_threshold": task["frame_threshold"],
        "median_frames": task["median_frames"],
    }


def check_shortest_input(net: torch.nn.Module, datamodule) -> None:
    """Run the network once on the datamodule's shortest recording, so impossible shapes fail now, naming it."""
    frames, was_training = datamodule.min_frames, net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, frames, datamodule.features.num_features), torch.tensor([frames]))
    except ConfigError as err:
        raise ConfigError(f"{err} (the shortest recording is {datamodule.shortest_path})") from None
    finally:
        net.train(was_training)


def loss_config(loss: dict, datamodule) -> dict:
    """`loss.weight=balanced` -> per-class weights inversely proportional to training counts;
    `loss.pos_weight=balanced` (multi-label) -> each class's negatives / positives in training."""
    if loss.get("pos_weight") == "balanced":
        counts, total = datamodule.class_counts(), len(datamodule.splits["train"])
        return {**loss, "pos_weight": [(total - c) / max(c, 1) for c in counts]}
    if isinstance(loss.get("pos_weight"), str):
        raise ConfigError(f"loss.pos_weight={loss['pos_weight']!r}: expected null, 'balanced' or a list of floats")
    if loss.get("weight") == "balanced":
        counts = datamodule.class_counts()
        loss = {**loss, "weight": [sum(counts) / (len(counts) * c) for c in counts]}
    elif isinstance(loss.get("weight"), str):
        raise ConfigError(f"loss.weight={loss['weight']!r}: expected null, 'balanced' or a list of floats")
    elif loss.get("weight") is not None:
        weight, names = loss["weight"], datamodule.class_names
        if len(weight) != len(names):
            raise ConfigError(
                f"loss.weight: {len(weight)} values for {len(names)} classes (in this order: {', '.join(names)})"
            )
        if any(not isinstance(w, (int, float)) or w < 0 for w in weight) or not any(weight):
            raise ConfigError(f"loss.weight={weight}: expected non-negative numbers, not all zero")
    return loss


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    return run_task(train, cfg, reuse_dir=cfg.ckpt_path is not None)


def main() -> None:
    """The entry point: the transfer keys' other spellings (`model.init_from=...`) become `transfer.*`, then Hydra."""
    sys.argv[1:] = command_line(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
