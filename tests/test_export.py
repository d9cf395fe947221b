"""Export to ONNX and TorchScript: what is inside the graph, the sidecar, and parity with the PyTorch model
(max abs difference < 1e-4 in float32) on random and real (FSDD) inputs."""

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.export import BlockMaxPool, attempts, export_checked, sidecar
from audio_cls.inference import Classifier
from audio_cls.model import LSTMClassifier
from audio_cls.module import AudioClassifier
from conftest import FSDD, run_entry

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
    """The PyTorch model on a padded batch, as on_after_batch_transfer runs it: front end, network."""
    with torch.no_grad():
        x = classifier.features(waves, lengths)
        logits = classifier.net(x, classifier.features.num_frames(lengths).clamp(max=x.shape[1]))
    return logits.numpy(), logits.softmax(-1).numpy()


def max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_block_max_pool_computes_what_max_pool_does():
    x = torch.randn(2, 3, 11, 13)
    torch.testing.assert_close(BlockMaxPool(2, 1)(x[:, :, 0]), nn.MaxPool1d(2)(x[:, :, 0]), rtol=0, atol=0)
    torch.testing.assert_close(BlockMaxPool(3, 2)(x), nn.MaxPool2d(3)(x), rtol=0, atol=0)


def test_onnx_entry_point_with_the_front_end_inside(trained_checkpoint, classifier, tmp_path):
    out = tmp_path / "onnx"
    proc = run_entry("audio_cls.export", f"ckpt_path={trained_checkpoint}", "format=onnx", f"output_dir={out}",
                     f"check_input={FILES[0]}")
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
        clips = np.stack([audio[i * hop: i * hop + window] for i in range(count)])
        _, probs = session.run(["logits", "probabilities"],
                               {"waveform": clips, "lengths": np.full(count, window, dtype=np.int64)})
        scores = probs.mean(axis=0)
        expected = classifier.predict(path)
        assert count == expected.num_windows
        assert np.abs(scores - np.array(expected.scores)).max() < TOLERANCE
        assert info["class_names"][int(scores.argmax())] == expected.label
        assert scores.sum() == pytest.approx(1.0, abs=1e-5)

    for waves, lengths in (real_batch(classifier), random_batch(classifier)):  # padded batches, other shapes
        got = session.run(["logits", "probabilities"], {"waveform": waves.numpy(), "lengths": lengths.numpy()})
        assert max_diff(got, pytorch_outputs(classifier, waves, lengths)) < TOLERANCE


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


def test_packed_lstm_falls_back_to_the_network_alone_for_onnx(classifier, tmp_path):
    """torch.export cannot capture packed sequences; the TorchScript-based ONNX exporter can, but not the STFT."""
    module = classifier.module
    config = copy.deepcopy(module.hparams["config"])
    config["model"] = {"_target_": "audio_cls.model.LSTMClassifier", "hidden_size": 16, "num_layers": 2}
    lstm = LSTMClassifier(module.features.num_features, len(module.class_names), hidden_size=16, num_layers=2)
    other = AudioClassifier(lstm, module.features, module.class_names, config=config)
    exported, diffs, failures = export_checked(Classifier(other), "onnx", tmp_path, check_input=str(FILES[0]))
    assert (exported.exporter, exported.frontend_inside) == ("torch.onnx.export(dynamo=False)", False)
    assert len(failures) == 2 and all("dynamo" in f for f in failures)
    assert max(max(d.values()) for d in diffs.values()) < TOLERANCE


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
