"""The CRNN (conf/model/crnn.yaml): shapes, tracked lengths, padding invariance, config and command line."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audio_cls.config_checks import check_config
from audio_cls.errors import ConfigError
from audio_cls.model.crnn import CRNN
from helpers import REPO, randomize_batch_norm, run_entry


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(channels=[8, 8, 8], kernel_size=[3, 5, 3], pool_size=[2, 1, 2]),
        dict(channels=8, num_blocks=2, kernel_size=3, stride=2, padding=1, pool_size=1),
        dict(channels=[8], padding="valid", dilation=2, bidirectional=False, num_layers=2, readout="last"),
    ],
)
def test_crnn_output_shape_and_tracked_lengths(kwargs):
    net = CRNN(20, 7, **kwargs).eval()
    lengths = torch.tensor([61, 40, 23])
    x = torch.randn(3, 61, 20)
    assert net(x, lengths).shape == (3, 7)
    h = x.transpose(1, 2)  # the conv stack's input layout: (batch, feat, time)
    for block in net.blocks:
        h = block(h)
    assert h.shape[-1] == int(net.output_lengths(torch.tensor([61]))[0])  # the formula matches the layers
    maps, frames = net.blocks(x, lengths)
    assert maps.shape == (3, net.gru.input_size, h.shape[-1])
    assert frames.tolist() == net.output_lengths(lengths).tolist()


@pytest.mark.parametrize("readout", ["last", "mean", "max", "meanmax"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_crnn_padding_never_changes_an_item(readout, bidirectional):
    torch.manual_seed(0)
    net = CRNN(12, 5, channels=[8, 16], kernel_size=[5, 3], bidirectional=bidirectional, readout=readout).eval()
    items = [torch.randn(n, 12) for n in (37, 21, 9)]
    batch = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
    batch[1, 21:] = 50.0  # garbage in the padding must not matter
    batch[2, 9:] = -7.0
    batched = net(batch, torch.tensor([37, 21, 9]))
    for i, item in enumerate(items):
        alone = net(item[None], torch.tensor([item.shape[0]]))
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(channels=[8, 16, 16], pool_size=[2, 2, 1], freq_pool_size=[2, 4, 5]),  # 40 bins -> 20 -> 5 -> 1
        dict(channels=[8, 16], kernel_size=[5, 3], pool_size=[1, 2], freq_pool_size=4),  # 40 -> 10 -> 2
        dict(channels=[8, 8], padding="valid", pool_size=2),  # square pools: 40 -> 19 -> 8
    ],
)
def test_conv2d_front_tracks_bands_and_frames(kwargs):
    """dims=2: the GRU reads channels x the bands left per frame, and the tracked bands and frames are what the
    layers give."""
    net = CRNN(40, 7, dims=2, frame_pooling="linear_softmax", **kwargs).eval()
    lengths = torch.tensor([61, 40, 23])
    x = torch.randn(3, 61, 40)
    h = x.transpose(1, 2)[:, None]  # the Conv2d stack's input layout: (batch, 1, feat, time)
    for block in net.blocks:
        h = block(h)
    bands, frames = h.shape[2], h.shape[3]
    assert bands == net.blocks.out_features and frames == int(net.output_lengths(torch.tensor([61]))[0])
    assert net.gru.input_size == net.blocks.out_channels * bands
    clip, frame_logits, frame_lengths = net.forward_frames(x, lengths)
    assert clip.shape == (3, 7) and frame_logits.shape == (3, frames, 7)
    assert frame_lengths.tolist() == net.output_lengths(lengths).tolist()


def test_conv2d_front_padding_never_changes_an_item():
    torch.manual_seed(0)
    net = CRNN(16, 5, dims=2, channels=[8, 16], kernel_size=3, freq_pool_size=[2, 4], frame_pooling="attention")
    randomize_batch_norm(net).eval()
    items = [torch.randn(n, 16) for n in (37, 21, 9)]
    batch = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
    batch[1, 21:] = 50.0  # garbage in the padding must not matter
    batch[2, 9:] = -7.0
    clips, frames, frame_lengths = net.forward_frames(batch, torch.tensor([37, 21, 9]))
    for i, item in enumerate(items):
        clip, frame, _ = net.forward_frames(item[None], torch.tensor([item.shape[0]]))
        torch.testing.assert_close(clips[i : i + 1], clip, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(frames[i : i + 1, : frame_lengths[i]], frame, atol=1e-5, rtol=1e-5)


def test_frequency_pooling_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="model.freq_pool_size=2: a Conv1d front has no feature axis"):
        CRNN(40, 5, freq_pool_size=2)
    with pytest.raises(ConfigError, match="the feature axis of 40 bins shrinks to 0.*freq_pool_size"):
        CRNN(40, 5, dims=2, channels=[8, 8], freq_pool_size=[8, 8])
    with pytest.raises(ConfigError, match="model.freq_pool_size=\\[2, 2\\]: has 2 entries for 3 blocks"):
        CRNN(40, 5, dims=2, channels=[8, 8, 8], freq_pool_size=[2, 2])
    with pytest.raises(ConfigError, match="model.dims=3"):
        CRNN(40, 5, dims=3)


def test_crnn_rejects_bad_settings_by_key():
    with pytest.raises(ConfigError, match="model.readout='first'"):
        CRNN(12, 5, readout="first")
    net = CRNN(8, 4, channels=[6, 6], kernel_size=5, padding="valid", pool_size=2)
    with pytest.raises(ConfigError, match="shrinks to 0 frames after block 1"):
        net(torch.randn(2, 12, 8), torch.tensor([12, 12]))


def test_crnn_config_composes_checks_and_builds(tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=crnn", "model.hidden_size=32", f"paths.output_dir={tmp_path}"])
    check_config(cfg)  # every key of crnn.yaml is an argument of CRNN, with the right type
    net = instantiate(cfg.model, in_features=64, num_classes=10)
    assert isinstance(net, CRNN) and net.gru.hidden_size == 32 and net.gru.bidirectional
    assert net(torch.randn(2, 50, 64), torch.tensor([50, 31])).shape == (2, 10)


@pytest.mark.slow
def test_crnn_trains_from_the_command_line(fsdd_slice, tmp_path):
    proc = run_entry(
        "audio_cls.train",
        "model=crnn",
        "debug=fast",
        f"data.root={fsdd_slice}",
        f"hydra.run.dir={tmp_path}",
        "data.batch_size=16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert (tmp_path / ".hydra" / "config.yaml").read_text().count("audio_cls.model.crnn.CRNN") == 1
