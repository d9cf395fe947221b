"""audio-cls: a PyTorch Lightning + Hydra template for audio classification."""

import os
from pathlib import Path

from omegaconf import OmegaConf

# The Hydra configs: conf/ at the top of a checkout (an editable install), or audio_cls/conf/ inside an
# installed wheel (pyproject.toml ships conf/ there). An absolute path lets the console scripts
# (audio-cls-train, ...) find it from any directory: Hydra reads a relative config_path as a Python module
# when the caller is an installed entry point.
_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = str(
    next((d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf") if (d / "train.yaml").is_file()), _PACKAGE / "conf")
)


def _run_name(output_dir: str, log_dir: str) -> str:
    """`${audio_cls.run_name:${paths.output_dir},${paths.log_dir}}`, a run's name in the trackers (MLflow, W&B):
    its directory relative to the logs folder (train/runs/<time>, cv/runs/<time>/fold_0, train/multiruns/<time>/3),
    or the directory's own name when it lies elsewhere (hydra.run.dir=/scratch/exp42 -> exp42)."""
    output, logs = Path(output_dir).resolve(), Path(log_dir).resolve()
    return output.relative_to(logs).as_posix() if output.is_relative_to(logs) and output != logs else output.name


OmegaConf.register_new_resolver("audio_cls.run_name", _run_name, replace=True)
# logger=mlflow keeps its runs in a file store under logs/mlflow. MLflow 3 keeps that backend in maintenance mode and
# refuses it unless this is set; a database or a server (logger.mlflow.tracking_uri) needs nothing. A value set
# by the user (false) wins.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
