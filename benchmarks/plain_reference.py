"""The plain-PyTorch reference that `make train` is measured against, written to its description (the shared
`plain_fsdd.py` is its definition): every FSDD recording cropped/padded to 1 s at 8 kHz, log-mel (n_fft 256,
hop 80, 40 mels) computed once, global mean/std, Conv1d 64-128-128 (kernel 3, batch norm, ReLU, max-pool 2,
global average pool), Adam 1e-3, batch 64, on the 2,700 training recordings of the official split (recording
index 5-49; 0-4 is the test set), on the GPU when there is one. Feature extraction and the per-epoch test
evaluation are off the clock.

    python plain_reference.py [--epochs 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd" / "recordings"


def load(root: Path = FSDD):
    waves, digits, is_test = [], [], []
    for path in sorted(root.glob("*.wav")):
        digit, _speaker, index = path.stem.split("_")
        wave, _ = sf.read(path, dtype="float32")
        wave = wave.mean(1) if wave.ndim > 1 else wave
        waves.append(np.pad(wave[:8000], (0, max(0, 8000 - len(wave)))))
        digits.append(int(digit))
        is_test.append(int(index) < 5)
    x, y, test = torch.tensor(np.stack(waves)), torch.tensor(digits), torch.tensor(is_test)
    feats = (torchaudio.transforms.MelSpectrogram(8000, n_fft=256, hop_length=80, n_mels=40)(x) + 1e-6).log()
    feats = (feats - feats.mean()) / feats.std()
    return feats[~test], y[~test], feats[test], y[test]


def network() -> torch.nn.Sequential:
    def block(c_in, c_out, pool):
        return [torch.nn.Conv1d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm1d(c_out), torch.nn.ReLU(), pool]

    return torch.nn.Sequential(
        *block(40, 64, torch.nn.MaxPool1d(2)),
        *block(64, 128, torch.nn.MaxPool1d(2)),
        *block(128, 128, torch.nn.AdaptiveAvgPool1d(1)),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )


def train(epochs: int = 12, seed: int = 0, data=None) -> list[tuple[int, float, float]]:
    """[(epoch, training seconds so far, test accuracy)] after every epoch."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train, x_test, y_test = (t.to(device) for t in (data or load()))
    torch.manual_seed(seed)
    net = network().to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    history, clock = [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(len(x_train), device=device)
        for i in range(0, len(order), 64):
            batch = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        clock += time.perf_counter() - start
        net.eval()
        with torch.no_grad():
            history.append((epoch, clock, (net(x_test).argmax(1) == y_test).float().mean().item()))
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for epoch, clock, acc in train(args.epochs, args.seed):
        print(f"epoch {epoch} test_acc {acc:.4f} train_time {clock:.1f}s")
