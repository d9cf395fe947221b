"""Networks: plain nn.Modules, `forward(x (batch, time, feat), lengths (batch,)) -> logits (batch, num_classes)`,
and optionally `min_input_frames() -> int`, the fewest frames they accept (1 when absent; read it with
`audio_cls.model.layers.min_input_frames(net)`). The protocol is described in layers.py.

Each is built by Hydra from conf/model/NAME.yaml with `in_features` and `num_classes` filled
in from the data, so a new network is one module here plus one YAML there.
"""

from audio_cls.model.bcresnet import BCResNet
from audio_cls.model.cnn import CNN1d, CNN2d
from audio_cls.model.crnn import CRNN
from audio_cls.model.hf import HFEncoder  # imports transformers only when one is built (the optional extra [hf])
from audio_cls.model.lstm import LSTMClassifier
from audio_cls.model.matchboxnet import MatchboxNet

__all__ = ["BCResNet", "CNN1d", "CNN2d", "CRNN", "HFEncoder", "LSTMClassifier", "MatchboxNet"]
