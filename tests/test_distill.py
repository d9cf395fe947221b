"""Knowledge distillation (audio_cls/distill.py): the loss against hand computation, the teacher's cached outputs
against the teacher run on each recording, the loss mix in a training step, settings errors, and a run end to end."""

import json

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from audio_cls.config_checks import check_config
from audio_cls.distill import distillation_loss, teacher_log_probs
from audio_cls.errors import ConfigError
from audio_cls.inference import Classifier
from audio_cls.model import CNN1d
from audio_cls.module import AudioClassifier
from audio_cls.train import build_datamodule
from helpers import run_entry
from test_configs import compose_train


def test_distillation_loss_is_the_tempered_kl_divergence_times_t_squared():
    torch.manual_seed(0)
    student, teacher, t = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p = torch.softmax(teacher / t, -1)
    by_hand = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    assert distillation_loss(student, torch.log_softmax(teacher / t, -1), t) == pytest.approx(float(by_hand), rel=1e-5)
    assert distillation_loss(teacher, torch.log_softmax(teacher / t, -1), t) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def fsdd_data(fsdd_slice, tmp_path):
    GlobalHydra.instance().clear()
    cfg = compose_train([f"data.root={fsdd_slice}", "data.num_workers=0"], tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_the_teacher_labels_every_training_recording_whole_through_its_own_front_end(trained_checkpoint, fsdd_data):
    """The cached rows are the teacher's outputs on each recording whole (the teacher was trained on 0.5 s crops
    of log-mels: its own front end, not the student's), in the order of the training split. At the teacher's own
    calibration temperature they are what prediction gives."""
    teacher = Classifier.from_checkpoint(trained_checkpoint, window="whole")
    log_probs = teacher_log_probs(str(trained_checkpoint), fsdd_data, temperature=teacher.graph.temperature)
    items = fsdd_data.splits["train"]
    assert log_probs.shape == (len(items), fsdd_data.num_classes)
    for row, item in list(zip(log_probs, items))[:: len(items) // 5]:
        assert row.exp().tolist() == pytest.approx(teacher.predict(item.path).scores, abs=1e-5)


def test_a_training_step_mixes_the_labels_loss_and_the_teachers(trained_checkpoint, fsdd_data):
    torch.manual_seed(0)
    teacher = teacher_log_probs(str(trained_checkpoint), fsdd_data, temperature=2.0)
    net = CNN1d(fsdd_data.features.num_features, fsdd_data.num_classes, channels=[8, 8], kernel_size=3)
    batch = fsdd_data.features_of(next(iter(fsdd_data.train_dataloader())))
    losses = {}
    for alpha in (1.0, 0.0, 0.25):
        module = AudioClassifier(
            net, fsdd_data.features, fsdd_data.class_names, distill_alpha=alpha, distill_temperature=2.0
        )
        module.set_teacher(teacher)
        net.eval()  # the same outputs for every call: batch norm on running statistics, no dropout
        losses[alpha] = float(module.training_step(batch, 0).detach())
    logits = net(batch["inputs"], batch["lengths"])
    hard = float(torch.nn.functional.cross_entropy(logits, batch["targets"]))
    soft = float(distillation_loss(logits, teacher[batch["index"]], 2.0))
    assert losses[1.0] == pytest.approx(hard, rel=1e-5)
    assert losses[0.0] == pytest.approx(soft, rel=1e-5)
    assert losses[0.25] == pytest.approx(0.25 * hard + 0.75 * soft, rel=1e-5)


def test_a_teacher_of_other_classes_is_refused(trained_checkpoint, tmp_path, fsdd_data):
    fsdd_data.class_names = [*fsdd_data.class_names[1:], fsdd_data.class_names[0]]
    with pytest.raises(ConfigError, match=r"distill.teacher=.*: its classes .* are not this data's"):
        teacher_log_probs(str(trained_checkpoint), fsdd_data, temperature=1.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["distill.teacher=t.ckpt", "distill.alpha=1.5"], r"distill.alpha=1.5: expected a weight in \[0, 1\]"),
        (["distill.teacher=t.ckpt", "distill.temperature=0"], "distill.temperature=0: expected a number > 0"),
        (["distill.teacher=t.ckpt", "task=multilabel", "loss=bce"], "distillation is for single-label models"),
    ],
)
def test_distillation_settings_are_checked_before_data_is_read(overrides, message, tmp_path):
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=message):
        check_config(compose_train(overrides, tmp_path))


@pytest.mark.slow
def test_a_run_distills_from_a_checkpoint(trained_checkpoint, fsdd_slice, tmp_path):
    proc = run_entry(
        "audio_cls.train",
        "debug=limit",
        f"data.root={fsdd_slice}",
        "logger=none",
        f"distill.teacher={trained_checkpoint}",
        "augment.mixup_alpha=0.2",  # the teacher's outputs are mixed as the inputs are
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Distillation: teacher" in proc.stderr + proc.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] >= 0.0
