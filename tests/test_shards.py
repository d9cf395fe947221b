"""data=shards: a dataset written into shards (`python -m audio_cls.shard`) and streamed back with litdata.

The data is a folder of FSDD recordings (<digit>/<speaker>_<n>.wav, 8 kHz, speakers as groups) plus two stereo
44.1 kHz FLAC files, written in shards of 200 KB (a few per split).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

pytest.importorskip("litdata")  # the `shards` extra (in `dev`)

from audio_cls.runs import user_message  # noqa: E402
from audio_cls.shard import verify, write_shards  # noqa: E402
from audio_cls.train import build_datamodule  # noqa: E402
from helpers import FSDD, REPO, run_entry, write_tone  # noqa: E402

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo")
FOLDER = ["data=folder", "data.sample_rate=8000", "data.group_pattern='^(?P<group>[^_]+)_'"]
SHARDS = ["data=shards", "data.sample_rate=8000"]
COMPARED = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss")
# What users run (workers, waveform and feature augmentation), in a few short epochs.
AS_USERS_RUN = [
    "trainer.accelerator=cpu",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "callbacks.early_stopping=null",
    "data.batch_size=16",
    "augment=speech",
    "seed=3",
    "logger=csv",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    for digit in range(10):
        (root / str(digit)).mkdir()
        for speaker in SPEAKERS:
            for index in range(3):
                name = f"{digit}_{speaker}_{index}.wav"
                shutil.copy(FSDD / "recordings" / name, root / str(digit) / f"{speaker}_{index}.wav")
    for digit, freq in ((3, 500.0), (7, 900.0)):  # mixed to mono and resampled when written
        write_tone(root / str(digit) / "theo_stereo.flac", 0.6, 44100, freq, channels=2)
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    """The folder written into shards by the entry point, as a user would."""
    out = tmp_path_factory.mktemp("shards") / "digits"
    proc = run_entry(
        "audio_cls.shard",
        *FOLDER,
        f"data.root={folder}",
        f"output={out}",
        "chunk_bytes=200KB",
        f"paths.cache_dir={out.parent / 'cache'}",
        f"hydra.run.dir={out.parent / 'log'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def config(name, *overrides, cache):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(name, overrides=[*overrides, f"paths.cache_dir={cache}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(cache)  # outside a Hydra run there is no hydra:runtime.output_dir
    return cfg


def datamodule(*overrides, cache, stage="fit"):
    dm = build_datamodule(config("train", *overrides, cache=cache))
    dm.setup(stage)
    return dm


def described(item):
    return (item.path, item.label, item.group, item.start, item.end, item.fold, item.labels, item.events)


def by_path(dm, loader, split):
    """{path: (frames, feat) features} of every item a loader gives, and how many it gave."""
    found, count = {}, 0
    for batch in loader:
        for row, x, n in zip(batch["index"].tolist(), batch["inputs"], batch["lengths"].tolist()):
            found[dm.splits[split][row].path] = x[:n]
            count += 1
    return found, count


def test_round_trip_gives_the_folder_runs_items_labels_splits_and_features(folder, shards, tmp_path):
    """Shipped defaults (workers, global normalization) on both sides; the recordings themselves are moved away
    while the shards are read, so nothing is read from them."""
    ref = datamodule(*FOLDER, f"data.root={folder}", "data.placement=worker", cache=tmp_path / "a")
    moved = folder.rename(folder.with_name(folder.name + "_moved"))
    try:
        dm = datamodule(*SHARDS, f"data.root={shards}", cache=tmp_path / "b")
        # Statistics measured on the streamed training split: those of the files (summed in another order).
        for name in ("mean", "std"):
            assert torch.allclose(getattr(dm.features.norm, name), getattr(ref.features.norm, name), rtol=1e-6)
        dm.features.norm.load_state_dict(ref.features.norm.state_dict())  # bit for bit the same from here on
        loaders = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
        streamed = {split: by_path(dm, make(), split) for split, make in loaders.items()}
    finally:
        moved.rename(folder)
    assert dm.placement == "worker" and dm.class_names == ref.class_names
    assert {it.group for it in dm.splits["test"]}.isdisjoint(it.group for it in dm.splits["train"])
    loaders = {"train": ref.train_dataloader, "val": ref.val_dataloader, "test": ref.test_dataloader}
    for split, make in loaders.items():
        assert sorted(map(described, dm.splits[split])) == sorted(map(described, ref.splits[split])), split
        files, _ = by_path(ref, make(), split)
        features, count = streamed[split]
        assert count == len(features) == len(files) == len(ref.splits[split])  # every item once
        for path, x in files.items():  # the stereo 44.1 kHz ones too: stored as found, mixed and resampled alike
            assert torch.equal(features[path], x), path
    assert verify(shards) == []


def test_device_placement_gives_the_worker_features(shards, tmp_path):
    """placement=device: the workers give waveforms, extracted batched where the batch lands (here the CPU)."""
    worker = datamodule(*SHARDS, f"data.root={shards}", "data.placement=worker", cache=tmp_path)
    device = datamodule(*SHARDS, f"data.root={shards}", "data.placement=device", cache=tmp_path)
    assert device.val_dataloader().dataset.convert.__class__.__name__ == "ShardWaveforms"
    a, _ = by_path(worker, worker.val_dataloader(), "val")
    b, _ = by_path(device, (device.features_of(batch) for batch in device.val_dataloader()), "val")
    assert a.keys() == b.keys() and all(torch.allclose(a[p], b[p], atol=1e-4) for p in a)


def test_training_order_is_shuffled_per_epoch_seeded_and_length_bucketed(shards, tmp_path):
    def epochs(seed, count=2, **overrides):
        torch.manual_seed(seed)  # what seed_everything sets; the loaders' seed is torch's initial seed
        extra = [f"data.{k}={v}" for k, v in overrides.items()]
        dm = datamodule(*SHARDS, f"data.root={shards}", "data.batch_size=8", *extra, cache=tmp_path)
        loader = dm.train_dataloader()
        return dm, [[b["index"].tolist() for b in loader] for _ in range(count)]

    dm, (first, second) = epochs(0)
    rows = list(range(len(dm.splits["train"])))
    for epoch in (first, second):
        assert sorted(r for batch in epoch for r in batch) == rows  # each epoch: every item once
    assert first != second  # reshuffled every epoch
    assert epochs(0)[1] == [first, second]  # the same for the same seed
    assert epochs(1, count=1)[1][0] != first

    def padding(dm, batches):
        seconds = [[dm.seconds[dm.splits["train"][r]] for r in batch] for batch in batches]
        return 1 - sum(map(sum, seconds)) / sum(len(s) * max(s) for s in seconds)

    # Shards of 200 KB hold about 40 recordings, and length buckets form within a worker's share of one: on
    # FSDD in shards of 64 MB the padding is 6% against 42% (docs/shards.md).
    plain = epochs(0, count=1, length_buckets="false")
    assert padding(dm, first) < 0.6 * padding(plain[0], plain[1][0])


def test_feature_shards_hold_what_the_cache_holds(folder, tmp_path):
    cfg = config("shard", *FOLDER, f"data.root={folder}", f"output={tmp_path / 'f'}", "format=features", cache=tmp_path)
    write_shards(cfg)
    ref = datamodule(*FOLDER, f"data.root={folder}", "data.placement=cache", cache=tmp_path / "a")
    dm = datamodule(*SHARDS, f"data.root={tmp_path / 'f'}", cache=tmp_path / "b")
    dm.features.norm.load_state_dict(ref.features.norm.state_dict())
    streamed, _ = by_path(dm, dm.val_dataloader(), "val")
    cached, _ = by_path(ref, ref.val_dataloader(), "val")
    assert streamed.keys() == cached.keys() and all(torch.equal(streamed[p], cached[p]) for p in cached)
    # Read with other features than those written: an error naming the key, before any data is used.
    message = error_of(
        build_datamodule, config("train", *SHARDS, f"data.root={tmp_path / 'f'}", "features.n_mels=20", cache=tmp_path)
    )
    assert message.startswith("features: the shards in") and "(40 per frame)" in message


def error_of(function, *args) -> str:
    """The one line the entry points print for the error `function` raises (through Hydra's instantiate)."""
    with pytest.raises(Exception) as caught:
        function(*args)
    message = user_message(caught.value)
    assert message is not None, f"not a user error: {caught.value!r}"
    return message


def test_bad_input_stops_with_a_message_naming_it(shards, tmp_path):
    for overrides, message in (
        (["data=shards", f"data.root={tmp_path}"], f"data.root={tmp_path}: no shards.json"),
        (["data=shards", "data.root=https://host/x"], "data.root=https://host/x: expected a folder, file://"),
        ([*SHARDS, f"data.root={shards}", "data.max_batch_seconds=4"], "data.max_batch_seconds: shards stream"),
        ([*SHARDS, f"data.root={shards}", "data.balanced_sampling=true"], "data.balanced_sampling draws"),
        ([*SHARDS, f"data.root={shards}", "data.placement=cache"], "data.placement=cache holds every split"),
    ):
        assert error_of(build_datamodule, config("train", *overrides, cache=tmp_path)).startswith(message)
    for overrides, message in (
        (["format=wav"], "format='wav': expected one of audio, features"),
        (["chunk_bytes=lots"], "chunk_bytes='lots': expected a size"),
        (["output=ftp://host/x"], "output=ftp://host/x: expected a folder"),
        ([f"output={shards}"], f"output={shards} already holds shards"),
        (["data=shards", f"data.root={shards}"], "data=shards: these are shards already"),
    ):
        cfg = config("shard", f"output={tmp_path / 'new'}", *overrides, cache=tmp_path)
        assert error_of(write_shards, cfg).startswith(message)
    # A changed shard is found by its checksum.
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    chunk = sorted((copy / "val").glob("chunk-*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(data)
    assert verify(copy) == [f"val/{chunk.name}: size or sha256 differs from shards.json"]


class SeenRows(L.Callback):
    """Loaded by the training runs below (tests/ on PYTHONPATH): the training rows each rank gets, per epoch."""

    def __init__(self, path):
        self.path, self.seen = path, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module):
        with open(os.path.join(self.path, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.seen, f)


def train(*overrides, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    command = [sys.executable, "-m", "audio_cls.train", *overrides]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, **popen)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ddp_processes_see_disjoint_samples_covering_each_epoch(shards, tmp_path):
    """Under DDP litdata gives each rank whole batches, as many each; an epoch then leaves out the items that do not
    fill a batch on every rank (which ones changes with the epoch's shuffle). With a batch size that divides the
    training split evenly among the ranks, each epoch covers it."""
    rows = sum(1 for line in (shards / "items.jsonl").read_text().splitlines() if '"in": "train"' in line)
    assert rows % 2 == 0
    batch_size = max(b for b in range(1, 33) if rows % (2 * b) == 0)
    seen = tmp_path / "seen"
    seen.mkdir()
    proc = train(
        *SHARDS,
        f"data.root={shards}",
        *[a for a in AS_USERS_RUN if not a.startswith("data.batch_size=")],
        f"data.batch_size={batch_size}",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "test=false",
        f"+callbacks.seen._target_={__name__}.SeenRows",
        f"+callbacks.seen.path={seen}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((seen / f"rank{r}.json").read_text()) for r in (0, 1)]
    orders = []
    for epoch in ("0", "1"):
        a, b = (rank[epoch] for rank in ranks)
        assert len(a) == len(b) == rows // 2 and not set(a) & set(b)  # as many each, none in both
        assert sorted(a + b) == list(range(rows))  # together, every item of the training split once
        orders.append(a + b)
    assert orders[0] != orders[1]  # shuffled again in the second epoch


@pytest.mark.slow
def test_killed_mid_epoch_resumes_to_exactly_the_uninterrupted_metrics(shards, tmp_path):
    """SIGKILL after a checkpoint written mid-epoch (every 5 steps; 6 batches an epoch), resume with ckpt_path=last:
    the uninterrupted run's metrics, the loader continuing with the batch after the last one trained. The same
    checkpoint without the loader's state (what a resume could do before) gives other metrics."""
    args = [
        *SHARDS,
        f"data.root={shards}",
        *AS_USERS_RUN,
        "trainer.max_epochs=3",
        "+callbacks.last_checkpoint.every_n_train_steps=5",
    ]
    whole, killed, stateless = tmp_path / "whole", tmp_path / "killed", tmp_path / "stateless"
    # A cache of its own for each of the two first runs: measuring the global statistics draws from torch's RNG
    # (a DataLoader's seed) and reading them does not, so a run would start other weights than one before it.
    proc = train(*args, f"hydra.run.dir={whole}", f"paths.cache_dir={tmp_path / 'cache_whole'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    args.append(f"paths.cache_dir={tmp_path / 'cache'}")
    proc = train(*args, f"hydra.run.dir={killed}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    saved = torch.load(last, weights_only=True)
    steps_per_epoch = 6
    assert saved["global_step"] % steps_per_epoch and not (killed / "metrics.json").exists()  # mid-epoch
    (state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state["num_samples_yielded"] == 16 * (saved["global_step"] % steps_per_epoch)

    shutil.copytree(killed, stateless)
    del saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    torch.save(saved, stateless / "checkpoints" / "last.ckpt")
    for run in (killed, stateless):
        proc = train(*args, f"hydra.run.dir={run}", "ckpt_path=last")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b, c = (json.loads((run / "metrics.json").read_text()) for run in (whole, killed, stateless))
    assert b["status"] == "finished" and b["epochs"] == a["epochs"] == 3
    assert {k: b[k] for k in COMPARED} == {k: a[k] for k in COMPARED}
    assert c["train/loss"] != a["train/loss"]


@pytest.mark.slow
def test_shards_on_a_local_s3_server_and_a_file_url_stream_the_same_data(folder, shards, tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1: written there (uploaded from a staging folder), read back with workers;
    and file://. Both give the local shards' items and features."""
    server = pytest.importorskip("moto.server").ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "test")  # moto takes any credentials; the clients want some
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="audio")
        cfg = config(
            "shard",
            *FOLDER,
            f"data.root={folder}",
            "output=s3://audio/digits",
            "chunk_bytes=200KB",
            f"+storage_options.endpoint_url={endpoint}",
            cache=tmp_path / "cache",
        )
        write_shards(cfg)  # as the fixture's command wrote the local ones
        assert (
            error_of(write_shards, cfg)
            == "output=s3://audio/digits already holds shards (shards.json); pass overwrite=true"
        )
        local = datamodule(*SHARDS, f"data.root={shards}", cache=tmp_path / "a")
        for root, extra in (
            ("s3://audio/digits", [f"+data.storage_options.endpoint_url={endpoint}"]),
            (f"file://{shards}", []),
        ):
            dm = datamodule(*SHARDS, f"data.root={root}", *extra, cache=tmp_path / "b")
            assert dm.splits == local.splits
            assert torch.equal(dm.features.norm.mean, local.features.norm.mean)
            streamed, _ = by_path(dm, dm.train_dataloader(), "train")  # the shipped 2 workers
            files, _ = by_path(local, local.train_dataloader(), "train")
            assert streamed.keys() == files.keys() and all(torch.equal(streamed[p], files[p]) for p in files)
    finally:
        server.stop()
