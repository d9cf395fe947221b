"""Tiny randomly initialized Hugging Face audio encoders, saved with `save_pretrained` (model and feature
extractor) so that tests load them through the real `from_pretrained` path: no downloads. Needs transformers."""

from __future__ import annotations

from pathlib import Path

# Every architecture model=hf takes, and the two wav2vec2 variants: group norm (wav2vec2-base: no attention
# mask) and layer norm (wav2vec2-large-lv60 and the like: with one).
ARCHITECTURES = ("ast", "wav2vec2_group", "wav2vec2_layer", "hubert", "wavlm", "whisper")
WAVEFORM_MODELS = ("wav2vec2_group", "wav2vec2_layer", "hubert", "wavlm")


def save_tiny(architecture: str, path: Path) -> Path:
    """Save a tiny `architecture` model (a few thousand parameters) and its feature extractor to `path`."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    # Two convolutions over the waveform (stride 20, 400 frames / s at 16 kHz) instead of seven (stride 320).
    conv = dict(conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                num_conv_pos_embedding_groups=2)  # fmt: skip
    layer_norm = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
    if architecture == "ast":  # 64 frames (0.66 s) of 128 mel bins; patches every 10 frames and bins
        model = tf.ASTModel(tf.ASTConfig(**small, max_length=64, num_mel_bins=128))
        extractor = tf.ASTFeatureExtractor(max_length=64)
    elif architecture == "whisper":  # an encoder of 100 frames (1 s) instead of 3000 (30 s)
        config = tf.WhisperConfig(
            d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=50,
            max_target_positions=8, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1,
        )  # fmt: skip
        model = tf.WhisperModel(config)  # the whole model, as openai/whisper-* are: model=hf keeps its encoder
        extractor = tf.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    else:
        config = {
            "wav2vec2_group": lambda: tf.Wav2Vec2Config(**small, **conv, feat_extract_norm="group"),
            "wav2vec2_layer": lambda: tf.Wav2Vec2Config(**small, **conv, **layer_norm),
            "hubert": lambda: tf.HubertConfig(**small, **conv, **layer_norm),
            "wavlm": lambda: tf.WavLMConfig(**small, **conv, **layer_norm, num_buckets=8, max_bucket_distance=20),
        }[architecture]()
        model = tf.AutoModel.from_config(config)
        extractor = tf.Wav2Vec2FeatureExtractor(
            do_normalize=True, return_attention_mask=config.feat_extract_norm == "layer"
        )
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path
