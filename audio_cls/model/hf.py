"""Pretrained audio encoders from Hugging Face `transformers` (the optional extra `[hf]`): `model=hf`.

    x (batch, samples, 1): the waveform at data.sample_rate (features=raw), zero past each item's length
      -> resampled to the backbone's rate (16 kHz for all of them) when the data's differs
      -> the backbone's own input pipeline, in torch and batched (HFInput: `frontend`):
           AST      Kaldi fbank (128 mel bins, 25 ms / 10 ms, Hann window) of each item's valid samples, zero
                    frames after them, padded or cut to the model's max_length frames, (x - mean) / (2 std)
                    with the mean and std of its feature extractor: what ASTFeatureExtractor computes
           wav2vec2 / HuBERT / WavLM
                    the waveform, zero-mean and unit-variance over each item's valid samples where the feature
                    extractor says do_normalize; an attention mask from the lengths only for models whose
                    feature encoder uses layer norm (feat_extract_norm="layer"): group-norm ones (wav2vec2-base,
                    HuBERT-base) were trained without one and take zero padding, as Hugging Face documents
           Whisper  the log-mel spectrogram of WhisperFeatureExtractor (80 or 128 bins) of each item padded to
                    the encoder's 30 s (max_source_positions x 2 frames of 10 ms): the encoder accepts nothing else
      -> the backbone (`encoder`: ASTModel, Wav2Vec2Model, HubertModel, WavLMModel, or Whisper's encoder)
      -> readout over the output frames that come from valid input (mean, max, meanmax), or AST's own (cls)
      -> `head`, a Linear -> logits (batch, num_classes)

The encoder is the backbone of transfer learning (audio_cls.model.layers.backbone: every child but `head`), so
transfer.linear_probe, transfer.freeze_epochs and transfer.backbone_lr_scale apply to it.

Padding: AST and Whisper see every item padded to their fixed length whatever the batch, so an item's logits do not
depend on its batch; layer-norm wav2vec2/HuBERT/WavLM models mask padding (equal to float rounding); group-norm ones
normalize over the padded length, so padding changes their outputs slightly.

Weights come from `pretrained`, a directory (`save_pretrained`) or a name on the hub, looked up in the local cache
first (no network call when it is there), downloaded otherwise; HF_HUB_OFFLINE=1 forbids downloads. Code from a
repository (`trust_remote_code`) is never run. `transformers` is imported when a model is built, not with this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchaudio.transforms as T
from torch import nn

from audio_cls.errors import ConfigError
from audio_cls.features import frame_mask
from audio_cls.model.layers import READOUTS, check_readout, host_checks_enabled, masked_pool, readout_width

log = logging.getLogger(__name__)

# config.model_type -> the kind of input pipeline; the ones tested (tests/test_hf.py)
KINDS = {
    "audio-spectrogram-transformer": "ast",
    "wav2vec2": "waveform",
    "hubert": "waveform",
    "wavlm": "waveform",
    "whisper": "whisper",
}
HF_READOUTS = (*READOUTS, "cls")  # cls: AST's own (the mean of its CLS and distillation tokens)
INSTALL = "model=hf needs transformers: pip install -e '.[hf]'"


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(INSTALL) from None
    return transformers


class HFEncoder(nn.Module):
    """A pretrained `transformers` audio encoder with its input pipeline, a readout and a Linear head.

    Args:
        in_features: 1: the waveform, one sample per frame (features=raw, frame_length 1, normalize none).
        num_classes: outputs of the head.
        pretrained: a directory written by `save_pretrained` or a model name on the Hugging Face hub
            (MIT/ast-finetuned-audioset-10-10-0.4593, facebook/wav2vec2-base, openai/whisper-base, ...).
        sample_rate: of the input (data.sample_rate); resampled to the backbone's rate inside forward.
        readout: "mean", "max" or "meanmax" over the output frames of valid input; "cls": AST's pooled token.
        freeze_feature_encoder: wav2vec2/HuBERT/WavLM: keep the convolutional feature encoder over the waveform
            as pretrained (Hugging Face's fine-tuning recipe); other models have none.
        layerdrop: the backbone's LayerDrop (its `layerdrop`, Whisper's `encoder_layerdrop`); 0 by default
            because layers skipped at random leave parameters without gradients, which DDP refuses. None: the
            checkpoint's value.
        config_overrides: other attributes of the backbone's config to change before the weights are loaded
            (e.g. {mask_time_prob: 0.0, hidden_dropout: 0.1}); a key the config does not have is an error.

    forward(x (batch, samples, 1), lengths (batch,) in samples) -> logits (batch, num_classes).
    """

    # audio_cls.config_checks.check_front_end: the waveform as it is (features=raw); the input pipeline is inside
    takes_features = {"_target_": "audio_cls.features.RawWaveform", "frame_length": 1, "normalize": "none"}
    takes_features_option = "raw"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        pretrained: str,
        sample_rate: int = 16000,
        readout: str = "mean",
        freeze_feature_encoder: bool = True,
        layerdrop: float | None = 0.0,
        config_overrides: dict | None = None,
    ):
        super().__init__()
        if in_features != 1:
            raise ConfigError(
                f"model=hf takes the waveform (features=raw with frame_length=1), not {in_features} features per frame"
            )
        check_readout(readout, HF_READOUTS)
        encoder, config, extractor = load_pretrained(str(pretrained), layerdrop, dict(config_overrides or {}))
        kind = KINDS[config.model_type]
        if readout == "cls" and kind != "ast":
            raise ConfigError(
                f"model.readout='cls': only AST has a pooled token; {config.model_type} takes mean, max or meanmax"
            )
        convolutions = getattr(encoder, "feature_extractor", None)  # wav2vec2/HuBERT/WavLM's, over the waveform
        if freeze_feature_encoder and convolutions is not None:
            convolutions._freeze_parameters()  # what freeze_feature_encoder() of their task models does
        self.pretrained, self.readout, self.kind = str(pretrained), readout, kind
        self.frontend = {"ast": ASTInput, "waveform": WaveformInput, "whisper": WhisperInput}[kind](
            config, extractor, sample_rate
        )
        self.encoder = encoder.train()  # from_pretrained returns it in eval mode; the network's mode is the caller's
        self.head = nn.Linear(readout_width(self.frontend.width, readout), num_classes)

    def min_input_frames(self) -> int:
        """The fewest input samples (at the data's rate) the backbone accepts."""
        return self.frontend.min_samples()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (batch, samples, 1), lengths: (batch,) valid samples -> logits (batch, num_classes)."""
        if host_checks_enabled(lengths) and int(lengths.min()) < self.min_input_frames():
            raise ConfigError(
                f"model: an input of {int(lengths.min())} samples at {self.frontend.sample_rate} Hz is shorter than "
                f"the {self.min_input_frames()} that {self.pretrained} needs; use longer inputs"
            )
        lengths = lengths.to(x.device)
        wave = x[..., 0].masked_fill(~frame_mask(lengths, x.shape[1]), 0.0)  # padding may hold anything
        inputs, frames = self.frontend(wave, lengths)
        if self.readout == "cls":
            pooled = self.encoder(**inputs).pooler_output
        else:
            hidden = self.frontend.frames(self.encoder(**inputs).last_hidden_state)
            pooled = masked_pool(hidden, frames.clamp(1, hidden.shape[1]), self.readout)
        return self.head(pooled)


class HFInput(nn.Module):
    """The input pipeline of a backbone: resampling, then the backbone's own features, in float32.

    forward(wave (batch, samples) zero past each length, lengths (batch,)) -> (the encoder's keyword arguments,
    valid output frames (batch,)); frames(last_hidden_state) -> (batch, frames, width), what the readout pools.
    """

    width: int

    def __init__(self, sample_rate: int, target_rate: int):
        super().__init__()
        self.sample_rate, self.target_rate = int(sample_rate), int(target_rate)
        self.resampler = None
        if self.sample_rate != self.target_rate:
            self.resampler = T.Resample(self.sample_rate, self.target_rate)
            kernel = self.resampler._buffers.pop("kernel")  # rebuilt from the rates: not part of the state dict
            self.resampler.register_buffer("kernel", kernel, persistent=False)

    def resample(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, samples') at the backbone's rate: torchaudio's sinc resampling (its
        Resample's kernel), without its cut to ceil(samples * new / old), which is arithmetic on the shape that
        torch.jit.trace would freeze and torch.export cannot follow; the few samples more are the filter's tail
        past the end, which `forward` zeroes with the rest of the padding."""
        r = self.resampler
        orig = r.orig_freq // r.gcd
        padded = nn.functional.pad(wave, (r.width, r.width + orig))
        out = nn.functional.conv1d(padded[:, None], r.kernel, stride=orig)  # (batch, new, frames)
        return out.transpose(1, 2).reshape(wave.shape[0], -1)

    def resampled_length(self, lengths):
        """Samples after resampling `lengths` samples (ints or tensors), as torchaudio counts them."""
        return -((-lengths * self.target_rate) // self.sample_rate)

    def min_samples(self) -> int:
        """The fewest input samples that give the backbone `min_target_samples()` at its rate."""
        need = self.min_target_samples()
        return max(1, -((-need * self.sample_rate) // self.target_rate)) if self.resampler is not None else need

    def min_target_samples(self) -> int:
        return 1

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[dict, torch.Tensor]:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = wave.float()
            if self.resampler is not None:
                wave, lengths = self.resample(wave), self.resampled_length(lengths)
                wave = wave.masked_fill(~frame_mask(lengths, wave.shape[1]), 0.0)  # the filter's tail past the end
            return self.prepare(wave, lengths)

    def prepare(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[dict, torch.Tensor]:
        raise NotImplementedError

    def frames(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def fixed_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or cut axis 1 of `x` to `length`, without arithmetic on its shape (which torch.jit.trace would
    freeze to the example's)."""
    return torch.cat([x, x.new_zeros(x.shape[0], length, *x.shape[2:])], dim=1)[:, :length]


def normalize_items(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over each item's valid samples, zero after them: the feature extractors'
    `zero_mean_unit_var_norm` with an attention mask (variance of the valid samples, + 1e-7)."""
    mask = frame_mask(lengths, wave.shape[1])
    count = lengths.clamp(min=1).unsqueeze(1).to(wave.dtype)
    mean = wave.sum(1, keepdim=True) / count
    var = ((wave - mean).masked_fill(~mask, 0.0) ** 2).sum(1, keepdim=True) / count
    return ((wave - mean) / torch.sqrt(var + 1e-7)).masked_fill(~mask, 0.0)


class WaveformInput(HFInput):
    """wav2vec2 / HuBERT / WavLM: the waveform (normalized per item where the feature extractor says so), with an
    attention mask only where the feature encoder uses layer norm; output frames from the conv length formula."""

    def __init__(self, config, extractor, sample_rate: int):
        super().__init__(sample_rate, extractor.sampling_rate)
        self.width = config.hidden_size
        self.normalize = bool(getattr(extractor, "do_normalize", True))
        self.attention_mask = config.feat_extract_norm == "layer"
        self.conv = list(zip(config.conv_kernel, config.conv_stride))
        if getattr(config, "add_adapter", False):  # as _get_feat_extract_output_lengths counts an adapter's layers
            self.conv += [(1, config.adapter_stride)] * config.num_adapter_layers

    def output_lengths(self, lengths):
        """Frames after the feature encoder's convolutions (and adapter): `_get_feat_extract_output_lengths`."""
        for kernel, stride in self.conv:
            lengths = (lengths - kernel) // stride + 1
        return lengths

    def min_target_samples(self) -> int:
        samples = 1
        for kernel, stride in reversed(self.conv):
            samples = (samples - 1) * stride + kernel
        return samples

    def prepare(self, wave, lengths):
        if self.normalize:
            wave = normalize_items(wave, lengths)
        inputs = {"input_values": wave}
        if self.attention_mask:
            inputs["attention_mask"] = frame_mask(lengths, wave.shape[1]).long()
        return inputs, self.output_lengths(lengths)


class ASTInput(HFInput):
    """AST: Kaldi fbank as ASTFeatureExtractor computes it (torchaudio.compliance.kaldi.fbank with a Hann window
    and the bins and rate of the model), batched; padded or cut to max_length frames; normalized. The readout
    pools the patch tokens, averaged over frequency, of the time steps that start within valid frames."""

    FRAME, HOP, FFT = 400, 160, 512  # 25 ms, 10 ms at 16 kHz; the FFT size Kaldi rounds 400 up to

    def __init__(self, config, extractor, sample_rate: int):
        super().__init__(sample_rate, extractor.sampling_rate)
        from torchaudio.compliance.kaldi import get_mel_banks

        if extractor.sampling_rate != 16000:
            raise ConfigError(
                f"model=hf: AST's fbank is 25 ms frames at 16 kHz; this one is at {extractor.sampling_rate} Hz"
            )
        self.width, self.max_length = config.hidden_size, config.max_length
        self.time_stride, self.patch = config.time_stride, config.patch_size
        self.freq_patches = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        self.time_patches = (config.max_length - config.patch_size) // config.time_stride + 1
        self.normalize = bool(extractor.do_normalize)
        self.mean, self.std = float(extractor.mean), float(extractor.std)
        banks, _ = get_mel_banks(config.num_mel_bins, self.FFT, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
        self.register_buffer("banks", nn.functional.pad(banks, (0, 1)).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.FRAME, periodic=False), persistent=False)

    def min_target_samples(self) -> int:
        return self.FRAME  # one fbank frame

    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, bins): Kaldi's frames (those that fit whole are its snip_edges
        frames; this gives a few more, which `prepare` zeroes), each with its DC offset removed, pre-emphasis 0.97,
        the window, |rfft(512)|^2, mel banks, log (floored at float eps)."""
        wave = torch.cat([wave, wave.new_zeros(wave.shape[0], self.FRAME)], dim=1)  # no shape arithmetic: exportable
        frames = wave.unfold(1, self.FRAME, self.HOP)
        frames = frames - frames.mean(-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - 0.97 * previous) * self.window
        power = torch.fft.rfft(frames, n=self.FFT).abs().pow(2.0)
        return (power @ self.banks).clamp(min=torch.finfo(torch.float32).eps).log()

    def prepare(self, wave, lengths):
        frames = torch.where(lengths >= self.FRAME, (lengths - self.FRAME) // self.HOP + 1, 0).clamp(
            max=self.max_length
        )
        x = fixed_length(self.fbank(wave), self.max_length)
        x = x.masked_fill(~frame_mask(frames, x.shape[1]).unsqueeze(-1), 0.0)  # as the extractor pads: with zeros
        if self.normalize:
            x = (x - self.mean) / (2 * self.std)
        steps = -((-frames) // self.time_stride)  # patch time steps starting within valid frames
        return {"input_values": x}, steps

    def frames(self, hidden):
        """Patch tokens (after the CLS and distillation tokens, frequency-major) -> (batch, time steps, width)."""
        patches = hidden[:, 2:].unflatten(1, (self.freq_patches, self.time_patches))
        return patches.mean(1)


class WhisperInput(HFInput):
    """Whisper's encoder: WhisperFeatureExtractor's log-mel spectrogram (STFT 400 / hop 160, its mel filters,
    log10, floored 8 below the item's maximum, (x + 4) / 4) of each item padded (or cut) to the encoder's fixed
    length; output frames of valid input from the two convolutions (the second of stride 2)."""

    def __init__(self, config, extractor, sample_rate: int):
        super().__init__(sample_rate, extractor.sampling_rate)
        self.width = config.d_model
        self.n_fft, self.hop = int(extractor.n_fft), int(extractor.hop_length)
        self.mel_frames = 2 * config.max_source_positions  # the encoder checks its input has exactly these
        self.normalize = bool(getattr(extractor, "do_normalize", False))
        filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32)  # (n_fft // 2 + 1, n_mels)
        if filters.shape[1] != config.num_mel_bins:
            raise ConfigError(
                f"model=hf: the feature extractor has {filters.shape[1]} mel bins, "
                f"the Whisper model {config.num_mel_bins}"
            )
        self.register_buffer("filters", filters.T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def prepare(self, wave, lengths):
        samples = self.mel_frames * self.hop
        lengths = lengths.clamp(max=samples)
        wave = fixed_length(wave, samples)
        if self.normalize:
            wave = normalize_items(wave, lengths)
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_mel = (self.filters @ power).clamp(min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        mel = (lengths // self.hop + 1).clamp(max=self.mel_frames)
        return {"input_features": (log_mel + 4.0) / 4.0}, (mel - 1) // 2 + 1


# --- loading ----------------------------------------------------------------------------------------------------


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): huggingface_hub reads it once, when imported; it is read here again,
    so that setting it later in the process counts too."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any((f or "").upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def not_found_locally(err: BaseException) -> bool:
    """Whether a from_pretrained error means the files are neither in the cache nor reachable on the hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = err
    while seen is not None:
        if isinstance(seen, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        text = str(seen)
        if "couldn't connect to" in text or "cached files" in text or "outgoing traffic has been disabled" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unavailable(name: str, offline: bool) -> ConfigError:
    flag = "HF_HUB_OFFLINE=1" if offline else "HF_HUB_OFFLINE unset"
    return ConfigError(
        f"model.pretrained={name}: not in the local Hugging Face cache and the hub cannot be reached ({flag}); "
        f"download it once with `hf download {name}` or pass a local directory"
    )


def load_pretrained(name: str, layerdrop: float | None, overrides: dict):
    """(encoder, config, feature extractor) of `name`, a directory or a hub name (cache first, then the hub)."""
    transformers = import_transformers()
    directory = Path(name).expanduser()
    if directory.is_dir():
        source, local, offline = str(directory), True, True
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model.pretrained={name}: no such directory (a name on the hub is OWNER/NAME)")
    else:
        source, offline = name, offline_mode()
        local = True  # the cache first: no network call for a model already there

    def call(load, **kwargs):
        nonlocal local
        try:
            return load(source, local_files_only=local, **kwargs)
        except OSError as err:
            if directory.is_dir() or not not_found_locally(err):
                raise ConfigError(f"model.pretrained={name}: {first_line(err)}") from None
            if local and not offline:
                local = False  # not in the cache: download
                return call(load, **kwargs)
            raise unavailable(name, offline) from None
        except (ValueError, RuntimeError) as err:  # no model_type; weights that do not fit the config
            raise ConfigError(f"model.pretrained={name}: {first_line(err)}") from None

    config = call(transformers.AutoConfig.from_pretrained)
    if config.model_type not in KINDS:
        raise ConfigError(
            f"model.pretrained={name}: a {config.model_type!r} model; model=hf takes {', '.join(sorted(KINDS))}"
        )
    settings = dict(overrides)
    layerdrop_key = "encoder_layerdrop" if config.model_type == "whisper" else "layerdrop"
    if layerdrop is not None and hasattr(config, layerdrop_key):  # AST has none
        settings.setdefault(layerdrop_key, layerdrop)
    for key, value in settings.items():
        if not hasattr(config, key):
            raise ConfigError(f"model.config_overrides.{key}: {type(config).__name__} has no such setting")
        setattr(config, key, value)
    try:
        extractor = call(transformers.AutoFeatureExtractor.from_pretrained)
    except ConfigError as err:
        if "not in the local Hugging Face cache" in str(err):
            raise
        extractor = default_extractor(transformers, config)
        log.warning("%s has no feature extractor config: %s's defaults apply", name, type(extractor).__name__)
    whisper = config.model_type == "whisper"
    model_class = transformers.WhisperForAudioClassification if whisper else transformers.AutoModel
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report: summarized below
    try:
        model, info = call(
            model_class.from_pretrained, config=config, output_loading_info=True, ignore_mismatched_sizes=True
        )
    finally:
        transformers.logging.set_verbosity(previous)
    mismatched = sorted(info["mismatched_keys"])
    if mismatched:  # model.config_overrides of a shape
        shapes = ", ".join(f"{key} ({tuple(a)} in the file, {tuple(b)} here)" for key, a, b in mismatched[:3])
        raise ConfigError(f"model.pretrained={name}: {len(mismatched)} tensors do not fit the config: {shapes}")
    if whisper:  # the encoder of any Whisper checkpoint; the classifier layers around it are dropped
        model = model.encoder
    missing = [k for k in info["missing_keys"] if not whisper or k.startswith("encoder.")]
    if missing:
        log.warning(
            "%s: %d tensors of the %s are not in the checkpoint and start random: %s",
            name,
            len(missing),
            type(model).__name__,
            ", ".join(sorted(missing)[:5]),
        )
    log.info("Backbone %s: %s from %s", config.model_type, type(model).__name__, name)
    return model.float(), config, extractor


def default_extractor(transformers, config):
    if config.model_type == "whisper":
        return transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    if config.model_type == "audio-spectrogram-transformer":
        return transformers.ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    return transformers.Wav2Vec2FeatureExtractor(return_attention_mask=config.feat_extract_norm == "layer")


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
