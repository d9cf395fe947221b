"""Test-time augmentation (audio_cls/tta.py): shifted crops of each test recording, their probabilities averaged,
the same in a test (train/eval) and in prediction; its settings checked before any data is read."""

import csv
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import open_dict

from audio_cls import CONF_DIR
from audio_cls.audio import load_audio
from audio_cls.config_checks import check_config
from audio_cls.errors import ConfigError
from audio_cls.eval import evaluate
from audio_cls.inference import Classifier
from audio_cls.tta import ShiftedCrops, average_views
from helpers import run_entry


def crop(wave: np.ndarray, start: int, size: int) -> np.ndarray:
    """wave[start : start + size], silence where that reaches outside the recording."""
    out = np.zeros(size, dtype=wave.dtype)
    for t in range(size):
        if 0 <= start + t < len(wave):
            out[t] = wave[start + t]
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    views=st.integers(1, 5),
    shift=st.integers(1, 30),
    size=st.one_of(st.none(), st.integers(1, 30)),
)
def test_views_are_crops_shifted_around_the_usual_one(lengths, views, shift, size):
    rng = np.random.default_rng(len(lengths) * 100 + views)
    waves = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    batch = torch.zeros(len(waves), max(lengths))  # padded as a test batch is
    for row, wave in zip(batch, waves):
        row[: len(wave)] = torch.from_numpy(wave)
    shifted = ShiftedCrops(views, shift)
    crops, sizes = shifted(batch, torch.tensor(lengths), size)
    offsets = shifted.offsets.tolist()
    assert (
        len(offsets) == views and offsets == sorted(offsets) and max(map(abs, offsets)) == (shift if views > 1 else 0)
    )
    assert offsets == [-o for o in reversed(offsets)]  # symmetric: the middle one (odd counts) is 0
    for v, offset in enumerate(offsets):
        for b, wave in enumerate(waves):
            n = len(wave) if size is None else size
            usual = max(len(wave) - n, 0) // 2  # a test's crop: centred, or padded at the end (crop_or_pad)
            row = crops[v * len(waves) + b]
            assert int(sizes[v * len(waves) + b]) == n
            np.testing.assert_array_equal(row[:n].numpy(), crop(wave, usual + offset, n))
            assert not row[n:].any()  # batch padding


def test_the_averaged_logits_give_the_views_mean_probability():
    logits = torch.randn(3 * 4, 5) * 4
    mean = average_views(logits, 3, multilabel=False)
    torch.testing.assert_close(mean.softmax(-1), logits.softmax(-1).unflatten(0, (3, 4)).mean(0))
    torch.testing.assert_close(average_views(logits[:4], 1, False).softmax(-1), logits[:4].softmax(-1))
    mean = average_views(logits, 3, multilabel=True)
    torch.testing.assert_close(torch.sigmoid(mean), torch.sigmoid(logits).unflatten(0, (3, 4)).mean(0))


def train_config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # outside a Hydra run there is no hydra:runtime.output_dir
    return cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tta.views=0"], "tta.views=0: must be a positive integer"),
        (["tta.views=2.5"], "tta.views=2.5"),
        (["tta.shift=-1"], "tta.shift=-1: expected seconds >= 0"),
        (["tta.views=5"], "tta.views=5 needs a shift of at least one sample"),  # fsdd_cnn trains without shifts
        (["tta.views=5", "tta.shift=0"], "tta.views=5 needs a shift of at least one sample"),
        (["tta.views=5", "tta.shift=0.00001"], "tta.views=5 needs a shift of at least one sample"),
    ],
)
def test_bad_settings_are_one_line_errors_before_any_data_is_read(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        check_config(train_config(tmp_path, "data.root=/no/such/folder", *overrides))


def test_shift_defaults_to_the_training_runs(tmp_path):
    check_config(train_config(tmp_path, "tta.views=5", "augment.waveform.shift=0.1"))


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def whole_run(fsdd_slice, tmp_path_factory):
    """A CNN trained as `make train` trains (whole recordings, shipped defaults), briefly; its test with 3 views."""
    run_dir = tmp_path_factory.mktemp("tta_run")
    proc = run_entry(
        "audio_cls.train",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "logger=csv",
        "callbacks.progress_bar=null",
        "tta.views=3",
        "tta.shift=0.08",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "Test-time augmentation: 3 shifted crops per test recording (shifts -0.080, +0.000, +0.080 s)" in log
    return run_dir


def eval_config(ckpt, output_dir, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", "logger=none", "trainer.accelerator=cpu", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.mark.slow
def test_a_test_with_views_gives_what_prediction_with_views_gives(whole_run):
    """Training's test (features cached for training, the views on the test batches) and prediction
    (Classifier, one file at a time) average the same shifted copies: the same probabilities."""
    metrics = json.loads((whole_run / "metrics.json").read_text())
    classifier = Classifier.from_checkpoint(metrics["best_checkpoint"], tta_views=3, tta_shift=0.08)
    plain = Classifier.from_checkpoint(metrics["best_checkpoint"])
    rows = read_rows(whole_run / "test_predictions.csv")
    assert len(rows) == 100
    differs = 0
    for row in rows[::7]:
        prediction = classifier.predict(row["path"])
        expected = [float(row[f"p_{name}"]) for name in classifier.class_names]
        np.testing.assert_allclose(prediction.scores, expected, atol=2e-4)
        differs += not np.allclose(plain.predict(row["path"]).scores, expected, atol=2e-4)
    assert differs >= 10  # the views do change the probabilities


@pytest.mark.slow
def test_eval_with_views_averages_shifted_crops_of_a_cropping_model(trained_checkpoint, tmp_path):
    """A model trained on 0.5 s crops, tested with views: each test recording's probability is the mean, over
    crops shifted around its centre crop (silence outside it), of what the network gives each crop."""
    result = evaluate(eval_config(trained_checkpoint, tmp_path, "tta.views=3", "tta.shift=0.1"), overrides=[])
    assert 0 <= result["test/acc"] <= 1
    classifier = Classifier.from_checkpoint(trained_checkpoint)
    size, rate, temperature = classifier.window, classifier.sample_rate, classifier.graph.temperature
    rows = read_rows(tmp_path / "test_predictions.csv")
    longer = 0
    for row in rows[::5]:
        wave = load_audio(row["path"], rate).numpy()
        longer += len(wave) > size
        usual = max(len(wave) - size, 0) // 2
        crops = torch.from_numpy(np.stack([crop(wave, usual + o, size) for o in (-800, 0, 800)]))
        logits, _ = classifier.graph(crops, torch.full((3,), size))
        expected = torch.log(logits.softmax(-1).mean(0)) / temperature
        np.testing.assert_allclose(
            [float(row[f"p_{name}"]) for name in classifier.class_names], expected.softmax(-1).tolist(), atol=2e-4
        )
    assert longer >= 3  # centre crops of longer recordings, not only padded short ones


def test_views_are_refused_for_sound_event_detection_models():
    from audio_cls.model.crnn import CRNN
    from audio_cls.module import AudioClassifier
    from audio_cls.tta import set_test_views

    module = AudioClassifier(CRNN(8, 3, frame_pooling="attention"), None, ["a", "b", "c"], multilabel=True)
    config = {"tta": {"views": 3, "shift": 0.1}, "data": {"sample_rate": 8000}}
    with pytest.raises(ConfigError, match="tta.views: test-time views are for clip-level models"):
        set_test_views(object(), module, config, config)
