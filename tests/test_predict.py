"""Prediction: the Classifier API, windows, the predict entry point and its outputs, and bad input."""

import csv
import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from omegaconf import OmegaConf

from audio_cls.audio import load_audio
from audio_cls.errors import ConfigError, DataError
from audio_cls.inference import Classifier, minimum_samples
from audio_cls.module import AudioClassifier
from audio_cls.predict import collect_sources, predict
from helpers import FSDD, run_entry, write_tone

SR = 8000
WINDOW = 4000  # data.duration=0.5 s of the trained checkpoint


@pytest.fixture(scope="module")
def classifier(trained_checkpoint):
    return Classifier.from_checkpoint(trained_checkpoint)


def reference_probs(module: AudioClassifier, wave: torch.Tensor) -> torch.Tensor:
    """What training's evaluation computes for one clip: front end on the whole clip, network, softmax at the
    temperature fitted on validation (test_predictions.csv's probabilities)."""
    with torch.no_grad():
        x = module.features(wave[None])
        return (module(x, torch.tensor([x.shape[1]])) / module.temperature).softmax(-1)[0]


@pytest.mark.slow
def test_checkpoint_alone_gives_rate_classes_and_window(classifier):
    assert classifier.sample_rate == SR
    assert classifier.class_names == [str(d) for d in range(10)]
    assert (classifier.window, classifier.hop) == (WINDOW, WINDOW // 2)  # data.duration; hop half a window
    # CNN1d with 3 max-pools of 2 needs 8 frames: 1 + samples // 80 >= 8
    assert classifier.min_samples == minimum_samples(classifier.features, classifier.net) == 560


@pytest.mark.slow
def test_predicts_a_file_as_training_evaluates_it(classifier):
    path = FSDD / "recordings" / "3_theo_7.wav"
    wave = load_audio(path, SR)
    pred = classifier.predict(path, windows=True)
    expected = reference_probs(classifier.module, torch.nn.functional.pad(wave, (0, WINDOW - wave.numel())))
    torch.testing.assert_close(torch.tensor(pred.scores), expected, atol=1e-6, rtol=0)
    assert pred.num_windows == 1 and pred.padded and "zero-padded" in pred.notes[0]
    assert pred.label == classifier.class_names[int(expected.argmax())]
    assert pred.probabilities == sorted(pred.probabilities, reverse=True) and len(pred.labels) == 3
    assert sum(pred.scores) == pytest.approx(1.0, abs=1e-5)
    assert pred.duration_s == pytest.approx(wave.numel() / SR)


@pytest.mark.slow
def test_long_waveform_is_cut_into_padded_windows_and_averaged(classifier):
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(10400).astype(np.float32)) * 0.1  # 1.3 s
    pred = classifier.predict(wave, sample_rate=SR, windows=True)
    starts = [0, 2000, 4000, 6000, 8000]  # 1 + ceil((10400 - 4000) / 2000) windows
    assert pred.num_windows == len(pred.windows) == 5 and not pred.padded
    assert [round(w.start_s * SR) for w in pred.windows] == starts
    assert [w.padded for w in pred.windows] == [False, False, False, False, True]  # 8000 + 4000 > 10400
    padded = torch.nn.functional.pad(wave, (0, 12000 - 10400))
    expected = torch.stack([reference_probs(classifier.module, padded[s : s + WINDOW]) for s in starts])
    torch.testing.assert_close(torch.tensor([w.probabilities for w in pred.windows]), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(pred.scores), expected.mean(0), atol=1e-6, rtol=0)

    top = Classifier(classifier.module, aggregate="max", top_k=10).predict(wave.numpy(), sample_rate=SR)
    torch.testing.assert_close(torch.tensor(top.scores), expected.amax(0), atol=1e-6, rtol=0)
    assert len(top.labels) == 10 and top.windows is None


@pytest.mark.slow
def test_whole_file_mode_and_custom_windows(classifier):
    wave = load_audio(FSDD / "recordings" / "5_george_1.wav", SR)
    whole = Classifier(classifier.module, window="whole").predict(wave)
    assert whole.num_windows == 1 and not whole.padded
    torch.testing.assert_close(torch.tensor(whole.scores), reference_probs(classifier.module, wave), atol=1e-6, rtol=0)
    tiny = Classifier(classifier.module, window="whole").predict(wave[:100])  # below the network's minimum
    assert tiny.padded and "shorter than the network accepts" in tiny.notes[0]
    custom = Classifier(classifier.module, window=0.25, hop=0.1)
    assert (custom.window, custom.hop) == (2000, 800)
    assert custom.predict(wave).num_windows == 1 + math.ceil((wave.numel() - 2000) / 800)


@pytest.mark.slow
def test_other_sample_rates_are_resampled_with_a_note(classifier, tmp_path):
    wave16k = torch.from_numpy(np.random.default_rng(1).standard_normal(16000).astype(np.float32)) * 0.1
    pred = classifier.predict(wave16k, sample_rate=16000)
    at8k = classifier.predict(torchaudio.functional.resample(wave16k, 16000, SR))
    assert pred.notes == ["resampled from 16000 Hz to 8000 Hz"] and at8k.notes == []
    assert pred.scores == pytest.approx(at8k.scores, abs=1e-6)
    path = write_tone(tmp_path / "stereo.wav", seconds=0.3, sample_rate=16000, channels=2)
    notes = classifier.predict(path).notes
    assert "resampled from 16000 Hz to 8000 Hz" in notes and "2 channels averaged to mono" in notes


@pytest.mark.slow
@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_text("not audio"), "soundfile cannot read it"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: sf.write(str(p), np.zeros(0), SR), "the recording is empty (0 samples)"),
        (lambda p: sf.write(str(p), np.array([0.1, np.nan, 0.2]), SR, subtype="FLOAT"), "NaN or infinite"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "a folder, not a file"),
    ],
)
def test_unusable_files_give_a_message_naming_them(classifier, tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        classifier.predict(path)
    assert str(path) in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    "x,message",
    [
        (torch.zeros(2, 100), r"shape \(2, 100\): expected one channel"),
        (torch.zeros(0), "empty"),
        (torch.tensor([0.0, float("inf")]), "NaN or infinite"),
    ],
)
def test_unusable_waveforms(classifier, x, message):
    with pytest.raises(DataError, match=message):
        classifier.predict(x)


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings,message",
    [
        ({"window": 0.01}, "window=0.01: 80 samples, but the network needs at least 560"),
        ({"window": "whole", "hop": 0.1}, "hop=0.1: whole recordings"),
        ({"window": -1}, "window=-1"),
        ({"hop": 0}, "hop=0: must be positive"),
        ({"aggregate": "median"}, "aggregate='median': expected one of auto, mean, max"),
        ({"top_k": 0}, "top_k=0"),
        ({"device": "tpu"}, "device='tpu': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_settings_name_the_key(classifier, settings, message):
    with pytest.raises(ConfigError, match=message):
        Classifier(classifier.module, **settings)


def rewrite(checkpoint, tmp_path, name, change):
    """A copy of the trained checkpoint with `change(dict)` applied."""
    data = torch.load(checkpoint, weights_only=True)
    change(data)
    torch.save(data, tmp_path / name)
    return tmp_path / name


class Pickled:  # any class: weights_only loading refuses to rebuild it
    pass


@pytest.mark.slow
def test_bad_checkpoints_give_a_message_naming_the_file(trained_checkpoint, tmp_path):
    good = trained_checkpoint.read_bytes()
    cases = {
        "truncated.ckpt": (lambda p: p.write_bytes(good[: len(good) // 2]), "corrupt, truncated"),
        "text.ckpt": (lambda p: p.write_text("hello"), "not a readable PyTorch checkpoint"),
        "empty.ckpt": (lambda p: p.write_bytes(b""), r"\(an empty file\)"),
        "weights.ckpt": (
            lambda p: torch.save(torch.nn.Linear(2, 2).state_dict(), p),
            "not a checkpoint of audio_cls.train",
        ),
        "pickled.ckpt": (lambda p: torch.save({"model": Pickled()}, p), r"pickled Python object .*Pickled"),
        "missing.ckpt": (lambda p: None, "no such file"),
    }
    for name, (make, message) in cases.items():
        make(tmp_path / name)
        with pytest.raises(ConfigError, match=message) as err:
            Classifier.from_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name


@pytest.mark.slow
def test_checkpoint_of_another_model_or_project(trained_checkpoint, tmp_path):
    def other_model(data):  # the config says LSTM, the weights are the CNN's
        data["hyper_parameters"]["config"]["model"] = {"_target_": "audio_cls.model.LSTMClassifier"}

    def other_project(data):
        data["hyper_parameters"]["config"]["model"]["_target_"] = "their_project.nets.Net"

    def no_config(data):  # a LightningModule of another project
        data["hyper_parameters"] = {"lr": 0.1}

    def bad_setting(data):  # a config the network refuses: the reason must survive Hydra's wrapping
        data["hyper_parameters"]["config"]["model"]["activation"] = "swish"

    for change, message in [
        (other_model, "weights do not fit the audio_cls.model.LSTMClassifier"),
        (bad_setting, r"cannot rebuild the model from its saved config \(.*activation.*swish"),
        (other_project, "model._target_=their_project.nets.Net cannot be imported"),
        (no_config, "no training config saved in it"),
    ]:
        path = rewrite(trained_checkpoint, tmp_path, f"{change.__name__}.ckpt", change)
        with pytest.raises(ConfigError, match=message) as err:
            AudioClassifier.from_checkpoint(str(path))
        assert str(path) in str(err.value)


@pytest.mark.slow
def test_checkpoints_of_the_previous_layout_still_load(trained_checkpoint, tmp_path):
    """Before data.placement and augment.spec_augment, both were keys of the saved `features` config, and an
    MFCC extractor held torchaudio's MFCC as `mfcc`: such checkpoints load, with the same weights."""

    def old_features(data):
        data["hyper_parameters"]["config"]["features"].update(placement="cache", spec_augment={"freq_mask": 8})

    path = rewrite(trained_checkpoint, tmp_path, "old_layout.ckpt", old_features)
    old, new = AudioClassifier.from_checkpoint(str(path)), AudioClassifier.from_checkpoint(str(trained_checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


@pytest.mark.slow
def test_a_checkpoint_config_cannot_call_arbitrary_code(trained_checkpoint, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()

    def nested(data):  # reachable through an import in audio_cls.runs, and nested inside the model config
        data["hyper_parameters"]["config"]["model"]["channels"] = {
            "_target_": "audio_cls.runs.shutil.rmtree",
            "path": str(victim),
        }

    def loss(data):
        data["hyper_parameters"]["loss"] = {"_target_": "os.system", "command": f"rm -r {victim}"}

    for change in (nested, loss):
        path = rewrite(trained_checkpoint, tmp_path, f"{change.__name__}.ckpt", change)
        with pytest.raises(ConfigError, match="refusing to call it"):
            AudioClassifier.from_checkpoint(str(path))
    assert victim.is_dir()


def test_inputs_folder_manifest_and_their_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.wav", "a/b/y.FLAC", "z.ogg"):
        write_tone(tmp_path / name, subtype="VORBIS" if name.endswith("ogg") else "PCM_16")
    (tmp_path / "notes.txt").write_text("not audio")
    assert [s.path.relative_to(tmp_path).as_posix() for s in collect_sources(str(tmp_path))] == [
        "a/b/y.FLAC",
        "a/x.wav",
        "z.ogg",
    ]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,start,end,extra\na/x.wav,3,0.1,0.3,ignored\nz.ogg,,,,\n")
    sources = collect_sources(str(manifest))
    assert [(s.path, s.start, s.end, s.label) for s in sources] == [
        (tmp_path / "a/x.wav", 0.1, 0.3, "3"),
        (tmp_path / "z.ogg", None, None, None),
    ]

    (tmp_path / "empty").mkdir()
    (tmp_path / "nopath.csv").write_text("file,label\nx.wav,1\n")
    (tmp_path / "badtime.csv").write_text("path,start\nx.wav,soon\n")
    for spec, error, message in [
        (tmp_path / "empty", DataError, "no audio files"),
        (tmp_path / "nowhere", ConfigError, "no such file or directory"),
        (tmp_path / "nopath.csv", ConfigError, "needs a `path` column"),
        (tmp_path / "badtime.csv", DataError, "line 2: start 'soon' is not a number"),
    ]:
        with pytest.raises(error, match=message):
            collect_sources(str(spec))


@pytest.mark.slow
def test_manifest_segments_labels_and_accuracy_in_process(trained_checkpoint, classifier, tmp_path):
    long = write_tone(tmp_path / "long.wav", seconds=2.0, sample_rate=SR, freq=500)
    (tmp_path / "m.csv").write_text(
        f"path,label,start,end\nlong.wav,3,0.5,1.5\n{FSDD / 'recordings' / '3_theo_7.wav'},3,,\nmissing.wav,4,,\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    cfg = OmegaConf.create(
        {
            "ckpt_path": str(trained_checkpoint),
            "input": str(tmp_path / "m.csv"),
            "top_k": 2,
            "window": None,
            "hop": None,
            "aggregate": "mean",
            "save_windows": False,
            "batch_size": 4,
            "device": "cpu",
            "progress": False,
            "paths": {"output_dir": str(out)},
        }
    )
    result = predict(cfg)
    assert (result["files"], result["predicted_files"], result["failed_files"]) == (3, 2, 1)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0]) == [
        "path",
        "start_s",
        "end_s",
        "true_label",
        "status",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
        "duration_s",
        "windows",
        "padded",
        "notes",
        "error",
    ]
    segment = classifier.predict(load_audio(long, SR)[4000:12000])
    first = rows[0]
    assert (first["start_s"], first["end_s"], first["duration_s"], first["windows"]) == ("0.5", "1.5", "1.000", "3")
    assert first["label_1"] == segment.label
    assert float(first["probability_1"]) == pytest.approx(segment.probability, abs=1e-6)
    assert rows[2]["status"] == "error" and "missing.wav" in rows[2]["error"]
    expected = sum(rows[i]["label_1"] == "3" for i in (0, 1)) / 2
    assert result["accuracy"] == expected


@pytest.mark.slow
def test_predict_entry_point_on_a_folder(trained_checkpoint, classifier, tmp_path):
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    for name in ("3_theo_7.wav", "5_george_1.wav"):
        (data / name).write_bytes((FSDD / "recordings" / name).read_bytes())
    write_tone(data / "sub" / "long.wav", seconds=3.1, sample_rate=SR, freq=700)  # windows
    write_tone(data / "sub" / "short.flac", seconds=0.1, sample_rate=16000, channels=2)  # padded, resampled
    (data / "sub" / "text.wav").write_text("not audio")
    (data / "zero.wav").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_entry(
        "audio_cls.predict",
        f"ckpt_path={trained_checkpoint}",
        f"input={data}",
        f"output_dir={out}",
        "save_windows=true",
        "device=cpu",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]  # finished, but two files could not be read
    assert "2 of 6 files could not be read" in proc.stderr
    assert "6 files: 4 predicted, 2 failed" in proc.stdout and "sub/long.wav" in proc.stdout

    rows = {r["path"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert list(next(iter(rows.values()))) == [
        "path",
        "status",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
        "label_3",
        "probability_3",
        "duration_s",
        "windows",
        "padded",
        "notes",
        "error",
    ]
    for path, row in rows.items():
        if row["status"] == "error":
            continue
        pred = classifier.predict(path)
        assert [row["label_1"], row["label_2"], row["label_3"]] == pred.labels
        assert float(row["probability_1"]) == pytest.approx(pred.probability, abs=1e-6)
    long, short = rows[str(data / "sub" / "long.wav")], rows[str(data / "sub" / "short.flac")]
    assert long["windows"] == "12" and long["padded"] == "False"  # 1 + ceil((24800 - 4000) / 2000)
    assert short["padded"] == "True" and "resampled from 16000 Hz" in short["notes"] and "zero-padded" in short["notes"]
    assert "soundfile cannot read it" in rows[str(data / "sub" / "text.wav")]["error"]
    assert rows[str(data / "zero.wav")]["error"].endswith("empty file (0 bytes)")

    report = json.loads((out / "predictions.json").read_text())
    assert report["class_names"] == classifier.class_names and report["window_s"] == 0.5
    by_path = {f["path"]: f for f in report["files"]}
    for entry in by_path.values():
        if entry["status"] == "ok":
            assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert by_path[str(data / "zero.wav")]["status"] == "error"
    windows = [r for r in csv.DictReader((out / "windows.csv").open()) if r["path"] == long["path"]]
    assert len(windows) == int(long["windows"]) and windows[-1]["padded"] == "True"
    assert sum(float(windows[0][c]) for c in classifier.class_names) == pytest.approx(1.0, abs=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["status"], metrics["predicted_files"], metrics["failed_files"]) == ("finished", 4, 2)


@pytest.mark.slow
def test_earlier_predictions_are_not_overwritten_unless_asked(trained_checkpoint, tmp_path):
    (tmp_path / "predictions.csv").write_text("path\n")
    wav = write_tone(tmp_path / "x.wav", seconds=0.5, sample_rate=SR)
    proc = run_entry("audio_cls.predict", f"ckpt_path={trained_checkpoint}", f"input={wav}", f"output_dir={tmp_path}")
    assert proc.returncode == 1 and f"output_dir={tmp_path} already holds predictions.csv" in proc.stderr
    assert (tmp_path / "predictions.csv").read_text() == "path\n"
    proc = run_entry(
        "audio_cls.predict",
        f"ckpt_path={trained_checkpoint}",
        f"input={wav}",
        f"output_dir={tmp_path}",
        "overwrite=true",
        "device=cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "predictions.csv").read_text().startswith("path,status,label_1")


@pytest.mark.slow
def test_predict_entry_point_stops_on_a_single_unreadable_file(trained_checkpoint, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    proc = run_entry(
        "audio_cls.predict", f"ckpt_path={trained_checkpoint}", f"input={bad}", f"output_dir={tmp_path / 'out'}"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: soundfile cannot read it")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "failed"
