"""README's Extending recipe, followed to the letter: the network in its code block becomes one `.py` and one
`.yaml`, and `model=my_net` trains, tests and checkpoints it through the unchanged entry point; the network
keeps the padding invariance the protocol asks for."""

import json
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from audio_cls import CONF_DIR
from audio_cls.train import train
from helpers import REPO


def readme_network() -> str:
    """The Python block of README's Extending section that starts with `# audio_cls/model/my_net.py`."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Extending") :]
    code = re.search(r"```python\n(# audio_cls/model/my_net\.py\n.*?)```", section, re.S)
    assert code, "README's Extending section lost its example network"
    return code.group(1)


@pytest.mark.slow
def test_a_network_added_as_one_py_and_one_yaml_trains(fsdd_slice, tmp_path, monkeypatch):
    # The .py, importable as the README's module path says (a package of our own beside audio_cls here,
    # so the repository stays untouched), and the .yaml in a config directory Hydra searches.
    package = tmp_path / "src" / "my_ext"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "my_net.py").write_text(readme_network())
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "my_net.yaml").write_text("_target_: my_ext.my_net.MyNet\nhidden: 16\n")

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                "model=my_net",
                "debug=limit",
                "data.num_workers=2",  # the shipped setting, which debug=limit turns off
                f"data.root={fsdd_slice}",
                "logger=none",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    result = train(cfg)

    assert 0 <= result["test/acc"] <= 1 and result["best_checkpoint"]
    saved = torch.load(result["best_checkpoint"], weights_only=True)
    assert saved["hyper_parameters"]["config"]["model"]["_target_"] == "my_ext.my_net.MyNet"
    json.dumps(result["test/per_class"])  # metrics.json material

    # What the protocol promises: an item's logits alone equal its logits inside a padded batch.
    from my_ext.my_net import MyNet

    net = MyNet(in_features=40, num_classes=10).eval()
    x, lengths = torch.randn(3, 50, 40), torch.tensor([50, 20, 7])
    batch = net(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(net(x[i : i + 1, :n], lengths[i : i + 1]), batch[i : i + 1])
