import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audio_cls import CONF_DIR
from audio_cls.errors import ConfigError
from audio_cls.inference import minimum_samples
from audio_cls.model import CNN1d, CNN2d, LSTMClassifier
from audio_cls.model.crnn import CRNN
from audio_cls.model.layers import conv_output_length, last_state, masked_pool, min_input_frames


@pytest.mark.parametrize(
    "n1,kernel,stride,padding,dilation",
    [
        (100, 2, 1, 0, 1),
        (100, 5, 2, 0, 1),
        (37, 3, 3, 1, 1),
        (50, 3, 1, 0, 4),
        (9, 4, 2, 2, 2),
        (64, 5, 1, 2, 1),
    ],
)
def test_conv_length_formula_matches_pytorch(n1, kernel, stride, padding, dilation):
    conv = torch.nn.Conv1d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    assert conv(torch.zeros(1, 1, n1)).shape[-1] == conv_output_length(n1, kernel, stride, padding, dilation)


def test_note_example_n2_is_n1_minus_one():
    # Conv1d(256 -> 100, kernel 2) at stride 1: N2 = (N1 - 2)/1 + 1
    net = CNN1d(256, 10, channels=[100], kernel_size=2, padding="valid", pool_size=1, norm="none")
    assert net.block_lengths(50) == [49]
    assert net.blocks[0][0].in_channels == 256 and net.blocks[0][0].out_channels == 100


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=5, padding="same", pool_size=2),
        dict(kernel_size=[3, 5, 2], padding=[0, 2, 0], stride=[1, 2, 1], pool_size=1),
        dict(kernel_size=3, dilation=[1, 2, 4], padding="valid", pool_size=[2, 1, 1]),
    ],
)
def test_cnn1d_tracked_lengths_equal_real_output_lengths(kwargs):
    net = CNN1d(8, 4, channels=[6, 6, 6], **kwargs).eval()
    h = torch.randn(1, 8, 61)
    for block, expected in zip(net.blocks, net.block_lengths(61)):
        h = block(h)
        assert h.shape[-1] == expected


def test_cnn1d_same_padding_keeps_length_and_rejects_stride():
    net = CNN1d(8, 4, channels=[6], kernel_size=4, padding="same", pool_size=1)
    assert net.blocks[0](torch.randn(1, 8, 33)).shape[-1] == 33 == net.block_lengths(33)[0]
    with pytest.raises(ConfigError, match="padding='same' needs stride 1"):
        CNN1d(8, 4, channels=[6], stride=2, padding="same")


def test_cnn_that_shrinks_time_below_one_frame_fails_clearly():
    net = CNN1d(8, 4, channels=[6, 6], kernel_size=5, padding="valid", pool_size=2)
    with pytest.raises(ConfigError, match="shrinks to 0 frames after block 1"):
        net(torch.randn(2, 12, 8), torch.tensor([12, 12]))


# Padding invariance of every shipped network (alone vs in any padded batch, batch-norm statistics over valid
# frames) is tested property-based in test_padding_invariance.py.


def test_cnn2d_output_shape_and_frequency_check():
    net = CNN2d(40, 7, channels=[4, 8], kernel_size=3)
    assert net(torch.randn(3, 50, 40), torch.tensor([50, 30, 20])).shape == (3, 7)
    with pytest.raises(ConfigError, match="feature axis"):
        CNN2d(4, 7, channels=[4, 4, 4], pool_size=2)


@pytest.mark.parametrize("readout", ["last", "mean", "max", "meanmax"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_readout_identical_with_and_without_padding(readout, bidirectional):
    torch.manual_seed(0)
    net = LSTMClassifier(12, 5, bidirectional=bidirectional, readout=readout).eval()
    items = [torch.randn(n, 12) for n in (17, 9, 4)]
    batch = torch.nn.utils.rnn.pad_sequence(items, batch_first=True) + 0.0
    batch[1, 9:] = 50.0  # garbage in the padding must not matter
    batched = net(batch, torch.tensor([17, 9, 4]))
    for i, item in enumerate(items):
        alone = net(item[None], torch.tensor([item.shape[0]]))
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_lstm_defaults_follow_the_note():
    net = LSTMClassifier(20, 10)
    assert (net.lstm.hidden_size, net.lstm.num_layers, net.lstm.batch_first) == (64, 3, True)
    assert isinstance(net.head, torch.nn.Linear) and net.head.in_features == 64


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
def test_activation_is_a_config_choice(activation):
    net = CNN1d(4, 3, channels=[4], activation=activation)
    assert type(net.blocks[0][2]).__name__.lower().startswith(activation.replace("_", "")[:3])
    lstm = LSTMClassifier(4, 3, head_hidden=8, activation=activation)
    assert type(lstm.head[1]).__name__.lower().startswith(activation[:3])
    # Without a hidden head layer the LSTM has no place for an activation: setting one is an error, not ignored.
    with pytest.raises(ConfigError, match=rf"model.activation='{activation}': .*model.head_hidden=0"):
        LSTMClassifier(4, 3, activation=activation)


def test_unknown_activation_names_the_key():
    with pytest.raises(ConfigError, match="model.activation='swish'"):
        CNN1d(4, 3, channels=[4], activation="swish")


def test_masked_pool_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_pool(x, torch.tensor([2]), "mean").item() == 2.0
    assert masked_pool(x, torch.tensor([2]), "max").item() == 3.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=5, padding="same", pool_size=2),
        dict(kernel_size=[3, 5, 2], padding=[0, 2, 0], stride=[1, 2, 1], pool_size=1),
        dict(kernel_size=3, dilation=[1, 2, 4], padding="valid", pool_size=[2, 1, 3]),
        dict(kernel_size=[7, 4, 3], stride=[3, 2, 1], padding=[1, 0, 2], pool_size=[1, 2, 2]),
    ],
)
def test_min_input_frames_is_the_fewest_that_survive_every_block(kwargs):
    for net in (CNN1d(8, 4, channels=[6, 6, 6], **kwargs), CRNN(8, 4, channels=[6, 6, 6], **kwargs)):
        n = min_input_frames(net)
        assert n == net.min_input_frames() == net.blocks.min_input_frames()
        assert min(net.block_lengths(n)) >= 1
        assert n == 1 or min(net.block_lengths(n - 1)) < 1
        net.eval()(torch.randn(1, n, 8), torch.tensor([n]))  # accepted
        if n > 1:
            with pytest.raises(ConfigError, match=f"an input of {n - 1} frames shrinks to 0 frames after block"):
                net(torch.randn(1, n - 1, 8), torch.tensor([n - 1]))


def test_networks_without_min_input_frames_accept_one_frame():
    assert not hasattr(LSTMClassifier(4, 3), "min_input_frames") and min_input_frames(LSTMClassifier(4, 3)) == 1


@pytest.fixture(scope="module")
def logmel():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return instantiate(compose("train", overrides=["features=logmel"]).features)


def test_minimum_samples_for_a_network_without_min_input_frames(logmel):
    n = minimum_samples(logmel, LSTMClassifier(logmel.num_features, 3))
    assert logmel.num_frames(n) >= 1 and (n == 1 or logmel.num_frames(n - 1) < 1)


@pytest.mark.parametrize("channels,pool_size", [([8, 8, 8], 2), ([8, 8], 3)])
def test_minimum_samples_for_a_cnn_keeps_a_frame_after_every_block(logmel, channels, pool_size):
    net = CNN1d(logmel.num_features, 3, channels=channels, kernel_size=3, padding="valid", pool_size=pool_size)
    n = minimum_samples(logmel, net)
    assert min(net.block_lengths(logmel.num_frames(n))) >= 1
    assert min(net.block_lengths(logmel.num_frames(n - 1))) < 1


def test_length_check_stays_out_of_traced_graphs():
    """The shortest-length check reads `int(lengths.min())` in eager mode only: tracing needs no patching."""
    net = CNN1d(8, 4, channels=[6, 6], kernel_size=3, padding="valid").eval()
    x, lengths = torch.randn(2, 20, 8), torch.tensor([20, 13])
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # e.g. "Converting a tensor to a Python integer"
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated in torch 2.11
        traced = torch.jit.trace(net, (x, lengths))
    torch.testing.assert_close(traced(x, lengths), net(x, lengths))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_last_state_is_the_top_layers_final_states(bidirectional):
    h_n = torch.randn(3 * (2 if bidirectional else 1), 5, 4)  # (layers * directions, batch, hidden)
    top = [h_n[-2], h_n[-1]] if bidirectional else [h_n[-1]]
    torch.testing.assert_close(last_state(h_n, bidirectional), torch.cat(top, dim=-1))


@pytest.mark.parametrize(
    "model,overrides",
    [
        ("cnn1d", ["model.kernel_size=[5,3,3]", "model.pool_size=[2,1,2]"]),
        ("cnn2d", ["model.kernel_size=[5,3,3]", "model.dilation=[1,2,1]"]),
        ("crnn", ["model.kernel_size=[5,3]", "model.pool_size=[2,1]"]),
        (
            "crnn",
            ["model.dims=2", "model.channels=[8,16,16]", "model.pool_size=[2,2,1]", "model.freq_pool_size=[2,4,5]"],
        ),
    ],
)
def test_per_block_lists_from_the_command_line(model, overrides):
    # Hydra hands lists over as ListConfig, not list: every per-block setting must read them as one value per block
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", *overrides])
    net = instantiate(cfg.model, in_features=40, num_classes=3).eval()
    for key in overrides:
        name, value = key.split("=")
        expected = [int(v) for v in value.strip("[]").split(",")]
        if name.removeprefix("model.") in ("kernel_size", "dilation"):
            got = [block[0].__dict__[name.removeprefix("model.")][0] for block in net.blocks]
            assert got == expected
        if name == "model.pool_size":
            assert [block.pool_size for block in net.blocks] == expected
        if name == "model.freq_pool_size":
            assert [block.freq_pool_size for block in net.blocks] == expected
    x, lengths = torch.randn(2, 80, 40), torch.tensor([80, 61])
    assert net(x, lengths).shape == (2, 3)


@pytest.mark.parametrize("width,paper", [(1, 9.2e3), (8, 321e3)])
def test_bcresnet_has_the_papers_parameter_counts(width, paper):
    """BC-ResNet-1 and -8 on 40 mel bands: 9.2k and 321k parameters in Kim et al. (2021)."""
    from audio_cls.model import BCResNet

    net = BCResNet(40, 12, width=width)
    assert abs(sum(p.numel() for p in net.parameters()) - paper) / paper < 0.01
    x = torch.randn(2, 30, 40)
    assert net(x, torch.tensor([30, 7])).shape == (2, 12)


def test_bcresnet_names_what_does_not_fit():
    from audio_cls.model import BCResNet

    with pytest.raises(ConfigError, match=r"model.sub_bands=5 must divide .* \(32, 16, 8 for 64 .*divisor of 8"):
        BCResNet(64, 10)
    assert BCResNet(64, 10, sub_bands=4)(torch.randn(1, 9, 64), torch.tensor([9])).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"20 feature bins leave 3 .* at least 33"):
        BCResNet(20, 10, sub_bands=1)
    with pytest.raises(ConfigError, match=r"model.width=0.05"):
        BCResNet(40, 10, width=0.05)
