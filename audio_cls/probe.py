"""How much a representation knows: `python -m audio_cls.probe embeddings=[DIR,...] | ckpt_path=CKPT|[CKPT,...]`.

Each representation is a folder written by `audio_cls.embed split=all` (embeddings of a dataset's train, val and
test splits, with labels), or a checkpoint, embedded here first the same way (into output_dir/embeddings/N;
on its own training data, or on data=NAME for all of them). Every one is scored by the protocol of the HEAR
benchmark, with a linear model where HEAR trains a small MLP, and by k nearest neighbours:

    linear probe   the embeddings standardized with the training split's statistics; a multinomial logistic
                   regression (one linear layer) trained on the training split for every L2 strength of
                   `linear.C`; the one with the best validation accuracy is scored on the test split
    k-NN           the `knn.k` nearest training embeddings (standardized, `knn.metric` cosine) vote; scored on test

and one Markdown table row per representation is printed, in the order given, so that two representations
(two checkpoints, a network before and after fine-tuning) are compared in one command. Writes to output_dir:

    probe.md     the table
    probe.json   every score (test and validation accuracy and macro-F1, the L2 strength chosen), the settings,
                 and whether every representation was embedded from the same recordings and splits

Multi-label embeddings (data with several labels per recording) are refused: both probes here are single-label.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from audio_cls import CONF_DIR
from audio_cls.data.splits import SPLITS
from audio_cls.errors import ConfigError, DataError
from audio_cls.runs import run_task, write_json

log = logging.getLogger(__name__)

OUTPUTS = ("probe.json", "probe.md")
METRICS = ("cosine", "euclidean")


def probe(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """The task of `python -m audio_cls.probe`; writes into cfg.paths.output_dir. `overrides`: the command-line
    overrides that choose the data of the checkpoints embedded here (see audio_cls.embed.embed)."""
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    output_dir = Path(cfg.paths.output_dir)
    check_settings(cfg)
    folders, checkpoints = as_list(cfg.get("embeddings"), "embeddings"), as_list(cfg.get("ckpt_path"), "ckpt_path")
    if not folders and not checkpoints:
        raise ConfigError(
            "nothing to probe: pass embeddings=[DIR,...] (folders written by audio_cls.embed split=all) "
            "or ckpt_path=CKPT (or a list)"
        )
    names = as_list(cfg.get("names"), "names")
    if names and len(names) != len(folders) + len(checkpoints):
        raise ConfigError(
            f"names: {len(names)} given for {len(folders) + len(checkpoints)} representations "
            "(embeddings, then ckpt_path)"
        )
    representations = [(folder, Path(folder).expanduser()) for folder in folders]
    for i, ckpt in enumerate(checkpoints):
        representations.append((ckpt, embed_checkpoint(cfg, ckpt, output_dir / "embeddings" / str(i), overrides)))
    if names:
        representations = [(name, folder) for name, (_, folder) in zip(names, representations)]

    rows, signatures = [], []
    for name, folder in representations:
        x, index, info = load_embeddings(folder)
        signatures.append(sorted((r["split"], r["path"], r["start"], r["end"]) for r in index))
        log.info("Probing %s: %d embeddings of %d values", name, *x.shape)
        rows.append({"representation": name, "folder": str(folder), **evaluate(x, index, info, folder, cfg)})
    same = all(s == signatures[0] for s in signatures)
    if not same:
        log.warning(
            "The representations were embedded from different recordings or splits: their rows are not comparable"
        )

    table = markdown_table(rows, cfg)
    (output_dir / "probe.md").write_text(table + "\n", encoding="utf-8")
    settings = {
        "linear": OmegaConf.to_container(cfg.linear, resolve=True),
        "knn": OmegaConf.to_container(cfg.knn, resolve=True),
    }
    write_json(output_dir / "probe.json", {"settings": settings, "same_recordings": same, "representations": rows})
    print(table)
    if not same:
        print("note: the representations were embedded from different recordings or splits (probe.json)")
    return {"representations": rows, "same_recordings": same, "probe_json": str(output_dir / "probe.json")}


def as_list(value, key: str) -> list[str]:
    """A key that takes one value or a list (Hydra: key=[a,b]) as a list of strings."""
    if value is None:
        return []
    if isinstance(value, (list, ListConfig)):
        return [str(v) for v in value]
    if isinstance(value, str) and value.strip():
        return [value]
    raise ConfigError(f"{key}={value!r}: expected a path or a list of paths ({key}=[a,b])")


def check_settings(cfg: DictConfig) -> None:
    grid = cfg.linear.C
    if not isinstance(grid, (list, ListConfig)) or not grid or not all(_positive(c) for c in grid):
        raise ConfigError(f"linear.C={grid}: expected a list of positive inverse L2 strengths, e.g. [0.01,0.1,1]")
    if not isinstance(cfg.knn.k, int) or cfg.knn.k < 1:
        raise ConfigError(f"knn.k={cfg.knn.k!r}: must be a positive integer")
    if cfg.knn.metric not in METRICS:
        raise ConfigError(f"knn.metric={cfg.knn.metric!r}: expected one of {', '.join(METRICS)}")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def embed_checkpoint(cfg: DictConfig, ckpt: str, folder: Path, overrides: list[str]) -> Path:
    """Embed every split of a checkpoint's data (audio_cls.embed split=all) into `folder`."""
    from audio_cls.embed import embed

    folder.mkdir(parents=True, exist_ok=True)
    sub = cfg.copy()
    with open_dict(sub):
        sub.ckpt_path, sub.input, sub.split = ckpt, None, "all"
        sub.per_window, sub.projector = False, False
        sub.paths.output_dir = str(folder)
    log.info("Embedding the splits of %s into %s", ckpt, folder)
    embed(sub, overrides=overrides)  # data=NAME and data.KEY=VALUE among them choose the data, as for embed
    return folder


def load_embeddings(folder: Path) -> tuple[np.ndarray, list[dict], dict]:
    """embeddings.npy, index.csv and embed.json of a folder written by audio_cls.embed, checked."""
    if not folder.is_dir():
        raise ConfigError(f"embeddings={folder}: no such directory (a folder written by audio_cls.embed split=all)")
    missing = [n for n in ("embeddings.npy", "index.csv") if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"embeddings={folder}: no {' or '.join(missing)} in it (a folder written by audio_cls.embed)")
    try:
        x = np.load(folder / "embeddings.npy", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{folder / 'embeddings.npy'}: cannot read it ({err})") from None
    with (folder / "index.csv").open(newline="", encoding="utf-8") as f:
        index = list(csv.DictReader(f))
    if x.ndim != 2 or len(index) != x.shape[0]:
        raise DataError(
            f"embeddings={folder}: embeddings.npy has shape {x.shape} but index.csv {len(index)} rows; "
            "they must come from one audio_cls.embed run"
        )
    if index and not {"split", "label", "path"} <= set(index[0]):
        raise DataError(f"{folder / 'index.csv'}: needs path, label and split columns (as audio_cls.embed writes)")
    info = {}
    if (folder / "embed.json").is_file():
        info = json.loads((folder / "embed.json").read_text(encoding="utf-8"))
    return x.astype(np.float64), index, info


def evaluate(x: np.ndarray, index: list[dict], info: dict, folder: Path, cfg: DictConfig) -> dict:
    """Linear-probe and k-NN scores of one representation (see the module's docstring)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    if info.get("multilabel"):
        raise ConfigError(
            f"embeddings={folder}: multi-label data ({info.get('data')}); the linear probe and k-NN here are "
            "single-label: probe single-label data"
        )
    parts = {}
    for split in SPLITS:
        rows = [i for i, r in enumerate(index) if r["split"] == split]
        if not rows:
            raise ConfigError(
                f"embeddings={folder}: no {split} split in index.csv; embed a dataset with split=all "
                "(recordings given as input= have no splits)"
            )
        labels = [index[i]["label"] for i in rows]
        if not all(labels):
            raise ConfigError(f"embeddings={folder}: recordings of the {split} split without a label in index.csv")
        parts[split] = (x[rows], np.array(labels))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (parts[s] for s in SPLITS)
    if len(set(y_train)) < 2:
        raise DataError(f"embeddings={folder}: the training split has one class ({y_train[0]}); a probe needs two")
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = (scaler.transform(a) for a in (x_train, x_val, x_test))
    classes = sorted(set(y_train) | set(y_val) | set(y_test))

    def scores(y_true, y_pred) -> tuple[float, float]:
        return (
            float(accuracy_score(y_true, y_pred)),
            float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        )

    best, notes = None, []
    for c in cfg.linear.C:  # ascending in the default grid: ties go to the stronger regularization
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=float(c), max_iter=int(cfg.linear.max_iter)).fit(x_train, y_train)
        val_acc = scores(y_val, model.predict(x_val))[0]
        if best is None or val_acc > best[0]:
            best = (val_acc, float(c), model, any(issubclass(w.category, ConvergenceWarning) for w in caught))
    val_acc, c, model, unconverged = best
    if unconverged:
        notes.append(f"the linear probe with C={c:g} stopped at linear.max_iter={cfg.linear.max_iter}")
    linear_acc, linear_f1 = scores(y_test, model.predict(x_test))

    k = min(int(cfg.knn.k), len(y_train))
    if k < cfg.knn.k:
        notes.append(f"knn.k={cfg.knn.k} > {len(y_train)} training embeddings: k={k}")
    knn = KNeighborsClassifier(n_neighbors=k, metric=cfg.knn.metric, algorithm="brute").fit(x_train, y_train)
    knn_acc, knn_f1 = scores(y_test, knn.predict(x_test))
    knn_val = scores(y_val, knn.predict(x_val))[0]
    for note in notes:
        log.warning("%s: %s", folder, note)
    return {
        "dim": int(x.shape[1]),
        "train": len(y_train),
        "val": len(y_val),
        "test": len(y_test),
        "classes": len(classes),
        "linear": {"test_acc": linear_acc, "test_f1": linear_f1, "val_acc": val_acc, "C": c},
        "knn": {"test_acc": knn_acc, "test_f1": knn_f1, "val_acc": knn_val, "k": k, "metric": str(cfg.knn.metric)},
        "checkpoint": info.get("checkpoint"),
        "layer": info.get("layer"),
        "notes": notes,
    }


def markdown_table(rows: list[dict], cfg: DictConfig) -> str:
    head = (
        "representation",
        "dim",
        "train / val / test",
        "linear probe: test acc",
        "test macro-F1",
        "val acc (C)",
        f"k-NN (k={cfg.knn.k}, {cfg.knn.metric}): test acc",
        "test macro-F1",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lin, knn = r["linear"], r["knn"]
        cells = (
            f"`{r['representation']}`",
            str(r["dim"]),
            f"{r['train']} / {r['val']} / {r['test']}",
            f"**{lin['test_acc']:.4f}**",
            f"{lin['test_f1']:.4f}",
            f"{lin['val_acc']:.4f} ({lin['C']:g})",
            f"**{knn['test_acc']:.4f}**",
            f"{knn['test_f1']:.4f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="probe")
def main(cfg: DictConfig) -> None:
    run_task(probe, cfg, reuse_dir=cfg.overwrite, outputs=OUTPUTS)


if __name__ == "__main__":
    main()
