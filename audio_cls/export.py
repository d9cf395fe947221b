"""Export a trained model: `python -m audio_cls.export ckpt_path=CKPT format=onnx|torchscript [output_dir=DIR]`.

Writes `model.onnx` or `model.pt` (TorchScript) and `model.json`, a sidecar with the class names, the
sample rate, the input layout, what is inside the graph, and the parity check it passed.

What is inside the graph (`frontend`):
  inside   waveform (batch, samples) float32 at the model's rate + lengths (batch,) int64 in samples
           -> front end (STFT, mel filterbank, dB / MFCC / raw frames, and the normalization with its
           saved statistics) -> network -> logits, probabilities (softmax)
  outside  features (batch, frames, feat) + frames (batch,) -> network -> logits, probabilities; the front
           end is then `audio_cls.features` (the checkpoint's `features` config and statistics)
  auto     inside when it exports and passes the parity check, else outside
A sound event detection model (multi-label, with a frame head: `AudioClassifier.detects_events`) has two more outputs
after those: frame_probabilities (batch, frames', classes) float32, the sigmoid of the frame logits, and
frame_lengths (batch,) int64, each item's valid frames; the sidecar gives the seconds per frame and the
settings that turn frames into events (`audio_cls.sed.events_from_scores`).
Always outside: decoding, mixing to mono, resampling, and cutting long recordings into windows
(`audio_cls.inference.Classifier` does those; the sidecar gives the window length).

Exporters: ONNX with torch.export (`torch.onnx.export(dynamo=True)`), which turns the STFT into ONNX DFT
ops; the older TorchScript-based ONNX exporter cannot export a complex STFT, but is the fallback for a
network alone that torch.export cannot capture (packed LSTM/GRU sequences). TorchScript with
`torch.jit.trace`. Every export is checked on the spot: the exported file is run (onnxruntime, or
torch.jit.load) on random batches of other shapes than the example, and on real recordings with
`check_input=PATH`, and must match the PyTorch model within `tolerance` (max abs difference; frame
probabilities over each item's valid frames, whose counts must match exactly).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from audio_cls import CONF_DIR
from audio_cls.errors import ConfigError
from audio_cls.features import FeatureExtractor
from audio_cls.inference import Classifier, FrameGraph, InferenceGraph, collect_sources, extract, temperature_of
from audio_cls.module import AudioClassifier, frame_hop
from audio_cls.runs import run_task, write_json

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
FRONTENDS = ("auto", "inside", "outside")
OUTPUT_NAMES = ("logits", "probabilities")
FRAME_OUTPUT_NAMES = ("frame_probabilities", "frame_lengths")  # after OUTPUT_NAMES, sound event detection only


def inference_graph(module: AudioClassifier, features: FeatureExtractor | None, net: nn.Module) -> InferenceGraph:
    """The graph that is exported (and its PyTorch reference): with the frame outputs for a SED model."""
    if module.detects_events:
        return FrameGraph(features, net, module.multilabel)
    return InferenceGraph(features, net, module.multilabel, temperature_of(module))


class BlockMaxPool(nn.Module):
    """MaxPool1d/2d with stride = kernel, no padding, floor mode, written as reshape + amax: the same
    numbers, but torch.export keeps the time axis dynamic (it fixes it to the example's length for
    nn.MaxPool1d/2d in torch 2.11)."""

    def __init__(self, kernel: int, dims: int):
        super().__init__()
        self.kernel, self.dims = kernel, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        if self.dims == 1:
            n = x.shape[-1] // k
            return x[..., : n * k].unflatten(-1, (n, k)).amax(-1)
        h, w = x.shape[-2] // k, x.shape[-1] // k
        return x[..., : h * k, : w * k].unflatten(-1, (w, k)).unflatten(-3, (h, k)).amax((-3, -1))


def exportable_copy(net: nn.Module, swap_pools: bool) -> nn.Module:
    """A copy of `net` that the exporters can capture with a dynamic time axis. (The CNNs' Python-side check
    of the shortest length turns itself off while a graph is captured, see
    audio_cls.model.layers.host_checks_enabled: inputs shorter than the sidecar's min_length are the caller's
    to pad, as Classifier does.)"""
    net = copy.deepcopy(net).eval()
    if swap_pools:
        for name, module in list(net.named_modules()):
            kernel = _block_pool_kernel(module)
            if kernel is not None:
                parent, _, attr = name.rpartition(".")
                dims = 1 if isinstance(module, nn.MaxPool1d) else 2
                setattr(net.get_submodule(parent), attr, BlockMaxPool(kernel, dims))
    return net


def _block_pool_kernel(module: nn.Module) -> int | None:
    """The kernel of an nn.MaxPool1d/2d that BlockMaxPool computes exactly (square, stride = kernel, no
    padding or dilation, floor mode), else None."""
    if not isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)) or module.ceil_mode or module.return_indices:
        return None
    values = {
        name: set(np.atleast_1d(getattr(module, name)).tolist())
        for name in ("kernel_size", "stride", "padding", "dilation")
    }
    if (
        len(values["kernel_size"]) != 1
        or values["stride"] != values["kernel_size"]
        or values["padding"] != {0}
        or values["dilation"] != {1}
    ):
        return None
    return values["kernel_size"].pop()


@dataclass
class Exported:
    path: Path
    format: str
    exporter: str
    frontend_inside: bool
    min_length: int  # shortest time axis (samples inside, frames outside) the graph accepts
    frame_outputs: bool = False  # sound event detection: frame_probabilities and frame_lengths after the rest

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES + (FRAME_OUTPUT_NAMES if self.frame_outputs else ())


def export_graph(
    module: AudioClassifier,
    fmt: str,
    path: Path,
    frontend_inside: bool,
    exporter: str,
    example_samples: int,
    min_samples: int,
) -> Exported:
    """Export the model (with or without its front end) with one exporter; raises on failure."""
    features = module.features.eval()
    graph = inference_graph(
        module, features if frontend_inside else None, exportable_copy(module.net, exporter == "dynamo")
    )
    frames = isinstance(graph, FrameGraph)
    outputs = OUTPUT_NAMES + (FRAME_OUTPUT_NAMES if frames else ())
    waves = torch.randn(2, example_samples) * 0.1
    lengths = torch.tensor([example_samples, max(min_samples, example_samples * 3 // 4)])
    with torch.no_grad():
        inputs = (waves, lengths) if frontend_inside else extract(features, waves, lengths)
    python_min = min_samples if frontend_inside else int(features.num_frames(min_samples))
    with warnings.catch_warnings():
        # torch.jit.trace and the TorchScript-based ONNX exporter are deprecated in torch 2.11 and say so
        # at every call; the traces are checked below for parity instead.
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace(graph, inputs).save(str(path))
            return Exported(path, fmt, "torch.jit.trace", frontend_inside, python_min, frames)
        names = graph.input_names
        if exporter == "dynamo":
            program = torch.onnx.export(
                graph,
                inputs,
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=list(names),
                output_names=list(outputs),
                dynamic_shapes={
                    "inputs": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},
                    "lengths": {0: torch.export.Dim.AUTO},
                },
            )
            bound = _exported_min_length(program.exported_program)
            dynamo = "torch.onnx.export(dynamo=True)"
            return Exported(path, fmt, dynamo, frontend_inside, max(python_min, bound), frames)
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            dynamo=False,
            input_names=list(names),
            output_names=list(outputs),
            opset_version=17,
            dynamic_axes={
                names[0]: {0: "batch", 1: "time"},
                names[1]: {0: "batch"},
                "logits": {0: "batch"},
                "probabilities": {0: "batch"},
                **({"frame_probabilities": {0: "batch", 1: "frames"}, "frame_lengths": {0: "batch"}} if frames else {}),
            },
        )
        return Exported(path, fmt, "torch.onnx.export(dynamo=False)", frontend_inside, python_min, frames)


def _exported_min_length(program) -> int:
    """The lower bound torch.export derived for the first input's time axis (0 when it is not symbolic)."""
    first = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == first)
    dim = node.meta["val"].shape[1]
    if isinstance(dim, torch.SymInt):
        bound = program.range_constraints.get(dim.node.expr)
        return int(bound.lower) if bound is not None else 0
    return int(dim)  # a fixed length: parity on other lengths will fail and say so


def run_exported(exported: Exported, inputs: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
    """Run the exported file (onnxruntime, or torch.jit.load) -> [logits, probabilities] (and, with frame
    outputs, frame_probabilities, frame_lengths)."""
    if exported.format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.11
            return [t.numpy() for t in torch.jit.load(str(exported.path))(inputs, lengths)]
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {names[0]: inputs.numpy(), names[1]: lengths.numpy().astype(np.int64)}
    return session.run(list(exported.output_names), feeds)


def random_batches(example_samples: int, min_samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random waveforms of other shapes than the export example (so a graph fixed to the example's shape
    fails here): a padded batch of three lengths, and one recording of the shortest length accepted."""
    generator = torch.Generator().manual_seed(0)
    longer = example_samples + example_samples // 3 + 7
    lengths = torch.tensor([longer, max(min_samples, longer // 2), min_samples])
    return [
        (torch.randn(3, longer, generator=generator) * 0.1, lengths),
        (torch.randn(1, min_samples, generator=generator) * 0.3, torch.tensor([min_samples])),
    ]


def real_batch(classifier: Classifier, spec: str, limit: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `limit` recordings of `spec` (a file, folder or manifest) at the model's rate, padded."""
    waves = []
    for source in collect_sources(spec)[:limit]:
        wave, _ = classifier.load(source.path, start=source.start, end=source.end)
        waves.append(nn.functional.pad(wave, (0, max(0, classifier.min_samples - wave.numel()))))
    lengths = torch.tensor([w.numel() for w in waves])
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def parity(module: AudioClassifier, exported: Exported, batches: dict[str, list]) -> dict[str, dict[str, float]]:
    """Max abs difference of logits and probabilities between the exported file and the PyTorch model,
    per kind of input ("random", "real"). The reference is the original network (with its nn.MaxPool)
    on the same inputs: waveforms with the front end inside, else features from the PyTorch front end.
    With frame outputs also frame_probabilities, over each item's valid frames only (the rest is padding),
    and frame_lengths (in frames; anything but 0 fails the check). NaN counts as the largest difference."""
    features = module.features if exported.frontend_inside else None
    reference = inference_graph(module, features, module.net)
    reference.eval()
    result = {}
    for kind, pairs in batches.items():
        diffs = {name: 0.0 for name in exported.output_names}
        for waves, lengths in pairs:
            with torch.no_grad():
                inputs = (waves, lengths) if exported.frontend_inside else extract(module.features, waves, lengths)
                inputs = _at_least(*inputs, exported.min_length)
                expected = [t.numpy() for t in reference(*inputs)]
            got = run_exported(exported, *inputs)
            for name, want, have in zip(OUTPUT_NAMES, expected, got):
                diffs[name] = _larger(diffs[name], _max_abs_diff(want, have))
            if exported.frame_outputs:
                frames, lengths_off = _frame_diffs(*expected[2:], *got[2:])
                diffs["frame_probabilities"] = _larger(diffs["frame_probabilities"], frames)
                diffs["frame_lengths"] = _larger(diffs["frame_lengths"], lengths_off)
        result[kind] = diffs
    return result


def _max_abs_diff(want: np.ndarray, have: np.ndarray) -> float:
    if want.shape != have.shape:
        return math.inf
    return float(np.abs(want - have).max()) if want.size else 0.0


def _larger(a: float, b: float) -> float:
    """max(a, b), with NaN the largest (Python's max keeps its first argument when the other is NaN)."""
    return b if math.isnan(b) or b > a else a


def _frame_diffs(
    want: np.ndarray, want_lengths: np.ndarray, have: np.ndarray, have_lengths: np.ndarray
) -> tuple[float, float]:
    """Max abs difference of frame probabilities (batch, frames, classes) over each item's valid frames (the
    reference's lengths), and of the frame lengths; inf where the shapes cannot be compared."""
    want_lengths, have_lengths = np.asarray(want_lengths), np.asarray(have_lengths)
    if want_lengths.shape != have_lengths.shape:
        return math.inf, math.inf
    lengths_off = float(np.abs(want_lengths.astype(np.int64) - have_lengths.astype(np.int64)).max(initial=0))
    valid = int(want_lengths.max(initial=0))
    if have.shape[0] != want.shape[0] or have.shape[2:] != want.shape[2:] or have.shape[1] < valid:
        return math.inf, lengths_off
    mask = np.arange(valid)[None, :] < want_lengths[:, None]  # (batch, valid frames)
    diff = np.abs(want[:, :valid] - have[:, :valid])[mask]
    return (float(diff.max()) if diff.size else 0.0), lengths_off


def _at_least(x: torch.Tensor, lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the time axis (dim 1) to `n` and count it valid: what a caller does for a graph whose
    minimum length (torch.export's bound) is above the network's own."""
    if x.shape[1] < n:
        pad = [0, 0] * (x.dim() - 2) + [0, n - x.shape[1]]
        x = nn.functional.pad(x, pad)
    return x, lengths.clamp(min=n)


def attempts(fmt: str, frontend: str) -> list[tuple[bool, str]]:
    """(front end inside?, exporter) in the order tried."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if frontend not in FRONTENDS:
        raise ConfigError(f"frontend={frontend!r}: expected one of {', '.join(FRONTENDS)}")
    order = (
        [(True, "trace"), (False, "trace")]
        if fmt == "torchscript"
        else [(True, "dynamo"), (False, "dynamo"), (False, "legacy")]
    )
    return [a for a in order if frontend == "auto" or a[0] == (frontend == "inside")]


def export_checked(
    classifier: Classifier,
    fmt: str,
    output_dir: Path,
    frontend: str = "auto",
    tolerance: float = 1e-4,
    check_input: str | None = None,
) -> tuple[Exported, dict, list[str]]:
    """Export, check parity, fall back (see `attempts`) until one passes. Returns the export, its parity
    and what the failed attempts said; a ConfigError when none passes."""
    module = classifier.module.cpu().eval()
    sr = classifier.sample_rate
    example = classifier.window or sr  # the training clip length, else one second
    min_samples = classifier.min_samples
    batches = {"random": random_batches(example, min_samples)}
    if check_input:
        batches["real"] = [real_batch(classifier, check_input)]
    path = output_dir / FORMATS[fmt]
    failures = []
    for inside, exporter in attempts(fmt, frontend):
        what = f"{'front end + network' if inside else 'network alone'} with {exporter}"
        try:
            exported = export_graph(module, fmt, path, inside, exporter, example, min_samples)
            diffs = parity(module, exported, batches)
        except Exception as err:  # an exporter's failure is a reason to try the next way, not a crash
            failures.append(f"{what}: {type(err).__name__}: {_short(err)}")
            log.info("Export of the %s failed: %s", what, failures[-1])
            continue
        reason = parity_failure(diffs, tolerance)
        if reason is None:
            return exported, diffs, failures
        failures.append(f"{what}: {reason}")
        log.info("Export of the %s failed the parity check: %s", what, failures[-1])
    path.unlink(missing_ok=True)
    raise ConfigError(f"format={fmt} frontend={frontend}: no export passed: " + "; ".join(failures))


def parity_failure(diffs: dict[str, dict[str, float]], tolerance: float) -> str | None:
    """Why `parity`'s differences fail the check, or None when they pass: every output within `tolerance`
    (NaN never is), and the frame lengths equal whatever the tolerance."""
    worst, lengths_off = 0.0, 0.0
    for d in diffs.values():
        for name, value in d.items():
            if name == "frame_lengths":
                lengths_off = _larger(lengths_off, value)
            else:
                worst = _larger(worst, value)
    if lengths_off != 0:
        return f"frame lengths differ from the PyTorch model's by up to {lengths_off:g}"
    if not worst <= tolerance:
        return f"max abs difference {worst:.2e} > tolerance {tolerance:g}"
    return None


def _short(err: BaseException) -> str:
    """One line of an exporter's error: torch.onnx's long reports name the cause under "Exception summary"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # colour codes
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines[:-1]:
        lines = lines[lines.index("## Exception summary") + 1 :]
    return lines[0][:300] if lines else type(err).__name__


def sidecar(
    classifier: Classifier, exported: Exported, diffs: dict, tolerance: float, failures: list[str], ckpt_path: str
) -> dict:
    config = classifier.module.hparams["config"]
    features = type(classifier.features).__name__
    net = type(classifier.net).__name__
    inside = [
        f"{features} front end ({_front_end_parts(classifier.features)})",
        f"normalization: {classifier.features.normalize}",
        f"{net} network",
        ("sigmoid per class" if classifier.multilabel else f"softmax of logits / {classifier.graph.temperature:.4g}")
        + (" (of the clip logits and of the frame logits)" if exported.frame_outputs else ""),
    ]
    if exported.frontend_inside:
        inputs = {
            "waveform": "float32 (batch, samples): mono audio at sample_rate, zero-padded to the longest",
            "lengths": "int64 (batch,): valid samples of each item",
        }
    else:
        inputs = {
            "features": f"float32 (batch, frames, {classifier.features.num_features}): normalized output of "
            f"audio_cls.features.{features} with the config below",
            "frames": "int64 (batch,): valid frames of each item",
        }
        inside = inside[2:]
    window = (
        f"cut recordings into windows of {classifier.window_s:g} s (the training clip length) every "
        f"{classifier.hop_s:g} s, zero-pad the last, average the windows' probabilities"
        if classifier.window
        else "pass recordings whole (training used whole recordings)"
    )
    outputs = {
        "logits": "float32 (batch, num_classes)",
        "probabilities": "float32 (batch, num_classes): "
        + (
            "sigmoid of logits (multi-label)"
            if classifier.multilabel
            else f"softmax of logits / temperature {classifier.graph.temperature:.6g} (calibrated on validation)"
        ),
    }
    if exported.frame_outputs:
        outputs.update(frame_outputs())
    return {
        "file": exported.path.name,
        "format": exported.format,
        "exporter": exported.exporter,
        "torch_version": torch.__version__,
        "checkpoint": str(ckpt_path),
        "class_names": classifier.class_names,
        "sample_rate": classifier.sample_rate,
        "window_s": classifier.window_s,
        "hop_s": classifier.hop_s,
        "frontend_inside": exported.frontend_inside,
        "inputs": inputs,
        "outputs": outputs,
        # multi-label: a class is detected when its probability reaches its threshold (tuned on validation)
        "thresholds": dict(zip(classifier.class_names, classifier.thresholds)) if classifier.multilabel else None,
        **event_settings(classifier, exported.frame_outputs),
        "min_length": exported.min_length,
        "min_length_unit": "samples" if exported.frontend_inside else "frames",
        "inside_graph": inside,
        "outside_graph": [
            "decoding, mixing to mono",
            f"resampling to {classifier.sample_rate} Hz",
            window,
            *([] if exported.frontend_inside else [f"the {features} front end"]),
            *(["events from the frame probabilities (see events)"] if exported.frame_outputs else []),
        ],
        "features": config["features"],
        "model": config["model"],
        "parity": {"max_abs_diff": diffs, "tolerance": tolerance},
        "failed_attempts": failures,
    }


def frame_outputs() -> dict[str, str]:
    """The sidecar's description of a SED graph's frame outputs."""
    return {
        "frame_probabilities": "float32 (batch, frames, num_classes): sigmoid of the frame logits (sound event "
        "detection); frame t of an item covers [t * frame_hop_s, (t + 1) * frame_hop_s) s of its input; frames "
        "from frame_lengths on are padding",
        "frame_lengths": "int64 (batch,): valid frames of each item",
    }


def event_settings(classifier: Classifier, frame_outputs: bool = True) -> dict:
    """Sidecar entries of a SED model: seconds per output frame, per-class frame thresholds where the checkpoint
    has them, and how frames become events (the training run's task settings; audio_cls.sed.events_from_scores
    is the reference). The same keys, None, for a graph without frame outputs."""
    if not frame_outputs:
        return {"frame_hop_s": None, "frame_thresholds": None, "events": None}
    hop = frame_hop(classifier.features.hop_samples / classifier.sample_rate, classifier.net)
    settings = classifier.event_settings
    return {
        "frame_hop_s": hop,
        "frame_thresholds": dict(zip(classifier.class_names, (float(t) for t in classifier.frame_thresholds))),
        "events": {
            "reference": "audio_cls.sed.events_from_scores(frame_probabilities[i, :frame_lengths[i]], frame_hop_s, "
            "class_names, [frame_thresholds[c] for c in class_names], median_frames, min_duration_s, min_gap_s)",
            "input": "one recording whole (a batch of one, zero-padded to min_length), not windows; its "
            "frame_probabilities up to frame_lengths",
            "median_frames": int(settings.get("median_frames", 1)),
            "min_duration_s": float(settings.get("min_duration", 0.0)),
            "min_gap_s": float(settings.get("min_gap", 0.0)),
            "steps": [
                "median-filter each class's frame probabilities along time over median_frames frames (odd; 1: "
                "none; the edge frames repeated)",
                "a frame is active for a class where its filtered probability >= the class's frame threshold "
                "(frame_thresholds)",
                "each run of active frames a..b-1 is an event from a * frame_hop_s to b * frame_hop_s s, scored "
                "with the largest filtered probability inside it",
                "events of a class less than min_gap_s apart are merged; events shorter than min_duration_s are "
                "dropped",
            ],
        },
    }


def _front_end_parts(features: FeatureExtractor) -> str:
    return {
        "LogMel": "STFT, mel filterbank, dB",
        "MFCC": "STFT, mel filterbank, log, DCT",
        "Spectrogram": "STFT, power, dB",
        "RawWaveform": "framing",
    }.get(type(features).__name__, "compute")


def require_onnx() -> None:
    """torch.onnx.export(dynamo=True) needs onnx and onnxscript; the parity check needs onnxruntime."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"format=onnx needs {', '.join(missing)}: pip install -e '.[export]'")


def export(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    if cfg.format == "onnx":
        require_onnx()
        for name in ("onnx_ir", "onnxscript"):  # they log every optimizer pass at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
    classifier = Classifier.from_checkpoint(cfg.ckpt_path)
    if cfg.check_input and not Path(cfg.check_input).exists():
        raise ConfigError(f"check_input={cfg.check_input}: no such file or directory")
    exported, diffs, failures = export_checked(
        classifier, cfg.format, output_dir, cfg.frontend, float(cfg.tolerance), cfg.check_input
    )
    info = sidecar(classifier, exported, diffs, float(cfg.tolerance), failures, cfg.ckpt_path)
    write_json(output_dir / "model.json", info)
    log.info(
        "Exported %s (%s; %s) to %s; parity max abs diff %s",
        exported.format,
        exported.exporter,
        "front end inside" if exported.frontend_inside else "network alone",
        exported.path,
        diffs,
    )
    print(
        f"{exported.path} ({exported.exporter}; inside the graph: {', '.join(info['inside_graph'])})\n"
        f"parity with PyTorch, max abs difference: " + ", ".join(_parity_line(kind, d) for kind, d in diffs.items())
    )
    return {
        "model": str(exported.path),
        "sidecar": str(output_dir / "model.json"),
        "exporter": exported.exporter,
        "frontend_inside": exported.frontend_inside,
        **{f"parity/{kind}/{name}": value for kind, d in diffs.items() for name, value in d.items()},
    }


def _parity_line(kind: str, d: dict[str, float]) -> str:
    line = f"{kind} {d['probabilities']:.2e} (probabilities) {d['logits']:.2e} (logits)"
    if "frame_probabilities" in d:
        line += f" {d['frame_probabilities']:.2e} (frame probabilities) {d['frame_lengths']:g} (frame lengths)"
    return line


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export, cfg, reuse_dir=cfg.overwrite, outputs=(*FORMATS.values(), "model.json"))


if __name__ == "__main__":
    main()
