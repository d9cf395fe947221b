"""Data at scale: start-up, memory and throughput of `python -m audio_cls.train` on generated datasets of 10k and
100k recordings (a folder per class and a manifest) and on a 1M-row manifest, against FSDD in the same run.

    python gen_scale_data.py --sizes 10000 100000 --manifest-rows 1000000    # the data (logs/scale_data)
    python bench_scale.py [--sizes 10000 100000] [--manifest-rows 1000000] [--kinds folder manifest]
                          [--placements cache worker] [--worker-for fsdd folder] [--warmup 30] [--steps 300]
                          [--window 50] [--timeout 1800] [--no-evict] [-- overrides for every command]

Every measurement is one training command in a subprocess: `python -m audio_cls.train` with Hydra overrides, run
through `child()` below, which wraps the datamodule's start-up steps with timers (each only if the step exists under
that name, so the benchmark outlives refactoring: the total of prepare_data + setup is always there) and adds a
callback, `+callbacks.scale_probe._target_=bench_scale.ScaleProbe`, that records the first training step and the
steady-state clips/s. Each run trains `warmup + steps` steps with validation, checkpoints, early stopping, the
progress bar and the test off, on a fresh Hydra run directory. Per dataset (FSDD first, as the baseline):

    cold    a fresh `paths.cache_dir` (so no feature cache and no index of earlier runs; an index kept under the
            cache dir is cold too) and the data's files evicted from the page cache (posix_fadvise DONTNEED on
            each file: file contents only, directory entries and inodes stay cached); data.placement=cache
    warm    the same command again on the same cache dir
    worker  the same cache dir, data.placement=worker (features computed by the DataLoader workers every step;
            start-up then fits the global normalization over the training files); FSDD and folders only by
            default (--worker-for): once indexed, a manifest's items take the same path

Reported: seconds from process start (before the interpreter starts) to the data start-up, the scan/index part
of it (prepare_data + setup minus computing/loading the feature cache and fitting the normalization), the cache,
the first training step (its `on_train_batch_start`); peak RSS (VmHWM) of the main process and of its child
processes (DataLoader workers; sampled every 0.1 s from the parent, their RSS counts pages shared with the main
process copy-on-write) and the workers' largest sampled PSS; the main process's RSS before the data start-up (the
imports alone) and after setup(); clips/s and valid frames/s over `steps` steps after `warmup`, and the ratio to
FSDD's with the same placement, also for the best window of `window` steps (less sensitive to other jobs on a shared
machine); the feature cache's build time and size. The segment manifest (--manifest-rows) is measured for indexing
only: the command exits when `setup()` returns, with data.placement=worker and features.normalize=utterance so that
setup computes no features. Growth from one size to the next is printed as an exponent (time ~ N^k: k = 1 is
linear). Child logs, probe files and the tables go to logs/bench_scale/<time>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lightning as L

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GROUP_PATTERN = "^(?P<group>[^_]+)_"  # gen_scale_data.py's file names: <speaker>_<k>.wav

# --- in the training subprocess ------------------------------------------------------------------------------------

PROBE: dict = {"phases": {}}
_depth: dict[str, int] = {}


def _now() -> float:
    """Seconds since the parent started this process (SCALE_T0, the parent's clock just before it)."""
    return time.time() - PROBE["t0"]


def _status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM / VmRSS of a process in MB (0 when it is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    values[line.split(":")[0]] = int(line.split()[1]) // 1024
    except OSError:
        pass
    return values


def _dump(**extra) -> None:
    PROBE.update(extra)
    path = Path(os.environ["SCALE_PROBE_OUT"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(PROBE, indent=1))
    os.replace(tmp, path)


def _timed(label: str, fn):
    """fn, adding its wall time to PROBE["phases"][label] (outermost call only: subclasses calling super nest)."""

    def wrapper(*args, **kwargs):
        _depth[label] = _depth.get(label, 0) + 1
        start = time.time()
        if _depth[label] == 1 and label not in PROBE["phases"]:
            PROBE["phases"][label] = {"seconds": 0.0, "calls": 0, "first_start": _now(), "rss_before_mb": _status()}
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[label] -= 1
            if not _depth[label]:
                phase = PROBE["phases"][label]
                phase["seconds"] += time.time() - start
                phase["calls"] += 1
                phase["last_end"] = _now()
                phase["rss_after_mb"] = _status()

    wrapper.__wrapped__ = fn
    return wrapper


def child() -> None:
    """The training command with probes: `python -c "import bench_scale; bench_scale.child()" OVERRIDES...`.

    Runs `audio_cls.train` exactly as `python -m audio_cls.train OVERRIDES` does (runpy), after wrapping the
    datamodule's start-up steps with timers. Environment: SCALE_T0 (the parent's time.time() before starting
    it), SCALE_PROBE_OUT (the JSON written here), SCALE_EXIT_AFTER_SETUP=1 (index only: exit once setup returns).
    """
    import atexit
    import importlib
    import pkgutil
    import runpy

    import audio_cls.data
    from audio_cls import features
    from audio_cls.data.base import AudioDataModule

    PROBE["t0"] = float(os.environ["SCALE_T0"])
    PROBE["imported"] = _now()
    for module in pkgutil.iter_modules(audio_cls.data.__path__):  # every dataset class, to time its scan()
        try:
            importlib.import_module(f"audio_cls.data.{module.name}")
        except Exception as err:  # a module being written: the run fails later only if it uses it
            print(f"bench_scale: audio_cls.data.{module.name} not imported ({err})", file=sys.stderr)
    steps = [
        (AudioDataModule, "prepare_data", "prepare_data"),
        (AudioDataModule, "setup", "setup"),
        (AudioDataModule, "build_splits", "scan+split"),
        (AudioDataModule, "_check_splits", "checks"),
        (AudioDataModule, "_read_headers", "headers"),
        (AudioDataModule, "_find_duplicates", "duplicates"),
        (AudioDataModule, "_cached_features", "feature cache"),
        (features.GlobalNorm, "fit", "norm fit"),
    ]
    pending = [AudioDataModule]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if "scan" in cls.__dict__:
            steps.append((cls, "scan", "scan"))
    for cls, name, label in steps:
        if hasattr(cls, name):
            setattr(cls, name, _timed(label, getattr(cls, name)))

    setup = AudioDataModule.setup

    def setup_and_record(self, *args, **kwargs):
        result = setup(self, *args, **kwargs)
        splits = getattr(self, "splits", None) or {}
        PROBE["datamodule"] = type(self).__name__
        PROBE["splits"] = {name: len(items) for name, items in splits.items()}
        PROBE["placement"] = getattr(self, "placement", None)
        PROBE["setup_done"] = _now()
        if os.environ.get("SCALE_EXIT_AFTER_SETUP") == "1":
            _dump(rss_mb=_status())
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return result

    AudioDataModule.setup = setup_and_record
    atexit.register(lambda: _dump(exited=_now(), rss_mb_at_exit=_status()))
    sys.argv[0] = "audio_cls.train"
    runpy.run_module("audio_cls.train", run_name="__main__", alter_sys=True)


class ScaleProbe(L.Callback):
    """Records the first training step (seconds from process start) and the clips/s of `steps` steps after `warmup`
    (from the start of step `warmup` to the start of step `warmup + steps`), with the main process's RSS then; also
    per window of `window` steps, whose best is less sensitive to other jobs on a shared machine than the mean."""

    def __init__(self, warmup: int = 30, steps: int = 300, window: int = 50):
        self.warmup, self.steps, self.window = warmup, steps, window
        self.seen = self.clips = self.frames = 0
        self.started = None
        self.windows: list[tuple[float, int, int]] = []  # (seconds, clips, frames) of each full window
        self.window_start = (0.0, 0, 0)

    def on_fit_start(self, trainer, pl_module) -> None:
        PROBE["fit_start"] = _now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now, k = time.time(), self.seen
        self.seen += 1
        if k == 0:
            _dump(first_step=_now(), rss_mb_first_step=_status())
        if k == self.warmup:
            self.started = now
        if k > self.warmup and (k - self.warmup) % self.window == 0:
            t, c, f = self.window_start
            self.windows.append((now - t, self.clips - c, self.frames - f))
        if k >= self.warmup and (k - self.warmup) % self.window == 0:
            self.window_start = (now, self.clips, self.frames)
        if self.warmup <= k < self.warmup + self.steps:
            self.clips += int(batch["targets"].shape[0])
            self.frames += int(batch["lengths"].sum())
        if k == self.warmup + self.steps:
            seconds = now - self.started
            _dump(
                steady={
                    "steps": self.steps,
                    "seconds": seconds,
                    "clips_per_s": self.clips / seconds,
                    "frames_per_s": self.frames / seconds,
                    "frames_per_clip": self.frames / max(1, self.clips),
                    "windows": [{"seconds": t, "clips": c, "frames": f} for t, c, f in self.windows],
                    "best_window_clips_per_s": max((c / t for t, c, _ in self.windows), default=None),
                    "best_window_frames_per_s": max((f / t for t, _, f in self.windows), default=None),
                },
                rss_mb_steady=_status(),
            )


# --- in the benchmark process ---------------------------------------------------------------------------------------


class TreeMemory(threading.Thread):
    """Samples a process and its descendants every `interval` s: each one's VmHWM (peak RSS, kept as last seen)
    and each descendant's PSS (largest sample)."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm: dict[int, int] = {}
        self.pss: dict[int, int] = {}
        self.stopping = threading.Event()

    def descendants(self) -> list[int]:
        found, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        kids = [int(x) for x in f.read().split()]
                    found += kids
                    pending += kids
            except OSError:
                continue
        return found

    def run(self) -> None:
        while not self.stopping.is_set():
            kids = self.descendants()
            for pid in [self.pid, *kids]:
                hwm = _status(pid).get("VmHWM")
                if hwm:
                    self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
            for pid in kids:
                try:
                    with open(f"/proc/{pid}/smaps_rollup") as f:
                        pss = next(int(line.split()[1]) // 1024 for line in f if line.startswith("Pss:"))
                    self.pss[pid] = max(self.pss.get(pid, 0), pss)
                except (OSError, StopIteration):
                    pass
            self.stopping.wait(self.interval)

    def summary(self) -> dict:
        workers = {pid: mb for pid, mb in self.hwm.items() if pid != self.pid}
        return {
            "main_hwm_mb": self.hwm.get(self.pid),
            "workers": len(workers),
            "worker_hwm_mb": max(workers.values(), default=None),
            "worker_pss_mb": max(self.pss.values(), default=None),
        }


def evict(paths: list[Path]) -> int:
    """Drop the files' pages from the page cache (after writing back dirty ones); returns how many files."""
    os.sync()
    count = 0
    for root in paths:
        for path in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            count += 1
    return count


def run_command(name: str, overrides: list[str], cache_dir: Path, work: Path, timeout: float, index_only=False) -> dict:
    """One training command in a subprocess; the probe's JSON plus the parent's wall time and memory samples."""
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_scale_run_") as run_dir, (work / f"{name}.log").open("w") as log:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])),
            "SCALE_PROBE_OUT": str(out),
            "SCALE_EXIT_AFTER_SETUP": "1" if index_only else "0",
        }
        command = [
            sys.executable,
            "-c",
            "import bench_scale; bench_scale.child()",
            f"hydra.run.dir={run_dir}/run",
            f"paths.cache_dir={cache_dir}",
            *overrides,
        ]
        log.write(" ".join(command) + "\n\n")
        log.flush()
        env["SCALE_T0"] = repr(time.time())
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        memory = TreeMemory(proc.pid)
        memory.start()
        status = "ok"
        try:
            if proc.wait(timeout) != 0:
                status = f"failed (exit {proc.returncode}, see {work / (name + '.log')})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {timeout:.0f} s"
        wall = time.perf_counter() - started
        memory.stopping.set()
        memory.join()
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(status=status, wall=wall, memory=memory.summary(), name=name)
    print(f"  {name}: {status}, {wall:.1f} s", flush=True)
    return result


def phase(result: dict, label: str) -> float | None:
    p = result.get("phases", {}).get(label)
    return None if p is None else p["seconds"]


def rss(result: dict, label: str, when: str) -> int | None:
    """The main process's VmRSS (MB) before or after a timed step."""
    return result.get("phases", {}).get(label, {}).get(when, {}).get("VmRSS")


def index_seconds(result: dict) -> float | None:
    """Data start-up without features: prepare_data + setup - feature cache - norm fit."""
    if phase(result, "setup") is None:
        return None
    return sum(phase(result, k) or 0.0 for k in ("prepare_data", "setup")) - sum(
        phase(result, k) or 0.0 for k in ("feature cache", "norm fit")
    )


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def folder_size_mb(path: Path, prefix: str = "") -> float:
    return sum(p.stat().st_size for p in path.rglob(f"{prefix}*") if p.is_file()) / 2**20


def datasets(args) -> list[dict]:
    """What to measure: FSDD (the baseline), then each kind at each size."""
    found = [
        {
            "name": "fsdd",
            "files": 3000,
            "overrides": ["data=fsdd"],
            "evict": [REPO / "data" / "fsdd" / "recordings"],
        }
    ]
    for n in args.sizes:
        folder = args.data / f"folder_{n}"
        if "folder" in args.kinds:
            found.append(
                {
                    "name": f"folder_{n}",
                    "kind": "folder",
                    "files": n,
                    "overrides": [
                        "data=folder",
                        f"data.root={folder}",
                        f"data.group_pattern='{GROUP_PATTERN}'",
                        "data.sample_rate=8000",
                    ],
                    "evict": [folder],
                }
            )
        if "manifest" in args.kinds:
            manifest = args.data / f"manifest_{n}.csv"
            found.append(
                {
                    "name": f"manifest_{n}",
                    "kind": "manifest",
                    "files": n,
                    "overrides": ["data=manifest", f"data.root={manifest}", "data.sample_rate=8000"],
                    "evict": [folder, manifest],
                }
            )
    for d in found[1:]:
        if not Path(d["overrides"][1].split("=", 1)[1]).exists():
            raise SystemExit(f"{d['name']}: not in {args.data}; run gen_scale_data.py --out {args.data} first")
    return found


def main(args) -> str:
    from common import machine, print_table

    started = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    work = (args.work or REPO / "logs" / "bench_scale") / stamp
    work.mkdir(parents=True)
    common = [
        "test=false",
        f"++trainer.max_steps={args.warmup + args.steps + 1}",
        "trainer.limit_val_batches=0",
        "++trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "callbacks.early_stopping=null",
        "+callbacks.scale_probe._target_=bench_scale.ScaleProbe",
        f"+callbacks.scale_probe.warmup={args.warmup}",
        f"+callbacks.scale_probe.steps={args.steps}",
        f"+callbacks.scale_probe.window={args.window}",
        *args.overrides,
    ]
    print(f"Logs and tables: {work}\nMachine: {machine()}", flush=True)
    results: dict[str, dict] = {}
    for d in datasets(args):
        cache_dir = work / f"cache_{d['name']}"
        print(f"{d['name']}:", flush=True)
        d["evicted"] = 0 if args.no_evict else evict(d["evict"])
        worker = "worker" in args.placements and d.get("kind", "fsdd") in args.worker_for
        runs = {"cold": "cache", "warm": "cache", **({"worker": "worker"} if worker else {})}
        if "cache" not in args.placements:
            runs = {"cold": "worker", "warm": "worker"}
        d["runs"] = {}
        for run, placement in runs.items():
            d["runs"][run] = run_command(
                f"{d['name']}-{run}",
                [*d["overrides"], f"data.placement={placement}", *common],
                cache_dir,
                work,
                args.timeout,
            )
            if run == "cold" and cache_dir.is_dir():
                dm = d["runs"][run].get("datamodule", "")
                d["cache_mb"] = folder_size_mb(cache_dir, f"{dm}-") if dm else None
                d["cache_dir_mb"] = folder_size_mb(cache_dir)
        if not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
        results[d["name"]] = d

    segments = None
    if args.manifest_rows:
        manifest = args.data / f"manifest_segments_{args.manifest_rows}.csv"
        if not manifest.is_file():
            raise SystemExit(f"{manifest}: run gen_scale_data.py --manifest-rows {args.manifest_rows} first")
        cache_dir = work / "cache_segments"
        source = max(args.sizes)
        print(f"manifest_segments_{args.manifest_rows} (index only):", flush=True)
        evicted = 0 if args.no_evict else evict([args.data / f"folder_{source}", manifest])
        overrides = [
            "data=manifest",
            f"data.root={manifest}",
            "data.sample_rate=8000",
            "data.placement=worker",
            "features.normalize=utterance",
            *common,
        ]
        segments = {
            "evicted": evicted,
            "runs": {
                run: run_command(f"segments_{args.manifest_rows}-{run}", overrides, cache_dir, work, args.timeout, True)
                for run in ("cold", "warm")
            },
        }
        shutil.rmtree(cache_dir, ignore_errors=True)

    text = report(results, segments, args, machine(), print_table)
    total = time.perf_counter() - started
    text += f"\nWhole benchmark: {total / 60:.1f} min ({work}).\n"
    print(f"Whole benchmark: {total / 60:.1f} min", flush=True)
    (work / "results.md").write_text(text)
    (work / "results.json").write_text(json.dumps({"results": results, "segments": segments}, indent=1, default=str))
    return text


def report(results: dict, segments: dict | None, args, where: str, print_table) -> str:
    text = ""
    rows = []
    for name, d in results.items():
        for run, r in d["runs"].items():
            splits = r.get("splits", {})
            first = r.get("phases", {}).get("prepare_data", r.get("phases", {}).get("setup", {}))
            memory = r["memory"]
            workers = "-"
            if memory["workers"]:
                workers = f"{memory['worker_hwm_mb']:,} / {fmt(memory['worker_pss_mb'], 0)} ({memory['workers']})"
            rows.append(
                [
                    name,
                    "/".join(str(splits.get(s, "?")) for s in ("train", "val", "test")),
                    f"{run} ({r.get('placement') or '?'})" if r["status"] == "ok" else f"{run}: {r['status']}",
                    fmt(first.get("first_start")),
                    fmt(phase(r, "scan+split"), 2),
                    fmt(phase(r, "headers"), 2),
                    fmt(phase(r, "duplicates"), 2),
                    fmt(index_seconds(r), 2),
                    fmt(phase(r, "feature cache"), 2),
                    fmt(phase(r, "norm fit"), 2),
                    fmt(r.get("first_step")),
                    fmt(rss(r, "prepare_data", "rss_before_mb")),
                    fmt(rss(r, "setup", "rss_after_mb")),
                    fmt(memory["main_hwm_mb"] or (r.get("rss_mb_steady") or {}).get("VmHWM")),
                    workers,
                ]
            )
    text += print_table(
        f"Start-up, seconds from process start ({where})",
        [
            "dataset",
            "train/val/test",
            "run (placement)",
            "to data start-up",
            "scan+split",
            "headers",
            "duplicate check",
            "scan/index total",
            "feature cache",
            "norm fit",
            "first training step",
            "main RSS before data (MB)",
            "main RSS after setup (MB)",
            "main peak RSS (MB)",
            "workers: peak RSS / PSS (MB) (processes)",
        ],
        rows,
    )

    rows = []
    base = {run: results["fsdd"]["runs"][run].get("steady") for run in results["fsdd"]["runs"]}
    for name, d in results.items():
        for run, r in d["runs"].items():
            steady, ref = r.get("steady"), base.get(run)
            if run == "cold" or steady is None:
                continue
            best, ref_best = steady.get("best_window_clips_per_s"), (ref or {}).get("best_window_clips_per_s")
            rows.append(
                [
                    name,
                    f"{run} ({r.get('placement')})",
                    fmt(steady["clips_per_s"], 0),
                    fmt(steady["frames_per_s"], 0),
                    fmt(steady["frames_per_clip"], 1),
                    f"{steady['clips_per_s'] / ref['clips_per_s']:.2f}" if ref else "-",
                    f"{steady['frames_per_s'] / ref['frames_per_s']:.2f}" if ref else "-",
                    fmt(best, 0),
                    f"{best / ref_best:.2f}" if best and ref_best else "-",
                ]
            )
    text += print_table(
        f"Steady-state training throughput, {args.steps} steps after {args.warmup} ({where})",
        [
            "dataset",
            "run (placement)",
            "clips/s",
            "valid frames/s",
            "frames per clip",
            "clips/s vs FSDD",
            "frames/s vs FSDD",
            f"best {args.window} steps: clips/s",
            "best vs FSDD's best",
        ],
        rows,
    )

    rows = []
    for name, d in results.items():
        cold, warm = d["runs"]["cold"], d["runs"].get("warm", {})
        if cold.get("placement") != "cache":
            continue
        build = phase(cold, "feature cache")
        rows.append(
            [
                name,
                fmt(sum(cold.get("splits", {}).values()) or None),
                fmt(build, 2),
                fmt(sum(cold.get("splits", {}).values()) / build, 0) if build else "-",
                fmt(phase(warm, "feature cache"), 2),
                fmt(d.get("cache_mb")),
                fmt(d.get("cache_dir_mb")),
            ]
        )
    if rows:
        text += print_table(
            f"Feature cache (data.placement=cache), built by the cold run, read by the warm one ({where})",
            ["dataset", "files", "build (s)", "build (files/s)", "load (s)", "feature files (MB)", "cache dir (MB)"],
            rows,
        )

    if segments:
        rows = []
        for run, r in segments["runs"].items():
            rows.append(
                [
                    f"manifest_segments_{args.manifest_rows}",
                    "/".join(str(r.get("splits", {}).get(s, "?")) for s in ("train", "val", "test")),
                    run if r["status"] == "ok" else f"{run}: {r['status']}",
                    fmt(r.get("phases", {}).get("prepare_data", {}).get("first_start")),
                    fmt(phase(r, "scan+split"), 2),
                    fmt(phase(r, "headers"), 2),
                    fmt(phase(r, "duplicates"), 2),
                    fmt(index_seconds(r), 2),
                    fmt(r.get("setup_done")),
                    fmt(r["memory"]["main_hwm_mb"] or (r.get("rss_mb") or {}).get("VmHWM")),
                ]
            )
        text += print_table(
            f"Indexing a {args.manifest_rows:,}-row manifest (segments of {max(args.sizes):,} files): the command "
            f"stops when setup() returns ({where})",
            [
                "manifest",
                "train/val/test",
                "run",
                "to data start-up",
                "scan+split",
                "headers",
                "duplicate check",
                "scan/index total",
                "setup done (s from start)",
                "main peak RSS (MB)",
            ],
            rows,
        )

    # Growth: k in cost ~ N^k between consecutive sizes of one kind (and from the largest manifest to the segments).
    series = {}
    for d in results.values():
        if "kind" in d:
            series.setdefault(d["kind"], []).append((d["files"], d))
    rows = []
    metrics = [
        ("scan/index, cold (s)", lambda d: index_seconds(d["runs"]["cold"])),
        ("scan/index, warm (s)", lambda d: index_seconds(d["runs"]["warm"])),
        ("first training step, cold (s)", lambda d: d["runs"]["cold"].get("first_step")),
        ("first training step, warm (s)", lambda d: d["runs"]["warm"].get("first_step")),
        ("feature cache build (s)", lambda d: phase(d["runs"]["cold"], "feature cache")),
        ("main peak RSS, warm (MB)", lambda d: d["runs"]["warm"]["memory"]["main_hwm_mb"]),
    ]
    for kind, points in series.items():
        points.sort(key=lambda p: p[0])
        for (n1, d1), (n2, d2) in zip(points, points[1:]):
            for label, get in metrics:
                a, b = get(d1), get(d2)
                exponent = math.log(b / a) / math.log(n2 / n1) if a and b and a > 0 and b > 0 else None
                rows.append(
                    [
                        kind,
                        label,
                        f"{n1:,} -> {n2:,}",
                        fmt(a, 2),
                        fmt(b, 2),
                        fmt(b / a, 2) if a and b else "-",
                        fmt(exponent, 2),
                    ]
                )
    if segments and "manifest" in series:
        n1, d1 = series["manifest"][-1]
        for run in ("cold", "warm"):
            a, b = index_seconds(d1["runs"][run]), index_seconds(segments["runs"][run])
            exponent = math.log(b / a) / math.log(args.manifest_rows / n1) if a and b else None
            rows.append(
                [
                    "manifest rows",
                    f"scan/index, {run} (s)",
                    f"{n1:,} -> {args.manifest_rows:,}",
                    fmt(a, 2),
                    fmt(b, 2),
                    fmt(b / a, 2) if a and b else "-",
                    fmt(exponent, 2),
                ]
            )
    if rows:
        text += print_table(
            f"Growth with the number of files (cost ~ N^k; k = 1 is linear) ({where})",
            ["kind", "metric", "files", "before", "after", "ratio", "k"],
            rows,
        )
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "logs" / "scale_data", help="gen_scale_data.py's --out")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--kinds", nargs="+", choices=("folder", "manifest"), default=["folder", "manifest"])
    parser.add_argument("--manifest-rows", type=int, default=0, help="index the segment manifest of this many rows")
    parser.add_argument("--placements", nargs="+", choices=("cache", "worker"), default=["cache", "worker"])
    parser.add_argument(
        "--worker-for",
        nargs="+",
        choices=("fsdd", "folder", "manifest"),
        default=["fsdd", "folder"],
        help="the datasets that get the placement=worker run (a manifest's data path is a folder's once indexed)",
    )
    parser.add_argument("--warmup", type=int, default=30, help="training steps before the throughput is timed")
    parser.add_argument("--steps", type=int, default=300, help="training steps timed for the throughput")
    parser.add_argument("--window", type=int, default=50, help="steps per window (the best window is reported too)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each training command")
    parser.add_argument(
        "--no-evict", action="store_true", help="cold runs without evicting the data from the page cache"
    )
    parser.add_argument("--keep-cache", action="store_true", help="keep the feature caches in the log folder")
    parser.add_argument("--work", type=Path, default=None, help="where logs and tables go (default logs/bench_scale)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every command (after --)")
    main(parser.parse_args())
