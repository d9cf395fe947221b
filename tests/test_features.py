import pytest
import torch

from audio_cls.errors import ConfigError
from audio_cls.features import MFCC, GlobalNorm, LogMel, RawWaveform, Spectrogram, UtteranceNorm

SR = 8000


def extractors():
    return {
        "raw": RawWaveform(),
        "raw_framed": RawWaveform(frame_length=160),
        "spectrogram": Spectrogram(n_fft=510, hop_length=80),
        "logmel": LogMel(SR, n_fft=256, hop_length=80, n_mels=40),
        "mfcc": MFCC(SR, n_mfcc=13, n_fft=256, hop_length=80, n_mels=40),
    }


@pytest.mark.parametrize("name", list(extractors()))
@pytest.mark.parametrize("samples", [1, 79, 80, 4000, 4321])
def test_shape_is_frames_by_features(name, samples):
    fx = extractors()[name]
    out = fx(torch.randn(samples))
    expected_features = {"raw": 1, "raw_framed": 160, "spectrogram": 256, "logmel": 40, "mfcc": 13}[name]
    assert out.shape == (fx.num_frames(samples), expected_features)
    assert fx.num_features == expected_features
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(extractors()))
def test_batched_equals_per_item(name):
    fx = extractors()[name]
    waves = torch.randn(3, 4000)
    batched = fx(waves)
    for i in range(3):
        torch.testing.assert_close(batched[i], fx(waves[i]))


def test_num_frames_for_tensor_lengths():
    fx = LogMel(SR, hop_length=80)
    lengths = torch.tensor([80, 4000, 4321])
    assert fx.num_frames(lengths).tolist() == [fx(torch.randn(n)).shape[0] for n in lengths.tolist()]


def test_utterance_norm_ignores_padding():
    norm = UtteranceNorm()
    x = torch.randn(1, 10, 4) * 3 + 5
    padded = torch.cat([x, torch.full((1, 6, 4), 100.0)], dim=1)
    alone = norm(x, torch.tensor([10]))
    in_batch = norm(padded, torch.tensor([10]))
    torch.testing.assert_close(in_batch[:, :10], alone)
    assert (in_batch[:, 10:] == 0).all()
    torch.testing.assert_close(alone.mean(1), torch.zeros(1, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.std(1, unbiased=False), torch.ones(1, 4), atol=1e-3, rtol=0)


def test_global_norm_is_identity_until_fit_then_uses_valid_frames_only():
    norm = GlobalNorm(2)
    x = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [999.0, 999.0]]])  # last frame is padding
    lengths = torch.tensor([2])
    torch.testing.assert_close(norm(x, lengths)[:, :2], x[:, :2])
    norm.fit([(x, lengths)])
    torch.testing.assert_close(norm.mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(norm.std, torch.tensor([1.0, 10.0]), atol=1e-4, rtol=0)
    assert bool(norm.fitted)
    assert "mean" in norm.state_dict() and "std" in norm.state_dict()


def test_unknown_normalization_names_the_key():
    with pytest.raises(ConfigError, match="features.normalize='batch'"):
        LogMel(SR, normalize="batch")


def test_extraction_stays_float32_under_autocast():
    fx = LogMel(SR, normalize="utterance")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fx(torch.randn(2, 4000))
    assert out.dtype == torch.float32


def test_mfcc_is_torchaudios_and_loads_weights_of_the_earlier_layout():
    """MFCC shares LogMel's mel front end and computes exactly torchaudio's MFCC(log_mels=True); a state
    dict of the earlier layout (torchaudio's module held as `mfcc`) loads into it."""
    import torchaudio.transforms as T

    from audio_cls.features import MFCC

    mel = dict(n_fft=256, hop_length=80, n_mels=64)
    ours = MFCC(8000, n_mfcc=20, normalize="global", **mel)
    theirs = T.MFCC(8000, n_mfcc=20, log_mels=True, melkwargs={**mel, "pad_mode": "constant"})
    wave = torch.randn(2, 4000)
    torch.testing.assert_close(ours.compute(wave), theirs(wave).transpose(-1, -2), rtol=0, atol=0)
    earlier = {f"mfcc.{k}": v for k, v in theirs.state_dict().items()}
    earlier.update({"norm.mean": torch.full((20,), 2.0), "norm.std": torch.ones(20), "norm.fitted": torch.tensor(True)})
    fresh = MFCC(8000, n_mfcc=20, normalize="global", **mel)
    fresh.load_state_dict(earlier)
    assert bool(fresh.norm.fitted) and fresh.norm.mean[0] == 2.0
