"""Interrupted runs resume, failures are loud and keep what was done, results are reproducible."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_cls.audio import audio_info
from audio_cls.data.base import AudioDataModule, Item
from audio_cls.errors import DataError
from audio_cls.features import LogMel
from helpers import REPO, run_entry, write_tone

SHORT_RUN = [
    "debug=limit",
    "trainer.limit_train_batches=6",
    "data.batch_size=16",
    "trainer.deterministic=true",
    "callbacks.early_stopping=null",
    "seed=3",
]
# What users run: DataLoader workers, waveform + feature augmentation, random crops (debug=limit turns workers off).
AS_USERS_RUN = [*SHORT_RUN, "data.num_workers=2", "augment=speech", "data.duration=0.8"]
COMPARED = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss")


def metrics_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def train_cmd(*overrides):
    return [sys.executable, "-m", "audio_cls.train", *overrides]


def wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(fsdd_slice, tmp_path):
    """With workers and augmentation on, and whatever the number of workers: each item's random draws come
    from (seed, epoch, position), not from the worker that loads it."""
    runs = {tmp_path / "a": "data.num_workers=2", tmp_path / "b": "data.num_workers=1"}
    for run, workers in runs.items():
        proc = run_entry(
            "audio_cls.train",
            *AS_USERS_RUN,
            workers,
            "trainer.max_epochs=2",
            f"data.root={fsdd_slice}",
            f"hydra.run.dir={run}",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (metrics_of(r) for r in runs)
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


@pytest.mark.slow
def test_other_seed_gives_other_augmentation(fsdd_slice, tmp_path):
    """The counterpart of the test above: the augmentation does draw, so identical metrics mean something."""
    runs = {tmp_path / "a": "seed=3", tmp_path / "b": "seed=4"}
    for run, seed in runs.items():
        proc = run_entry(
            "audio_cls.train",
            *AS_USERS_RUN,
            seed,
            "trainer.max_epochs=1",
            "test=false",
            f"data.root={fsdd_slice}",
            f"hydra.run.dir={run}",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert metrics_of(tmp_path / "a")["train/loss"] != metrics_of(tmp_path / "b")["train/loss"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(fsdd_slice, tmp_path):
    """SIGKILL after epoch 1, resume with ckpt_path=last: exactly the uninterrupted run's metrics, with
    persistent DataLoader workers, waveform and SpecAugment augmentation and random crops on."""
    args = [*AS_USERS_RUN, "trainer.max_epochs=4", f"data.root={fsdd_slice}"]
    whole = tmp_path / "whole"
    proc = run_entry("audio_cls.train", *args, f"hydra.run.dir={whole}")
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(*args, f"hydra.run.dir={killed}"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(killed / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)  # never a torn file
    assert saved["epoch"] < 4

    resumed = run_entry("audio_cls.train", *args, f"hydra.run.dir={killed}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = metrics_of(whole), metrics_of(killed)
    assert b["status"] == "finished" and b["epochs"] == a["epochs"] == 4
    assert {k: b[k] for k in COMPARED} == {k: a[k] for k in COMPARED}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_marks_the_run(fsdd_slice, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(*SHORT_RUN, "trainer.max_epochs=200", f"data.root={fsdd_slice}", f"hydra.run.dir={run}"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    first_step = torch.load(last, weights_only=True)["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM  # 143, as the README documents for schedulers
    metrics = metrics_of(run)
    assert metrics["status"] == "interrupted" and "ckpt_path=last" in metrics["error"]
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] > first_step  # written at the interruption, not at the last epoch end
    # The resumed run continues from that step (not from scratch) and finishes the epochs it was given.
    epochs = saved["epoch"] + 2
    resumed = run_entry(
        "audio_cls.train",
        *SHORT_RUN,
        f"trainer.max_epochs={epochs}",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={run}",
        "ckpt_path=last",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = metrics_of(run)
    assert metrics["status"] == "finished" and metrics["epochs"] == epochs
    final = torch.load(last, weights_only=True)
    assert final["global_step"] > saved["global_step"] and final["epoch"] == epochs - 1


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(fsdd_slice, tmp_path):
    # Epoch 0 trains normally; the step scheduler then multiplies the learning rate by 1e30.
    proc = run_entry(
        "audio_cls.train",
        *SHORT_RUN,
        "trainer.max_epochs=3",
        "optimizer=sgd",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e30",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 1
    assert "error: the training loss is" in proc.stderr and "at step" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert metrics_of(tmp_path)["status"] == "failed"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.batch_size=abc"], "error: data.batch_size='abc': expected int"),
        (["data.batch_size=-4"], "error: data.batch_size=-4: must be positive"),
        (["optimizer.lr=-0.1"], "error: optimizer.lr=-0.1: must be positive"),
        (["data.root=???"], "error: data.root: Missing mandatory value"),
        (["+model.widht=3"], "error: model.widht: audio_cls.model.CNN1d takes no such argument"),
        (["augment.waveform.speed=true"], "error: augment.waveform.speed=True: expected list of float or null"),
        (["augment.waveform.speed=[true]"], "error: augment.waveform.speed=[True]: expected list of float or null"),
        (
            ["+augment.spec_augment.freq_masks=2"],
            "error: augment.spec_augment.freq_masks: audio_cls.augment.SpecAugment takes no such argument",
        ),
    ],
)
def test_config_errors_are_one_line_before_any_data_is_read(overrides, message, tmp_path):
    # data.root does not exist: the config error must come first.
    proc = run_entry("audio_cls.train", "data.root=/nonexistent", *overrides, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_group_option_names_the_group(tmp_path):
    proc = run_entry("audio_cls.train", "optimizer=adamax", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "Could not find 'optimizer/adamax'" in proc.stderr


@pytest.mark.slow
def test_unwritable_run_dir_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_entry("audio_cls.train", f"hydra.run.dir={blocker}/run")
    assert proc.returncode == 1 and f"{blocker}/run" in proc.stderr


# --- audio edge cases, through the shared AudioDataModule path ---------------------------------


class Listed(AudioDataModule):
    """A dataset given as a list of files: every one in training, the first one also in val and test."""

    def __init__(self, paths, **kwargs):
        super().__init__(
            root=str(Path(paths[0]).parent),
            features=LogMel(16000, hop_length=160),
            sample_rate=16000,
            batch_size=2,
            **kwargs,
        )
        self.paths = paths

    def build_splits(self):
        items = [Item(str(p), "a" if i % 2 else "b") for i, p in enumerate(self.paths)]
        return {"train": items, "val": items[:2], "test": items[:2]}


def sine(seconds, rate, channels=1, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * 440 * t)
    return np.repeat(wave[:, None], channels, axis=1)


GOOD = {  # name -> (data, rate, subtype, format)
    "silence.wav": (np.zeros((8000, 1)), 16000, "PCM_16", None),
    "clipped.wav": (np.clip(sine(0.5, 16000, amplitude=3.0), -1, 1), 16000, "PCM_16", None),
    "ten_ms.wav": (sine(0.01, 16000), 16000, "PCM_16", None),
    "ten_minutes.wav": (sine(600, 8000), 8000, "PCM_16", None),
    "pcm8.wav": (sine(0.5, 16000), 16000, "PCM_U8", None),
    "pcm24.wav": (sine(0.5, 16000), 16000, "PCM_24", None),
    "float.wav": (sine(0.5, 16000), 16000, "FLOAT", None),
    "audio.flac": (sine(0.5, 16000), 16000, "PCM_16", "FLAC"),
    "audio.ogg": (sine(0.5, 16000), 16000, "VORBIS", "OGG"),
    "six_channels.wav": (sine(0.5, 16000, channels=6), 16000, "PCM_16", None),
    "rate_8k.wav": (sine(0.5, 8000), 8000, "PCM_16", None),
    "rate_96k.wav": (sine(0.5, 96000), 96000, "PCM_24", None),
}


def write_good(folder, name):
    data, rate, subtype, fmt = GOOD[name]
    path = folder / name
    sf.write(str(path), data, rate, subtype=subtype, format=fmt)
    return path


def write_bad(folder, name):
    path = folder / name
    if name == "truncated_header.wav":
        write_tone(path)
        path.write_bytes(path.read_bytes()[:30])
    elif name == "text.wav":
        path.write_text("not audio at all\n")
    elif name == "zero_bytes.wav":
        path.write_bytes(b"")
    elif name == "nan_samples.wav":
        data = sine(0.5, 16000)
        data[100] = np.nan
        sf.write(str(path), data, 16000, subtype="FLOAT")
    return path


BAD = {
    "truncated_header.wav": "soundfile cannot read it",
    "text.wav": "soundfile cannot read it",
    "zero_bytes.wav": "soundfile cannot read it",
    "nan_samples.wav": "NaN or infinite samples",
}


@pytest.mark.parametrize("name", list(GOOD))
def test_audio_edge_case_is_handled(name, tmp_path):
    path = write_good(tmp_path, name)
    other = write_good(tmp_path, "rate_8k.wav") if name != "rate_8k.wav" else write_good(tmp_path, "silence.wav")
    dm = Listed([path, other])
    dm.setup("fit")
    item = dm.dataset("train")[0]["inputs"]
    data, rate = GOOD[name][0], GOOD[name][1]
    expected_samples = round(len(data) * 16000 / rate)
    assert item.shape == (dm.features.num_frames(expected_samples), 64)
    assert torch.isfinite(item).all()
    if name in ("silence.wav", "clipped.wav"):
        assert item.abs().max() < 200  # dB values, finite even for digital silence


@pytest.mark.parametrize("name", list(BAD))
def test_bad_audio_is_named_or_skipped_and_counted(name, tmp_path):
    good = [write_good(tmp_path, "silence.wav"), write_good(tmp_path, "rate_8k.wav"), write_good(tmp_path, "float.wav")]
    bad = write_bad(tmp_path, name)
    with pytest.raises(DataError, match=rf"{bad.name}: .*{BAD[name]}"):
        dm = Listed([*good, bad])
        dm.setup("fit")
        for i in range(len(dm.splits["train"])):  # NaN samples show only once the file is read
            dm.dataset("train")[i]
    dm = Listed([*good, bad], on_bad_file="skip")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["targets"]) for b in batches) == 3
    assert [p for p, _ in dm.skipped] == [str(bad)]  # found and counted at start-up


def test_unreadable_file_is_named(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write_good(folder, "silence.wav")
    path.chmod(0)
    os.chmod(tmp_path, 0o755)
    if os.geteuid() != 0:
        with pytest.raises(DataError, match="silence.wav: soundfile cannot read it"):
            Listed([path, path]).setup("fit")
        return
    # root reads any file: check as an unprivileged user in a forked child, which runs only the
    # header scan of AudioDataModule.setup (soundfile; no torch threads in a forked child)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            audio_info(path)
            os.write(write_end, b"no error")
        except DataError as err:
            os.write(write_end, str(err).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    message = os.read(read_end, 10000).decode()
    assert "silence.wav: soundfile cannot read it" in message, message


@pytest.mark.slow
def test_skipped_files_are_listed_in_the_run_directory(fsdd_slice, tmp_path):
    data = tmp_path / "data"
    (data / "recordings").mkdir(parents=True)
    for f in (fsdd_slice / "recordings").iterdir():
        (data / "recordings" / f.name).symlink_to(f)
    (data / "recordings" / "3_jackson_99.wav").write_text("broken")
    run = tmp_path / "run"
    proc = run_entry(
        "audio_cls.train", "debug=fast", f"data.root={data}", "data.on_bad_file=skip", f"hydra.run.dir={run}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3_jackson_99.wav" in (run / "skipped_files.csv").read_text()
    assert metrics_of(run)["skipped_files"] == 1
