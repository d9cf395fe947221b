"""Export to ONNX and TorchScript: what is inside the graph, the sidecar, and parity with the PyTorch model
(max abs difference < 1e-4 in float32) on random and real (FSDD) inputs, for every network of conf/model and
every front end of conf/features; sound event detection models' frame outputs."""

import json
import re
import shutil
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn

from audio_cls import export as export_module
from audio_cls.errors import ConfigError
from audio_cls.export import (
    FRAME_OUTPUT_NAMES,
    OUTPUT_NAMES,
    BlockMaxPool,
    attempts,
    export_checked,
    export_graph,
    inference_graph,
    parity_failure,
    random_batches,
    run_exported,
    sidecar,
)
from audio_cls.inference import Classifier, InferenceGraph, extract
from audio_cls.module import AudioClassifier, frame_hop
from audio_cls.sed import events_from_scores
from helpers import FSDD, REPO, randomize_batch_norm, run_entry

TOLERANCE = 1e-4
# Real recordings of two speakers, none in the training slice (jackson and nicolas, recordings 0-9).
FILES = [FSDD / "recordings" / f"{d}_{speaker}_4{d}.wav" for speaker in ("jackson", "theo") for d in range(6)]


@pytest.fixture(scope="module")
def classifier(trained_checkpoint):
    return Classifier.from_checkpoint(trained_checkpoint)


def real_batch(classifier):
    """FSDD recordings at the model's rate, zero-padded to the longest, with their lengths in samples."""
    waves = [classifier.load(path)[0] for path in FILES]
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])


def random_batch(classifier, samples=7001):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, samples, generator=generator) * 0.2, torch.tensor([samples, 3000, classifier.min_samples])


def pytorch_outputs(classifier, waves, lengths):
    """The PyTorch model on a padded batch, as on_after_batch_transfer runs it: front end, network; softmax at the
    checkpoint's temperature."""
    with torch.no_grad():
        x = classifier.features(waves, lengths)
        logits = classifier.net(x, classifier.features.num_frames(lengths).clamp(max=x.shape[1]))
    return logits.numpy(), (logits / classifier.module.temperature).softmax(-1).numpy()


def max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_block_max_pool_computes_what_max_pool_does():
    x = torch.randn(2, 3, 11, 13)
    torch.testing.assert_close(BlockMaxPool(2, 1)(x[:, :, 0]), nn.MaxPool1d(2)(x[:, :, 0]), rtol=0, atol=0)
    torch.testing.assert_close(BlockMaxPool(3, 2)(x), nn.MaxPool2d(3)(x), rtol=0, atol=0)


@pytest.mark.slow
def test_onnx_entry_point_with_the_front_end_inside(trained_checkpoint, classifier, tmp_path):
    out = tmp_path / "onnx"
    proc = run_entry(
        "audio_cls.export",
        f"ckpt_path={trained_checkpoint}",
        "format=onnx",
        f"output_dir={out}",
        f"check_input={FILES[0]}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["file"] == "model.onnx" and info["frontend_inside"] is True
    assert info["exporter"] == "torch.onnx.export(dynamo=True)" and info["failed_attempts"] == []
    assert list(info["inputs"]) == ["waveform", "lengths"] and info["min_length"] >= classifier.min_samples
    assert info["inside_graph"][0].startswith("LogMel front end (STFT")
    assert (info["class_names"], info["sample_rate"], info["window_s"]) == (classifier.class_names, 8000, 0.5)
    assert max(max(d.values()) for d in info["parity"]["max_abs_diff"].values()) < TOLERANCE

    # Running it as the README shows: onnxruntime and numpy only, windows as Classifier cuts them.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform", "lengths"]
    window = round(info["window_s"] * info["sample_rate"])
    hop = round(info["hop_s"] * info["sample_rate"])
    for path in FILES:
        audio, rate = sf.read(str(path), dtype="float32")  # mono, at the model's rate already
        assert rate == info["sample_rate"]
        count = 1 if len(audio) <= window else 1 + -(-(len(audio) - window) // hop)
        audio = np.pad(audio, (0, (count - 1) * hop + window - len(audio)))
        clips = np.stack([audio[i * hop : i * hop + window] for i in range(count)])
        _, probs = session.run(
            ["logits", "probabilities"], {"waveform": clips, "lengths": np.full(count, window, dtype=np.int64)}
        )
        scores = probs.mean(axis=0)
        expected = classifier.predict(path)
        assert count == expected.num_windows
        assert np.abs(scores - np.array(expected.scores)).max() < TOLERANCE
        assert info["class_names"][int(scores.argmax())] == expected.label
        assert scores.sum() == pytest.approx(1.0, abs=1e-5)

    for waves, lengths in (real_batch(classifier), random_batch(classifier)):  # padded batches, other shapes
        got = session.run(["logits", "probabilities"], {"waveform": waves.numpy(), "lengths": lengths.numpy()})
        assert max_diff(got, pytorch_outputs(classifier, waves, lengths)) < TOLERANCE


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_with_the_front_end_inside(classifier, tmp_path):
    exported, diffs, failures = export_checked(classifier, "torchscript", tmp_path, check_input=str(FILES[0]))
    assert (exported.exporter, exported.frontend_inside, failures) == ("torch.jit.trace", True, [])
    assert set(diffs) == {"random", "real"}
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    for waves, lengths in (real_batch(classifier), random_batch(classifier)):
        with torch.no_grad():
            got = [t.numpy() for t in scripted(waves, lengths)]
        assert max_diff(got, pytorch_outputs(classifier, waves, lengths)) < TOLERANCE


@pytest.mark.slow
def test_onnx_network_alone_takes_features(classifier, tmp_path):
    exported, _, _ = export_checked(classifier, "onnx", tmp_path, frontend="outside")
    assert not exported.frontend_inside and exported.exporter == "torch.onnx.export(dynamo=True)"
    info = sidecar(classifier, exported, {}, TOLERANCE, [], "x.ckpt")
    assert list(info["inputs"]) == ["features", "frames"] and "the LogMel front end" in info["outside_graph"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    waves, lengths = real_batch(classifier)
    with torch.no_grad():  # the separate front end: audio_cls.features, with the checkpoint's statistics
        x = classifier.features(waves, lengths)
    frames = classifier.features.num_frames(lengths).clamp(max=x.shape[1])
    got = session.run(None, {"features": x.numpy(), "frames": frames.numpy()})
    assert max_diff(got, pytorch_outputs(classifier, waves, lengths)) < TOLERANCE


@pytest.mark.slow
def test_export_settings_and_a_failed_parity_check(classifier, tmp_path):
    with pytest.raises(ConfigError, match="format='tflite': expected one of onnx, torchscript"):
        attempts("tflite", "auto")
    with pytest.raises(ConfigError, match="frontend='both'"):
        attempts("onnx", "both")
    assert attempts("onnx", "inside") == [(True, "dynamo")]
    # A tolerance nothing can meet: every attempt fails the check, and no file is left behind.
    with pytest.raises(ConfigError, match=r"no export passed: .*max abs difference .* > tolerance -1"):
        export_checked(classifier, "torchscript", tmp_path, tolerance=-1)
    assert not (tmp_path / "model.pt").exists()


# --- every network x every front end, small and randomly initialized ----------------------------------------
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if not p.stem.startswith("_"))
FRONT_ENDS = sorted(p.stem for p in (REPO / "conf" / "features").glob("*.yaml") if not p.stem.startswith("_"))
# Shipped settings but for the widths, so that exporting takes seconds.
TINY = {
    "bcresnet": [],  # width 1: 9k parameters
    "cnn1d": ["model.channels=[8,8,8]"],
    "cnn2d": ["model.channels=[4,8,8]"],
    "crnn": ["model.channels=[8,8]", "model.hidden_size=8"],
    "lstm": ["model.hidden_size=8"],
    "matchboxnet": ["model.channels=8", "model.prologue_channels=8", "model.epilogue_channels=8"],
}
# Networks exported elsewhere, with the reason: they cannot be built from their shipped config alone.
EXPORTED_ELSEWHERE = {
    "hf": "needs a saved pretrained model (model.pretrained); tests/test_hf.py exports tiny ones of each architecture",
}
# torch.export cannot capture packed sequences (the LSTM, CRNN's GRU), and the TorchScript-based ONNX exporter
# cannot export the STFT: their ONNX file is the network alone, the front end stays in audio_cls.features
# (audio_cls/export.py). TorchScript traces every network with its front end.
PACKED = {"crnn", "lstm"}
# Every network and every front end, in both formats, at a few seconds per export: every front end with the
# default network, CNN2d on the spectrogram's 129 bins (not a multiple of its pooling), the packed networks with
# the default front end. The default pair (CNN1d on log-mel) is exported, trained, by the tests above. CNN2d
# cannot take raw samples (test_cnn2d_cannot_take_raw_samples).
COVERED_ABOVE = ("cnn1d", "logmel")
COMBINATIONS = sorted(
    (
        {("cnn1d", f) for f in FRONT_ENDS}
        | {("cnn2d", "spectrogram")}
        | {(m, "logmel") for m in (*PACKED, "matchboxnet", "bcresnet")}
    )
    - {COVERED_ABOVE}
)
SPREAD = 0.1  # how much the small networks' logits differ between recordings: 1000 x TOLERANCE
# Real recordings of four lengths, from 0.14 s (the shortest in FSDD) to 1.3 s.
RECORDINGS = [
    FSDD / "recordings" / name for name in ("6_yweweler_3.wav", "9_yweweler_4.wav", "2_jackson_21.wav", "3_lucas_7.wav")
]


def test_the_matrix_covers_every_network_and_front_end():
    assert set(TINY) | set(EXPORTED_ELSEWHERE) == set(MODELS) and not set(TINY) & set(EXPORTED_ELSEWHERE)
    assert PACKED <= set(TINY)
    pairs = [*COMBINATIONS, COVERED_ABOVE]
    assert {m for m, _ in pairs} == set(TINY) and {f for _, f in pairs} == set(FRONT_ENDS)


def compose_model(model, front_end, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"features={front_end}", *TINY[model], *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # no Hydra run here
    return cfg


def small_classifier(model, front_end, tmp_path) -> Classifier:
    """A randomly initialized network with its shipped front end and normalization; batch norm has random
    running statistics and affine parameters, and global normalization statistics measured on real
    recordings, so that neither is the identity in the graph."""
    cfg = compose_model(model, front_end, tmp_path)
    torch.manual_seed(0)
    features = instantiate(cfg.features)
    net = randomize_batch_norm(instantiate(cfg.model, in_features=features.num_features, num_classes=10))
    if features.normalize == "global":
        waves = [torch.from_numpy(sf.read(str(p), dtype="float32")[0]) for p in FILES]
        with torch.no_grad():
            features.norm.fit(
                (features.compute(w[None]), torch.tensor([features.num_frames(w.numel())])) for w in waves
            )
    config = OmegaConf.to_container(cfg, resolve=True)
    classifier = Classifier(AudioClassifier(net, features, [str(d) for d in range(10)], config=config))
    # A random network barely tells recordings apart (logits within 0.015-0.16 of each other, 5e-4 on raw
    # samples), which would let a wrong graph pass a 1e-4 tolerance: scale the last layer so that they differ by
    # SPREAD. (Not more: float32 rounding, relative 1e-7 of the logits, grows with the scale too.)
    logits = alone(classifier)
    head = [layer for layer in net.modules() if isinstance(layer, nn.Linear)][-1]
    with torch.no_grad():
        head.weight *= SPREAD / (logits - logits.mean(0)).abs().max()
    return classifier


def alone(classifier, recordings=RECORDINGS):
    """The PyTorch model's logits for each recording on its own (no padding)."""
    waves = [classifier.load(path)[0] for path in recordings]
    with torch.no_grad():
        return torch.cat([classifier.graph(w[None], torch.tensor([w.numel()]))[0] for w in waves])


def run_file(path, inputs, lengths):
    """The exported file, run as a user would: onnxruntime, or torch.jit.load."""
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return session.run(["logits", "probabilities"], {names[0]: inputs.numpy(), names[1]: lengths.numpy()})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.11
        return [t.numpy() for t in torch.jit.load(str(path))(inputs, lengths)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model,front_end", COMBINATIONS)
def test_every_network_and_front_end_exports_with_parity(model, front_end, fmt, tmp_path):
    classifier = small_classifier(model, front_end, tmp_path)
    check = tmp_path / "check"
    check.mkdir()
    for path in RECORDINGS:
        shutil.copy(path, check / path.name)
    exported, diffs, failures = export_checked(classifier, fmt, tmp_path, check_input=str(check))
    inside = fmt == "torchscript" or model not in PACKED
    if fmt == "torchscript":
        assert (exported.exporter, failures) == ("torch.jit.trace", [])
    elif model in PACKED:  # the documented fallback, not a silent skip
        assert exported.exporter == "torch.onnx.export(dynamo=False)"
        assert len(failures) == 2 and all("with dynamo" in f for f in failures), failures
    else:
        assert (exported.exporter, failures) == ("torch.onnx.export(dynamo=True)", [])
    assert exported.frontend_inside is inside and set(diffs) == {"random", "real"}
    info = sidecar(classifier, exported, diffs, TOLERANCE, failures, "x.ckpt")
    assert list(info["inputs"]) == (["waveform", "lengths"] if inside else ["features", "frames"])
    name = type(classifier.features).__name__
    if inside:
        assert info["inside_graph"][0].startswith(f"{name} front end")
    else:
        assert f"the {name} front end" in info["outside_graph"]

    # Checked here, not by the exporter's own check: the recordings (of four lengths) padded into one batch,
    # run through the exported file, against the PyTorch model on each recording alone.
    waves = [classifier.load(path)[0] for path in RECORDINGS]
    lengths = torch.tensor([w.numel() for w in waves])
    assert len(set(lengths.tolist())) == len(waves)
    if inside:
        assert lengths.min() >= exported.min_length
    padded = nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        inputs = (padded, lengths) if inside else extract(classifier.features, padded, lengths)
    if not inside:
        assert inputs[1].min() >= exported.min_length
    expected = alone(classifier)
    logits, probabilities = run_file(exported.path, *inputs)
    np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(probabilities, expected.softmax(-1).numpy(), rtol=0, atol=TOLERANCE)
    assert np.abs(logits - logits.mean(0)).max() > 0.9 * SPREAD  # the recordings do not all look alike


def test_cnn2d_cannot_take_raw_samples(tmp_path):
    """conf/features/raw.yaml gives one feature per frame: CNN2d's pooling would shrink that axis to nothing,
    and building it says so (no export to test)."""
    cfg = compose_model("cnn2d", "raw", tmp_path)
    with pytest.raises(InstantiationException, match="the feature axis of 1 bins shrinks to 0"):
        instantiate(cfg.model, in_features=instantiate(cfg.features).num_features, num_classes=10)


# --- sound event detection: frame outputs ------------------------------------------------------------------
SED_CLASSES = ["bird", "car", "dog"]


@pytest.fixture(scope="module")
def sed_module(tmp_path_factory):
    """A small randomly initialized multi-label CRNN with a frame head (attention pooling), as
    `experiment=fsdd_mix_sed` builds it (two blocks pooling time by 2: 40 ms frames from 10 ms features), its
    frame logits scaled to spread over the sigmoid's range so that a 1e-4 tolerance means something, and
    decision and frame thresholds that differ between classes."""
    return make_sed_module(tmp_path_factory.mktemp("sed"))


def make_sed_module(tmp_path, *overrides):
    cfg = compose_model("crnn", "logmel", tmp_path, "task=multilabel", "model.frame_pooling=attention", *overrides)
    torch.manual_seed(0)
    features = instantiate(cfg.features)
    net = randomize_batch_norm(instantiate(cfg.model, in_features=features.num_features, num_classes=3))
    config = OmegaConf.to_container(cfg, resolve=True)
    module = AudioClassifier(
        net, features, SED_CLASSES, config=config, multilabel=True, loss={"_target_": "torch.nn.BCEWithLogitsLoss"}
    ).eval()
    for scale in (True, False):  # each class's frame logits: spread to +-3, then centred on 0
        _, frames, lengths = sed_reference(module, *padded(RECORDINGS, module))
        valid = torch.cat([f[:n] for f, n in zip(frames, lengths)])  # (all valid frames, classes)
        with torch.no_grad():
            if scale:
                net.head.classify.weight *= 3.0 / (valid - valid.mean(0)).abs().amax(0)[:, None]
            else:
                net.head.classify.bias -= valid.mean(0)
    _, probs, lengths = sed_reference(module, *padded(RECORDINGS, module), sigmoid=True)
    probs = torch.cat([p[:n] for p, n in zip(probs, lengths)])
    module.thresholds.copy_(torch.tensor([0.3, 0.5, 0.7]))
    module.frame_thresholds.copy_(probs.quantile(0.6, dim=0))  # per class, so that every class has events
    return module


def padded(recordings, module):
    """FSDD recordings at 8 kHz, zero-padded into one batch, with their lengths in samples."""
    waves = [torch.from_numpy(sf.read(str(path), dtype="float32")[0]) for path in recordings]
    assert module.hparams["config"]["data"]["sample_rate"] == 8000
    return nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])


def sed_reference(module, waves, lengths, sigmoid=False):
    """The PyTorch model's clip logits, frame logits (or probabilities) and frame lengths of a padded batch."""
    with torch.no_grad():
        clip, frames, frame_lengths = module.net.forward_frames(*extract(module.features, waves, lengths))
    return clip, torch.sigmoid(frames) if sigmoid else frames, frame_lengths


def check_frames(exported, module):
    """Run the exported file on FSDD recordings of four lengths padded into one batch: its frame probabilities
    must match the sigmoid of the PyTorch model's `forward_frames` on each recording alone over the valid frames,
    and its frame lengths exactly."""
    waves, lengths = padded(RECORDINGS, module)
    with torch.no_grad():
        inputs = (waves, lengths) if exported.frontend_inside else extract(module.features, waves, lengths)
    got = run_exported(exported, *inputs)
    assert len(got) == 4
    logits, probabilities, frame_probs, frame_lengths = got
    assert frame_probs.dtype == np.float32 and frame_lengths.dtype == np.int64
    assert frame_probs.shape[0] == len(RECORDINGS) and frame_probs.shape[2] == len(SED_CLASSES)
    spread = []
    for i, (wave, n) in enumerate(zip(waves, lengths.tolist())):
        clip, probs, count = sed_reference(module, wave[None, :n], torch.tensor([n]), sigmoid=True)
        count = int(count[0])
        assert int(frame_lengths[i]) == count and frame_probs.shape[1] >= count
        np.testing.assert_allclose(frame_probs[i, :count], probs[0, :count].numpy(), rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(logits[i], clip[0].numpy(), rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(probabilities[i], torch.sigmoid(clip[0]).numpy(), rtol=0, atol=TOLERANCE)
        spread.append(frame_probs[i, :count])
    assert np.ptp(np.concatenate(spread), axis=0).min() > 0.1  # the frames do not all look alike
    return got


@pytest.mark.slow
@pytest.mark.parametrize("fmt,frontend", [("torchscript", "inside"), ("torchscript", "outside"), ("onnx", "outside")])
def test_sed_export_outputs_frame_probabilities_and_lengths(sed_module, fmt, frontend, tmp_path):
    classifier = Classifier(sed_module)
    assert classifier.detects_events and sed_module.detects_events
    check = tmp_path / "check"
    check.mkdir()
    for path in RECORDINGS:
        shutil.copy(path, check / path.name)
    exported, diffs, failures = export_checked(classifier, fmt, tmp_path, frontend, check_input=str(check))
    assert exported.frame_outputs and exported.output_names == OUTPUT_NAMES + FRAME_OUTPUT_NAMES
    if fmt == "torchscript":
        assert (exported.exporter, exported.frontend_inside, failures) == ("torch.jit.trace", frontend == "inside", [])
    else:  # torch.export cannot capture the GRU's packed sequence: the network alone, TorchScript-based exporter
        assert (exported.exporter, exported.frontend_inside) == ("torch.onnx.export(dynamo=False)", False)
        assert len(failures) == 1 and failures[0].startswith("network alone with dynamo"), failures
        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == [*OUTPUT_NAMES, *FRAME_OUTPUT_NAMES]
        frames_axis = session.get_outputs()[2].shape
        assert isinstance(frames_axis[0], str) and isinstance(frames_axis[1], str)  # dynamic batch and frames
    for kind in ("random", "real"):
        assert set(diffs[kind]) == {*OUTPUT_NAMES, *FRAME_OUTPUT_NAMES}
        assert diffs[kind]["frame_lengths"] == 0 and diffs[kind]["frame_probabilities"] < TOLERANCE
    check_frames(exported, sed_module)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_sed_export_of_a_conv2d_front(fmt, tmp_path):
    """The CRNN with a Conv2d front (model.dims=2): bands flattened into the GRU's input, same parity."""
    module = make_sed_module(tmp_path, "model.dims=2", "model.freq_pool_size=[2,4]")
    assert module.net.blocks.out_features == 5  # 40 mel bands pooled by 2, then 4
    exported, diffs, _ = export_checked(Classifier(module), fmt, tmp_path, "outside")
    assert diffs["random"]["frame_lengths"] == 0 and diffs["random"]["frame_probabilities"] < TOLERANCE
    check_frames(exported, module)


@pytest.mark.slow
def test_sed_sidecar_describes_the_frames_and_how_they_become_events(sed_module, tmp_path):
    """Through a checkpoint and the entry point's function: the sidecar names the frame outputs, the seconds per
    frame and the event settings, and those settings applied to the exported frames give Classifier's events."""
    ckpt = tmp_path / "sed.ckpt"
    torch.save({"hyper_parameters": dict(sed_module.hparams), "state_dict": sed_module.state_dict()}, ckpt)
    out = tmp_path / "exported"
    out.mkdir()  # Hydra's run directory
    cfg = OmegaConf.create(
        {
            "paths": {"output_dir": str(out)},
            "ckpt_path": str(ckpt),
            "format": "torchscript",
            "frontend": "inside",
            "tolerance": TOLERANCE,
            "check_input": str(RECORDINGS[-1]),
        }
    )
    metrics = export_module.export(cfg)
    assert metrics["parity/real/frame_lengths"] == 0 and metrics["parity/random/frame_probabilities"] < TOLERANCE
    info = json.loads((out / "model.json").read_text())
    classifier = Classifier.from_checkpoint(ckpt)
    assert list(info["outputs"]) == [*OUTPUT_NAMES, *FRAME_OUTPUT_NAMES]
    assert info["outputs"]["frame_probabilities"].startswith("float32 (batch, frames, num_classes): sigmoid")
    assert info["outputs"]["frame_lengths"].startswith("int64 (batch,)")
    hop = frame_hop(classifier.features.hop_samples / classifier.sample_rate, classifier.net)
    assert info["frame_hop_s"] == pytest.approx(hop) == pytest.approx(0.04)  # 10 ms features, pooled by 2 twice
    assert set(info["parity"]["max_abs_diff"]["real"]) == {*OUTPUT_NAMES, *FRAME_OUTPUT_NAMES}
    events = info["events"]
    assert events["reference"].startswith("audio_cls.sed.events_from_scores")
    task = sed_module.hparams["config"]["task"]
    assert events["median_frames"] == task["median_frames"]
    assert info["thresholds"] == pytest.approx(dict(zip(SED_CLASSES, [0.3, 0.5, 0.7])))
    assert info["frame_thresholds"] == pytest.approx(dict(zip(SED_CLASSES, sed_module.frame_thresholds.tolist())))
    thresholds = list(info["frame_thresholds"].values())

    # A user's events: each recording whole through the exported graph, then the sidecar's recipe.
    scripted = torch.jit.load(str(out / "model.pt"))
    found = 0
    for path in RECORDINGS:
        wave = classifier.load(path)[0]
        with torch.no_grad():
            _, _, probs, count = scripted(wave[None], torch.tensor([wave.numel()]))
        mine = events_from_scores(
            probs[0, : int(count[0])].numpy(),
            info["frame_hop_s"],
            info["class_names"],
            thresholds,
            median_frames=events["median_frames"],
            min_duration=events["min_duration_s"],
            min_gap=events["min_gap_s"],
        )
        expected = classifier.events(wave)
        assert [e[:3] for e in mine] == [e[:3] for e in expected]
        assert [e[3] for e in mine] == pytest.approx([e[3] for e in expected], abs=TOLERANCE)
        found += len(mine)
    assert found > 0


def test_models_without_a_frame_head_keep_their_two_outputs(tmp_path):
    """Multi-label without a frame head, and a frame head trained single-label: no frame outputs."""
    for overrides, multilabel in ((["task=multilabel"], True), (["model.frame_pooling=max"], False)):
        cfg = compose_model("crnn", "logmel", tmp_path, *overrides)
        features = instantiate(cfg.features)
        net = instantiate(cfg.model, in_features=features.num_features, num_classes=3)
        module = AudioClassifier(net, features, SED_CLASSES, multilabel=multilabel)
        assert not module.detects_events and type(inference_graph(module, None, net)) is InferenceGraph


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_a_frame_parity_failure_is_detected(sed_module, monkeypatch, tmp_path):
    """The exported file's frame outputs, perturbed after it runs: a wrong valid frame or a NaN fails the check at
    any tolerance it exceeds, a wrong frame length at any tolerance; the padding frames are not compared."""
    classifier = Classifier(sed_module)
    original = export_module.run_exported

    def perturbed(change):
        def run(exported, inputs, lengths):
            outputs = original(exported, inputs, lengths)
            change(*outputs[2:])
            return outputs

        monkeypatch.setattr(export_module, "run_exported", run)

    # The checks themselves: one export, its outputs perturbed in four ways.
    example, min_samples = classifier.window or classifier.sample_rate, classifier.min_samples
    exported = export_graph(sed_module, "torchscript", tmp_path / "model.pt", False, "trace", example, min_samples)
    batches = {"random": random_batches(example, min_samples)}
    assert len(set(batches["random"][0][1].tolist())) == 3  # items of three lengths: padding frames

    def padding(probs, lengths):
        for i, n in enumerate(lengths.tolist()):
            probs[i, n:] += 0.5

    def valid_frame(probs, lengths):
        probs[0, 0, 1] += 1e-2

    def nan(probs, lengths):
        probs[-1, 0, 0] = np.nan

    def one_frame_short(probs, lengths):
        lengths[0] -= 1

    expected = {
        padding: (0.0, None, None),
        valid_frame: (1e-2, r"max abs difference 1\.00e-02 > tolerance 0\.0001", None),
        nan: (np.nan, r"max abs difference nan > tolerance 0\.0001", r"max abs difference nan > tolerance 10"),
        one_frame_short: (0.0, r"frame lengths differ from the PyTorch model's by up to 1$", "by up to 1$"),
    }
    for change, (frames, at_default, at_ten) in expected.items():
        perturbed(change)
        diffs = export_module.parity(sed_module, exported, batches)["random"]
        assert diffs["frame_probabilities"] == pytest.approx(frames, abs=TOLERANCE, nan_ok=True), change.__name__
        assert diffs["frame_lengths"] == (1 if change is one_frame_short else 0)
        for tolerance, message in ((TOLERANCE, at_default), (10.0, at_ten)):
            reason = parity_failure({"random": diffs}, tolerance)
            assert (reason is None) if message is None else re.search(message, reason), (change.__name__, reason)

    # And export_checked enforces them: no file is left behind.
    perturbed(valid_frame)
    with pytest.raises(ConfigError, match=r"network alone with trace: max abs difference 1\.00e-02 > tolerance"):
        export_checked(classifier, "torchscript", tmp_path, "outside")
    assert not (tmp_path / "model.pt").exists()
