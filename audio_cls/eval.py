"""Evaluate a checkpoint on a dataset's test split: `python -m audio_cls.eval ckpt_path=PATH [data=...]`.

The network, feature extractor (with its normalization statistics) and class names come from the
checkpoint; the data config says which recordings to test on, resampled to the checkpoint's rate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from audio_cls import CONF_DIR
from audio_cls.config_checks import check_config
from audio_cls.errors import ConfigError, DataError
from audio_cls.module import AudioClassifier
from audio_cls.runs import instantiate_group, run_task, scalar_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    check_config(cfg)
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such file")
    try:
        module = AudioClassifier.from_checkpoint(str(ckpt))
    except Exception as err:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: not a checkpoint of audio_cls.train ({err})") from None

    trained_rate = module.hparams.config["data"]["sample_rate"]
    with open_dict(cfg):
        cfg.data.sample_rate = trained_rate  # the features expect the rate they were trained at
    datamodule = instantiate(cfg.data, features=module.features)
    datamodule.setup("test")
    if datamodule.class_names != module.class_names:
        raise DataError(f"data: classes {datamodule.class_names} differ from the checkpoint's {module.class_names}")

    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks),
                          logger=instantiate_group(cfg.logger))
    trainer.test(module, datamodule=datamodule)
    log.info("Test results per class:\n%s", module.per_class_table())
    return {**scalar_metrics(trainer.callback_metrics), "ckpt_path": str(ckpt), "class_names": module.class_names,
            "test/per_class": module.test_per_class, "test/confusion_matrix": module.test_confusion_matrix}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
