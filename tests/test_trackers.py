"""MLflow and Weights & Biases through Lightning's loggers (logger=mlflow, logger=wandb, with TensorBoard and CSV by
logger=[tensorboard,mlflow] or logger=[many,wandb]). What a run logs is read back: from the MLflow store with
mlflow's client, from the W&B offline run's transaction log (run-<id>.wandb) with wandb's own protobuf records.
Nothing reaches the network: MLflow writes a file store in tmp_path, W&B runs offline."""

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf, open_dict

from audio_cls import CONF_DIR
from audio_cls.errors import ConfigError
from audio_cls.runs import instantiate_group, log_figure, log_hparams, log_text, markdown_table, run_task
from helpers import run_entry

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
plt = pytest.importorskip("matplotlib.pyplot")

TABLE = "| class | precision | recall |\n|---|---|---|\n| one | 0.500 | 1.000 |\n| two | 1.000 | 0.750 |"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its settings, cache and data folders in tmp_path (none in the home directory)."""
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (tmp_path / var.lower()).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    if wandb.run is not None:  # a failed test leaves no run open for the next
        wandb.finish()


def compose_train(overrides, output_dir, log_dir):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(output_dir), str(log_dir)
    return cfg


# --- reading back --------------------------------------------------------------------------------------
def wandb_run(run_folder: Path, timeout: float = 60) -> dict:
    """What a W&B run folder's transaction log holds, once it is complete (W&B's service process writes it and may
    still be flushing it after wandb.finish() returns): see read_wandb_log."""
    deadline = time.monotonic() + timeout
    while (run := read_wandb_log(run_folder))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return run


def read_wandb_log(run_folder: Path) -> dict:
    """The run (name, project, job type, tags), config, summary, history rows and exit code (None before the exit
    record) in a W&B run folder's transaction log, run-<id>.wandb. It is in LevelDB's log format (32 KiB blocks of
    chunks, each with a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte file header
    (':W&B', 0xBEE1, version 0); each record is a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run_folder.glob("run-*.wandb")
    data, block = log.read_bytes(), 32768
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    out = {"config": {}, "summary": {}, "history": [], "exit_code": None}
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (length, kind) == (0, 0):  # zeros up to the block's end
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # a chunk being written
            break
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):  # FIRST or MIDDLE: the record goes on in the next chunk
            continue
        record = wandb_internal_pb2.Record.FromString(pending)
        pending = b""
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {"name": run.display_name, "project": run.project, "job_type": run.job_type}
            out["run"]["tags"] = list(run.tags)
        elif kind in ("config", "summary"):
            items = getattr(record, kind).update
            out[kind].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def tensorboard_tags(log_dir: Path) -> dict[str, set[str]]:
    """{plugin ("images", "text", "scalars", ...): tags} of the TensorBoard events under log_dir."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags: dict[str, set[str]] = {}
    for events in log_dir.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                tags.setdefault(value.metadata.plugin_data.plugin_name or "scalars", set()).add(value.tag)
    return tags


def mlflow_run(tracking_uri: str, experiment: str = "train"):
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


# --- configs -------------------------------------------------------------------------------------------
def test_each_tracker_composes_alone_with_tensorboard_and_with_many(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_dir = tmp_path / "logs"
    output = log_dir / "train" / "runs" / "2000-01-01_00-00-00_000000"
    cfg = compose_train(["logger=[tensorboard,mlflow]", "experiment=fsdd_lstm"], output, log_dir)
    assert list(cfg.logger) == ["tensorboard", "mlflow"]
    mlf = OmegaConf.to_container(cfg.logger.mlflow, resolve=True)
    assert mlf["tracking_uri"] == f"file:{log_dir}/mlflow"  # the file store under the logs folder by default
    assert (mlf["experiment_name"], mlf["run_name"], mlf["log_model"]) == ("train", "train/runs/" + output.name, False)
    tb, tracker = instantiate_group(cfg.logger)
    assert isinstance(tb, TensorBoardLogger) and isinstance(tracker, MLFlowLogger)
    assert tracker.save_dir == f"{log_dir}/mlflow"

    cfg = compose_train(["logger=[many,wandb]", "experiment=fsdd_lstm"], tmp_path / "elsewhere" / "exp42", log_dir)
    assert list(cfg.logger) == ["tensorboard", "csv", "wandb"]
    wb = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    assert wb["offline"] is True and wb["log_model"] is False
    assert (wb["name"], wb["tags"], wb["save_dir"]) == (
        "exp42",
        ["fsdd", "lstm"],
        str(tmp_path / "elsewhere" / "exp42"),
    )
    assert [type(lg) for lg in instantiate_group(cfg.logger)] == [TensorBoardLogger, CSVLogger, WandbLogger]
    assert wandb.run is None  # building the logger starts no run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # any URI by config or environment
    cfg = compose_train(["logger=mlflow"], output, log_dir)
    assert cfg.logger.mlflow.tracking_uri == "http://tracking.example:5000"
    cfg = compose_train(["logger=mlflow", "logger.mlflow.tracking_uri=sqlite:///x.db"], output, log_dir)
    assert cfg.logger.mlflow.tracking_uri == "sqlite:///x.db"


def test_markdown_tables_are_split_into_cells():
    assert markdown_table(TABLE) == (
        ["class", "precision", "recall"],
        [["one", "0.500", "1.000"], ["two", "1.000", "0.750"]],
    )
    assert markdown_table("| a | b |\n| 1 | 2 |") is None  # no |---| row
    assert markdown_table("| a | b |\n|---|---|\n| 1 |") is None  # a short row
    assert markdown_table("plain text") is None


# --- figures and text, in this process --------------------------------------------------------------------
def test_figures_and_text_reach_tensorboard_and_mlflow_but_not_csv(tmp_path):
    uri = f"file:{tmp_path / 'mlflow'}"
    loggers = [
        TensorBoardLogger(tmp_path / "tb", name="", version=""),
        MLFlowLogger(experiment_name="train", tracking_uri=uri, run_name="r"),
        CSVLogger(tmp_path, name="csv", version=""),
    ]
    figure, ax = plt.subplots()
    ax.imshow(torch.eye(3).numpy())
    log_figure(loggers, "test/confusion_matrix", figure, step=7)
    log_text(loggers, "test/per_class", TABLE, step=7)
    assert not plt.fignum_exists(figure.number)  # closed
    loggers[0].experiment.flush()
    tags = tensorboard_tags(tmp_path / "tb")
    assert "test/confusion_matrix" in tags["images"] and "test/per_class/text_summary" in tags["text"]

    client, run = mlflow_run(uri)
    assert run.info.run_name == "r"
    artifacts = Path(client.download_artifacts(run.info.run_id, "test", str(tmp_path / "dl")))
    assert (artifacts / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (artifacts / "per_class.md").read_text() == TABLE
    assert not list((tmp_path / "csv").glob("*.png"))

    made = []

    def draw():
        made.append(plt.figure())
        return made[-1]

    log_figure(loggers[2:], "test/confusion_matrix", draw, step=7)
    assert made == []  # no logger shows figures: the figure is never drawn
    log_figure(loggers[:1], "test/other", draw, step=7)
    assert len(made) == 1 and not plt.fignum_exists(made[0].number)


@pytest.mark.slow  # W&B starts its service process (a few seconds)
def test_wandb_gets_figures_tables_hparams_and_the_best_checkpoint_then_its_run_ends(tmp_path, offline_wandb):
    logger = WandbLogger(name="train/runs/x", save_dir=str(tmp_path), offline=True, project="audio-cls")
    figure, _ = plt.subplots()
    log_figure([logger], "test/confusion_matrix", figure, step=3)
    log_text([logger], "test/per_class", TABLE, step=3)
    config = {"data": {"batch_size": 16}, "model": {"channels": [16, 16]}, "seed": 1, "trainer": {"max_epochs": 2}}
    metrics = {"val/acc_best": 0.75, "test/acc": 0.5, "train_time_s": 2.0, "test/psds1": float("nan")}
    log_hparams([logger], config, metrics, best_checkpoint="/runs/x/checkpoints/epoch_001.ckpt")
    assert wandb.run is None  # finished: the next run in this process gets one of its own

    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = wandb_run(folder)
    assert run["run"]["name"] == "train/runs/x" and run["exit_code"] == 0
    assert run["config"]["data.batch_size"] == 16 and run["config"]["model.channels"] == "[16, 16]"
    assert run["config"]["best_checkpoint"] == run["summary"]["best_checkpoint"] == "/runs/x/checkpoints/epoch_001.ckpt"
    assert {k: run["summary"][k] for k in ("val/acc_best", "test/acc", "train_time_s")} == {
        "val/acc_best": 0.75,
        "test/acc": 0.5,
        "train_time_s": 2.0,
    }
    assert "test/psds1" not in run["summary"]  # not finite: left out
    (image,) = [row for row in run["history"] if "test/confusion_matrix/filenames" in row]
    assert (folder / "files" / image["test/confusion_matrix/filenames"][0]).is_file()
    assert image["trainer/global_step"] == 3
    (table,) = [row for row in run["history"] if "test/per_class/path" in row]
    assert table["test/per_class/nrows"] == 2 and table["test/per_class/ncols"] == 3

    # A task that fails with a W&B run open ends it as failed (WandbLogger.finalize leaves it open, run_task not).
    logger = WandbLogger(name="failing", save_dir=str(tmp_path / "failing"), offline=True, project="audio-cls")
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "failing")}})

    def task(_cfg):
        logger.log_metrics({"train/loss": 1.0}, step=0)
        raise ConfigError("a user error")

    with pytest.raises(SystemExit):
        run_task(task, cfg)
    assert wandb.run is None
    (folder,) = (tmp_path / "failing" / "wandb").glob("offline-run-*")
    assert wandb_run(folder)["exit_code"] == 1


# --- training runs ---------------------------------------------------------------------------------------
TRAIN = ("debug=limit", "data.batch_size=16", "model.channels=[16,16,16]")


@pytest.mark.slow
def test_a_training_run_reaches_mlflow_and_tensorboard(fsdd_slice, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the run sets it (audio_cls/__init__.py)
    logs = tmp_path / "logs"
    proc = run_entry(
        "audio_cls.train", *TRAIN, f"data.root={fsdd_slice}", f"paths.log_dir={logs}", "logger=[tensorboard,mlflow]"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    result = json.loads((run_dir / "metrics.json").read_text())

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the file store here
    client, run = mlflow_run(f"file:{logs / 'mlflow'}")  # the default: the file store under paths.log_dir
    assert run.info.status == "FINISHED" and run.info.run_name == f"train/runs/{run_dir.name}"
    assert run.data.tags["run_dir"] == str(run_dir)
    best = run.data.tags["best_checkpoint"]
    assert best == result["best_checkpoint"] and Path(best).is_file() and Path(best).parent == run_dir / "checkpoints"
    params = run.data.params  # hyperparameters, flattened
    assert params["data.batch_size"] == "16" and params["model.channels"] == "[16, 16, 16]"
    assert (
        params["seed"] == "12345"
        and params["trainer.max_epochs"] == "2"
        and params["optimizer.lr"] == str(OmegaConf.load(run_dir / ".hydra" / "config.yaml").optimizer.lr)
    )
    metrics = run.data.metrics
    for key in ("train/loss", "val/acc", "val/acc_best", "test/acc", "test/f1", "test/loss", "train_time_s", "epochs"):
        assert metrics[key] == pytest.approx(result[key], rel=1e-6), key
    assert len(client.get_metric_history(run.info.run_id, "val/acc_best")) == 2  # one per epoch
    artifacts = Path(client.download_artifacts(run.info.run_id, "test", str(tmp_path / "dl")))
    assert (artifacts / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (artifacts / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table((artifacts / "per_class.md").read_text())
    assert table[0][0] == "class" and sorted(row[0] for row in table[1]) == [str(d) for d in range(10)]

    tags = tensorboard_tags(run_dir / "tensorboard")  # TensorBoard beside it still gets everything
    assert "test/confusion_matrix" in tags["images"] and "test/per_class/text_summary" in tags["text"]
    assert {"val/acc", "test/acc"} <= tags["scalars"] and "_hparams_/session_start_info" in tags["hparams"]


@pytest.mark.slow
def test_a_training_run_reaches_wandb_offline_beside_tensorboard_and_csv(fsdd_slice, tmp_path, offline_wandb):
    logs = tmp_path / "logs"
    proc = run_entry(
        "audio_cls.train",
        *TRAIN,
        "experiment=fsdd_cnn",  # the default, with its tags
        f"data.root={fsdd_slice}",
        f"paths.log_dir={logs}",
        "logger=[many,wandb]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (logs / "train" / "runs").iterdir()
    result = json.loads((run_dir / "metrics.json").read_text())
    (folder,) = (run_dir / "wandb").glob("offline-run-*")  # offline: kept in the run directory for `wandb sync`

    run = wandb_run(folder)
    assert run["exit_code"] == 0
    assert run["run"] == {
        "name": f"train/runs/{run_dir.name}",
        "project": "audio-cls",
        "job_type": "train",
        "tags": ["fsdd", "cnn1d"],
    }
    config = run["config"]
    assert config["data.batch_size"] == 16 and config["model.channels"] == "[16, 16, 16]" and config["seed"] == 12345
    assert config["best_checkpoint"] == result["best_checkpoint"] and Path(result["best_checkpoint"]).is_file()
    summary = run["summary"]
    assert summary["best_checkpoint"] == result["best_checkpoint"]
    for key in ("val/acc_best", "test/acc", "test/f1", "test/loss", "train_time_s", "epochs"):
        assert summary[key] == pytest.approx(result[key], rel=1e-6), key
    assert sum("val/acc" in row for row in run["history"]) == 2  # one per epoch
    (image,) = [row for row in run["history"] if "test/confusion_matrix/filenames" in row]
    assert (folder / "files" / image["test/confusion_matrix/filenames"][0]).read_bytes()[:4] == b"\x89PNG"
    assert any(row.get("test/per_class/nrows") == 10 for row in run["history"])

    assert (run_dir / "csv" / "metrics.csv").is_file()
    tags = tensorboard_tags(run_dir / "tensorboard")
    assert "test/confusion_matrix" in tags["images"] and "test/per_class/text_summary" in tags["text"]


def test_validation_frame_scores_reach_mlflow_too(tmp_path):
    """A sound event detection model's validation frame scores (`val/frame_scores`) go to every tracker that shows
    figures, as the test figures do (they went to TensorBoard only)."""
    from types import SimpleNamespace

    from audio_cls.model.crnn import CRNN
    from audio_cls.module import AudioClassifier

    uri = f"file:{tmp_path / 'mlflow'}"
    mlflow_logger = MLFlowLogger(experiment_name="train", tracking_uri=uri, run_name="r")
    module = AudioClassifier(CRNN(8, 3, frame_pooling="attention"), None, ["a", "b", "c"], multilabel=True)
    module._trainer = SimpleNamespace(is_global_zero=True, loggers=[mlflow_logger], global_step=3)
    events = torch.tensor([[[0.1, 0.3, 0.0]], [[0.0, 0.2, 2.0]]])  # (recordings, events, onset/offset/class)
    module._frames_example = (torch.rand(2, 10, 3), torch.tensor([10, 7]), events, 0.04)
    module._log_frame_scores()
    client, run = mlflow_run(uri)
    artifacts = Path(client.download_artifacts(run.info.run_id, "val", str(tmp_path / "dl")))
    assert (artifacts / "frame_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
