"""Feature extraction throughput (clips/s) on FSDD: log-mel and MFCC, per clip as in DataLoader workers,
batched as with data.placement=device (on the CPU, and on the GPU when there is one), and from the
cache, against librosa computing the same features per clip."""

from __future__ import annotations

import argparse

import librosa
import torch
from hydra.utils import instantiate

from audio_cls.audio import load_audio
from audio_cls.data.base import pad_collate
from common import REPO, default_config, machine, print_table, timed


def main(limit: int, batch_size: int) -> str:
    files = sorted((REPO / "data" / "fsdd" / "recordings").glob("*.wav"))[:limit]
    waves = [load_audio(f, 8000) for f in files]  # decoding is the same for every method: not timed
    batches = [
        pad_collate([{"inputs": w, "target": 0} for w in waves[i : i + batch_size]])
        for i in range(0, len(waves), batch_size)
    ]
    rows = []
    for name in ("logmel", "mfcc"):
        cfg = default_config(f"features={name}", "features.normalize=none")
        fx = instantiate(cfg.features).eval()
        f = cfg.features
        kw = dict(sr=8000, n_fft=f.n_fft, hop_length=f.hop_length, n_mels=f.n_mels, center=True, pad_mode="constant")

        def reference(y, name=name, f=f, kw=kw):
            if name == "logmel":
                return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kw), top_db=None)
            return librosa.feature.mfcc(y=y, n_mfcc=f.n_mfcc, **kw)

        numpy_waves = [w.numpy() for w in waves]
        reference(numpy_waves[0])  # librosa's first call compiles with numba: not part of the rate
        t_librosa = timed(lambda: [reference(y) for y in numpy_waves], repeat=2)
        with torch.no_grad():
            fx(waves[0])
            t_item = timed(lambda: [fx(w) for w in waves], repeat=2)
            t_batch = timed(lambda: [fx(b["inputs"], b["lengths"]) for b in batches], repeat=2)
            results = [
                ("librosa, per clip", t_librosa),
                ("ours, per clip (placement=worker)", t_item),
                (f"ours, batches of {batch_size}, CPU (placement=device)", t_batch),
            ]
            if torch.cuda.is_available():
                gpu = fx.to("cuda")
                cuda_batches = [(b["inputs"].cuda(), b["lengths"].cuda()) for b in batches]
                t_gpu = timed(lambda: [gpu(x, n) for x, n in cuda_batches], repeat=3)
                results.append((f"ours, batches of {batch_size}, GPU (placement=device)", t_gpu))
                fx = fx.cpu()
        cached = [fx.compute(w[None])[0] for w in waves]
        path = REPO / "logs" / "bench" / f"cache-{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cached, path)
        t_cache = timed(lambda: torch.load(path, weights_only=True), repeat=2)
        results.append(("cache: read every clip's features from disk (placement=cache)", t_cache))
        for method, seconds in results:
            rows.append([name, method, f"{len(waves) / seconds:,.0f}", f"{t_librosa / seconds:.1f}x"])
    return print_table(
        f"Feature extraction, {len(waves)} FSDD clips ({machine()})",
        ["features", "method", "clips/s", "vs librosa"],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    main(args.limit, args.batch_size)
