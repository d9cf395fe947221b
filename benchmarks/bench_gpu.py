"""The training table on a GPU: samples/s and GPU utilisation of the default CNN1d on FSDD for each
data.placement, at `make train`'s batch (64) and a large one, with and without length buckets, against a plain
PyTorch loop on the same cached batches. Not part of `make bench` (it needs a GPU); time to 97% on the GPU is
`bench_time_to_accuracy.py`, which runs on the GPU whenever there is one.

    python bench_gpu.py [--epochs 6] [--batch-sizes 64 512]
"""

from __future__ import annotations

import argparse
import statistics
import threading

import lightning as L
import torch

from bench_training import build, lightning_epochs, plain_epochs
from common import DEVICE, machine, print_table


class Utilisation(L.Callback):
    """GPU utilisation (NVML's busy share of the last sample period, via torch.cuda.utilization), sampled every
    50 ms during training epochs after the first (start-up and caching left out)."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= 1:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch >= 1:
            self._stop.set()
            self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.05):
            self.samples.append(torch.cuda.utilization())

    @property
    def mean(self) -> str:
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def main(epochs: int, batch_sizes: list[int]) -> str:
    if DEVICE.type != "cuda":
        raise SystemExit("bench_gpu.py needs a CUDA GPU (the CPU table is bench_training.py)")
    samples = len(build("cache", 0)[1].splits["train"])
    rows = []
    for batch in batch_sizes:
        size = f"data.batch_size={batch}"
        plain = statistics.median(plain_epochs(epochs, False, size)[1:])
        rows.append(
            [batch, "plain PyTorch loop, cached features", "on", f"{plain:.3f}", f"{samples / plain:,.0f}", "-", "1.00"]
        )
        for placement, workers, buckets in (
            ("cache", 0, True),
            ("cache", 0, False),
            ("device", 4, True),
            ("worker", 4, True),
        ):
            util = Utilisation()
            t = lightning_epochs(placement, workers, epochs, size, f"data.length_buckets={buckets}", callbacks=[util])
            epoch = statistics.median(t[1:])
            rows.append(
                [
                    batch,
                    f"ours, placement={placement}" + (f" ({workers} workers)" if workers else ""),
                    "on" if buckets else "off",
                    f"{epoch:.3f}",
                    f"{samples / epoch:,.0f}",
                    util.mean,
                    f"{epoch / plain:.2f}",
                ]
            )
    return print_table(
        f"Training epoch on the GPU, FSDD ({samples} clips, default CNN1d; median of epochs 2-{epochs}; {machine()})",
        ["batch", "pipeline", "length buckets", "epoch (s)", "samples/s", "GPU utilisation", "time / plain loop"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    args = parser.parse_args()
    L.seed_everything(0)
    main(args.epochs, args.batch_sizes)
