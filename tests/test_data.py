import numpy as np
import pytest
import soundfile as sf
import torch

from audio_cls.audio import load_audio
from audio_cls.augment import SpecAugment, WaveformAugment
from audio_cls.data.base import pad_collate
from audio_cls.data.fsdd import FSDD
from audio_cls.errors import ConfigError, DataError
from audio_cls.features import GlobalNorm, LogMel, RawWaveform
from helpers import write_tone


def fsdd(root, **kwargs):
    return FSDD(root=str(root), features=LogMel(8000, normalize="none"), sample_rate=8000, **kwargs)


def test_stereo_is_mixed_to_mono_and_other_rates_resampled(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", seconds=0.5, sample_rate=44100, channels=2)
    wave = load_audio(path, 8000)
    assert wave.dim() == 1 and wave.dtype == torch.float32
    assert abs(wave.shape[0] - 4000) <= 1
    # a 440 Hz tone survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 8000 / wave.shape[0] - 440) < 5


def test_channels_are_averaged(tmp_path):
    path = tmp_path / "lr.wav"
    sf.write(str(path), np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1), 8000, subtype="FLOAT")
    torch.testing.assert_close(load_audio(path, 8000), torch.full((800,), 0.2))


def test_pad_collate_pads_to_longest_and_counts_frames():
    items = [{"inputs": torch.ones(n, 3), "target": t} for n, t in ((4, 0), (7, 1), (2, 2))]
    batch = pad_collate(items)
    assert batch["inputs"].shape == (3, 7, 3)
    assert batch["lengths"].tolist() == [4, 7, 2]
    assert batch["targets"].tolist() == [0, 1, 2]
    assert batch["inputs"][0, 4:].abs().sum() == 0 and batch["inputs"][2, :2].sum() == 6


def test_fsdd_official_split(fsdd_root):
    dm = fsdd(fsdd_root)
    dm.setup("fit")
    splits = dm.splits
    assert len(splits["test"]) == 300
    assert len(splits["train"]) + len(splits["val"]) == 2700
    assert 230 <= len(splits["val"]) <= 310  # val_fraction 0.1 of 2700, by hash
    assert {it.label for it in splits["val"]} == set(dm.class_names)
    assert all(int(p.path.rsplit("_", 1)[1][:-4]) < 5 for p in splits["test"])
    assert dm.class_names == [str(d) for d in range(10)] and dm.num_classes == 10
    assert not {it.path for it in splits["train"]} & {it.path for it in splits["val"]}


def test_fsdd_speaker_split_holds_out_speakers(fsdd_root):
    dm = fsdd(fsdd_root, protocol="speaker", test_speakers=["theo"], val_speakers=["george"])
    dm.setup("fit")
    groups = {s: {it.group for it in dm.splits[s]} for s in ("train", "val", "test")}
    assert groups["test"] == {"theo"} and groups["val"] == {"george"}
    assert groups["train"] == {"jackson", "lucas", "nicolas", "yweweler"}


def test_fsdd_unknown_speaker_names_the_key(fsdd_root):
    with pytest.raises(ConfigError, match="data.test_speakers: unknown speakers"):
        fsdd(fsdd_root, protocol="speaker", test_speakers=["alice"]).setup("fit")


def test_batches_carry_lengths_in_frames(fsdd_slice):
    dm = fsdd(fsdd_slice, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    fx = dm.features
    assert batch["inputs"].shape[0] == 8 and batch["inputs"].shape[2] == 64
    assert batch["inputs"].shape[1] == batch["lengths"].max()
    # Every validation recording's frame count, in whatever order the loader batches them (by length).
    lengths = torch.cat([b["lengths"] for b in dm.val_dataloader()]).tolist()
    assert sorted(lengths) == sorted(fx.num_frames(sf.info(item.path).frames) for item in dm.splits["val"])


def test_fixed_duration_crops_and_pads(fsdd_slice):
    dm = FSDD(root=str(fsdd_slice), features=RawWaveform(), sample_rate=8000, duration=0.25, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (4, 2000, 1) and (batch["lengths"] == 2000).all()


STATS_TOLERANCE = 1e-4  # dB; float32 buffers of statistics summed in float64


@pytest.fixture(scope="module")
def slice_statistics(fsdd_slice):
    """Per-feature mean and std (sqrt(var + eps), as GlobalNorm keeps them) of un-normalized log-mel frames,
    computed file by file with the extractor's `compute` (every frame of a file alone is valid), over the
    training split and over training + validation."""
    dm = fsdd(fsdd_slice)
    dm.setup("fit")
    extractor = LogMel(8000)

    def stats(items):
        with torch.no_grad():
            frames = np.concatenate(
                [extractor.compute(load_audio(it.path, 8000)[None])[0].double().numpy() for it in items]
            )
        assert len(frames) == sum(int(extractor.num_frames(sf.info(it.path).frames)) for it in items)
        return frames.mean(0), np.sqrt(frames.var(0) + GlobalNorm(1).eps)

    return {
        "train": stats(dm.splits["train"]),
        "train+val": stats(dm.splits["train"] + dm.splits["val"]),
        "train_paths": [it.path for it in dm.splits["train"]],
    }


@pytest.mark.parametrize("placement", ["worker", "device", "cache"])
def test_global_statistics_are_measured_on_training_data_only(fsdd_slice, slice_statistics, placement, tmp_path):
    # Shipped defaults around it: two DataLoader workers; augmentation on (augment=speech's waveform gain and
    # shift, and SpecAugment; the cache stores features, so waveform augmentation is refused there), which the
    # measurement must not see.
    augment = None if placement == "cache" else WaveformAugment(8000, gain_db=(-6, 6), shift=0.1)
    features = LogMel(8000, normalize="global")
    dm = FSDD(
        root=str(fsdd_slice),
        features=features,
        placement=placement,
        spec_augment=SpecAugment(freq_mask=8, time_mask=10, num_masks=2),
        sample_rate=8000,
        num_workers=2,
        batch_size=16,
        waveform_augment=augment,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    assert [it.path for it in dm.splits["train"]] == slice_statistics["train_paths"]
    norm = dm.features.norm
    assert bool(norm.fitted)
    mean, std = slice_statistics["train"]
    np.testing.assert_allclose(norm.mean.numpy(), mean, rtol=0, atol=STATS_TOLERANCE)
    np.testing.assert_allclose(norm.std.numpy(), std, rtol=0, atol=STATS_TOLERANCE)
    # The check can fail: with the validation files mixed in, the statistics move by far more than the tolerance.
    mixed_mean, mixed_std = slice_statistics["train+val"]
    assert np.abs(mixed_mean - mean).max() > 100 * STATS_TOLERANCE
    assert np.abs(mixed_std - std).max() > 100 * STATS_TOLERANCE
    # and the features the datamodule hands out are normalized with exactly these statistics
    item = dm.splits["val"][0]
    expected = (LogMel(8000).compute(load_audio(item.path, 8000)[None])[0] - norm.mean) / norm.std
    x = pad_collate([dm.dataset("val")[0]])["inputs"][0]  # extracted as the placement does it
    if placement == "device":
        x = dm.features(x[None], torch.tensor([x.shape[0]]))[0]
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root / "missing", "no such directory"),
        (lambda root: root, "no .wav recordings"),
    ],
)
def test_missing_or_empty_data_dir(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        fsdd(make(tmp_path)).setup("fit")


def test_unreadable_and_empty_files_are_named(tmp_path):
    for digit in range(2):
        for index in range(10):
            write_tone(tmp_path / f"{digit}_anna_{index}.wav", seconds=0.2)
    (tmp_path / "1_anna_17.wav").write_text("this is not audio")
    with pytest.raises(DataError, match=r"1_anna_17\.wav: soundfile cannot read it"):
        fsdd(tmp_path).setup("fit")
    (tmp_path / "1_anna_17.wav").unlink()
    sf.write(str(tmp_path / "0_anna_18.wav"), np.zeros(0), 8000)
    with pytest.raises(DataError, match=r"0_anna_18\.wav: the recording is empty"):
        fsdd(tmp_path).setup("fit")


def test_moving_the_model_leaves_the_workers_extractor_on_the_cpu(fsdd_slice):
    from audio_cls.model import CNN1d
    from audio_cls.module import AudioClassifier

    features = LogMel(8000, normalize="global")
    dm = FSDD(root=str(fsdd_slice), features=features, sample_rate=8000, batch_size=4)
    dm.setup("fit")
    module = AudioClassifier(CNN1d(64, 10, channels=[8]), dm.features, dm.class_names)
    torch.testing.assert_close(module.features.norm.mean, dm.features.norm.mean)  # fitted statistics travel
    module.to(torch.float64)  # stands in for .to("cuda"): any move of the module's tensors
    assert dm.features.norm.mean.dtype == torch.float32 and features.norm.mean.dtype == torch.float32
    assert next(iter(dm.val_dataloader()))["inputs"].dtype == torch.float32
