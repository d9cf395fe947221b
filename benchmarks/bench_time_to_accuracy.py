"""Time to 97% test accuracy on the FSDD official split for the default experiment: training wall time
(Trainer.fit, validation included) until the end of the first epoch whose weights reach the target on the
test set. The test evaluation after each epoch is benchmark bookkeeping, kept off the clock."""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from hydra.utils import instantiate

from audio_cls.module import AudioClassifier
from common import default_config, machine, print_table


class TestAccuracyClock(L.Callback):
    def __init__(self, test_loader, target: float):
        self.test_loader, self.target = test_loader, target
        self.clock, self.paused = 0.0, 0.0
        self.reached: tuple[int, float, float] | None = None
        self.history: list[tuple[int, float, float]] = []

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        elapsed = time.perf_counter() - self.start - self.paused
        pause = time.perf_counter()
        accuracy = self.test_accuracy(pl_module)
        self.history.append((trainer.current_epoch + 1, elapsed, accuracy))
        if accuracy >= self.target and self.reached is None:
            self.reached = self.history[-1]
            trainer.should_stop = True
        self.paused += time.perf_counter() - pause

    @torch.no_grad()
    def test_accuracy(self, module) -> float:
        was_training = module.training
        module.eval()
        correct = total = 0
        for batch in self.test_loader:
            batch = module.on_after_batch_transfer(batch, 0)
            correct += int((module(batch["inputs"], batch["lengths"]).argmax(-1) == batch["targets"]).sum())
            total += len(batch["targets"])
        module.train(was_training)
        return correct / total


def main(placement: str, target: float, max_epochs: int) -> str:
    cfg = default_config(f"features.placement={placement}", f"trainer.max_epochs={max_epochs}")
    L.seed_everything(cfg.seed)
    features = instantiate(cfg.features)
    dm = instantiate(cfg.data, features=features)
    dm.setup("fit")
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=dm.num_classes)
    module = AudioClassifier(net, dm.features, dm.class_names, optimizer=dict(cfg.optimizer),
                             scheduler=dict(cfg.scheduler))
    clock = TestAccuracyClock(dm.test_dataloader(), target)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock])
    trainer.fit(module, datamodule=dm)
    rows = [[e, f"{t:.1f}", f"{a:.4f}", "<- first at target" if clock.reached and e == clock.reached[0] else ""]
            for e, t, a in clock.history]
    verdict = (f"reached {target:.0%} after epoch {clock.reached[0]}, {clock.reached[1]:.1f} s of training"
               if clock.reached else f"did not reach {target:.0%} in {max_epochs} epochs")
    return print_table(f"Time to {target:.0%} test accuracy, default experiment, placement={placement}: {verdict} "
                       f"({machine()})", ["epoch", "training time (s)", "test accuracy", ""], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--placement", default="cache", choices=("worker", "device", "cache"))
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--max-epochs", type=int, default=30)
    args = parser.parse_args()
    main(args.placement, args.target, args.max_epochs)
