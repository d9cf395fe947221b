"""model=hf: pretrained encoders from Hugging Face transformers (audio_cls/model/hf.py), each architecture as a tiny
randomly initialized model saved with `save_pretrained` and loaded through the real `from_pretrained` path (no
downloads): forward and backward, the input pipelines against the feature extractors', padding, the offline error,
the config, export, and a training run."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn

pytest.importorskip("transformers")

import huggingface_hub.constants  # noqa: E402
import torchaudio.transforms as T  # noqa: E402
import transformers  # noqa: E402

from audio_cls.config_checks import check_config  # noqa: E402
from audio_cls.errors import ConfigError  # noqa: E402
from audio_cls.export import export_checked  # noqa: E402
from audio_cls.inference import Classifier  # noqa: E402
from audio_cls.model import HFEncoder  # noqa: E402
from audio_cls.model.layers import backbone  # noqa: E402
from audio_cls.module import AudioClassifier  # noqa: E402
from helpers import FSDD, REPO, run_entry  # noqa: E402
from tiny_hf import ARCHITECTURES, WAVEFORM_MODELS, save_tiny  # noqa: E402

# WavLM's attention warns about its own mask types (a torch deprecation inside transformers).
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
RATE = 8000  # FSDD's: resampled to the backbones' 16 kHz inside the network
INVARIANT = ("ast", "wav2vec2_layer", "hubert", "wavlm", "whisper")  # all but the group-norm wav2vec2


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """architecture -> a directory with its tiny model and feature extractor."""
    root = tmp_path_factory.mktemp("hf_models")
    return {a: save_tiny(a, root / a) for a in ARCHITECTURES}


def padded(lengths, pad_value=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    items = [torch.randn(n, generator=generator) * 0.1 for n in lengths]
    batch = torch.full((len(items), max(lengths) + 37, 1), pad_value)
    for i, item in enumerate(items):
        batch[i, : len(item), 0] = item
    return items, batch, torch.tensor(lengths)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_and_backward(saved, architecture):
    torch.manual_seed(0)
    net = HFEncoder(1, 3, str(saved[architecture]), sample_rate=RATE)
    assert net.training and net.encoder.training
    _, x, lengths = padded([4000, 2400])
    logits = net(x, lengths)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trained.items() if n.startswith("encoder."))

    # The head is the classifier; the backbone (transfer learning) is the rest, the pretrained encoder included.
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 3
    assert net.encoder in backbone(net) and net.head not in backbone(net)
    # The weights are the saved model's (Whisper: its encoder, out of the whole model).
    reference = transformers.AutoModel.from_pretrained(saved[architecture])
    reference = reference.encoder if architecture == "whisper" else reference
    theirs = reference.state_dict()
    ours = net.encoder.state_dict()
    assert set(theirs) <= set(ours) | {"masked_spec_embed"}
    assert all(torch.equal(ours[k], v) for k, v in theirs.items() if k in ours)
    if architecture in WAVEFORM_MODELS:  # freeze_feature_encoder: the convolutions over the waveform
        assert not any(p.requires_grad for p in net.encoder.feature_extractor.parameters())


def test_the_input_pipelines_compute_what_the_feature_extractors_do(saved):
    waves = [np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32) for n in (9000, 5000)]
    batch = nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    for architecture, key, options in (
        ("ast", "input_values", {}),  # fbank, cut or padded to max_length frames, normalized
        ("whisper", "input_features", {}),  # log-mel of the waveform padded to the encoder's length
        ("wav2vec2_layer", "input_values", {"padding": True}),  # normalized over valid samples, zero-padded
    ):
        extractor = transformers.AutoFeatureExtractor.from_pretrained(saved[architecture])
        expected = extractor(waves, sampling_rate=16000, return_tensors="pt", **options)[key]
        net = HFEncoder(1, 3, str(saved[architecture]), sample_rate=16000)
        inputs, _ = net.frontend(batch, lengths)
        assert inputs[key].shape == expected.shape
        torch.testing.assert_close(inputs[key], expected, atol=1e-5, rtol=1e-5)
    # Resampling: torchaudio's Resample, and its count of output samples (the few more are zeroed as padding).
    net = HFEncoder(1, 3, str(saved["hubert"]), sample_rate=44100)
    wave = torch.randn(1, 30000)
    for n in (30000, 12345, 441):
        expected = T.Resample(44100, 16000)(wave[:, :n])
        assert net.frontend.resampled_length(n) == expected.shape[1]
        torch.testing.assert_close(net.frontend.resample(wave[:, :n])[:, : expected.shape[1]], expected, atol=0, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_an_item_alone_and_in_a_padded_batch(saved, architecture):
    """AST and Whisper pad every item to their fixed length, layer-norm wav2vec2/HuBERT/WavLM mask padding: the
    same logits alone or in any batch, whatever the padding holds. The group-norm wav2vec2 takes no mask (as Hugging
    Face documents): its padding changes the outputs a little."""
    torch.manual_seed(0)
    net = HFEncoder(1, 3, str(saved[architecture]), sample_rate=RATE).eval()
    lengths = [4100, 2400, 1700]
    for pad_value in (0.0, 37.0, float("nan")):
        items, x, lens = padded(lengths, pad_value, seed=1)
        with torch.no_grad():
            batched = net(x, lens)
            alone = torch.cat([net(item[None, :, None], torch.tensor([len(item)])) for item in items])
        assert torch.isfinite(batched).all()
        if architecture in INVARIANT:
            torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
        else:
            assert 0 < (batched - alone).abs().max() < 0.5


def test_offline_without_a_copy_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as raised:
        HFEncoder(1, 3, "audio-cls-tests/not-cached")
    assert str(raised.value) == (
        "model.pretrained=audio-cls-tests/not-cached: not in the local Hugging Face cache and the hub cannot be "
        "reached (HF_HUB_OFFLINE=1); download it once with `hf download audio-cls-tests/not-cached` or pass a local "
        "directory"
    )


def test_the_cache_first_then_the_hub(monkeypatch):
    """Without HF_HUB_OFFLINE: the cache is asked first (no network call when the model is there), then the hub;
    when that cannot be reached either, the same one line."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def unreachable(name, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        cause = huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from cause

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(
        ConfigError,
        match=r"^model.pretrained=owner/model: not in the local Hugging Face cache .*\(HF_HUB_OFFLINE unset\)",
    ):
        HFEncoder(1, 3, "owner/model")
    assert calls == [True, False]


def test_settings_that_cannot_work_are_one_line(saved, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"model.pretrained=/no/such/dir: no such directory"):
        HFEncoder(1, 3, "/no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.pretrained=.*empty: Unrecognized model in"):
        HFEncoder(1, 3, str(tmp_path / "empty"))
    with pytest.raises(
        ConfigError,
        match=r"hubert: 22 tensors do not fit the config: encoder.layer_norm.bias \(\(16,\) in the file, \(8,\) here\)",
    ):
        HFEncoder(1, 3, str(saved["hubert"]), config_overrides={"hidden_size": 8})
    with pytest.raises(ConfigError, match="model=hf takes the waveform .* not 40 features per frame"):
        HFEncoder(40, 3, str(saved["hubert"]))
    with pytest.raises(ConfigError, match="model.readout='cls': only AST has a pooled token"):
        HFEncoder(1, 3, str(saved["hubert"]), readout="cls")
    with pytest.raises(ConfigError, match="model.config_overrides.colour: HubertConfig has no such setting"):
        HFEncoder(1, 3, str(saved["hubert"]), config_overrides={"colour": 1})
    net = HFEncoder(1, 3, str(saved["hubert"]), config_overrides={"mask_time_prob": 0.0, "hidden_dropout": 0.2})
    assert net.encoder.config.mask_time_prob == 0.0 and net.encoder.config.layerdrop == 0.0
    with pytest.raises(ConfigError, match=r"model: an input of 10 samples at 8000 Hz is shorter than the 23 that"):
        HFEncoder(1, 3, str(saved["hubert"]), sample_rate=RATE)(torch.zeros(1, 10, 1), torch.tensor([10]))
    other = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=8)).save_pretrained(other)  # fmt: skip
    with pytest.raises(ConfigError, match="a 'bert' model; model=hf takes audio-spectrogram-transformer, hubert"):
        HFEncoder(1, 3, str(other))
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ConfigError, match=r"^model=hf needs transformers: pip install -e '.\[hf\]'$"):
        HFEncoder(1, 3, str(saved["hubert"]))


def test_transformers_is_imported_only_to_build_one():
    """The [hf] extra is optional: importing the networks does without it. (torchmetrics imports transformers
    where it is installed, for its BERTScore, so the entry points do import it then.)"""
    code = "import sys, audio_cls.model; assert 'transformers' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def compose_hf(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=hf", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    return cfg


def test_the_config(saved):
    with pytest.raises(ConfigError, match="model.pretrained: Missing mandatory value"):
        check_config(compose_hf("features=raw"))
    with pytest.raises(
        ConfigError, match="features._target_=audio_cls.features.LogMel: HFEncoder takes only features=raw"
    ):
        check_config(compose_hf(f"model.pretrained={saved['ast']}"))
    with pytest.raises(
        ConfigError,
        match="features.normalize=global: HFEncoder takes only features=raw with frame_length=1, normalize=none",
    ):
        check_config(compose_hf(f"model.pretrained={saved['ast']}", "features=raw", "features.normalize=global"))
    cfg = compose_hf(f"model.pretrained={saved['ast']}", "features=raw", "model.readout=cls")
    check_config(cfg)
    net = instantiate(cfg.model, in_features=instantiate(cfg.features).num_features, num_classes=10)
    assert net.frontend.sample_rate == cfg.data.sample_rate == RATE and net.frontend.target_rate == 16000
    assert net(torch.zeros(2, 3000, 1), torch.tensor([3000, 2000])).shape == (2, 10)


def small_classifier(directory) -> Classifier:
    cfg = compose_hf(f"model.pretrained={directory}", "features=raw")
    torch.manual_seed(0)
    features = instantiate(cfg.features)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=10)
    config = OmegaConf.to_container(cfg, resolve=True)
    return Classifier(AudioClassifier(net, features, [str(d) for d in range(10)], config=config))


@pytest.mark.parametrize(
    "architecture,fmt",
    [(a, "torchscript") for a in ARCHITECTURES]
    + [pytest.param(a, "onnx", marks=pytest.mark.slow) for a in ARCHITECTURES],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_export(saved, architecture, fmt, tmp_path):
    """Every architecture exports with its input pipeline (and resampling) inside the graph, and passes export's
    parity check on random batches of other lengths and on a real recording."""
    classifier = small_classifier(saved[architecture])
    check = str(FSDD / "recordings" / "6_yweweler_3.wav")
    exported, diffs, failures = export_checked(classifier, fmt, tmp_path, check_input=check)
    exporter = "torch.jit.trace" if fmt == "torchscript" else "torch.onnx.export(dynamo=True)"
    assert (exported.exporter, exported.frontend_inside, failures) == (exporter, True, [])
    assert set(diffs) == {"random", "real"}


@pytest.mark.slow
def test_training_run_with_a_linear_probe(saved, tmp_path):
    """audio_cls.train end to end on FSDD with a tiny HuBERT: resampled from 8 kHz, the backbone frozen."""
    proc = run_entry(
        "audio_cls.train",
        "model=hf",
        f"model.pretrained={saved['hubert']}",
        "features=raw",
        "debug=limit",
        "data.batch_size=8",
        "transfer.linear_probe=true",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(metrics["test/loss"])
