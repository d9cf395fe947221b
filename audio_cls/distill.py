"""Knowledge distillation: a student network learns from the labels and from a trained teacher's softened outputs.

    distill.teacher=CKPT -> the teacher (any checkpoint of audio_cls.train, with its own front end) labels every
    training recording once, whole and unaugmented -> log softmax(teacher logits / T), one row per training item
    -> each training step: loss = alpha * loss(labels) + (1 - alpha) * T^2 * KL(teacher || student at T)

Hinton et al. (2015): the temperature T softens both distributions so that the teacher's ranking of the wrong
classes carries over; T^2 keeps the soft term's gradients on the scale of the hard one's. The teacher's outputs
are cached once (the issue's "teacher logits optionally cached once"; here always), so the teacher costs one
pass over the training set instead of one per step, and it sees each recording as it is: the student's crops
and augmentation are its own. Single-label (softmax) models only.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from audio_cls.audio import load_audio
from audio_cls.checkpoints import load_model
from audio_cls.errors import ConfigError
from audio_cls.inference import Classifier

log = logging.getLogger(__name__)


def check_settings(config: dict) -> None:
    """The `distill` node of a resolved config (before any data is read)."""
    distill = config.get("distill") or {}
    if distill.get("teacher") is None:
        return
    if (config.get("task") or {}).get("name") == "multilabel":
        raise ConfigError("distill.teacher: distillation is for single-label models, not task=multilabel")
    alpha, temperature = distill.get("alpha"), distill.get("temperature")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill.alpha={alpha!r}: expected a weight in [0, 1] (1: labels only, 0: teacher only)")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ConfigError(f"distill.temperature={temperature!r}: expected a number > 0")


def teacher_log_probs(path: str, datamodule, temperature: float, batch_size: int = 32) -> torch.Tensor:
    """log softmax(logits / temperature) (items, classes) of the teacher checkpoint at `path` for every item of
    `datamodule`'s training split, in order: each recording (or segment) read whole at the teacher's rate and
    through the teacher's own front end."""
    teacher = load_model(path)  # a ConfigError naming the file for every way it can fail
    if teacher.multilabel:
        raise ConfigError(f"distill.teacher={path}: a multi-label checkpoint; distillation takes single-label ones")
    if list(teacher.class_names) != list(datamodule.class_names):
        raise ConfigError(
            f"distill.teacher={path}: its classes {teacher.class_names} are not this data's {datamodule.class_names}"
        )
    classifier = Classifier(teacher)
    items = datamodule.splits["train"]
    rows = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            waves = [
                load_audio(it.path, classifier.sample_rate, it.start, it.end)
                for it in items[start : start + batch_size]
            ]
            lengths = torch.tensor([max(w.numel(), classifier.min_samples) for w in waves])
            batch = nn.utils.rnn.pad_sequence(waves, batch_first=True)
            batch = nn.functional.pad(batch, (0, int(lengths.max()) - batch.shape[1]))
            logits, _ = classifier.graph(batch, lengths)
            rows.append(torch.log_softmax(logits.float() / temperature, dim=-1))
    log_probs = torch.cat(rows)
    accuracy = (log_probs.argmax(-1) == torch.tensor([datamodule.class_names.index(it.label) for it in items])).float()
    log.info(
        "Distillation: teacher %s on the %d training recordings (%.1f%% right), temperature %g",
        path,
        len(items),
        100 * float(accuracy.mean()),
        temperature,
    )
    return log_probs


def distillation_loss(logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student), both at temperature T, averaged over the batch: logits (batch, classes),
    teacher_log_probs (batch, classes) = log softmax(teacher logits / T) (or a mixup of such distributions, as
    log probabilities)."""
    student = torch.log_softmax(logits.float() / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher_log_probs, reduction="batchmean", log_target=True) * temperature**2
