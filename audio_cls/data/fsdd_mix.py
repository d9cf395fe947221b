"""FSDD-Mix: synthetic soundscapes of spoken digits, for multi-label tagging and sound event detection.

`data=fsdd_mix` makes them on first use (`prepare_data`, about 3 s) from the bundled FSDD recordings, then
reads them like any dataset: each clip's label set (task=multilabel) and its events (strong labels).

Built from the Free Spoken Digit Dataset recordings (`{digit}_{speaker}_{index}.wav`, 8 kHz, 0.14-2.3 s).
A clip is `seconds` (4 s) of pink-ish background noise with 0..max_events digits (count uniform) spoken over
it at uniform random onsets, each at a uniform random SNR in `snr_db` against the noise; events may overlap.

    out_dir/audio/{split}_{n:05d}.wav   8 kHz mono PCM_16, exactly `seconds` long
    out_dir/meta.csv     filename,split,labels,sources   clip-level (multi-label) targets: `labels` are the
                         digit words present, `;`-joined in alphabetical order (empty: no event); `sources`
                         are the FSDD files mixed in, in onset order (to check the speaker split, or to debug)
    out_dir/events.tsv   filename<TAB>onset<TAB>offset<TAB>event_label: DCASE strong labels (seconds, 3
                         decimals), one row per event, by filename then onset
    out_dir/done.json    the parameters that made the folder; written last, so it marks a finished one

Speakers: train george, jackson, lucas, nicolas; val yweweler; test theo. They are disjoint so that validation
and test scores measure generalization to unheard voices, not recall of recordings heard in training (theo is
also the FSDD datamodule's default held-out speaker). Speakers not listed here are not used.

An event spans the recording's active part (10 ms frames within ACTIVE_DB of its loudest frame), not the file's
leftover silence, so onsets and offsets are exact. The background is Voss-McCartney pink-ish noise (~1/f from
31 Hz to 4 kHz), closer to real room and street noise than white noise, and made of sums of held Gaussian draws
only (no FFT), so it is the same bits on every machine. Each split has its own random stream (seed and a CRC of
the split's name): changing one split's clip count leaves the others' clips unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_cls.data.base import AudioDataModule, Item, multilabel_item
from audio_cls.data.manifest import read_events
from audio_cls.errors import ConfigError, DataError

SPEAKERS = {"train": ("george", "jackson", "lucas", "nicolas"), "val": ("yweweler",), "test": ("theo",)}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_CLIPS = {"train": 3000, "val": 200, "test": 300}

SR = 8000
FRAME = SR // 100  # 10 ms
ACTIVE_DB = -35.0  # a frame is active when its RMS is within this of the recording's loudest frame
NOISE_RMS = 0.01  # -40 dBFS: digits at 10-20 dB SNR then rarely need the clip scaled down
NOISE_ROWS = 8  # Voss-McCartney rows: 1/f over 8 octaves, SR/2**8 = 31 Hz up to 4 kHz
FILE_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<index>\d+)\.wav$")


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) float64 pink-ish noise at NOISE_RMS: row k holds a Gaussian draw for 2**k samples (random phase)."""
    x = np.zeros(n)
    for k in range(NOISE_ROWS):
        hold = 2**k
        offset = int(rng.integers(hold))
        x += np.repeat(rng.standard_normal(n // hold + 2), hold)[offset : offset + n]
    x -= x.mean()
    return x * (NOISE_RMS / np.sqrt(np.mean(x**2)))


def active_span(x: np.ndarray) -> tuple[int, int]:
    """[start, stop) samples of x (samples,) from its first to its last active 10 ms frame; (0, 0) if silent."""
    frames = np.pad(x, (0, -len(x) % FRAME)).reshape(-1, FRAME)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = np.flatnonzero(rms > rms.max() * 10 ** (ACTIVE_DB / 20))
    if len(active) == 0:
        return 0, 0
    return int(active[0]) * FRAME, min(int(active[-1] + 1) * FRAME, len(x))


def _scan(recordings: Path) -> list[Path]:
    """The FSDD recordings in `recordings`, sorted by name (the order must not depend on the file system)."""
    if not recordings.is_dir():
        raise DataError(f"{recordings}: no such folder (expected the FSDD recordings, {{digit}}_{{speaker}}_*.wav)")
    files = sorted(recordings.glob("*.wav"), key=lambda f: f.name)
    if not files:
        raise DataError(f"{recordings}: no .wav recordings in this folder")
    for f in files:
        if FILE_NAME.match(f.name) is None:
            raise DataError(f"{f}: not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
    return files


def _load(f: Path, n: int) -> tuple[np.ndarray, int, int, float] | None:
    """(samples,) float64 audio of f, its active span, and the active part's RMS; None if longer than n samples."""
    x, sr = sf.read(f, dtype="float64", always_2d=True)
    if sr != SR:
        raise DataError(f"{f}: sample rate {sr} Hz, expected {SR} Hz (FSDD)")
    x = x.mean(axis=1)
    if len(x) > n:
        return None
    start, stop = active_span(x)
    if stop == start:
        raise DataError(f"{f}: the recording is silent")
    return x, start, stop, float(np.sqrt(np.mean(x[start:stop] ** 2)))


def _check_existing(out_dir: Path, params: dict) -> None:
    """Return if out_dir was synthesized with `params`; raise DataError otherwise (never overwrite it)."""
    try:
        done = json.loads((out_dir / "done.json").read_text())
    except (OSError, ValueError):
        done = None
    if done is None:
        raise DataError(
            f"{out_dir} exists but is not a finished synthesis (no readable done.json): "
            "delete it or choose another data.root"
        )
    wanted = json.loads(json.dumps(params))
    if done != wanted:
        differ = sorted(k for k in wanted.keys() | done.keys() if done.get(k) != wanted.get(k))
        raise DataError(
            f"{out_dir} was synthesized with other parameters ({', '.join(differ)} differ): "
            "delete it or choose another data.root"
        )


def _mix_split(split: str, count: int, pool: list, n: int, max_events: int, snr_db: tuple, seed: int):
    """Yield one split's clips: (name, clip (n,) int16, events), events = sorted [(start, stop, label, source)]
    in samples. pool: [(source name, digit, _load(source))]."""
    # The split's own stream, from a stable hash of its name (python's hash() changes between runs).
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    for i in range(count):
        clip = pink_noise(rng, n)
        events = []
        k = min(int(rng.integers(max_events + 1)), len(pool))
        for j in rng.choice(len(pool), size=k, replace=False):
            name, digit, (x, a0, a1, rms) = pool[j]
            snr = rng.uniform(*snr_db)
            start = int(rng.integers(n - len(x) + 1))  # the whole recording fits in the clip
            clip[start : start + len(x)] += x * (NOISE_RMS * 10 ** (snr / 20) / rms)
            events.append((start + a0, start + a1, DIGITS[digit], name))
        # One factor for noise and digits alike, so the SNRs hold; only ever scale down.
        peak = np.abs(clip).max()
        if peak > 0.99:
            clip *= 0.99 / peak
        # Quantize here rather than in libsndfile, so that the bytes do not depend on its version.
        yield f"{split}_{i:05d}.wav", np.round(clip * 32767).astype(np.int16), sorted(events)


def synthesize(
    recordings: Path,
    out_dir: Path,
    clips: dict[str, int] | None = None,
    seconds: float = 4.0,
    max_events: int = 3,
    snr_db: tuple[float, float] = (10.0, 20.0),
    seed: int = 0,
) -> Path:
    """Write the soundscapes of `clips` ({split: number of clips}, default DEFAULT_CLIPS) into out_dir (see the
    module docstring) and return out_dir. Returns at once if out_dir already holds this exact synthesis; raises
    DataError if it holds anything else."""
    recordings, out_dir = Path(recordings), Path(out_dir)
    clips = dict(DEFAULT_CLIPS if clips is None else clips)
    if clips.keys() - SPEAKERS.keys():
        raise ConfigError(f"clips: unknown splits {sorted(clips.keys() - SPEAKERS.keys())}; expected {list(SPEAKERS)}")
    if seconds <= 0 or max_events < 0 or not snr_db[0] <= snr_db[1] or any(c < 0 for c in clips.values()):
        raise ConfigError(
            f"synthesize: need seconds > 0, max_events >= 0, clips >= 0 and snr_db as (low, high); "
            f"got seconds={seconds}, max_events={max_events}, clips={clips}, snr_db={snr_db}"
        )
    files = _scan(recordings)
    listing = "".join(f"{f.name}\t{f.stat().st_size}\n" for f in files)
    params = {
        "clips": {s: int(c) for s, c in sorted(clips.items())},
        "seconds": float(seconds),
        "max_events": int(max_events),
        "snr_db": [float(snr_db[0]), float(snr_db[1])],
        "seed": int(seed),
        "recordings": hashlib.sha256(listing.encode()).hexdigest(),  # names and sizes
    }
    if out_dir.exists():
        _check_existing(out_dir, params)
        return out_dir

    n = round(seconds * SR)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside out_dir and rename at the end: an interrupted run never leaves a half-written out_dir.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        (tmp / "audio").mkdir()
        meta, events_rows = [], []
        for split, count in params["clips"].items():
            pool = []  # this split's speakers only, and recordings that fit in a clip
            for f in files if count else ():
                m = FILE_NAME.match(f.name)
                if m["speaker"] in SPEAKERS[split] and (loaded := _load(f, n)) is not None:
                    pool.append((f.name, int(m["digit"]), loaded))
            if count and max_events and not pool:
                raise DataError(f"{recordings}: no recording of {split} speakers {SPEAKERS[split]} fits in {seconds} s")
            for name, audio, events in _mix_split(split, count, pool, n, max_events, snr_db, seed):
                sf.write(tmp / "audio" / name, audio, SR, subtype="PCM_16")
                labels = ";".join(sorted({label for _, _, label, _ in events}))
                meta.append([name, split, labels, ";".join(source for *_, source in events)])
                events_rows += [[name, f"{a / SR:.3f}", f"{b / SR:.3f}", label] for a, b, label, _ in events]
        # By filename (then onset: already in order within a clip).
        meta.sort(key=lambda r: r[0])
        events_rows.sort(key=lambda r: r[0])
        with open(tmp / "meta.csv", "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["filename", "split", "labels", "sources"], *meta])
        with open(tmp / "events.tsv", "w", newline="") as f:
            header = ["filename", "onset", "offset", "event_label"]
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([header, *events_rows])
        (tmp / "done.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process finished the same folder first: fine if it made the same thing.
            if not out_dir.exists():
                raise
            _check_existing(out_dir, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class FSDDMix(AudioDataModule):
    """The soundscapes of `synthesize` as a datamodule; splits are its speaker-disjoint train/val/test.

    Args:
        root: where the soundscapes are (made there by prepare_data when missing).
        recordings: the FSDD recordings to mix.
        clips, seconds, max_events, snr_db, mix_seed: `synthesize`'s settings (a change needs a new root).
    """

    def __init__(
        self,
        root: str,
        recordings: str,
        clips: dict[str, int] | None = None,
        seconds: float = 4.0,
        max_events: int = 3,
        snr_db: tuple[float, float] = (10.0, 20.0),
        mix_seed: int = 0,
        **kwargs,
    ):
        super().__init__(root=root, **kwargs)
        self.recordings = recordings
        self.mix = dict(clips=clips, seconds=seconds, max_events=max_events, snr_db=tuple(snr_db), seed=mix_seed)

    def prepare_data(self) -> None:
        synthesize(Path(self.recordings).expanduser(), self.root_path, **self.mix)

    def scan(self) -> list[Item]:
        if not (self.root_path / "done.json").is_file():
            raise DataError(f"data.root={self.root}: no soundscapes there yet (prepare_data makes them)")
        events = read_events(self.root_path / "events.tsv")
        with (self.root_path / "meta.csv").open(newline="", encoding="utf-8") as f:
            return [
                multilabel_item(
                    str(self.root_path / "audio" / row["filename"]),
                    [x for x in row["labels"].split(";") if x],
                    events.get(row["filename"], []),
                    split=row["split"],
                )
                for row in csv.DictReader(f)
            ]
