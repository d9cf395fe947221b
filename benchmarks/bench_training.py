"""Training throughput: our Lightning pipeline against a plain PyTorch loop that trains the same network on the
same batches (the same cached, normalized, length-bucketed DataLoader): the overhead of our stack; and epoch time
with features.placement=cache against placement=worker (and device)."""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate

from audio_cls.module import AudioClassifier
from common import default_config, machine, print_table


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self.start)


def build(placement: str, num_workers: int):
    cfg = default_config(f"features.placement={placement}", f"data.num_workers={num_workers}")
    L.seed_everything(0)
    features = instantiate(cfg.features)
    dm = instantiate(cfg.data, features=features)
    dm.setup("fit")
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=dm.num_classes)
    return cfg, dm, net


def lightning_epochs(placement: str, num_workers: int, epochs: int) -> list[float]:
    cfg, dm, net = build(placement, num_workers)
    module = AudioClassifier(net, dm.features, dm.class_names, optimizer=dict(cfg.optimizer))
    timer = EpochTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer], use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return timer.times


def plain_epochs(epochs: int) -> list[float]:
    cfg, dm, net = build("cache", 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    loader = dm.train_dataloader()
    times = []
    net.train()
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(net(batch["inputs"], batch["lengths"]), batch["targets"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main(epochs: int) -> str:
    samples = len(build("cache", 0)[1].splits["train"])
    runs = {
        "plain PyTorch loop, cached features in memory": plain_epochs(epochs),
        "ours: Lightning + AudioClassifier, placement=cache": lightning_epochs("cache", 0, epochs),
        "ours: placement=worker (2 DataLoader workers)": lightning_epochs("worker", 2, epochs),
        "ours: placement=device (2 workers read audio, batched extraction)": lightning_epochs("device", 2, epochs),
    }
    # the first epoch includes start-up (worker processes, allocator warm-up): report the median of the rest
    epoch = {name: statistics.median(t[1:]) for name, t in runs.items()}
    plain = epoch["plain PyTorch loop, cached features in memory"]
    cache = epoch["ours: Lightning + AudioClassifier, placement=cache"]
    rows = [[name, f"{t:.2f}", f"{samples / t:,.0f}", f"{t / plain:.2f}", f"{t / cache:.2f}"]
            for name, t in epoch.items()]
    return print_table(f"Training epoch on FSDD ({samples} clips, default CNN1d, batch 64; median of epochs "
                       f"2-{epochs}; {machine()})",
                       ["pipeline", "epoch (s)", "samples/s", "time / plain loop", "time / cache"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    main(parser.parse_args().epochs)
