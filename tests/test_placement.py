"""Where features are computed: worker, device and cache give the same batches; the cache is reused and
invalidated; multi-process (DDP on CPU) and bf16 mixed precision runs write one complete run."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from audio_cls.augment import SpecAugment
from audio_cls.data.fsdd import FSDD
from audio_cls.features import MFCC, LogMel, RawWaveform, Spectrogram
from helpers import run_entry

FRONT_ENDS = {  # every feature type of conf/features/
    "logmel": lambda **kw: LogMel(8000, hop_length=80, **kw),
    "mfcc": lambda **kw: MFCC(8000, hop_length=80, **kw),
    "spectrogram": lambda **kw: Spectrogram(n_fft=256, hop_length=80, **kw),
    "raw": lambda **kw: RawWaveform(frame_length=80, **kw),
}


def fsdd(root, cache_dir, features, placement, **settings) -> FSDD:
    """The FSDD slice at 8 kHz with conf/data's shipped settings (2 DataLoader workers), batches of 16."""
    settings = {"sample_rate": 8000, "batch_size": 16, "num_workers": 2, **settings}
    return FSDD(root=str(root), features=features, placement=placement, cache_dir=str(cache_dir), **settings)


def batches(root, tmp_path, placement, normalize, make=FRONT_ENDS["logmel"], duration=None, split="val"):
    dm = fsdd(root, tmp_path, make(normalize=normalize), placement, duration=duration)
    dm.setup("fit")
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    # on_after_batch_transfer is where placement=device extracts; a no-op for the other placements
    return [dm.on_after_batch_transfer(b, 0) for b in loader], dm


@pytest.mark.slow
@pytest.mark.parametrize("duration", [None, 0.5])
@pytest.mark.parametrize("normalize", ["none", "utterance", "global"])
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_every_placement_gives_the_same_features(fsdd_slice, tmp_path, normalize, front_end, duration):
    """Validation batches agree on every valid frame. With `duration`, clips are cropped or padded first and
    every frame is valid: the cache must pad the waveform, not the features (0 dB is not silence)."""
    make = FRONT_ENDS[front_end]
    reference, _ = batches(fsdd_slice, tmp_path / "w", "worker", normalize, make, duration)
    for placement in ("device", "cache"):
        other, _ = batches(fsdd_slice, tmp_path / placement, placement, normalize, make, duration)
        assert len(other) == len(reference)
        for a, b in zip(reference, other):
            assert torch.equal(a["lengths"], b["lengths"]) and torch.equal(a["targets"], b["targets"])
            if duration:
                assert a["inputs"].shape == b["inputs"].shape and (a["lengths"] == a["inputs"].shape[1]).all()
            mask = torch.arange(a["inputs"].shape[1])[None] < a["lengths"][:, None]
            torch.testing.assert_close(b["inputs"][mask], a["inputs"][mask], atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_cached_training_clips_shorter_than_duration_match_the_waveform_path(fsdd_slice, tmp_path):
    """Training with `duration`: a recording shorter than it is padded with silence before extraction in the
    cache too (longer ones are cut to a random span of frames instead of samples: see AudioDataset)."""
    datasets = {}
    for placement in ("worker", "cache"):
        dm = fsdd(
            fsdd_slice, tmp_path / placement, LogMel(8000, hop_length=80, normalize="none"), placement, duration=2.5
        )
        dm.setup("fit")
        datasets[placement] = dm.dataset("train")
    for index in range(0, len(datasets["worker"]), 7):  # FSDD clips are under 2.5 s: all are padded
        a = datasets["worker"][(index, 1)]["inputs"]
        b = datasets["cache"][(index, 1)]["inputs"]
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_cache_is_reused_and_invalidated(fsdd_slice, tmp_path):
    _, dm = batches(fsdd_slice, tmp_path, "cache", "none")
    files = sorted(tmp_path.glob("FSDD-*.pt"))
    assert len(files) == 3  # train, val, test
    stamps = {f: f.stat().st_mtime_ns for f in files}
    batches(fsdd_slice, tmp_path, "cache", "none")  # same extractor and files: read, not rewritten
    assert {f: f.stat().st_mtime_ns for f in tmp_path.glob("FSDD-*.pt")} == stamps

    features = LogMel(8000, hop_length=80, n_mels=40)  # another extractor
    fsdd(fsdd_slice, tmp_path, features, "cache").setup("fit")
    assert len(list(tmp_path.glob("FSDD-*.pt"))) == 6

    changed = dm.splits["test"][0].path  # a file changes: its split's cache no longer matches
    os.utime(changed, ns=(1, 1))
    batches(fsdd_slice, tmp_path, "cache", "none")
    assert len(list(tmp_path.glob("FSDD-test-*.pt"))) == 3 and len(list(tmp_path.glob("FSDD-train-*.pt"))) == 2


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc (Linux)")
def test_computing_the_cache_keeps_no_file_open_per_recording(fsdd_slice, tmp_path):
    # Tensors from DataLoader workers live in shared memory, one file descriptor each while they are alive:
    # kept as they came, the cache of all of FSDD held 3,000 descriptors, past the usual limit of 1,024
    # (`ulimit -n`), and Open MPI's start-up (which Lightning probes when mpi4py is installed) aborted.
    before = open_descriptors()
    dm = fsdd(fsdd_slice, tmp_path, LogMel(8000, hop_length=80), "cache")  # the shipped 2 workers
    dm.setup("fit")
    assert sum(len(dm.cached[split]) for split in ("train", "val", "test")) == 200
    assert open_descriptors() - before < 20


@pytest.mark.slow
def test_device_placement_trains_end_to_end(fsdd_slice, tmp_path):
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        "data.placement=device",
        "features.normalize=global",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run(fsdd_slice, tmp_path):
    """Both ranks start at once against an empty feature cache: each writes the cache files through a
    temporary name of its own (a shared one made the slower rank's rename fail)."""
    logs = tmp_path / "logs"
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        "trainer=ddp_cpu",
        f"data.root={fsdd_slice}",
        f"paths.log_dir={logs}",
        "data.batch_size=8",
        "data.placement=cache",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((logs / "train" / "runs").iterdir())
    assert len(runs) == 1  # the second process writes into the first one's directory
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "finished" and 0 <= metrics["test/acc"] <= 1
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "cache").glob("FSDD-*.pt"))) == 4  # train, val, test, statistics; no temporary left
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu(fsdd_slice, tmp_path):
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        "trainer.precision=bf16-mixed",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train/loss"] == metrics["train/loss"]  # not NaN


def zero_bands(batch):
    """Per item, the number of features that are zero over all of its valid frames."""
    mask = torch.arange(batch["inputs"].shape[1])[None, :, None] < batch["lengths"][:, None, None]
    return ((batch["inputs"].abs() * mask).sum(1) == 0).sum(1)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["worker", "device", "cache"])
def test_feature_augmentation_follows_extraction_in_training_only(fsdd_slice, tmp_path, placement):
    batches = {}
    for name, augment in (("plain", None), ("augmented", dict(freq_mask=20, time_mask=5, num_masks=2))):
        spec_augment = SpecAugment(**augment) if augment else None
        dm = fsdd(
            fsdd_slice,
            tmp_path,
            LogMel(8000, hop_length=80, normalize="utterance"),
            placement,
            spec_augment=spec_augment,
        )
        dm.setup("fit")
        train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
        dm.trainer = SimpleNamespace(training=True)  # what the hook asks of Lightning's trainer
        train = dm.on_after_batch_transfer(train, 0)
        dm.trainer = SimpleNamespace(training=False)
        val = dm.on_after_batch_transfer(val, 0)
        batches[name] = (train, val)
    (plain_train, plain_val), (aug_train, aug_val) = batches["plain"], batches["augmented"]
    assert torch.equal(plain_train["targets"], aug_train["targets"])  # same clips: the order is seeded
    assert (zero_bands(aug_train) > zero_bands(plain_train)).any()  # frequency bands masked in training
    assert torch.equal(aug_val["inputs"], plain_val["inputs"])  # validation data untouched


def test_processes_filling_the_cache_at_once_do_not_collide(fsdd_slice, tmp_path, monkeypatch):
    """Two writers of the same cache file at the same moment (ranks started together): each finishes, and one
    complete file remains. A slow torch.save keeps both inside the write at once."""
    import threading
    import time

    dm = fsdd(fsdd_slice, tmp_path, LogMel(8000, hop_length=80, normalize="none"), "cache")
    dm.splits = dm.build_splits()
    dm._check_splits()
    save = torch.save

    def slow_save(obj, path):
        save(obj, path)
        time.sleep(0.5)

    monkeypatch.setattr(torch, "save", slow_save)
    errors = []

    def fill():
        try:
            dm._cached_features("val")
        except Exception as err:  # noqa: BLE001 - the test reports any failure of a writer
            errors.append(err)

    writers = [threading.Thread(target=fill) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not errors, errors
    files = [p for p in tmp_path.iterdir() if p.name != "index"]  # index/: the file index of _check_splits
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert len(torch.load(files[0], weights_only=True)["frames"]) == len(dm.splits["val"])


@pytest.mark.parametrize(
    "nvml_devices, rocm, kept", [(-1, False, False), (0, False, True), (2, False, True), (-1, True, True)]
)
def test_the_nvml_cuda_check_is_skipped_only_where_nvml_cannot_load(monkeypatch, nvml_devices, rocm, kept):
    """Lightning asks `torch.cuda.is_available()` to go through NVML; where NVML fails to load that is a failing
    library load per optimizer step before the same check without it. Where NVML answers, or on ROCm (where torch
    asks amdsmi, not NVML), the check that keeps forking safe stays."""
    from audio_cls.module import skip_failing_nvml_check

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: nvml_devices)
    monkeypatch.setattr(torch.version, "hip", "6.2" if rocm else None)
    skip_failing_nvml_check()
    assert (os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1") is kept


def test_importing_the_module_leaves_no_failing_nvml_check_on_this_machine():
    """On a machine without a GPU driver (CI), training code imported as users import it checks CUDA without
    trying to load NVML at every optimizer step."""
    code = (
        "import os, torch, audio_cls.module; "
        "fails = torch.cuda._is_compiled() and torch.cuda._device_count_nvml() < 0; "
        "print(fails, os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'))"
    )
    fails, value = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    if fails != "True":
        pytest.skip("NVML loads on this machine: the check is kept, as the test above shows")
    assert value == "None"
