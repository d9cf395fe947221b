"""An item's logits do not depend on the batch it is in: for every network in conf/model/ with its shipped
settings, and the examples of the practitioner's note the template grew from (note_conv1d, note_lstm), an item
alone and inside any padded batch agree (eval mode), and in training mode padding stays out of batch-norm
statistics. Property-based: hypothesis draws lengths, batch compositions and what the padding holds."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio_cls import CONF_DIR

# (name, overrides): every conf/model/*.yaml as shipped, and the experiments that change a network's settings.
NETWORKS = {
    "bcresnet": ["model=bcresnet"],
    "cnn1d": ["model=cnn1d"],
    "cnn2d": ["model=cnn2d"],
    "crnn": ["model=crnn"],
    "lstm": ["model=lstm"],
    "matchboxnet": ["model=matchboxnet"],
    "note_conv1d": ["experiment=note_conv1d"],
    "note_lstm": ["experiment=note_lstm"],
    "fsdd_lstm": ["experiment=fsdd_lstm"],
}
# Networks checked elsewhere, with the reason: they cannot be built from their shipped config alone.
CHECKED_ELSEWHERE = {
    "hf": "needs a saved pretrained model (model.pretrained); tests/test_hf.py checks tiny ones of each architecture",
}
PADDING = st.sampled_from([0.0, -100.0, 37.0, float("nan")])  # zeros, log(0) in dB, garbage, NaN


def build(name: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=NETWORKS[name])
    features = instantiate(cfg.features)
    torch.manual_seed(0)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=10)
    # Trained-looking batch norms: with the initial running statistics (0, 1) and affine (1, 0), eval-mode
    # batch norm keeps zeros at zero and a padding bug cannot show.
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    return net, features.num_features


# make test-fast (-m "not slow") checks the convolutional networks here; the recurrent ones take 3-8 s each on
# 2 CPU cores, and test_crnn.py / test_models.py check their padding invariance in the fast tests too.
SLOW_NETWORKS = {"crnn", "lstm", "note_lstm", "fsdd_lstm"}


@pytest.fixture(
    scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW_NETWORKS else n for n in NETWORKS]
)
def network(request):
    return build(request.param)


def shortest(net) -> int:
    """The least number of frames the network accepts."""
    for n in range(1, 200):
        lengths = getattr(net, "block_lengths", lambda n: [n])(n)
        if min(lengths) >= 1:
            return n


def test_every_shipped_network_is_checked():
    assert {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")} <= set(NETWORKS) | set(CHECKED_ELSEWHERE)
    assert not set(NETWORKS) & set(CHECKED_ELSEWHERE)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), pad_value=PADDING)
def test_item_alone_and_in_any_padded_batch_give_the_same_logits(network, data, pad_value):
    net, num_features = network
    net.eval()
    low = shortest(net)
    lengths = data.draw(st.lists(st.integers(low, low + 60), min_size=1, max_size=6), label="lengths")
    extra = data.draw(st.integers(0, 9), label="extra padding")
    items = [torch.randn(n, num_features) for n in lengths]
    batch = torch.full((len(items), max(lengths) + extra, num_features), pad_value)
    for i, item in enumerate(items):
        batch[i, : item.shape[0]] = item
    with torch.no_grad():
        batched = net(batch, torch.tensor(lengths))
        for i, item in enumerate(items):
            alone = net(item[None], torch.tensor([item.shape[0]]))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name",
    ["bcresnet", "cnn1d", "matchboxnet", *(pytest.param(n, marks=pytest.mark.slow) for n in ("cnn2d", "crnn"))],
)
@settings(max_examples=8, deadline=None)
@given(data=st.data(), pad_value=PADDING)
def test_batch_norm_statistics_come_from_valid_frames_only(name, data, pad_value):
    """Training mode: the same items padded differently give the same outputs and running statistics. In float64:
    a batch of two one-frame items has a variance of two values, which amplifies float32 rounding (the sum over
    more padded zeros is ordered differently) past any tolerance that would still catch leaking padding."""
    net, num_features = build(name)
    net = net.double()
    net.train()
    for module in net.modules():  # dropout aside: it draws new masks for every call
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):  # Dropout, Dropout2d
            module.p = 0.0
    low = shortest(net)
    lengths = data.draw(st.lists(st.integers(low, low + 40), min_size=2, max_size=5), label="lengths")
    extra = data.draw(st.integers(1, 20), label="extra padding")
    items = [torch.randn(n, num_features, dtype=torch.float64) for n in lengths]
    tight = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
    loose = torch.full((len(items), tight.shape[1] + extra, num_features), pad_value, dtype=torch.float64)
    loose[:, : tight.shape[1]] = tight
    for i, n in enumerate(lengths):
        loose[i, n:] = pad_value
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out_tight = net(tight, torch.tensor(lengths))
    stats_tight = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net.load_state_dict(state)
    out_loose = net(loose, torch.tensor(lengths))
    stats_loose = {k: v for k, v in net.state_dict().items() if "running" in k}
    torch.testing.assert_close(out_loose, out_tight, atol=1e-4, rtol=1e-4)
    for key in stats_tight:
        torch.testing.assert_close(stats_loose[key], stats_tight[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [1, 2])
def test_masked_batch_norm_without_padding_is_batch_norm(dims):
    """Outputs, gradients and running statistics of torch's BatchNorm when every frame is valid."""
    from audio_cls.model.layers import MaskedBatchNorm1d, MaskedBatchNorm2d

    torch.manual_seed(0)
    ours = (MaskedBatchNorm1d if dims == 1 else MaskedBatchNorm2d)(8)
    ours.weight.data.uniform_(0.5, 1.5)
    ours.bias.data.uniform_(-1, 1)
    theirs = (torch.nn.BatchNorm1d if dims == 1 else torch.nn.BatchNorm2d)(8)
    theirs.load_state_dict(ours.state_dict())
    shape = (4, 8, 30) if dims == 1 else (4, 8, 5, 30)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    y = x.detach().clone().requires_grad_()
    weights = torch.randn(shape)
    out_ours, out_theirs = ours(x, torch.full((4,), 30)), theirs(y)
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
