"""Training throughput: our Lightning pipeline against a plain PyTorch loop that trains the same network on the
same batches (the same cached, normalized, length-bucketed DataLoader): the overhead of our stack, per epoch, per
step with a network that costs nothing, and where that step's time goes (torch.profiler); and epoch time with
data.placement=cache against placement=worker (and device)."""

from __future__ import annotations

import argparse
import re
import statistics
import time

import lightning as L
import torch
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile

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


class StepProfile:
    """torch.profiler (CPU) from the start of training epoch `first` to the start of epoch `last` + 1 (or the end
    of training) of one run: the wall time of those steps and the CPU time of the events it records, by kind (each
    event's self time, so nothing is counted twice), in ms per step, and each event's calls and ms in `calls`."""

    KINDS = {
        "tensor ops": lambda key: key.startswith("aten::"),
        # the autograd engine's nodes (AddmmBackward0, AccumulateGrad, ...) around the backward ops
        "backward engine": lambda key: "autograd::" in key or re.search(r"Backward\d*$", key) is not None,
        # under Lightning optimizer.step runs the closure: training_step's and backward's hooks count there too
        "optimizer step and zero_grad": lambda key: key.startswith("Optimizer."),
    }

    def __init__(self, first: int, last: int):
        if not 0 <= first <= last:
            raise ValueError(f"StepProfile: need 0 <= first <= last, got {first}, {last}")
        self.first, self.last, self.steps, self.active, self.ms, self.epoch = first, last, 0, False, None, -1

    def epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch == self.first:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.active, self.start = True, time.perf_counter()
        elif epoch == self.last + 1:
            self.close()

    def step(self) -> None:
        self.steps += self.active

    def close(self, aborted: bool = False) -> None:
        """End the window (at the start of epoch `last` + 1, or when training ends) and add up its events, unless
        training was `aborted` or stopped before epoch `last` (then per_step() says so)."""
        if not self.active:
            return
        sync()
        wall = (time.perf_counter() - self.start) * 1000
        self.profiler.__exit__(None, None, None)
        self.active = False
        if aborted or self.epoch < self.last or not self.steps:
            return
        ms = dict.fromkeys(("wall", *self.KINDS, "other recorded events", "outside any event"), 0.0)
        self.calls = {}
        for event in self.profiler.key_averages():
            kind = next((k for k, match in self.KINDS.items() if match(event.key)), "other recorded events")
            ms[kind] += event.self_cpu_time_total / 1000
            self.calls[event.key] = (event.count, event.self_cpu_time_total / 1000)
        ms["outside any event"], ms["wall"] = wall - sum(ms.values()), wall
        self.ms = {k: v / self.steps for k, v in ms.items()}

    def per_step(self) -> dict[str, float]:
        """Milliseconds per step: wall, each kind of event, the other events, and outside any event (Python)."""
        if self.ms is None:
            raise RuntimeError(f"StepProfile: epochs {self.first + 1}-{self.last + 1} were not all run")
        return self.ms


class ProfileEpochs(L.Callback):
    """Runs a StepProfile inside a Lightning fit."""

    def __init__(self, profile: StepProfile):
        self.profile = profile

    def on_train_epoch_start(self, trainer, pl_module):
        self.profile.epoch_start(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.profile.step()

    def on_train_end(self, trainer, pl_module):
        self.profile.close()

    def on_exception(self, trainer, pl_module, exception):
        self.profile.close(aborted=True)


class MeanLinear(torch.nn.Module):
    """A network that costs next to nothing (a Linear on the mean frame): a step's time is then the loop's own."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(1))


def build(placement: str, num_workers: int, *overrides: str, cost_free: bool = False):
    """(config, set-up datamodule, network): the default network, or MeanLinear when `cost_free`."""
    cfg = default_config(f"data.placement={placement}", f"data.num_workers={num_workers}", *overrides)
    L.seed_everything(0)
    features = instantiate(cfg.features)
    dm = instantiate(cfg.data, features=features)
    dm.setup("fit")
    if cost_free:
        return cfg, dm, MeanLinear(features.num_features, dm.num_classes)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=dm.num_classes)
    return cfg, dm, net


class PlainStep(L.LightningModule):
    """The plain loop's step inside Lightning, nothing else: what Lightning's loop costs by itself."""

    def __init__(self, net: torch.nn.Module, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.net(batch["inputs"], batch["lengths"]), batch["targets"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def lightning_epochs(
    placement: str,
    num_workers: int,
    epochs: int,
    *overrides: str,
    callbacks=(),
    floor: bool = False,
    cost_free: bool = False,
) -> list[float]:
    """Epoch times of AudioClassifier under a Lightning Trainer; `floor`: of PlainStep instead."""
    cfg, dm, net = build(placement, num_workers, *overrides, cost_free=cost_free)
    if floor:
        module = PlainStep(net, cfg.optimizer.lr)
    else:
        module = AudioClassifier(net, dm.features, dm.class_names, optimizer=dict(cfg.optimizer))
    timer = EpochTimer()
    trainer = bare_trainer(epochs, [timer, *callbacks], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)  # the datamodule extracts batches' features for placement=device
    return timer.times


def plain_epochs(
    epochs: int, compiled: bool = False, *overrides: str, cost_free: bool = False, profile: StepProfile | None = None
) -> list[float]:
    """Epoch times of a plain PyTorch loop on the cached batches; `compiled`: torch.compile the network first."""
    cfg, dm, net = build("cache", 0, *overrides, cost_free=cost_free)
    net.to(DEVICE)
    if compiled:
        net.compile(dynamic=True)  # in place: the state_dict keeps its keys, checkpoints stay loadable
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    loader = dm.train_dataloader()
    times = []
    net.train()
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            profile and profile.epoch_start(epoch)
            for batch in loader:
                batch = {k: v.to(DEVICE, non_blocking=True) for k, v in batch.items()}
                loss = torch.nn.functional.cross_entropy(net(batch["inputs"], batch["lengths"]), batch["targets"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                profile and profile.step()
            sync()
            times.append(time.perf_counter() - start)
    except BaseException:
        profile and profile.close(aborted=True)
        raise
    profile and profile.close()
    return times


def alternate(epochs: int, rounds: int, cost_free: bool = False) -> tuple[list, list, list, list, list]:
    """Plain loop, Lightning floor and ours alternate, `rounds` times, so that a slow spell of a shared machine
    hits all alike; each run's first epoch (start-up, allocator warm-up) is left out, the rest pooled.
    Returns the epoch times of each and the per-round ratios ours / plain and floor / plain."""
    plain, floor, ours, ratios, floor_ratios = [], [], [], [], []
    for _ in range(rounds):
        p = plain_epochs(epochs, cost_free=cost_free)[1:]
        f = lightning_epochs("cache", 0, epochs, floor=True, cost_free=cost_free)[1:]
        o = lightning_epochs("cache", 0, epochs, cost_free=cost_free)[1:]
        plain, floor, ours = plain + p, floor + f, ours + o
        ratios.append(statistics.median(o) / statistics.median(p))
        floor_ratios.append(statistics.median(f) / statistics.median(p))
    return plain, floor, ours, ratios, floor_ratios


def overhead_per_step(rounds: int, epochs: int = 20) -> str:
    """Milliseconds per step with MeanLinear: the time of the loops themselves, which epoch times of a real
    network (that vary by 10-15% from run to run on a shared machine) cannot resolve to a few percent."""
    steps = len(build("cache", 0)[1].train_dataloader())
    plain, floor, ours, _, _ = alternate(epochs, rounds, cost_free=True)
    base = statistics.median(plain) * 1000 / steps
    rows = []
    for name, times in (("plain PyTorch loop", plain), ("Lightning floor", floor), ("ours", ours)):
        ms = statistics.median(times) * 1000 / steps
        rows.append([name, f"{ms:.3f}", f"{ms - base:+.3f}"])
    return print_table(
        f"Per-step time with a network that costs nothing (a Linear on the mean frame), cached batches of 64; "
        f"median of epochs 2-{epochs}, {rounds} alternating rounds; {machine()}",
        ["loop", "ms per step", "over the plain loop (ms)"],
        rows,
    )


def where_the_step_goes(epochs: int = 4) -> str:
    """torch.profiler over epochs 2-`epochs` of each loop with MeanLinear: how much of a step is tensor ops, the
    backward engine and the optimizer step (with Lightning's closure), and how much is Python outside any recorded
    event (the loop itself); then the events whose time per step differs most from loop to loop."""
    if epochs < 2:
        raise ValueError(f"where_the_step_goes: epochs={epochs}; the first epoch is left out, so at least 2")
    profiles = {name: StepProfile(1, epochs - 1) for name in ("plain PyTorch loop", "Lightning floor", "ours")}
    plain_epochs(epochs, cost_free=True, profile=profiles["plain PyTorch loop"])
    for name, floor in (("Lightning floor", True), ("ours", False)):
        lightning_epochs("cache", 0, epochs, callbacks=[ProfileEpochs(profiles[name])], floor=floor, cost_free=True)
    columns = list(profiles["ours"].per_step())
    rows = [[name, *(f"{v:.3f}" for v in p.per_step().values())] for name, p in profiles.items()]
    # per_step() has checked every window closed, so `calls` exists for differences()
    table = print_table(
        f"Where a step's time goes (torch.profiler, CPU; ms per step, epochs 2-{epochs}, a network that costs "
        f"nothing; the profiler's own cost per recorded event is included; {machine()})",
        ["loop", *columns],
        rows,
    )
    return "\n".join(
        [
            table,
            differences(profiles["plain PyTorch loop"], profiles["Lightning floor"], "the plain loop", "the floor"),
            differences(profiles["Lightning floor"], profiles["ours"], "the floor", "ours"),
        ]
    )


def differences(a: StepProfile, b: StepProfile, name_a: str, name_b: str, rows: int = 8) -> str:
    """The recorded events whose CPU time per step differs most from profile a to profile b."""
    diff = []
    for key in a.calls.keys() | b.calls.keys():
        (n_a, ms_a), (n_b, ms_b) = a.calls.get(key, (0, 0.0)), b.calls.get(key, (0, 0.0))
        diff.append((ms_b / b.steps - ms_a / a.steps, key, n_a / a.steps, n_b / b.steps))
    diff.sort(key=lambda d: -abs(d[0]))
    return print_table(
        f"Events whose CPU time per step differs most from {name_a} to {name_b}",
        ["event", f"calls per step: {name_a}", f"calls per step: {name_b}", f"ms per step, {name_b} - {name_a}"],
        [[key, f"{n_a:.1f}", f"{n_b:.1f}", f"{d:+.3f}"] for d, key, n_a, n_b in diff[:rows]],
    )


def main(epochs: int, rounds: int, profile_epochs: int = 4) -> str:
    samples = len(build("cache", 0)[1].splits["train"])
    plain, floor, ours, ratios, floor_ratios = alternate(epochs, rounds)
    runs = {
        "plain PyTorch loop, cached features in memory": plain,
        "Lightning floor: the plain loop's step as a LightningModule": floor,
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
        f"{rounds} alternating rounds of plain, floor and ours; {machine()})",
        ["pipeline", "epoch (s)", "samples/s", "time / plain loop", "time / cache"],
        rows,
    )
    line = (
        f"ours (placement=cache) / plain loop, per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f} (goal <= 1.03); Lightning floor / plain loop: "
        f"{', '.join(f'{r:.3f}' for r in floor_ratios)}; median {statistics.median(floor_ratios):.3f}"
    )
    print(line)
    return table + "\n" + line + "\n" + overhead_per_step(2 * rounds) + "\n" + where_the_step_goes(profile_epochs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile-epochs", type=int, default=4, help="epochs of each profiled run (the first left out)"
    )
    parser.add_argument("--profile-only", action="store_true", help="only where a step's time goes (torch.profiler)")
    args = parser.parse_args()
    if args.profile_only:
        where_the_step_goes(args.profile_epochs)
    else:
        main(args.epochs, args.rounds, args.profile_epochs)
