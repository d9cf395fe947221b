"""Calibration: the temperature fitted on validation, saved with the weights and used by prediction; the expected
calibration error of the test before and after it."""

import json

import pytest
import torch

from audio_cls.inference import Classifier
from audio_cls.model.cnn import CNN1d
from audio_cls.module import AudioClassifier, fit_temperature
from helpers import run_entry


def test_the_fitted_temperature_undoes_overconfidence():
    torch.manual_seed(0)
    calibrated = torch.randn(4000, 5) * 2  # logits whose softmax is the true distribution of the targets
    targets = torch.distributions.Categorical(logits=calibrated).sample()
    assert fit_temperature(3 * calibrated, targets) == pytest.approx(3.0, rel=0.1)  # three times too confident
    assert fit_temperature(calibrated, targets) == pytest.approx(1.0, rel=0.1)
    with torch.inference_mode():  # as Lightning calls it, at the end of a validation epoch
        assert fit_temperature(calibrated / 2, targets) == pytest.approx(0.5, rel=0.1)


def test_checkpoints_from_before_calibration_load_with_temperature_one():
    module = AudioClassifier(CNN1d(8, 3, channels=[8]), None, ["a", "b", "c"])
    state = {k: v for k, v in module.state_dict().items() if k != "temperature"}
    module.temperature.fill_(2.5)
    module.load_state_dict(state)
    assert float(module.temperature) == 1.0


@pytest.mark.slow
def test_training_fits_it_test_reports_ece_and_prediction_uses_it(tmp_path, fsdd_slice):
    proc = run_entry(
        "audio_cls.train",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=3",
        "logger=csv",
        "callbacks.progress_bar=null",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["test/ece_calibrated"] <= 1 and 0 <= metrics["test/ece"] <= 1
    assert len((tmp_path / "test_predictions.csv").read_text().splitlines()) == 1 + 100  # the slice's 100 test files
    classifier = Classifier.from_checkpoint(metrics["best_checkpoint"])
    temperature = float(classifier.module.temperature)
    assert temperature != 1.0 and classifier.graph.temperature == temperature
    waveform = torch.randn(8000) * 0.1
    logits, probabilities = classifier.graph(waveform[None], torch.tensor([8000]))
    torch.testing.assert_close(probabilities, (logits / temperature).softmax(-1))
