"""Embeddings and probes: the head's input of every window as prediction cuts them, the files `audio_cls.embed`
writes for recordings and for a dataset's splits (with TensorBoard's projector), the linear probe and k-NN of
`audio_cls.probe` on FSDD slices, two representations in one table, and one-line errors for bad requests.

The fast tests use randomly initialized networks saved as checkpoints (what is tested is where the numbers come
from, not how good they are); the slow one runs the entry points on a briefly trained checkpoint."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from audio_cls import CONF_DIR
from audio_cls.audio import load_audio
from audio_cls.embed import Embedder, embed
from audio_cls.errors import ConfigError, DataError
from audio_cls.inference import Classifier, extract
from audio_cls.model.layers import masked_pool
from audio_cls.module import AudioClassifier
from audio_cls.probe import probe
from helpers import FSDD, run_entry

SR = 8000
FILES = [FSDD / "recordings" / name for name in ("3_theo_7.wav", "5_george_1.wav", "8_yweweler_30.wav")]


def save_checkpoint(path: Path, root: Path, *overrides: str) -> Path:
    """A randomly initialized network with its front end and the training config of a run on `root`, saved as
    audio_cls.train saves it (what load_model reads)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={root}", f"paths.output_dir={path.parent}", *overrides])
    torch.manual_seed(0)
    features = instantiate(cfg.features)
    net = instantiate(cfg.model, in_features=features.num_features, num_classes=10)
    for module in net.modules():  # batch norm statistics that are not the identity
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    config = OmegaConf.to_container(cfg, resolve=True)
    module = AudioClassifier(net, features, [str(d) for d in range(10)], config=config)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(fsdd_slice, tmp_path_factory) -> dict[str, Path]:
    """clip: a CNN1d trained on 0.5 s clips (windows); whole: on whole recordings; frames: a CRNN with a frame head."""
    folder = tmp_path_factory.mktemp("embed_ckpts")
    tiny = "model.channels=[16,16,16]"
    return {
        "clip": save_checkpoint(folder / "clip.ckpt", fsdd_slice, tiny, "data.duration=0.5"),
        "whole": save_checkpoint(folder / "whole.ckpt", fsdd_slice, tiny),
        "frames": save_checkpoint(
            folder / "frames.ckpt",
            fsdd_slice,
            "model=crnn",
            "model.channels=[8,8]",
            "model.hidden_size=8",
            "model.frame_pooling=attention",
        ),
    }


def embed_config(name: str, overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[*overrides, "device=cpu", "progress=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)  # no Hydra run here
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_embed(output_dir: Path, *overrides: str) -> dict:
    return embed(embed_config("embed", list(overrides), output_dir), overrides=list(overrides))


def run_probe(output_dir: Path, *overrides: str) -> dict:
    return probe(embed_config("probe", list(overrides), output_dir), overrides=list(overrides))


def long_recording(path: Path) -> Path:
    """FSDD recordings one after another: a recording several windows long."""
    sf.write(str(path), np.concatenate([sf.read(str(f), dtype="float32")[0] for f in FILES * 2]), SR)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- what an embedding is ------------------------------------------------------------------------------------
def test_embeddings_are_the_heads_input_for_every_window(checkpoints, tmp_path):
    """The head applied to each window's embedding gives prediction's probabilities for that window, and the
    recording's embedding is the mean of its windows'."""
    classifier = Classifier.from_checkpoint(checkpoints["clip"])
    embedder = Embedder(classifier)
    assert embedder.layer == "input of CNN1d.head" and embedder.dim == 32  # meanmax of 16 channels
    for path in [*FILES, long_recording(tmp_path / "long.wav")]:
        got = embedder.embed(path)
        pred = classifier.predict(path, windows=True)
        assert got.windows.shape == (pred.num_windows, 32) and got.windows.dtype == np.float32
        with torch.no_grad():
            probs = (classifier.net.head(torch.from_numpy(got.windows)) / classifier.graph.temperature).softmax(-1)
        expected = torch.tensor([w.probabilities for w in pred.windows])
        torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.vector, got.windows.mean(0), rtol=1e-6)
        assert got.starts_s == [w.start_s for w in pred.windows] and got.padded == [w.padded for w in pred.windows]
        assert got.duration_s == pytest.approx(pred.duration_s)
    assert got.windows.shape[0] == pred.num_windows > 5  # the long one: 1 + ceil((samples - window) / hop)


def test_whole_recordings_give_one_embedding_each(checkpoints):
    classifier = Classifier.from_checkpoint(checkpoints["whole"])
    embedder = Embedder(classifier)
    for path in FILES:
        got = embedder.embed(path)
        assert got.windows.shape == (1, 32) and got.starts_s == [0.0]
        wave = load_audio(path, SR)
        emb, logits = embedder.represent(wave[None])
        np.testing.assert_allclose(got.vector, emb[0].numpy(), rtol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(classifier.net.head(emb), logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            (logits / classifier.graph.temperature).softmax(-1)[0],
            torch.tensor(classifier.predict(path).scores),
            atol=1e-5,
            rtol=0,
        )


def test_a_frame_head_gives_the_mean_of_its_frames(checkpoints):
    """A CRNN with a frame head: the frame classifier's input averaged over the valid frames, in any batch."""
    classifier = Classifier.from_checkpoint(checkpoints["frames"])
    embedder = Embedder(classifier)
    assert embedder.frames and "mean over valid frames" in embedder.layer
    waves = [load_audio(p, SR) for p in FILES]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([w.numel() for w in waves])
    emb, _ = embedder.represent(batch, lengths)
    net = classifier.net
    with torch.no_grad():
        x, frames = extract(classifier.features, batch, lengths)
        steps, valid = net._steps(x, frames)
        expected = masked_pool(steps, valid, "mean")
    assert emb.shape == (3, 16)  # a bidirectional GRU of 8
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)
    for i, wave in enumerate(waves):  # alone, as embed() runs a whole recording
        torch.testing.assert_close(torch.from_numpy(embedder.embed_waveform(wave).vector), emb[i], atol=1e-5, rtol=0)


# --- audio_cls.embed ---------------------------------------------------------------------------------------
def test_embed_recordings_writes_embeddings_index_and_windows(checkpoints, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for f in FILES:
        (folder / f.name).write_bytes(f.read_bytes())
    long_recording(folder / "sub" / "long.wav")
    out = tmp_path / "out"
    result = run_embed(out, f"ckpt_path={checkpoints['clip']}", f"input={folder}", "per_window=true")
    assert (result["files"], result["embedded_files"], result["failed_files"], result["dim"]) == (4, 4, 0, 32)

    x, rows = np.load(out / "embeddings.npy"), read_csv(out / "index.csv")
    assert x.shape == (4, 32) and x.dtype == np.float32
    assert list(rows[0]) == ["row", "path", "start", "end", "label", "split", "duration_s", "windows", "padded"]
    assert [r["row"] for r in rows] == ["0", "1", "2", "3"] and all(r["label"] == r["split"] == "" for r in rows)
    embedder = Embedder(Classifier.from_checkpoint(checkpoints["clip"]))
    windows, window_rows = np.load(out / "windows.npy"), read_csv(out / "windows.csv")
    assert len(window_rows) == windows.shape[0] == sum(int(r["windows"]) for r in rows)
    for r in rows:
        mine = [int(w["row"]) for w in window_rows if w["file_row"] == r["row"]]
        assert len(mine) == int(r["windows"]) and all(window_rows[i]["path"] == r["path"] for i in mine)
        np.testing.assert_allclose(x[int(r["row"])], windows[mine].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x[int(r["row"])], embedder.embed(r["path"]).vector, rtol=1e-5, atol=1e-6)
    long = next(r for r in rows if r["path"].endswith("long.wav"))
    assert int(long["windows"]) > 5 and long["padded"] == "True"
    meta = json.loads((out / "embed.json").read_text())
    assert (meta["dim"], meta["rows"], meta["window_s"], meta["hop_s"]) == (32, 4, 0.5, 0.25)
    assert meta["layer"] == "input of CNN1d.head" and meta["input"] == str(folder)
    assert not (out / "tensorboard").exists()  # no labels known: nothing to colour by

    # A manifest with labels and a segment: labels in the index, and the projector.
    (tmp_path / "list.csv").write_text(f"path,label,start,end\n{FILES[0]},3,,\nsub/long.wav,5,0.5,1.5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.wav").write_bytes((folder / "sub" / "long.wav").read_bytes())
    out = tmp_path / "labelled"
    run_embed(out, f"ckpt_path={checkpoints['clip']}", f"input={tmp_path / 'list.csv'}")
    rows = read_csv(out / "index.csv")
    assert [(r["label"], r["start"], r["end"], r["duration_s"]) for r in rows] == [
        ("3", "", "", f"{sf.info(str(FILES[0])).duration:.3f}"),
        ("5", "0.5", "1.5", "1.000"),
    ]
    assert not (out / "windows.npy").exists()
    metadata = (out / "tensorboard" / "00000" / "embeddings" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tpath" and [m.split("\t")[0] for m in metadata[1:]] == ["3", "5"]
    assert (out / "tensorboard" / "projector_config.pbtxt").is_file()


def test_embed_a_dataset_split_with_labels_and_projector(checkpoints, tmp_path):
    """split=all: every recording of the checkpoint's own data (the FSDD slice) with its label and split."""
    out = tmp_path / "all"
    result = run_embed(out, f"ckpt_path={checkpoints['whole']}", "split=all")
    x, rows = np.load(out / "embeddings.npy"), read_csv(out / "index.csv")
    assert result["embedded_files"] == len(rows) == x.shape[0] == 200 and x.shape[1] == 32
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["test"] == 100 and counts["train"] + counts["val"] == 100 and counts["val"] > 0
    assert all(r["label"] == Path(r["path"]).name.split("_")[0] for r in rows)  # FSDD: the digit
    meta = json.loads((out / "embed.json").read_text())
    assert meta["split"] == "all" and meta["data"] == "audio_cls.data.fsdd.FSDD" and meta["window_s"] is None
    assert meta["split_sizes"] == counts and meta["multilabel"] is False
    metadata = (out / "tensorboard" / "00000" / "embeddings" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tsplit\tpath" and len(metadata) == 201
    tensors = np.loadtxt(out / "tensorboard" / "00000" / "embeddings" / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(tensors, x, rtol=1e-4, atol=1e-5)

    # One split; the same recordings give the same rows.
    test = tmp_path / "test"
    run_embed(test, f"ckpt_path={checkpoints['whole']}", "split=test", "projector=false")
    test_rows = read_csv(test / "index.csv")
    assert len(test_rows) == 100 and {r["split"] for r in test_rows} == {"test"}
    by_path = {r["path"]: int(r["row"]) for r in rows}
    np.testing.assert_allclose(
        np.load(test / "embeddings.npy"), x[[by_path[r["path"]] for r in test_rows]], rtol=1e-5, atol=1e-6
    )
    assert not (test / "tensorboard").exists()


def test_embed_with_a_pretrained_encoder_without_a_checkpoint(tmp_path):
    """pretrained=DIR (a Hugging Face encoder, as model=hf takes it): the encoder's pooled output, as it comes."""
    pytest.importorskip("transformers")
    from audio_cls.model.hf import HFEncoder
    from tiny_hf import save_tiny

    encoder_dir = save_tiny("wav2vec2_layer", tmp_path / "tiny")
    out = tmp_path / "out"
    result = run_embed(out, f"pretrained={encoder_dir}", f"input={FILES[0]}", "sample_rate=8000")
    assert result["embedded_files"] == 1 and result["dim"] == 16 and result["ckpt_path"] is None
    reference = HFEncoder(1, 1, pretrained=str(encoder_dir), sample_rate=8000).eval()
    wave = torch.from_numpy(sf.read(str(FILES[0]), dtype="float32")[0])
    with torch.no_grad():
        pooled = []
        reference.head.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
        reference(wave[None, :, None], torch.tensor([wave.numel()]))
    np.testing.assert_allclose(np.load(out / "embeddings.npy")[0], pooled[0][0].numpy(), rtol=1e-4, atol=1e-5)
    assert json.loads((out / "embed.json").read_text())["pretrained"] == str(encoder_dir)
    with pytest.raises(ConfigError, match="choose one model to embed with"):
        run_embed(tmp_path / "x", f"pretrained={encoder_dir}", "ckpt_path=a.ckpt", f"input={FILES[0]}")
    with pytest.raises(ConfigError, match="name the dataset with data=NAME"):
        run_embed(tmp_path / "y", f"pretrained={encoder_dir}", "split=all")


# --- audio_cls.probe ---------------------------------------------------------------------------------------
def test_probe_compares_two_representations(checkpoints, tmp_path):
    dirs = {}
    for name in ("whole", "clip"):
        dirs[name] = tmp_path / name
        run_embed(dirs[name], f"ckpt_path={checkpoints[name]}", "split=all", "projector=false")
    out = tmp_path / "probe"
    result = run_probe(out, f"embeddings=[{dirs['whole']},{dirs['clip']}]", "names=[whole,clip]")
    rows = result["representations"]
    assert [r["representation"] for r in rows] == ["whole", "clip"] and result["same_recordings"]
    for r in rows:
        assert (r["dim"], r["classes"], r["test"], r["train"] + r["val"]) == (32, 10, 100, 100)
        for score in ("test_acc", "test_f1", "val_acc"):
            assert 0 <= r["linear"][score] <= 1 and 0 <= r["knn"][score] <= 1
        assert r["linear"]["C"] in (0.001, 0.01, 0.1, 1, 10, 100) and r["knn"]["k"] == 5
    table = (out / "probe.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| `whole` | 32 | ") and table[3].startswith("| `clip` | 32 | ")
    assert f"**{rows[0]['linear']['test_acc']:.4f}**" in table[2]
    assert json.loads((out / "probe.json").read_text())["representations"] == rows

    # A checkpoint is embedded here first: the same scores as from its folder.
    out = tmp_path / "from_ckpt"
    result = run_probe(out, f"ckpt_path={checkpoints['whole']}", "knn.k=3", "knn.metric=euclidean")
    (row,) = result["representations"]
    assert (out / "embeddings" / "0" / "embeddings.npy").is_file() and row["folder"] == str(out / "embeddings" / "0")
    assert row["linear"] == rows[0]["linear"] and (row["knn"]["k"], row["knn"]["metric"]) == (3, "euclidean")


def test_probe_scores_a_separable_representation_perfectly(tmp_path):
    """The probes themselves, on made-up embeddings: two well separated classes are told apart by both."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "made_up"
    folder.mkdir()
    rows, x = [], []
    for i in range(60):
        label, split = i % 2, ("train", "train", "train", "val", "test")[i % 5]
        x.append(rng.normal(size=8) + 6 * label)
        rows.append({"row": i, "path": f"{i}.wav", "start": "", "end": "", "label": f"c{label}", "split": split})
    np.save(folder / "embeddings.npy", np.array(x, dtype=np.float32))
    with (folder / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (row,) = run_probe(tmp_path / "out", f"embeddings=[{folder}]")["representations"]
    assert row["linear"]["test_acc"] == row["knn"]["test_acc"] == row["linear"]["test_f1"] == 1.0
    assert (row["train"], row["val"], row["test"]) == (36, 12, 12)


# --- bad requests --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "nothing to embed: pass input=FILE|FOLDER|MANIFEST.csv, or split=train|val|test|all"),
        (["input=x.wav", "split=all"], "input=x.wav and split=all: choose one"),
        (["input=x.wav", "data=folder"], "data=... chooses a dataset, input=x.wav recordings"),
        (["split=dev"], "split='dev': expected one of train, val, test, all"),
        (["input="], "input= is empty: pass a file, a folder or a CSV manifest"),
        (["input=/no/such/thing.wav"], "input=/no/such/thing.wav: no such file or directory"),
    ],
)
def test_bad_embed_requests_are_one_line_errors(checkpoints, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run_embed(tmp_path / "out", f"ckpt_path={checkpoints['whole']}", *overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_probe_requests_are_one_line_errors(checkpoints, tmp_path):
    files = tmp_path / "files"  # embeddings of recordings: no splits
    run_embed(files, f"ckpt_path={checkpoints['whole']}", f"input={FILES[0]}")
    multilabel = tmp_path / "multilabel"
    multilabel.mkdir()
    for name in ("embeddings.npy", "index.csv"):
        (multilabel / name).write_bytes((files / name).read_bytes())
    (multilabel / "embed.json").write_text(json.dumps({"multilabel": True, "data": "FSD50K"}))
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "index.csv").write_bytes((files / "index.csv").read_bytes())
    np.save(mismatched / "embeddings.npy", np.zeros((3, 4), dtype=np.float32))
    for overrides, error, message in [
        ([], ConfigError, "nothing to probe: pass embeddings=[DIR,...]"),
        ([f"embeddings=[{tmp_path / 'nope'}]"], ConfigError, "no such directory"),
        ([f"embeddings=[{tmp_path}]"], ConfigError, "no embeddings.npy or index.csv in it"),
        ([f"embeddings=[{files}]"], ConfigError, "no train split in index.csv; embed a dataset with split=all"),
        ([f"embeddings=[{multilabel}]"], ConfigError, "multi-label data (FSD50K)"),
        ([f"embeddings=[{mismatched}]"], DataError, "embeddings.npy has shape (3, 4) but index.csv 1 rows"),
        ([f"embeddings=[{files}]", "names=[a,b]"], ConfigError, "names: 2 given for 1 representations"),
        ([f"embeddings=[{files}]", "knn.k=0"], ConfigError, "knn.k=0: must be a positive integer"),
        ([f"embeddings=[{files}]", "knn.metric=l1"], ConfigError, "knn.metric='l1': expected one of cosine"),
        ([f"embeddings=[{files}]", "linear.C=[]"], ConfigError, "linear.C=[]: expected a list of positive"),
    ]:
        with pytest.raises(error) as err:
            run_probe(tmp_path / "out", *overrides)
        assert message in str(err.value) and "\n" not in str(err.value), overrides


# --- the entry points, on a trained checkpoint --------------------------------------------------------------
@pytest.mark.slow
def test_entry_points_on_a_trained_checkpoint(trained_checkpoint, checkpoints, tmp_path):
    """embed split=all and probe of two representations (trained, random) as a user runs them; an error is one line."""
    proc = run_entry("audio_cls.embed", f"ckpt_path={trained_checkpoint}", f"output_dir={tmp_path / 'bad'}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: nothing to embed")
    trained = tmp_path / "trained"
    proc = run_entry(
        "audio_cls.embed", f"ckpt_path={trained_checkpoint}", "split=all", f"output_dir={trained}", "device=cpu"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "200 recordings embedded (64 values each, input of CNN1d.head)" in proc.stdout
    assert json.loads((trained / "metrics.json").read_text())["status"] == "finished"
    out = tmp_path / "probe"
    proc = run_entry(
        "audio_cls.probe",
        f"embeddings=[{trained}]",
        f"ckpt_path={checkpoints['clip']}",
        "names=[trained,random]",
        f"output_dir={out}",
        "device=cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0] for line in table] == ["| `trained`", "| `random`"]
    rows = json.loads((out / "probe.json").read_text())["representations"]
    assert rows[0]["linear"]["test_acc"] > 0.3  # a few batches of training: well above chance (0.1)
