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
Always outside: decoding, mixing to mono, resampling, and cutting long recordings into windows
(`audio_cls.inference.Classifier` does those; the sidecar gives the window length).

Exporters: ONNX with torch.export (`torch.onnx.export(dynamo=True)`), which turns the STFT into ONNX DFT
ops; the older TorchScript-based ONNX exporter cannot export a complex STFT, but is the fallback for a
network alone that torch.export cannot capture (packed LSTM/GRU sequences). TorchScript with
`torch.jit.trace`. Every export is checked on the spot: the exported file is run (onnxruntime, or
torch.jit.load) on random batches of other shapes than the example, and on real recordings with
`check_input=PATH`, and must match the PyTorch model within `tolerance` (max abs difference).
"""

from __future__ import annotations

import copy
import logging
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
from audio_cls.inference import Classifier, InferenceGraph, collect_sources, extract
from audio_cls.module import AudioClassifier
from audio_cls.runs import run_task, write_json

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
FRONTENDS = ("auto", "inside", "outside")
OUTPUT_NAMES = ("logits", "probabilities")


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
    graph = InferenceGraph(
        features if frontend_inside else None, exportable_copy(module.net, exporter == "dynamo"), module.multilabel
    )
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
            return Exported(path, fmt, "torch.jit.trace", frontend_inside, python_min)
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
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={
                    "inputs": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},
                    "lengths": {0: torch.export.Dim.AUTO},
                },
            )
            bound = _exported_min_length(program.exported_program)
            return Exported(path, fmt, "torch.onnx.export(dynamo=True)", frontend_inside, max(python_min, bound))
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            dynamo=False,
            input_names=list(names),
            output_names=list(OUTPUT_NAMES),
            opset_version=17,
            dynamic_axes={
                names[0]: {0: "batch", 1: "time"},
                names[1]: {0: "batch"},
                "logits": {0: "batch"},
                "probabilities": {0: "batch"},
            },
        )
        return Exported(path, fmt, "torch.onnx.export(dynamo=False)", frontend_inside, python_min)


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
    """Run the exported file (onnxruntime, or torch.jit.load) -> [logits, probabilities]."""
    if exported.format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.11
            return [t.numpy() for t in torch.jit.load(str(exported.path))(inputs, lengths)]
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(list(OUTPUT_NAMES), {names[0]: inputs.numpy(), names[1]: lengths.numpy().astype(np.int64)})


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
    on the same inputs: waveforms with the front end inside, else features from the PyTorch front end."""
    reference = InferenceGraph(
        module.features if exported.frontend_inside else None, module.net, module.multilabel
    ).eval()
    result = {}
    for kind, pairs in batches.items():
        diffs = {name: 0.0 for name in OUTPUT_NAMES}
        for waves, lengths in pairs:
            with torch.no_grad():
                inputs = (waves, lengths) if exported.frontend_inside else extract(module.features, waves, lengths)
                inputs = _at_least(*inputs, exported.min_length)
                expected = reference(*inputs)
            for name, want, have in zip(OUTPUT_NAMES, expected, run_exported(exported, *inputs)):
                diffs[name] = max(diffs[name], float(np.abs(want.numpy() - have).max()))
        result[kind] = diffs
    return result


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
        worst = max(max(d.values()) for d in diffs.values())
        if worst <= tolerance:
            return exported, diffs, failures
        failures.append(f"{what}: max abs difference {worst:.2e} > tolerance {tolerance:g}")
        log.info("Export of the %s failed the parity check: %s", what, failures[-1])
    path.unlink(missing_ok=True)
    raise ConfigError(f"format={fmt} frontend={frontend}: no export passed: " + "; ".join(failures))


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
        "sigmoid per class" if classifier.multilabel else "softmax",
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
        "outputs": {
            "logits": "float32 (batch, num_classes)",
            "probabilities": "float32 (batch, num_classes): "
            + ("sigmoid of logits (multi-label)" if classifier.multilabel else "softmax of logits"),
        },
        # multi-label: a class is detected when its probability reaches its threshold (tuned on validation)
        "thresholds": dict(zip(classifier.class_names, classifier.thresholds)) if classifier.multilabel else None,
        "min_length": exported.min_length,
        "min_length_unit": "samples" if exported.frontend_inside else "frames",
        "inside_graph": inside,
        "outside_graph": [
            "decoding, mixing to mono",
            f"resampling to {classifier.sample_rate} Hz",
            window,
            *([] if exported.frontend_inside else [f"the {features} front end"]),
        ],
        "features": config["features"],
        "model": config["model"],
        "parity": {"max_abs_diff": diffs, "tolerance": tolerance},
        "failed_attempts": failures,
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
        f"parity with PyTorch, max abs difference: "
        + ", ".join(
            f"{kind} {d['probabilities']:.2e} (probabilities) {d['logits']:.2e} (logits)" for kind, d in diffs.items()
        )
    )
    return {
        "model": str(exported.path),
        "sidecar": str(output_dir / "model.json"),
        "exporter": exported.exporter,
        "frontend_inside": exported.frontend_inside,
        **{f"parity/{kind}/{name}": value for kind, d in diffs.items() for name, value in d.items()},
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export, cfg, reuse_dir=cfg.overwrite, outputs=(*FORMATS.values(), "model.json"))


if __name__ == "__main__":
    main()
