"""Time to 97% test accuracy on the FSDD official split: `make train`'s configuration against the plain-PyTorch
reference (plain_reference.py), side by side in one run, alternating.

For both, the clock counts training (ours: Trainer.fit, validation included) until the end of the first epoch
whose weights reach the target on the test set; feature extraction before training and the per-epoch test
evaluation are off the clock. Also printed: each side's test accuracy after `--epochs` epochs (the reference
has no schedule or model selection, so its last epoch is what it delivers).

    python bench_time_to_accuracy.py [--repeats 2] [--target 0.97]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate

import plain_reference
from audio_cls.module import AudioClassifier
from audio_cls.train import build_datamodule
from common import bare_trainer, default_config, machine, print_table, sync


class TestAccuracyClock(L.Callback):
    """Training seconds and test accuracy after every epoch (the test pass off the clock)."""

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self.test_loader = datamodule.test_dataloader()
        self.paused = 0.0
        self.history: list[tuple[int, float, float]] = []

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync()
        elapsed = time.perf_counter() - self.start - self.paused
        pause = time.perf_counter()
        self.history.append((trainer.current_epoch + 1, elapsed, self.test_accuracy(pl_module)))
        self.paused += time.perf_counter() - pause

    @torch.no_grad()
    def test_accuracy(self, module) -> float:
        was_training = module.training
        module.eval()
        correct = total = 0
        for batch in self.test_loader:
            batch = self.datamodule.features_of(
                {k: v.to(module.device) for k, v in batch.items()}
            )  # extracted here with data.placement=device
            correct += int((module(batch["inputs"], batch["lengths"]).argmax(-1) == batch["targets"]).sum())
            total += len(batch["targets"])
        module.train(was_training)
        return correct / total


def ours(epochs: int, seed: int, overrides: list[str]) -> list[tuple[int, float, float]]:
    """make train's configuration (conf/train.yaml as composed, `overrides` on top), trained `epochs` epochs."""
    cfg = default_config(f"trainer.max_epochs={epochs}", f"seed={seed}", *overrides)
    L.seed_everything(cfg.seed)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    net = instantiate(cfg.model, in_features=dm.features.num_features, num_classes=dm.num_classes)
    module = AudioClassifier(
        net,
        dm.features,
        dm.class_names,
        optimizer=dict(cfg.optimizer),
        scheduler=dict(cfg.scheduler) if cfg.scheduler else None,
        mixup_alpha=cfg.augment.mixup_alpha,
    )
    clock = TestAccuracyClock(dm)
    trainer = bare_trainer(epochs, [clock])
    trainer.fit(module, datamodule=dm)
    return clock.history


def reached(history, target):
    return next(((e, t) for e, t, a in history if a >= target), None)


def main(repeats: int, target: float, epochs: int, overrides: list[str]) -> str:
    data = plain_reference.load()
    rows, ratios = [], []
    for seed in range(repeats):
        runs = {
            "plain reference": plain_reference.train(epochs, seed, data),
            "ours (make train)": ours(epochs, seed, overrides),
        }
        hit = {name: reached(h, target) for name, h in runs.items()}
        for name, history in runs.items():
            e_t = hit[name]
            rows.append(
                [
                    seed,
                    name,
                    f"{e_t[0]}" if e_t else "-",
                    f"{e_t[1]:.1f}" if e_t else "-",
                    f"{history[-1][2]:.4f}",
                    f"{max(a for _, _, a in history):.4f}",
                    f"{history[-1][1] / len(history):.2f}",
                ]
            )
        if all(hit.values()):
            ratios.append(hit["ours (make train)"][1] / hit["plain reference"][1])
    ratio = f"{statistics.median(ratios):.2f}x (each: {', '.join(f'{r:.2f}' for r in ratios)})" if ratios else "n/a"
    return print_table(
        f"Time to {target:.0%} test accuracy, FSDD official split, ours / plain reference = {ratio} "
        f"({epochs} epochs each; {machine()})",
        [
            "seed",
            "pipeline",
            f"epoch at {target:.0%}",
            f"seconds to {target:.0%}",
            f"test acc, epoch {epochs}",
            "best epoch's test acc",
            "s / epoch",
        ],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("overrides", nargs="*", help="config overrides for ours, e.g. data.placement=worker")
    args = parser.parse_args()
    main(args.repeats, args.target, args.epochs, args.overrides)
