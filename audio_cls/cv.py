"""Cross-validation as one command: `python -m audio_cls.cv [data=NAME] [cv.folds=5] [cv.scheme=...]`.

    scan the data -> folds: the data's own (ESC-50), else its groups (k folds of speakers, or `logo`:
    one speaker per fold), else files (stratified by label)
    -> per fold: train on the other folds, select the checkpoint on validation carved from them (never
       on the fold under test), test on the fold                                  -> fold_<k>/ (a full run)
    -> cv_results.csv / cv_results.md (per fold, mean and std), metrics.json, TensorBoard `cv/*`

A fold that finished is never trained again: rerun an interrupted cross-validation with
`hydra.run.dir=<its directory> resume=true` and it continues with the first unfinished fold
(from that fold's last checkpoint).
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.tensorboard import SummaryWriter

from audio_cls import CONF_DIR
from audio_cls.config_checks import check_config
from audio_cls.runs import hparams_of, run_task, write_json
from audio_cls.train import train

log = logging.getLogger(__name__)

SUMMARIZED = {  # per task (cfg.task.name)
    "multiclass": ("test/acc", "test/f1", "test/loss", "val/acc_best"),
    "multilabel": ("test/mAP", "test/f1", "test/loss", "val/mAP_best"),
}


def cross_validate(cfg: DictConfig) -> dict:
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data, features=instantiate(cfg.features), task=cfg.task.name)
    summarized = SUMMARIZED[cfg.task.name]
    datamodule.prepare_data()
    scheme, plan = datamodule.cv_plan(cfg.cv.folds, cfg.cv.scheme)
    log.info(
        "Cross-validation by %s: %d folds (%s)",
        scheme,
        len(plan),
        ", ".join(f"{name}: {n} test files" for name, n in plan),
    )

    rows = []
    for fold, (name, num_test) in enumerate(plan):
        log.info("=== Fold %d/%d: testing on %s ===", fold + 1, len(plan), name)
        metrics = run_fold(cfg, fold, len(plan), scheme, output_dir / f"fold_{fold}")
        rows.append(
            {
                "fold": fold,
                "held_out": name,
                "test_files": num_test,
                **{k: metrics.get(k, float("nan")) for k in summarized},
            }
        )

    summary = {}
    for key in summarized:
        values = [row[key] for row in rows]
        summary[f"{key}_mean"] = statistics.mean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    write_tables(output_dir, rows, summary, summarized)
    config = OmegaConf.to_container(cfg, resolve=True)
    write_tensorboard(output_dir / "tensorboard", rows, summary, config, summarized)
    headline = summarized[0]  # test/acc, or test/mAP for multi-label
    log.info(
        "Cross-validation (%d folds): %s %.4f +- %.4f, test/f1 %.4f +- %.4f",
        len(rows),
        headline,
        summary[f"{headline}_mean"],
        summary[f"{headline}_std"],
        summary["test/f1_mean"],
        summary["test/f1_std"],
    )
    return {**summary, "scheme": scheme, "folds": rows}


def run_fold(cfg: DictConfig, fold: int, num_folds: int, scheme: str, fold_dir: Path) -> dict:
    """Train and test one fold in `fold_dir`, or read its results if it finished earlier."""
    done = fold_dir / "metrics.json"
    if done.is_file():
        earlier = json.loads(done.read_text(encoding="utf-8"))
        if earlier.get("status") == "finished":
            log.info("Fold %d finished earlier: reading %s", fold, done)
            return earlier
    fold_cfg = cfg.copy()
    with open_dict(fold_cfg):
        fold_cfg.data.cv_fold = fold
        fold_cfg.data.cv_folds = num_folds
        fold_cfg.data.cv_scheme = scheme
        fold_cfg.paths.output_dir = str(fold_dir)
        last = fold_dir / "checkpoints" / "last.ckpt"
        fold_cfg.ckpt_path = str(last) if last.is_file() else None
    fold_dir.mkdir(parents=True, exist_ok=True)
    try:
        metrics = train(fold_cfg)
    except BaseException as err:
        write_json(done, {"status": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    write_json(done, {"status": "finished", **metrics})
    return metrics


def write_tables(output_dir: Path, rows: list[dict], summary: dict, summarized: tuple[str, ...]) -> None:
    """cv_results.csv (one row per fold, then mean and std) and cv_results.md."""
    columns = ["fold", "held_out", "test_files", *summarized]
    stats = [{"fold": stat, **{k: summary[f"{k}_{stat}"] for k in summarized}} for stat in ("mean", "std")]
    with (output_dir / "cv_results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows + stats)
    lines = [
        f"# Cross-validation: {len(rows)} folds",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    lines += [
        "| **mean ± std** | | "
        + str(sum(r["test_files"] for r in rows))
        + " | "
        + " | ".join(f"{summary[f'{k}_mean']:.4f} ± {summary[f'{k}_std']:.4f}" for k in summarized)
        + " |"
    ]
    (output_dir / "cv_results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_tensorboard(log_dir: Path, rows: list[dict], summary: dict, config: dict, summarized: tuple) -> None:
    """Per-fold metrics as `cv/<metric>` curves over the fold index, the table as text, and the
    hyperparameters with the mean metrics (HPARAMS tab). Each fold's own curves are in fold_<k>/."""
    with SummaryWriter(str(log_dir)) as writer:
        for row in rows:
            for key in summarized:
                writer.add_scalar(f"cv/{key}", row[key], global_step=row["fold"])
        writer.add_text("cv/results", (log_dir.parent / "cv_results.md").read_text(encoding="utf-8"))
        writer.add_hparams(
            hparams_of(config), {f"hp/cv_{k.replace('/', '_')}": v for k, v in summary.items()}, run_name="."
        )


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="cv")
def main(cfg: DictConfig) -> float:
    return run_task(cross_validate, cfg, reuse_dir=cfg.resume)


if __name__ == "__main__":
    main()
