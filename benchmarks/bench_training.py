"""Training throughput: our Lightning pipeline against a plain PyTorch loop that trains the same network on the
same batches (the same cached, normalized, length-bucketed DataLoader): the overhead of our stack; and epoch time
with data.placement=cache against placement=worker (and device)."""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate

from audio_cls.module import AudioClassifier
from common import DEVICE, bare_trainer, default_config, machine, print_table, sync


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync()
        self.times.append(time.perf_counter() - self.start)


def build(placement: str, num_workers: int, *overrides: str):
    cfg = default_config(f"data.placement={placement}", f"data.num_workers={num_workers}", *overrides)
    L.seed_everything(0)
    features = instantiate(cfg.features)
    dm = instantiate(cfg.data, features=features)
    dm.setup("fit")
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=dm.num_classes)
    return cfg, dm, net


def lightning_epochs(placement: str, num_workers: int, epochs: int, *overrides: str, callbacks=()) -> list[float]:
    cfg, dm, net = build(placement, num_workers, *overrides)
    module = AudioClassifier(net, dm.features, dm.class_names, optimizer=dict(cfg.optimizer))
    timer = EpochTimer()
    trainer = bare_trainer(epochs, [timer, *callbacks], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)  # the datamodule extracts batches' features for placement=device
    return timer.times


def plain_epochs(epochs: int, compiled: bool = False, *overrides: str) -> list[float]:
    """Epoch times of a plain PyTorch loop on the cached batches; `compiled`: torch.compile the network first."""
    cfg, dm, net = build("cache", 0, *overrides)
    net.to(DEVICE)
    if compiled:
        net.compile(dynamic=True)  # in place: the state_dict keeps its keys, checkpoints stay loadable
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    loader = dm.train_dataloader()
    times = []
    net.train()
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            batch = {k: v.to(DEVICE, non_blocking=True) for k, v in batch.items()}
            loss = torch.nn.functional.cross_entropy(net(batch["inputs"], batch["lengths"]), batch["targets"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(epochs: int, rounds: int) -> str:
    samples = len(build("cache", 0)[1].splits["train"])
    # Plain loop and ours alternate, `rounds` times, so that a slow spell of a shared machine hits both alike;
    # each run's first epoch (start-up, allocator warm-up) is left out, the rest pooled per pipeline.
    plain, ours, ratios = [], [], []
    for _ in range(rounds):
        p, o = plain_epochs(epochs)[1:], lightning_epochs("cache", 0, epochs)[1:]
        plain += p
        ours += o
        ratios.append(statistics.median(o) / statistics.median(p))
    runs = {
        "plain PyTorch loop, cached features in memory": plain,
        "ours: Lightning + AudioClassifier, placement=cache": ours,
        "ours: placement=worker (2 DataLoader workers)": lightning_epochs("worker", 2, epochs)[1:],
        "ours: placement=device (2 workers read audio, batched extraction)": lightning_epochs("device", 2, epochs)[1:],
    }
    epoch = {name: statistics.median(t) for name, t in runs.items()}
    base, cache = (
        epoch["plain PyTorch loop, cached features in memory"],
        epoch["ours: Lightning + AudioClassifier, placement=cache"],
    )
    rows = [
        [name, f"{t:.3f}", f"{samples / t:,.0f}", f"{t / base:.2f}", f"{t / cache:.2f}"] for name, t in epoch.items()
    ]
    table = print_table(
        f"Training epoch on FSDD ({samples} clips, default CNN1d, batch 64; median of epochs 2-{epochs}, "
        f"{rounds} alternating rounds of plain and ours; {machine()})",
        ["pipeline", "epoch (s)", "samples/s", "time / plain loop", "time / cache"],
        rows,
    )
    line = (
        f"ours (placement=cache) / plain loop, per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f} (goal <= 1.03)"
    )
    print(line)
    return table + "\n" + line + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.epochs, args.rounds)
