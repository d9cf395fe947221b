"""Streaming libraries for data=shards: read throughput of litdata and webdataset on the same FLAC shards of FSDD.

Both get the 3,000 recordings as FLAC bytes (encoded once, identically), in shards of about 1 MB (13 shards), and
are read for whole epochs, shuffled, through a torch DataLoader with 2 workers and batches of 16, decoding every
FLAC to a float32 waveform (what data=shards does before features). Reported: recordings per second, the median of
`--epochs` epochs after one warm-up epoch (page cache warm for both), alternating between the two. Not part of
`make bench`.

    pip install litdata webdataset && python bench_shards.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from common import REPO, machine, print_table

SHARD_BYTES = 1_000_000
WORKERS, BATCH = 2, 16


def flac_bytes() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted((REPO / "data" / "fsdd" / "recordings").glob("*.wav")):
        data, rate = sf.read(path, dtype="float32")
        buffer = io.BytesIO()
        sf.write(buffer, data, rate, format="FLAC", subtype="PCM_16")  # as audio_cls.shard writes 16-bit sources
        out.append((path.stem, buffer.getvalue()))
    return out


def decode(audio: bytes) -> torch.Tensor:
    return torch.from_numpy(sf.read(io.BytesIO(bytes(audio)), dtype="float32")[0])


def collate(batch: list) -> int:
    return len(batch)


class _Encoded:  # picklable for litdata's optimize workers
    def __init__(self, encoded):
        self.encoded = encoded

    def __call__(self, i: int) -> dict:
        return {"index": i, "audio": self.encoded[i][1]}


def litdata_loader(encoded, folder: Path):
    from litdata import StreamingDataLoader, StreamingDataset, optimize

    optimize(
        fn=_Encoded(encoded),
        inputs=list(range(len(encoded))),
        output_dir=str(folder),
        chunk_bytes=SHARD_BYTES,
        num_workers=1,
        start_method="fork",
        verbose=False,
    )

    class Decoded(StreamingDataset):
        def __getitem__(self, index):
            return decode(super().__getitem__(index)["audio"])

    dataset = Decoded(str(folder), shuffle=True, seed=0, item_shuffle_window=0, batch_decode=0)  # as data=shards reads
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, collate_fn=collate)


def webdataset_loader(encoded, folder: Path):
    import webdataset as wds

    folder.mkdir()
    with wds.ShardWriter(str(folder / "shard-%05d.tar"), maxsize=SHARD_BYTES, verbose=0) as sink:
        for key, audio in encoded:
            sink.write({"__key__": key, "flac": audio})
    urls = [str(p) for p in sorted(folder.glob("*.tar"))]
    # Shards shuffled and split among the workers, samples shuffled in a buffer of 1,000 (webdataset's recipe).
    dataset = (
        wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, seed=0)
        .shuffle(1000)
        .map(lambda sample: decode(sample["flac"]))
    )
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, collate_fn=collate)


def epoch(loader) -> tuple[float, int]:
    start = time.perf_counter()
    items = sum(loader)
    return items / (time.perf_counter() - start), items


def main(count: int) -> str:
    torch.set_num_threads(1)
    encoded = flac_bytes()
    names = ("litdata 0.2 (StreamingDataset)", "webdataset 1.0")
    with tempfile.TemporaryDirectory() as tmp:
        loaders = [build(encoded, Path(tmp) / str(i)) for i, build in enumerate((litdata_loader, webdataset_loader))]
        for loader in loaders:
            epoch(loader)  # warm-up: page cache, worker start-up paths
        # Epochs alternate between the two, so that a load on the machine that comes and goes hits both alike.
        rates = [[], []]
        for _ in range(count):
            for rate, loader in zip(rates, loaders):
                rate.append(epoch(loader))
    rows = [[name, r[0][1], f"{statistics.median(x for x, _ in r):.0f}"] for name, r in zip(names, rates)]
    return print_table(
        f"Reading FLAC shards of FSDD, {WORKERS} workers, decoded, {count} epochs each ({machine()})",
        ["library", "recordings per epoch", "recordings/s (median)"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    main(parser.parse_args().epochs)
