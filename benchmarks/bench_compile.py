"""torch.compile on the default network: epoch time eager against compiled (`nn.Module.compile(dynamic=True)`),
same cached, length-bucketed batches, plain training loop. Not part of `make bench`: compiling takes minutes.

    python bench_compile.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics

from bench_training import plain_epochs
from common import machine, print_table


def main(count: int) -> str:
    rows = []
    for compiled in (False, True):
        t = plain_epochs(count, compiled)
        rows.append(
            ["torch.compile(dynamic=True)" if compiled else "eager", f"{t[0]:.2f}", f"{statistics.median(t[1:]):.2f}"]
        )
    return print_table(
        f"torch.compile, default CNN1d on FSDD, {count} epochs ({machine()})",
        ["network", "first epoch (s, includes compiling)", "later epochs, median (s)"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
