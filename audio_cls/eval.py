"""Evaluate a checkpoint on a dataset's test split: `python -m audio_cls.eval ckpt_path=PATH [data.KEY=VALUE]`.

The network, feature extractor (with its normalization statistics) and class names come from the
checkpoint, and so does the data: the test split is rebuilt from the training run's own data config
(saved in the checkpoint), so it holds exactly the recordings that run tested on. `data.KEY=VALUE`
overrides apply on top of it (`data.batch_size=1`, `data.root=/where/it/is/now`); `data=NAME` tests on
other data, as composed, resampled to the checkpoint's rate. A change that may alter which recordings
are tested, or what they look like, is logged as a warning naming the keys (see conf/eval.yaml).
The run directory gets splits.csv, as a training run does: the recordings of every split, test included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from audio_cls import CONF_DIR
from audio_cls.checkpoints import TRUSTED_MODULES, check_targets, load_model
from audio_cls.compare import write_run_predictions
from audio_cls.config_checks import check_config
from audio_cls.errors import ConfigError, DataError
from audio_cls.runs import instantiate_group, run_task, scalar_metrics
from audio_cls.sed import test_detection
from audio_cls.train import check_shortest_input
from audio_cls.tta import set_test_views

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Test `cfg.ckpt_path`. `overrides`: the command-line overrides that decide the data (`data=NAME`,
    `data.KEY=VALUE`, as Hydra writes them); by default those of the running Hydra job, none outside
    one. From a notebook: `evaluate(cfg, overrides=ov)` with `cfg = compose("eval", overrides=ov)` and
    `cfg.paths.output_dir` set (outside Hydra there is no run directory to default to)."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path: missing; pass ckpt_path=PATH (a checkpoint written by audio_cls.train)")
    ckpt = Path(cfg.ckpt_path)
    module = load_model(ckpt)  # a ConfigError naming the file for every way it can fail
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []

    trained = module.hparams.config["data"]
    with open_dict(cfg):
        cfg.data = eval_data_config(cfg, trained, overrides, str(ckpt))
    check_config(cfg)
    warn_about_changes(
        trained,
        OmegaConf.to_container(cfg.data, resolve=True),
        list(cfg.safe_data_keys),
        other_data=_chooses_data(overrides),
    )
    task = "multilabel" if module.multilabel else "multiclass"  # the checkpoint's: its thresholds and metrics
    datamodule = instantiate(cfg.data, features=module.features, task=task)
    set_test_views(datamodule, module, OmegaConf.to_container(cfg, resolve=True), module.hparams.config)
    datamodule.setup("test")
    if datamodule.class_names != module.class_names:
        raise DataError(f"data: classes {datamodule.class_names} differ from the checkpoint's {module.class_names}")
    check_shortest_input(module.net, datamodule)
    if rank_zero_only.rank == 0:  # what was tested, to compare with the training run's splits.csv
        datamodule.write_split_files(Path(cfg.paths.output_dir))

    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=instantiate_group(cfg.logger))
    trainer.test(module, datamodule=datamodule)
    if rank_zero_only.rank == 0:
        write_run_predictions(Path(cfg.paths.output_dir), module, datamodule)
    log.info("Test results per class:\n%s", module.per_class_table())
    detection = test_detection(module, datamodule)
    return {
        **scalar_metrics(trainer.callback_metrics),
        **detection,
        "ckpt_path": str(ckpt),
        "class_names": module.class_names,
        "test/per_class": module.test_per_class,
        "test/confusion_matrix": module.test_confusion_matrix,
    }


def eval_data_config(cfg: DictConfig, trained: dict, overrides: list[str], ckpt: str) -> dict:
    """The data config to test with: the training run's (`trained`) with the `data.*` overrides applied,
    or, after `data=NAME`, the composed `cfg.data`; the sample rate is always the checkpoint's."""
    if _chooses_data(overrides):
        data = OmegaConf.to_container(cfg.data, resolve=False)  # interpolations resolve against cfg later
    else:
        try:  # instantiating calls what `_target_` names: only classes of trusted modules, as for the model
            check_targets(trained, "data", ckpt, TRUSTED_MODULES)
        except ConfigError as err:
            raise ConfigError(f"{err}; or choose the data explicitly with data=NAME") from None
        data = OmegaConf.create(trained)
        for override in _parse(overrides):
            key = override.key_or_group
            if not key.startswith("data."):
                continue
            if override.is_delete():
                parent, _, name = key[len("data.") :].rpartition(".")
                node = OmegaConf.select(data, parent) if parent else data
                if isinstance(node, DictConfig) and name in node:
                    del node[name]
            else:
                OmegaConf.update(data, key[len("data.") :], override.value(), merge=False, force_add=True)
        data = OmegaConf.to_container(data, resolve=False)
    rate = trained["sample_rate"]
    if data.get("sample_rate") != rate and any(o.key_or_group == "data.sample_rate" for o in _parse(overrides)):
        log.warning("data.sample_rate=%s is ignored: the checkpoint's features expect %s Hz", data["sample_rate"], rate)
    data["sample_rate"] = rate  # the features expect the rate they were trained at
    return data


def warn_about_changes(trained: dict, data: dict, safe: list[str], other_data: bool) -> None:
    """Log a warning naming every key, outside `safe`, whose value differs from the training run's: the
    test split may now hold other recordings (possibly training ones), or present them differently."""
    if other_data and data.get("_target_") != trained.get("_target_"):
        log.info(
            "data: testing on %s, not on the %s the checkpoint was trained on",
            data.get("_target_"),
            trained.get("_target_"),
        )
        return
    changed = {
        key: (trained.get(key, "unset"), data.get(key, "unset"))
        for key in sorted({*trained, *data})
        if key not in safe and trained.get(key) != data.get(key)
    }
    if changed:
        log.warning(
            "The test data differs from the training run's in %s: the test split may now hold other "
            "recordings, possibly ones the model was trained on, or present them differently",
            ", ".join(f"data.{key}={new!r} (trained with {old!r})" for key, (old, new) in changed.items()),
        )
    if trained.get("root") != data.get("root"):
        log.info(
            "data.root=%s (trained with %s): the splits are rebuilt there by the same rules; the same files "
            "give the same splits",
            data.get("root"),
            trained.get("root"),
        )


def _parse(overrides: list[str]) -> list:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ConfigError(f"overrides {overrides}: {str(err).splitlines()[0]}") from None


def _chooses_data(overrides: list[str]) -> bool:
    """`data=NAME` among the overrides: the user names other data than the checkpoint's."""
    return any(o.key_or_group == "data" and not o.is_delete() for o in _parse(overrides))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
