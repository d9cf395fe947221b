"""audio_cls.compare: paired comparisons of runs on the same test items (McNemar, paired bootstrap, paired t-test and
Wilcoxon across seeds or folds), on runs written as training writes them (test_predictions.csv)."""

import numpy as np
import pytest

from audio_cls.compare import compare, main, natural_order, write_predictions
from audio_cls.data.base import Item, multilabel_item
from audio_cls.errors import DataError

CLASSES = ["cat", "dog", "owl"]


def run(folder, truth, predicted, items=None):
    """A run folder whose test_predictions.csv gives `predicted` (class indices) for labels `truth`."""
    folder.mkdir(parents=True)
    items = items or [Item(f"/data/{k}.wav", CLASSES[t]) for k, t in enumerate(truth)]
    scores = np.full((len(truth), len(CLASSES)), 0.1)
    scores[np.arange(len(truth)), predicted] = 0.8
    write_predictions(folder / "test_predictions.csv", items, CLASSES, scores, multilabel=False)
    return folder


def labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 3, n)


def wrong_on(truth, which):
    predicted = truth.copy()
    predicted[which] = (truth[which] + 1) % 3
    return predicted


def test_a_clearly_better_run_is_called_better_with_an_interval_that_excludes_zero(tmp_path):
    truth = labels(300)
    a = run(tmp_path / "a", truth, wrong_on(truth, np.arange(0, 60)))  # 80% right
    b = run(tmp_path / "b", truth, wrong_on(truth, np.arange(0, 15)))  # 95% right, wrong only where A is
    text = compare(a, b)
    assert f"**{b} is better than {a}** by 15.0 points of accuracy" in text
    assert "45 in B only" in text and "0 items right in A only" in text
    low, high = (float(x) for x in text.split("CI [")[1].split("]")[0].split(","))
    assert 10 < low < 15 < high < 20
    reverse = compare(b, a)
    assert f"**{b} is better than {a}**" in reverse and "B - A = " not in reverse


def test_identical_or_slightly_different_runs_show_no_detectable_difference(tmp_path):
    truth = labels(300)
    a = run(tmp_path / "a", truth, wrong_on(truth, np.arange(0, 30)))
    same = run(tmp_path / "same", truth, wrong_on(truth, np.arange(0, 30)))
    assert "**No detectable difference** in accuracy: B - A = +0.0 points" in compare(a, same)
    # one item better of 300 (0.3 points): within the noise of a test set this size
    near = run(tmp_path / "near", truth, wrong_on(truth, np.arange(1, 30)))
    text = compare(a, near, metric="f1")
    assert "**No detectable difference** in macro-F1" in text and "p = 1" in text


def test_runs_on_different_items_are_refused(tmp_path):
    truth = labels(20)
    a = run(tmp_path / "a", truth, truth)
    b = run(tmp_path / "b", truth, truth, items=[Item(f"/other/{k}.wav", CLASSES[t]) for k, t in enumerate(truth)])
    with pytest.raises(DataError, match="tested different items"):
        compare(a, b)


def test_groups_of_seeds_are_paired_by_name(tmp_path):
    truth = labels(200)
    for seed, (errors_a, errors_b) in enumerate([(30, 20), (34, 22), (28, 19), (31, 23)]):
        run(tmp_path / "sweep_a" / str(seed), truth, wrong_on(truth, np.arange(errors_a)))
        run(tmp_path / "sweep_b" / str(seed), truth, wrong_on(truth, np.arange(errors_b)))
    text = compare(tmp_path / "sweep_a", tmp_path / "sweep_b")
    assert "is better than" in text and "means of 4 paired runs" in text and "Wilcoxon" in text
    # a group and a lone run, or groups without two common names, cannot be paired
    run(tmp_path / "other" / "x", truth, truth)
    with pytest.raises(DataError, match="at least two pairs"):
        compare(tmp_path / "sweep_a", tmp_path / "other")


def test_multilabel_runs_compare_by_map(tmp_path):
    rng = np.random.default_rng(0)
    sets = [tuple(c for c in CLASSES if rng.random() < 0.4) for _ in range(120)]
    items = [multilabel_item(f"/mix/{k}.wav", s) for k, s in enumerate(sets)]
    hot = np.array([[c in s for c in CLASSES] for s in sets], dtype=float)
    for name, noise in (("a", 0.8), ("b", 0.05)):
        scores = np.clip(hot + noise * rng.standard_normal(hot.shape), 0, 1)
        (tmp_path / name).mkdir()
        write_predictions(tmp_path / name / "test_predictions.csv", items, CLASSES, scores, True, [0.5] * 3)
    text = compare(tmp_path / "a", tmp_path / "b")
    assert "is better than" in text and "points of mAP" in text


def test_the_command_line_gives_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "empty"), str(tmp_path / "empty")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no test_predictions.csv" in err


def test_run_and_job_folders_sort_with_their_numbers_as_numbers():
    """Seeds, folds and a multirun's job folders in their numeric order; names that read alike, and names with
    digits `int` cannot read, in a fixed order whatever the filesystem lists first."""
    names = ["10", "multirun.yaml", "2", ".submitit", "fold_10", "fold_2", "run_1", "run_01", "x²", "1"]
    expected = ["1", "2", "10", ".submitit", "fold_2", "fold_10", "multirun.yaml", "run_01", "run_1", "x²"]
    assert sorted(names, key=natural_order) == expected
    assert sorted(reversed(names), key=natural_order) == expected
