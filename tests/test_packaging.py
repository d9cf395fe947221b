"""A non-editable install works: the wheel carries the configs (conf/ ships as audio_cls/conf/) and every
module, and an installed console script composes its config from outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import audio_cls
from helpers import REPO

# What the build reads: the project metadata, the readme it names, the package and the configs. A copy, so
# that setuptools' build/ and *.egg-info never land in the working tree.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "audio_cls", "conf", "hydra_plugins")


def test_conf_dir_of_the_checkout():
    assert Path(audio_cls.CONF_DIR) == REPO / "conf" and (Path(audio_cls.CONF_DIR) / "train.yaml").is_file()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_wheel_ships_the_configs_and_its_entry_points_run(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # No build isolation: the build backend comes from the dev extras (setuptools, wheel), so no network.
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("audio_cls-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"audio_cls/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    modules = {p.relative_to(REPO).as_posix() for d in ("audio_cls", "hydra_plugins") for p in (REPO / d).rglob("*.py")}
    assert configs and not configs - names, f"configs missing from the wheel: {sorted(configs - names)[:5]}"
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert any(n.split("/")[-1] == "LICENSE" and ".dist-info/" in n for n in names), "the wheel lacks LICENSE"

    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=120
    )
    assert install.returncode == 0, install.stderr[-3000:]

    # From a directory outside the checkout, with the installed copy first on the path.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("AUDIO_CLS_ROOT", None)
    where = subprocess.run(
        [sys.executable, "-c", "import audio_cls; print(audio_cls.__file__); print(audio_cls.CONF_DIR)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr[-3000:]
    module_file, conf_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(conf_dir) == site / "audio_cls" / "conf"

    # The console script as pip wrote it (its shebang is this interpreter): it composes the config.
    script = site / "bin" / "audio-cls-train"
    job = subprocess.run(
        [str(script), "--cfg", "job", "model=lstm", "data.batch_size=7"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "_target_: audio_cls.model.LSTMClassifier" in job.stdout and "batch_size: 7" in job.stdout
    assert "_target_: audio_cls.data.fsdd.FSDD" in job.stdout  # the default data group came from the wheel
