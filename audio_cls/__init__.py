"""audio-cls: a PyTorch Lightning + Hydra template for audio classification."""

from pathlib import Path

# The Hydra configs: conf/ at the top of a checkout (an editable install), or audio_cls/conf/ inside an
# installed wheel (pyproject.toml ships conf/ there). An absolute path lets the console scripts
# (audio-cls-train, ...) find it from any directory: Hydra reads a relative config_path as a Python module
# when the caller is an installed entry point.
_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = str(
    next((d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf") if (d / "train.yaml").is_file()), _PACKAGE / "conf")
)
