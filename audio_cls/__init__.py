"""audio-cls: a PyTorch Lightning + Hydra template for audio classification."""
from pathlib import Path

# conf/ sits beside the package (the template is cloned and installed editable). An absolute path lets the
# console scripts (audio-cls-train, ...) find it from any directory: Hydra reads a relative config_path
# as a Python module when the caller is an installed entry point, and `conf` is not one.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
