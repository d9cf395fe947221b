"""Transfer learning on FSDD (docs/transfer.md): `make train`'s CNN1d trained on five speakers, then fine-tuned on
the sixth (theo) from 5 recordings per digit, against the same network trained from scratch on those 50.

    python bench_transfer.py [--seeds 0 1 2] [--shots 5] [--epochs 30] [--batch-size 10] [pretraining overrides ...]

Per seed:
- pretraining: `make train`'s recipe with data.protocol=speaker data.test_speakers=[theo] (the five other speakers,
  early stopping on a validation split of theirs); theo is never seen;
- theo's 500 recordings as a manifest: for each digit `--shots` (5) drawn by the seed for training (50), 1 for the
  validation split the datamodule requires (never run: trainer.limit_val_batches=0), the others for testing (440);
- every variant trains `--epochs` epochs on the 50 with one recipe (Adam at optimizer.lr, cosine schedule, no
  validation, no early stopping: the 50 are all the labels there are) and is tested on the 440 with its last weights;
  "pretrained, not fine-tuned" is the pretraining checkpoint tested on the 440 as it is (`audio_cls.eval`).
Each run goes through `audio_cls.train.train` (or `audio_cls.eval.evaluate`) with the config composed as the command
line would, in one process, files in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from audio_cls.eval import evaluate
from audio_cls.train import train
from common import REPO, default_config, machine, print_table

SPEAKER = "theo"
VARIANTS = {  # name: overrides of the fine-tuning recipe (None: scratch, no transfer.init_from)
    "from scratch (random init)": None,
    "fine-tuned, all layers": [],
    "fine-tuned, backbone_lr_scale=0.1": ["transfer.backbone_lr_scale=0.1"],
    "fine-tuned, freeze_epochs={third}": ["transfer.freeze_epochs={third}"],
    "linear probe (backbone frozen)": ["transfer.linear_probe=true"],
}
QUIET = ["logger=none", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"]


def write_manifest(folder: Path, seed: int, shots: int) -> Path:
    """theo's recordings: `shots` per digit for training, 1 for the (unused) validation split, the rest for testing."""
    rng = random.Random(seed)
    rows = []
    for digit in range(10):
        indices = list(range(50))
        rng.shuffle(indices)
        for rank, index in enumerate(indices):
            split = "train" if rank < shots else "val" if rank == shots else "test"
            rows.append([str(REPO / "data" / "fsdd" / "recordings" / f"{digit}_{SPEAKER}_{index}.wav"), digit, split])
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    return folder / "manifest.csv"


def pretrain(seed: int, tmp: Path, overrides: list[str]) -> tuple[str, float]:
    """make train's recipe on the five other speakers; the best checkpoint and Trainer.fit's seconds."""
    cfg = default_config(
        f"seed={seed}",
        "data.protocol=speaker",
        f"data.test_speakers=[{SPEAKER}]",
        f"data.cache_dir={tmp / 'cache'}",
        "test=false",
        *QUIET,
        *overrides,
        output_dir=str(tmp / f"pretrain_{seed}"),
    )
    Path(cfg.paths.output_dir).mkdir()
    result = train(cfg)
    return result["best_checkpoint"], result["train_time_s"]


def fine_tune(seed: int, manifest: Path, init: str | None, extra: list[str], args, out: Path) -> dict:
    cfg = default_config(
        f"seed={seed}",
        "data=manifest",
        f"data.root={manifest}",
        "data.sample_rate=8000",  # FSDD's; with transfer.init_from it is the checkpoint's anyway
        f"data.batch_size={args.batch_size}",
        f"data.cache_dir={out.parent / 'cache'}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.limit_val_batches=0",
        "callbacks=none",
        "+trainer.enable_checkpointing=false",
        *QUIET,
        *([f"transfer.init_from={init}"] if init else []),
        *extra,
        output_dir=str(out),
    )
    out.mkdir()
    return train(cfg)


def zero_shot(checkpoint: str, manifest: Path, tmp: Path, seed: int) -> float:
    overrides = [f"ckpt_path={checkpoint}", "data=manifest", f"data.root={manifest}", f"data.cache_dir={tmp / 'cache'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.root_dir={REPO}", *overrides, *QUIET])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / f"zero_shot_{seed}")
    Path(cfg.paths.output_dir).mkdir()
    return evaluate(cfg, overrides=overrides)["test/acc"]


def main(args) -> str:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    third = max(1, args.epochs // 3)
    variants = {k.format(third=third): v and [o.format(third=third) for o in v] for k, v in VARIANTS.items()}
    accuracy = {name: [] for name in ["pretrained on 5 speakers, not fine-tuned", *variants]}
    seconds = {name: [] for name in accuracy}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for seed in args.seeds:
            checkpoint, pretrain_s = pretrain(seed, tmp, args.overrides)
            manifest = write_manifest(tmp / f"theo_{seed}", seed, args.shots)
            accuracy["pretrained on 5 speakers, not fine-tuned"].append(zero_shot(checkpoint, manifest, tmp, seed))
            seconds["pretrained on 5 speakers, not fine-tuned"].append(pretrain_s)
            for i, (name, extra) in enumerate(variants.items()):
                start = time.perf_counter()
                init = None if extra is None else checkpoint
                result = fine_tune(seed, manifest, init, extra or [], args, tmp / f"variant{i}_{seed}")
                accuracy[name].append(result["test/acc"])
                seconds[name].append(time.perf_counter() - start)
                print(f"seed {seed}: {name}: {result['test/acc']:.4f}", flush=True)
    rows = [
        [
            name,
            f"**{100 * statistics.mean(accs):.1f}%**",
            f"{100 * min(accs):.1f}%",
            " / ".join(f"{100 * a:.1f}" for a in accs),
            f"{statistics.mean(seconds[name]):.1f}",
        ]
        for name, accs in accuracy.items()
    ]
    return print_table(
        f"FSDD, held-out speaker {SPEAKER}: {args.shots} recordings per digit ({10 * args.shots}) for training, "
        f"{490 - 10 * args.shots} for testing; "
        f"{args.epochs} epochs, batch {args.batch_size}; seeds {', '.join(map(str, args.seeds))} ({machine()})",
        ["model", "test accuracy, mean", "lowest", "per seed", "seconds per run (pretraining: Trainer.fit)"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=5, help="training recordings per digit")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides, e.g. trainer.max_epochs=2")
    main(parser.parse_args())
