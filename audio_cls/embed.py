"""Embeddings of recordings: `python -m audio_cls.embed ckpt_path=CKPT|pretrained=NAME input=PATH | split=SPLIT`.

The network is a trained checkpoint's (`ckpt_path`), or a Hugging Face encoder as it comes (`pretrained`, as
model=hf's model.pretrained; its head an untrained stand-in that is never read).

An embedding is what the network's classifier reads: the input of its `head` (the network protocol,
audio_cls/model/layers.py), so the same definition holds for every network, the CNNs' pooled maps, the LSTM's
readout, a pretrained encoder's pooled output. A network with a frame head (sound event detection, `FrameHead`)
gives its head one vector per frame; the embedding is their mean over the valid frames.

    recording -> mono at the model's rate -> windows, as `audio_cls.predict` cuts them -> front end -> network,
              with a forward hook on `head` -> (windows, dim) -> their mean: the recording's embedding (dim,)

What to embed, one of:
    input=FILE|FOLDER|MANIFEST.csv   recordings, as `predict` takes them; a manifest's `label` column is kept
    split=train|val|test|all         a dataset's recordings with their labels and splits: the checkpoint's own
                                     training data (its saved config, plus data.KEY=VALUE overrides), or other
                                     data with data=NAME, as `audio_cls.eval` builds them (conf/embed.yaml)

Writes to output_dir:

    embeddings.npy   (recordings, dim) float32, one row per recording: the mean of its windows' embeddings
    index.csv        row, path, start, end (a segment's seconds), label, split, duration_s, windows, padded
    windows.npy      with per_window=true: (windows, dim) float32, every window's embedding
    windows.csv      with per_window=true: row, file_row (its row in index.csv), path, window, start_s, end_s, padded
    embed.json       the checkpoint, the layer, dim, window and hop, the data, counts
    tensorboard/     TensorBoard's projector of the embeddings, coloured by label (when labels are known)

`audio_cls.probe` evaluates such folders (split=all) with a linear probe and k-NN. The Python API is `Embedder`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from tqdm import tqdm

from audio_cls import CONF_DIR
from audio_cls.data.splits import SPLITS
from audio_cls.errors import ConfigError, DataError
from audio_cls.inference import AudioInput, Classifier, collect_sources, extract
from audio_cls.model.layers import has_frame_head, masked_pool
from audio_cls.runs import run_file_task, write_json

log = logging.getLogger(__name__)

OUTPUTS = ("embeddings.npy", "index.csv", "windows.npy", "windows.csv", "embed.json")
INDEX_COLUMNS = ("row", "path", "start", "end", "label", "split", "duration_s", "windows", "padded")
SPLIT_CHOICES = (*SPLITS, "all")


@dataclass
class Embedding:
    """One recording's embedding: `vector` (dim,), the mean of `windows` (windows, dim), one per window
    (`starts_s`, `ends_s` from the recording's or segment's start; `padded`: it reaches past the end)."""

    vector: np.ndarray
    windows: np.ndarray
    starts_s: list[float]
    ends_s: list[float]
    padded: list[bool]
    duration_s: float
    notes: list[str] = field(default_factory=list)


class Embedder:
    """The embeddings a Classifier's network computes: the input of its `head`, captured by a forward hook.

    The windows are the Classifier's (`window`, `hop`, `batch_size`, `device`): the training clip length for a
    model trained on clips, whole files for one trained on whole recordings, exactly as prediction cuts them.
    A network with a frame head (`has_frame_head`) gives its frame classifier (`head.classify`) one vector per
    frame: they are averaged over each window's valid frames, whatever the head's clip pooling is, so that the
    embedding is the same kind of thing (a pooled representation) for every network.
    """

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        net = classifier.net
        head = getattr(net, "head", None)
        if not isinstance(head, nn.Module):
            raise ConfigError(
                f"{type(net).__name__} has no `head` module: an embedding is the input of the network's head, its "
                f"classifier (the network protocol, audio_cls/model/layers.py)"
            )
        self.frames = has_frame_head(net)
        self.target = head.classify if self.frames else head
        self.layer = (
            f"input of {type(net).__name__}.head.classify (per frame), mean over valid frames"
            if self.frames
            else f"input of {type(net).__name__}.head"
        )

    @torch.inference_mode()
    def represent(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (batch, dim) and logits (batch, classes) of a padded batch of waveforms (batch, samples) at
        the model's rate, `lengths` in samples (all of them when None)."""
        c = self.classifier
        waveforms = waveforms.to(c.device, torch.float32)
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1])
        inputs, frames = extract(c.features, waveforms, lengths.to(c.device))
        captured: list[torch.Tensor] = []
        handle = self.target.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            if self.frames:
                logits, _, frame_lengths = c.net.forward_frames(inputs, frames)
            else:
                logits = c.net(inputs, frames)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ConfigError(
                f"{type(c.net).__name__}: its head ran {len(captured)} times in one forward pass; an embedding "
                f"needs it to run once, on (batch, dim)"
            )
        h = captured[0]
        if self.frames:
            h = masked_pool(h, frame_lengths, "mean")
        if h.dim() != 2 or h.shape[0] != waveforms.shape[0]:
            raise ConfigError(
                f"{type(c.net).__name__}: its head's input has shape {tuple(h.shape)}; an embedding needs (batch, dim)"
            )
        return h.float().cpu(), logits.float().cpu()

    @property
    def dim(self) -> int:
        """The embedding's size, measured on a silent input of the shortest length the network accepts."""
        c = self.classifier
        return int(self.represent(torch.zeros(1, c.window or c.min_samples))[0].shape[1])

    def embed(
        self, x: AudioInput, sample_rate: int | None = None, *, start: float | None = None, end: float | None = None
    ) -> Embedding:
        """Embed a file (optionally its segment from `start` to `end` seconds) or a 1-D waveform."""
        wave, notes = self.classifier.load(x, sample_rate, start=start, end=end)
        return self.embed_waveform(wave, notes)

    def embed_waveform(self, wave: torch.Tensor, notes: list[str] | None = None) -> Embedding:
        """Embed a mono waveform (samples,) already at the model's rate, window by window as prediction does."""
        c = self.classifier
        n = wave.numel()
        batch, starts, size = c.windows(wave)
        windows = torch.cat([self.represent(chunk)[0] for chunk in batch.split(c.batch_size)]).numpy()
        rate = c.sample_rate
        return Embedding(
            vector=windows.mean(0),
            windows=windows,
            starts_s=[s / rate for s in starts],
            ends_s=[(s + size) / rate for s in starts],
            padded=[s + size > n for s in starts],
            duration_s=n / rate,
            notes=list(notes or []),
        )


@dataclass(frozen=True)
class Record:
    """One recording to embed, with what is known of it."""

    path: Path
    start: float | None = None
    end: float | None = None
    label: str | None = None
    split: str | None = None


# --- what to embed ---------------------------------------------------------------------------------------
def chooses_data(overrides: list[str]) -> bool:
    from audio_cls.eval import _chooses_data

    return _chooses_data(overrides)


def check_request(cfg: DictConfig, overrides: list[str]) -> None:
    """One line for a missing or contradicting choice of what to embed."""
    has_ckpt = not OmegaConf.is_missing(cfg, "ckpt_path") and bool(cfg.ckpt_path)
    if has_ckpt and cfg.get("pretrained"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} and pretrained={cfg.pretrained}: choose one model to embed with")
    if not has_ckpt and not cfg.get("pretrained"):
        raise ConfigError(
            "ckpt_path: missing; pass ckpt_path=PATH (a checkpoint written by audio_cls.train), or pretrained=NAME|DIR "
            "(a Hugging Face encoder, as model=hf's model.pretrained)"
        )
    if cfg.get("pretrained") and cfg.get("split") is not None and not chooses_data(overrides):
        raise ConfigError(
            f"split={cfg.split} with pretrained=: name the dataset with data=NAME (there is no training data)"
        )
    has_input, split = cfg.get("input") is not None, cfg.get("split")
    if has_input and split is not None:
        raise ConfigError(
            f"input={cfg.input} and split={split}: choose one (input: recordings; split: a dataset's recordings)"
        )
    if not has_input and split is None:
        raise ConfigError(
            "nothing to embed: pass input=FILE|FOLDER|MANIFEST.csv, or split=train|val|test|all for a dataset "
            "(the checkpoint's own, or data=NAME)"
        )
    if has_input and not str(cfg.input).strip():
        raise ConfigError("input= is empty: pass a file, a folder or a CSV manifest")
    if has_input and chooses_data(overrides):
        raise ConfigError(
            f"data=... chooses a dataset, input={cfg.input} recordings: drop one, or use split= with data="
        )
    if split is not None and split not in SPLIT_CHOICES:
        raise ConfigError(f"split={split!r}: expected one of {', '.join(SPLIT_CHOICES)}")


def input_records(spec: str) -> list[Record]:
    """The recordings of `input=` (a file, a folder or a manifest, as predict reads it); no splits."""
    return [Record(s.path, s.start, s.end, s.label) for s in collect_sources(spec)]


def dataset_records(cfg: DictConfig, classifier: Classifier, overrides: list[str], split: str) -> tuple[list, dict]:
    """The recordings of a dataset's split (or of all of them) with their labels, and what the data was: the
    checkpoint's training data (its saved config, with data.KEY=VALUE overrides), or data=NAME, at the
    checkpoint's rate, as audio_cls.eval builds it. The datamodule gives the recordings only: they are read
    and windowed by the Classifier, as prediction does, not cropped as a data loader would."""
    from audio_cls.eval import eval_data_config

    trained = classifier.module.hparams.config["data"]
    with open_dict(cfg):
        cfg.data = eval_data_config(cfg, trained, overrides, str(cfg.get("pretrained") or cfg.ckpt_path))
        cfg.data.placement = "worker"  # no loaders here: nothing to cache
    datamodule = instantiate(cfg.data, features=classifier.features, task=None)  # task None: as the data says
    datamodule.setup("test")  # splits and checks; no statistics to fit
    records = [
        Record(Path(item.path), item.start, item.end, item.label, name)
        for name in (SPLITS if split == "all" else (split,))
        for item in datamodule.splits[name]
    ]
    info = {
        "data": cfg.data.get("_target_"),
        "root": str(cfg.data.get("root")),
        "split": split,
        "data_classes": list(datamodule.class_names),
        "multilabel": bool(datamodule.multilabel),
        "split_sizes": {name: len(datamodule.splits[name]) for name in SPLITS},
    }
    return records, info


# --- the task --------------------------------------------------------------------------------------------
def make_classifier(cfg: DictConfig) -> Classifier:
    settings = dict(device=cfg.device, window=cfg.window, hop=cfg.hop, batch_size=cfg.batch_size)
    if not cfg.get("pretrained"):
        return Classifier.from_checkpoint(cfg.ckpt_path, **settings)
    # A pretrained encoder as it comes (model=hf): the waveform in, its pooled output (the head's input) out; the
    # head is an untrained stand-in that only gives the hook something to catch.
    from audio_cls.features import RawWaveform
    from audio_cls.model.hf import HFEncoder
    from audio_cls.module import AudioClassifier

    rate = int(cfg.sample_rate)
    net = HFEncoder(1, 2, pretrained=str(cfg.pretrained), sample_rate=rate, readout=cfg.readout)
    config = {
        "data": {"sample_rate": rate},
        "model": {"_target_": "audio_cls.model.HFEncoder", "pretrained": str(cfg.pretrained)},
    }
    return Classifier(AudioClassifier(net, RawWaveform(), ["unused_0", "unused_1"], config=config), **settings)


def embed(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """The task of `python -m audio_cls.embed`; writes into cfg.paths.output_dir. `overrides`: the
    command-line overrides that choose the data (`data=NAME`, `data.KEY=VALUE`); by default those of the
    running Hydra job, none outside one."""
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    check_request(cfg, overrides)
    output_dir = Path(cfg.paths.output_dir)
    classifier = make_classifier(cfg)
    embedder = Embedder(classifier)
    if cfg.get("input") is not None:
        records, info = input_records(str(cfg.input)), {"input": str(cfg.input)}
        spec = Path(str(cfg.input)).expanduser()
        one_file = len(records) == 1 and not spec.is_dir() and spec.suffix.lower() != ".csv"
    else:
        records, info = dataset_records(cfg, classifier, overrides, cfg.split)
        one_file = False
    if not records:
        raise DataError(f"split={cfg.split}: no recordings in it")
    log.info(
        "Embedding %d recording(s) with %s (%s; %s)",
        len(records),
        cfg.get("pretrained") or cfg.ckpt_path,
        embedder.layer,
        "whole recordings" if classifier.window is None else f"windows of {classifier.window_s:g} s",
    )

    results: list[tuple[Record, Embedding]] = []
    failed: list[tuple[Record, str]] = []
    for record in tqdm(records, desc="embed", unit="file", disable=None if cfg.progress else True):
        try:
            results.append((record, embedder.embed(record.path, start=record.start, end=record.end)))
        except DataError as err:
            if one_file:
                raise
            log.warning("%s", err)
            failed.append((record, str(err)))
    if not results:
        raise DataError(f"none of the {len(records)} recordings could be read (e.g. {failed[0][1]})")

    written = write_outputs(output_dir, classifier, embedder, results, failed, cfg, info)
    summary = {
        "files": len(records),
        "embedded_files": len(results),
        "failed_files": len(failed),
        "dim": int(results[0][1].vector.shape[0]),
    }
    labelled = sum(r.label is not None for r, _ in results)
    print(
        f"{summary['embedded_files']} recordings embedded ({summary['dim']} values each, {embedder.layer})"
        + (f", {summary['failed_files']} failed (failed.csv)" if failed else "")
        + f". Outputs in {output_dir}"
        + (f"; projector: tensorboard --logdir {output_dir / 'tensorboard'}" if "tensorboard" in written else "")
        + ("" if labelled else "; no labels known")
    )
    return {**summary, **written, "ckpt_path": None if cfg.get("pretrained") else str(cfg.ckpt_path)}


def write_outputs(
    output_dir: Path,
    classifier: Classifier,
    embedder: Embedder,
    results: list[tuple[Record, Embedding]],
    failed: list[tuple[Record, str]],
    cfg: DictConfig,
    info: dict,
) -> dict:
    matrix = np.stack([e.vector for _, e in results]).astype(np.float32)
    np.save(output_dir / "embeddings.npy", matrix)
    with (output_dir / "index.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_COLUMNS)
        for row, (r, e) in enumerate(results):
            writer.writerow(
                [
                    row,
                    str(r.path),
                    _blank(r.start),
                    _blank(r.end),
                    r.label or "",
                    r.split or "",
                    f"{e.duration_s:.3f}",
                    len(e.starts_s),
                    any(e.padded),
                ]
            )
    written = {"embeddings": str(output_dir / "embeddings.npy"), "index": str(output_dir / "index.csv")}
    for name in ("windows.npy", "windows.csv", "failed.csv"):
        (output_dir / name).unlink(missing_ok=True)  # an earlier run's (overwrite=true)
    if cfg.per_window:
        np.save(output_dir / "windows.npy", np.concatenate([e.windows for _, e in results]).astype(np.float32))
        with (output_dir / "windows.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("row", "file_row", "path", "window", "start_s", "end_s", "padded"))
            row = 0
            for file_row, (r, e) in enumerate(results):
                for i, (start, end, padded) in enumerate(zip(e.starts_s, e.ends_s, e.padded)):
                    writer.writerow([row, file_row, str(r.path), i, f"{start:.3f}", f"{end:.3f}", padded])
                    row += 1
        written.update(windows=str(output_dir / "windows.npy"), windows_index=str(output_dir / "windows.csv"))
    if failed:
        with (output_dir / "failed.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("path", "error"), *((str(r.path), err) for r, err in failed)])
        written["failed"] = str(output_dir / "failed.csv")
    if cfg.projector and any(r.label is not None for r, _ in results):
        written["tensorboard"] = write_projector(output_dir / "tensorboard", matrix, [r for r, _ in results])
    write_json(
        output_dir / "embed.json",
        {
            "checkpoint": None if cfg.get("pretrained") else str(cfg.ckpt_path),
            "pretrained": cfg.get("pretrained"),
            "layer": embedder.layer,
            "dim": int(matrix.shape[1]),
            "rows": int(matrix.shape[0]),
            "recording_embedding": "mean of its windows' embeddings",
            "window_s": classifier.window_s,
            "hop_s": classifier.hop_s,
            "sample_rate": classifier.sample_rate,
            "class_names": classifier.class_names,  # the checkpoint's
            "per_window": bool(cfg.per_window),
            **info,
        },
    )
    return written


def write_projector(log_dir: Path, matrix: np.ndarray, records: list[Record]) -> str:
    """TensorBoard's projector (PROJECTOR tab): every recording a point, with its label (and split) to colour by."""
    from torch.utils.tensorboard import SummaryWriter

    with_split = any(r.split for r in records)

    def clean(text: str) -> str:  # one TSV cell
        return " ".join(str(text).split()) or "-"

    metadata = [[clean(r.label or ""), *([clean(r.split or "")] if with_split else []), clean(r.path)] for r in records]
    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_embedding(
            matrix,
            metadata=metadata,
            metadata_header=["label", *(["split"] if with_split else []), "path"],
            tag="embeddings",
        )
    finally:
        writer.close()
    return str(log_dir)


def _blank(value) -> str:
    return "" if value is None else f"{value:g}"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="embed")
def main(cfg: DictConfig) -> None:
    run_file_task(embed, cfg, OUTPUTS, listed_in="failed.csv")


if __name__ == "__main__":
    main()
