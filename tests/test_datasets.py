"""Bring your own data: folder, manifest, Speech Commands and ESC-50 layouts generated in tmp_path,
hash splits, cross-validation, augmentation and class imbalance."""

import csv
import json
import logging
import math
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir

from audio_cls.augment import BackgroundNoise, RandomGain, RandomShift, RandomSpeed, SpecAugment, WaveformAugment, mixup
from audio_cls.data.base import Item, multilabel_item
from audio_cls.data.download import download_and_extract
from audio_cls.data.esc50 import ESC50
from audio_cls.data.folder import Folder
from audio_cls.data.manifest import Manifest
from audio_cls.data.speech_commands import SpeechCommands, which_set
from audio_cls.data.splits import (
    assign_splits,
    cv_folds,
    cv_split,
    duplicates_across_splits,
    labels_of,
    shared_groups,
    unit_hash,
)
from audio_cls.errors import ConfigError, DataError
from audio_cls.features import LogMel, RawWaveform
from helpers import TONE_CLASSES, run_entry, write_fsd50k, write_tone, write_tone_dataset

SPEAKER = r"^(?P<group>[^_]+)_"


def build(cls, root, features=None, **kwargs):
    dm = cls(
        root=str(root),
        features=features or LogMel(16000, hop_length=160),
        sample_rate=16000,
        batch_size=4,
        num_workers=0,
        **kwargs,
    )
    dm.setup("fit")
    return dm


def paths(items):
    return {it.path for it in items}


@pytest.fixture
def tones(tmp_path):
    root = tmp_path / "tones"
    write_tone_dataset(root)
    return root


# --- folder per class ------------------------------------------------------------------------
def test_folder_reads_classes_any_depth_and_formats(tones, caplog):
    (tones / "low" / "deeper" / "more").mkdir(parents=True)
    write_tone(tones / "low" / "deeper" / "more" / "eve_0.ogg", sample_rate=16000, subtype="VORBIS")
    (tones / "mid" / "notes.txt").write_text("not audio")
    (tones / "mid" / "cover.JPG").write_bytes(b"\xff\xd8")
    with caplog.at_level(logging.WARNING):
        dm = build(Folder, tones)
    assert dm.class_names == sorted(TONE_CLASSES)  # the non-ASCII name is a class like any other
    every = [it for split in dm.splits.values() for it in split]
    assert len(every) == 3 * 9 + 1 and any(it.path.endswith("eve_0.ogg") for it in every)
    assert "Ignored 2 files that are not audio" in caplog.text
    stereo = next(it for it in every if it.path.endswith("stereo.flac"))  # 44.1 kHz, 2 channels -> 16 kHz mono
    dataset = dm.dataset(next(s for s, items in dm.splits.items() if stereo in items), placement="device")
    wave = dataset[dataset.items.index(stereo)]["inputs"]
    assert wave.dim() == 1 and abs(wave.shape[0] - 0.4 * 16000) <= 1


def test_folder_with_speakers_is_split_group_disjointly(tones):
    dm = build(Folder, tones, group_pattern=SPEAKER)
    groups = {split: {it.group for it in items} for split, items in dm.splits.items()}
    assert all(groups.values())
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]


def test_without_groups_the_split_is_per_file_and_says_so(tones, caplog):
    with caplog.at_level(logging.INFO):
        build(Folder, tones)
    assert "random per-file split (no recording has a group" in caplog.text


def test_folder_bad_layouts_are_named(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        build(Folder, tmp_path / "absent")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no audio files \(.wav, .flac, .ogg, .mp3\) in class folders"):
        build(Folder, tmp_path)
    write_tone_dataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="class folders with no audio files: a, empty_class"):
        build(Folder, tmp_path)
    with pytest.raises(ConfigError, match=r"data.group_pattern='\^x': needs a named field"):
        build(Folder, tmp_path, group_pattern="^x")


# --- hash splits ---------------------------------------------------------------------------
def test_splits_are_deterministic_stable_when_files_are_added_and_seeded(tones):
    before = build(Folder, tones, group_pattern=SPEAKER).splits
    assert build(Folder, tones, group_pattern=SPEAKER).splits == before
    for n in range(6):  # a new speaker and more recordings of the known ones
        for label, freq in TONE_CLASSES.items():
            write_tone(tones / label / f"{['zed', 'ann', 'bob'][n % 3]}_new{n}.wav", sample_rate=16000, freq=freq)
    after = build(Folder, tones, group_pattern=SPEAKER).splits
    for split in before:
        assert paths(before[split]) <= paths(after[split]), split  # no file changed its split
    other_seed = build(Folder, tones, split_seed=7).splits
    assert paths(other_seed["test"]) != paths(build(Folder, tones).splits["test"])


def test_a_class_kept_in_training_takes_its_whole_speaker_along(caplog):
    # Class "c" is recorded by one speaker only, whom the hash sends to test: the class must stay in
    # training, and so must the rest of that speaker's recordings, or the speaker would be in two splits.
    speakers = [f"s{i}" for i in range(30)]
    lone = next(s for s in speakers if unit_hash(0, f"group:{s}") < 0.1)
    items = [Item(f"/x/{s}_{c}_{i}.wav", c, s) for s in speakers for c in "ab" for i in range(3)]
    items += [Item(f"/x/{lone}_c_{i}.wav", "c", lone) for i in range(3)]
    with caplog.at_level(logging.WARNING):
        splits = assign_splits(items, 0.1, 0.1, 0, "auto")
    assert shared_groups(splits) == {}
    assert {it.group for it in splits["train"] if it.label == "c"} == {lone}
    assert all(it.group != lone for it in splits["test"] + splits["val"])
    assert f"group:{lone}" in caplog.text


def test_hash_split_of_a_larger_collection_has_the_requested_shares():
    items = [Item(f"/d/{label}/{i}.wav", label, group=f"s{i % 50}") for label in "abcd" for i in range(250)]
    splits = assign_splits(items, 0.1, 0.2, seed=0, split_by="auto")
    assert {len(v) for v in splits.values()} and sum(map(len, splits.values())) == 1000
    by_group = {s: {it.group for it in v} for s, v in splits.items()}
    assert len(by_group["test"]) + len(by_group["val"]) + len(by_group["train"]) == 50  # disjoint
    assert 0.1 <= len(splits["test"]) / 1000 <= 0.32 and 0.04 <= len(splits["val"]) / 1000 <= 0.2
    per_file = assign_splits(items, 0.1, 0.2, seed=0, split_by="file")
    assert 0.17 <= len(per_file["test"]) / 1000 <= 0.23  # per file, the share is close to the fraction
    with pytest.raises(ConfigError, match="data.split_by=group: 1 of 1001 recordings have no group"):
        assign_splits(items + [Item("/d/x.wav", "a")], 0.1, 0.2, seed=0, split_by="group")


# --- iterative stratification (data.stratify) ------------------------------------------------------
def multilabel_items(n=200, seed=0, groups=0):
    """`n` recordings of 8 classes of uneven frequency (about 50% down to 2%), plus a rare class `r` in 3,
    each with a speaker of `groups` when given."""
    rng = np.random.default_rng(seed)
    share = dict(zip([f"c{i}" for i in range(8)], (0.5, 0.35, 0.25, 0.15, 0.1, 0.06, 0.04, 0.02), strict=True))
    items = []
    for i in range(n):
        labels = [c for c, p in share.items() if rng.random() < p] + (["r"] if i % (n // 3 + 1) == 0 else [])
        fields = {"group": f"s{i % groups}"} if groups else {}
        items.append(multilabel_item(f"/d/rec{i:03d}.wav", labels, **fields))
    return items


def class_deviation(splits, items):
    """The largest difference, over classes and over val/test, between a class's share of a split's
    recordings and its share of all of them."""
    classes = sorted({c for it in items for c in labels_of(it)})

    def shares(part):
        return np.array([sum(c in labels_of(it) for it in part) / len(part) for c in classes])

    return max(np.abs(shares(splits[name]) - shares(items)).max() for name in ("val", "test"))


def test_iterative_stratification_keeps_class_proportions_that_hashing_leaves_to_chance(caplog):
    items = multilabel_items()
    hashed = assign_splits(items, 0.2, 0.2, seed=0, split_by="file", stratify="hash")
    with caplog.at_level(logging.INFO, logger="audio_cls.data.splits"):
        stratified = assign_splits(items, 0.2, 0.2, seed=0, split_by="file", stratify="auto")  # multi-label
    assert "test carved by iterative stratification of 200 files" in caplog.text
    assert "val carved by iterative stratification of" in caplog.text
    assert sorted(paths(sum(stratified.values(), []))) == sorted(paths(items))  # a partition
    assert 0.15 <= len(stratified["test"]) / 200 <= 0.25 and 0.1 <= len(stratified["val"]) / 200 <= 0.2
    # Hashing leaves each class's share to chance (0.074 off here); stratification holds each close (0.015).
    assert class_deviation(stratified, items) < 0.03 < class_deviation(hashed, items)
    everything = {c for it in items for c in labels_of(it)}
    assert {c for it in stratified["train"] for c in labels_of(it)} == everything  # the rare class included


def test_iterative_stratification_is_deterministic_for_a_seed_and_set_of_files():
    items = multilabel_items()
    first = assign_splits(items, 0.1, 0.1, seed=0, split_by="file", stratify="iterative")
    again = assign_splits(list(reversed(items)), 0.1, 0.1, seed=0, split_by="file", stratify="iterative")
    other = assign_splits(items, 0.1, 0.1, seed=1, split_by="file", stratify="iterative")
    for name in first:  # the order the dataset lists its files in does not matter, the seed does
        assert paths(again[name]) == paths(first[name]), name
    assert paths(other["test"]) != paths(first["test"]) and paths(other["val"]) != paths(first["val"])


def test_iterative_stratification_keeps_groups_disjoint():
    items = multilabel_items(n=240, groups=40)  # 40 speakers, 6 recordings each
    splits = assign_splits(items, 0.15, 0.15, seed=0, split_by="auto", stratify="iterative")
    assert shared_groups(splits) == {}
    assert all(len({it.group for it in splits[name]}) >= 3 for name in ("val", "test"))
    everything = {c for it in items for c in labels_of(it)}
    assert {c for it in splits["train"] for c in labels_of(it)} == everything


def test_iterative_stratification_of_cross_validation_folds():
    items = multilabel_items()
    folds = cv_folds(items, "files", 4, seed=0, stratify="auto")
    assert sorted(p for _, fold in folds for p in paths(fold)) == sorted(paths(items))
    assert all(45 <= len(fold) <= 55 for _, fold in folds)
    dealt = cv_folds(items, "files", 4, seed=0)  # stratify=hash: the per-label-set deal, as before

    def worst(scheme):
        return max(class_deviation({"val": fold, "test": fold}, items) for _, fold in scheme)

    assert worst(folds) < 0.025 < worst(dealt)  # 0.015 against 0.03 here
    splits = cv_split(items, "files", 4, 1, 0.2, seed=0, split_by="file", stratify="auto")
    assert paths(splits["test"]) == paths(folds[1][1]) and splits["val"]


def test_auto_stratification_hashes_single_label_data(caplog):
    items = [Item(f"/d/{label}/{i}.wav", label) for label in "abcd" for i in range(25 * (ord(label) - 96))]
    with caplog.at_level(logging.INFO, logger="audio_cls.data.splits"):
        auto = assign_splits(items, 0.1, 0.2, seed=0, split_by="auto", stratify="auto")
    assert "test carved by hash of 250 files" in caplog.text and "iterative" not in caplog.text
    assert auto == assign_splits(items, 0.1, 0.2, seed=0, split_by="auto")  # as before data.stratify existed
    # Forced, single-label data is stratified too (one-hot rows): a different split, each class in proportion.
    forced = assign_splits(items, 0.1, 0.2, seed=0, split_by="auto", stratify="iterative")
    assert forced != auto
    assert Counter(it.label for it in forced["test"]) == {"a": 5, "b": 10, "c": 15, "d": 20}


def test_bad_stratify_is_a_config_error_before_any_data_is_read(tmp_path):
    from audio_cls.config_checks import check_config
    from test_configs import compose_train

    with pytest.raises(ConfigError, match=r"^data.stratify='bogus': expected one of auto, iterative, hash$"):
        check_config(compose_train(["data.stratify=bogus"], tmp_path))
    check_config(compose_train(["data.stratify=iterative"], tmp_path))
    with pytest.raises(ConfigError, match=r"data.stratify='bogus'"):
        Folder(root=str(tmp_path / "nothing here"), features=RawWaveform(), sample_rate=16000, stratify="bogus")
    with pytest.raises(ConfigError, match=r"data.stratify='Hash'"):
        assign_splits([Item("/d/a.wav", "a")], 0.1, 0.1, seed=0, split_by="auto", stratify="Hash")


def test_run_directory_gets_split_membership(tones, tmp_path):
    dm = build(Folder, tones, group_pattern=SPEAKER)
    dm.write_split_files(tmp_path)
    with (tmp_path / "splits.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert {(r["split"], r["path"]) for r in rows} == {(s, it.path) for s, v in dm.splits.items() for it in v}
    assert any(r["label"] == "höch_音" for r in rows)


def test_duplicates_across_splits_are_counted(tones, tmp_path, caplog):
    dm = build(Folder, tones, group_pattern=SPEAKER)
    test_file = dm.splits["test"][0]
    copy = tones / test_file.label / f"{dm.splits['train'][0].group}_copy.wav"
    shutil.copy(test_file.path, copy)  # the same recording under a training speaker's name
    with caplog.at_level(logging.WARNING):
        dm = build(Folder, tones, group_pattern=SPEAKER)
    assert "1 recordings have an identical copy in another split" in caplog.text
    assert {dm.duplicates[0][1], dm.duplicates[0][3]} == {test_file.path, str(copy)}
    dm.write_split_files(tmp_path)
    assert len((tmp_path / "duplicate_files.csv").read_text().splitlines()) == 2


def test_segments_of_one_file_are_duplicates_only_where_they_overlap(tmp_path):
    long = write_tone(tmp_path / "long.wav", seconds=3.0)
    twin = tmp_path / "twin.wav"
    shutil.copy(long, twin)
    first, second = Item(str(long), "a", start=0.0, end=1.0), Item(str(long), "a", start=1.0, end=2.0)
    whole = Item(str(twin), "a")  # identical bytes under another name: overlaps both segments
    assert duplicates_across_splits({"train": [first], "test": [second]}) == []
    assert duplicates_across_splits({"train": [first], "test": [Item(str(long), "a", start=0.5, end=1.5)]}) != []
    assert duplicates_across_splits({"train": [first, second], "val": [whole]}) == [
        ("train", str(long), "val", str(twin))
    ]


# --- manifest --------------------------------------------------------------------------------
def write_manifest(root, rows, header="path,label,split,group,start,end"):
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root / "manifest.csv"


def test_manifest_with_splits_groups_and_segments(tmp_path):
    (tmp_path / "audio").mkdir()
    for i, freq in enumerate(TONE_CLASSES.values()):
        write_tone(tmp_path / "audio" / f"long_{i}.wav", seconds=3.0, sample_rate=16000, freq=freq)
    rows = [
        f"audio/long_{i}.wav,{label},{split},spk{i},{start},{start + 0.5}"
        for i, label in enumerate(TONE_CLASSES)
        for split, start in (("train", 0.0), ("train", 0.5), ("val", 1.0), ("test", 2.0))
    ]
    manifest = write_manifest(tmp_path, rows)
    dm = build(Manifest, manifest, features=RawWaveform())
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert {it.start for it in dm.splits["test"]} == {2.0}
    batch = next(iter(dm.val_dataloader()))
    assert (batch["lengths"] == 8000).all()  # 0.5 s segments at 16 kHz
    assert build(Manifest, tmp_path, features=RawWaveform()).splits == dm.splits  # a folder with manifest.csv


def test_manifest_without_split_column_is_split_by_group(tones):
    files = write_tone_dataset(tones)
    rows = [f"{p.relative_to(tones)},{label},,{speaker},," for p, label, speaker in files]
    dm = build(Manifest, write_manifest(tones, rows))
    groups = {s: {it.group for it in v} for s, v in dm.splits.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]


@pytest.mark.parametrize(
    "header,row,message",
    [
        ("path,label,speaker", "a.wav,x,ann", r"unknown columns \['speaker'\]"),
        ("file,label", "a.wav,x", "no path column"),
        ("path,label", "missing.wav,x", r"manifest.csv line 2: missing.wav does not exist"),
        ("path,label", "a.wav,", r"line 2: empty label"),
        ("path,label,split", "a.wav,x,dev", r"line 2: split 'dev' is not one of train, val, test"),
        ("path,label,start,end", "a.wav,x,1.0,0.5", r"line 2: end \(0.5\) must be after start \(1.0\)"),
        ("path,label,start", "a.wav,x,abc", r"line 2: start 'abc' is not a number of seconds"),
    ],
)
def test_manifest_errors_name_the_line_and_problem(tmp_path, header, row, message):
    write_tone(tmp_path / "a.wav", seconds=0.5, sample_rate=16000)
    with pytest.raises(DataError, match=message):
        build(Manifest, write_manifest(tmp_path, [row], header=header))


def test_manifest_segment_past_the_end_is_named(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.5, sample_rate=16000)
    rows = ["a.wav,x,train,0.0,0.2", "a.wav,x,val,0.2,0.4", "a.wav,x,test,0.3,9.0"]
    with pytest.raises(DataError, match=r"a.wav: segment 0.3-9.0 s does not fit in the recording \(0.500 s\)"):
        build(Manifest, write_manifest(tmp_path, rows, header="path,label,split,start,end"))


def test_manifest_missing_files_can_be_skipped_and_counted(tones, caplog):
    files = write_tone_dataset(tones)
    rows = [f"{p.relative_to(tones)},{label},,{speaker},," for p, label, speaker in files] + [
        "low/gone_1.wav,low,,ann,,",
        "low/gone_2.wav,low,,ann,,",
    ]
    with caplog.at_level(logging.WARNING):
        dm = build(Manifest, write_manifest(tones, rows), on_bad_file="skip")
    assert len(dm.skipped) == 2 and "no such file" in dm.skipped[0][1]
    assert "Skipped 2 files" in caplog.text


def test_label_only_in_test_is_an_error(tmp_path):
    write_tone_dataset(tmp_path)
    rows = (
        [f"{label}/ann_0.wav,{label},train,," for label in TONE_CLASSES]
        + [f"{label}/bob_1.wav,{label},val,," for label in TONE_CLASSES]
        + ["low/cem_2.wav,owl,test,,"]
    )
    with pytest.raises(
        DataError,
        match=r"1 labels occur in the test split but not in training: 'owl' "
        r"\(e\.g\. .*low/cem_2\.wav\)",
    ):
        build(Manifest, write_manifest(tmp_path, rows, header="path,label,split,group,start"))


def test_one_class_is_an_error(tmp_path):
    (tmp_path / "only").mkdir()
    write_tone(tmp_path / "only" / "a.wav")
    write_tone(tmp_path / "only" / "b.wav")
    write_tone(tmp_path / "only" / "c.wav")
    with pytest.raises(DataError, match="the training split has 1 class \\(only\\); a classifier needs at least 2"):
        build(Folder, tmp_path, val_fraction=0.3, test_fraction=0.3)


# --- Speech Commands ---------------------------------------------------------------------------
def make_speech_commands(root, words=("yes", "no", "up", "bed"), speakers=8, lists=True, noise=None):
    """Word folders of 1 s tones, `_background_noise_/white.wav` (12 s at 16 kHz, or the samples `noise`)
    and, with `lists`, official lists naming speaker 1 for validation and speaker 2 for test."""
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for s in range(speakers):
            write_tone(root / word / f"{s:08x}_nohash_0.wav", seconds=1.0, sample_rate=16000, freq=300 + 200 * w)
    (root / "_background_noise_").mkdir()
    if noise is None:
        noise = 0.1 * np.random.default_rng(0).standard_normal(16000 * 12)
    sf.write(str(root / "_background_noise_" / "white.wav"), noise, 16000, subtype="FLOAT")
    if lists:
        (root / "validation_list.txt").write_text("".join(f"{w}/00000001_nohash_0.wav\n" for w in words))
        (root / "testing_list.txt").write_text("".join(f"{w}/00000002_nohash_0.wav\n" for w in words))


def test_speech_commands_official_lists(tmp_path):
    make_speech_commands(tmp_path)
    dm = build(SpeechCommands, tmp_path, download=False)
    assert dm.class_names == ["bed", "no", "up", "yes"]
    assert {it.group for it in dm.splits["val"]} == {"00000001"} and {it.group for it in dm.splits["test"]} == {
        "00000002"
    }
    assert len(dm.splits["train"]) == 4 * 6


# Name -> split pairs of the released dataset: entries of v0.02's testing_list.txt and validation_list.txt,
# and training files (in neither list); TensorFlow's input_data.which_set(name, 10, 10) agrees on each.
KNOWN_SPLITS = {
    "cat/2aa787cf_nohash_0.wav": "test",
    "cat/2aa787cf_nohash_1.wav": "test",
    "cat/24ad3ebe_nohash_2.wav": "test",
    "go/0ea0e2f4_nohash_1.wav": "test",
    "cat/8b775397_nohash_0.wav": "val",
    "cat/16db1582_nohash_4.wav": "val",
    "go/6a27a9bf_nohash_0.wav": "val",
    "cat/e91d173e_nohash_1.wav": "train",
    "cat/9ce7a419_nohash_0.wav": "train",
    "go/7f74626f_nohash_2.wav": "train",
    "go/b59fe16d_nohash_0.wav": "train",
}


def test_speech_commands_hash_rule_matches_the_released_splits(tmp_path):
    for name, split in KNOWN_SPLITS.items():
        assert which_set(name) == split, name
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_tone(tmp_path / name, seconds=1.0, sample_rate=16000)
    dm = build(SpeechCommands, tmp_path, download=False)  # no lists: the hash rule splits
    found = {
        f"{Path(it.path).parent.name}/{Path(it.path).name}": split for split, items in dm.splits.items() for it in items
    }
    assert found == KNOWN_SPLITS


@pytest.mark.slow
def test_speech_commands_twelve_class_setup(tmp_path):
    make_speech_commands(tmp_path, words=("yes", "no", "up", "bed", "cat"), speakers=20)
    dm = build(SpeechCommands, tmp_path, words=["yes", "no", "up"], download=False)
    assert dm.class_names == ["_unknown_", "no", "up", "yes"]
    assert Counter(it.label for items in dm.splits.values() for it in items)["_unknown_"] == 40  # bed, cat
    dm = build(
        SpeechCommands, tmp_path, words=["yes", "no", "up"], unknown_share=0.5, silence_share=0.5, download=False
    )
    assert dm.class_names == ["_silence_", "_unknown_", "no", "up", "yes"]
    for split, items in dm.splits.items():  # the reference's sizes: ceil(share * target-word recordings)
        counts = Counter(it.label for it in items)
        words = counts["yes"] + counts["no"] + counts["up"]
        assert counts["_unknown_"] == math.ceil(0.5 * words) and counts["_silence_"] == math.ceil(0.5 * words), split
    silence = {split: [it for it in items if it.label == "_silence_"] for split, items in dm.splits.items()}
    assert all(abs(it.end - it.start - 1.0) < 1e-9 for items in silence.values() for it in items)
    spans = {split: (min(it.start for it in items), max(it.end for it in items)) for split, items in silence.items()}
    assert spans["train"][1] <= 9.6 <= spans["val"][0] and spans["val"][1] <= 10.8 <= spans["test"][0]  # 80/10/10
    assert not [d for d in dm.duplicates if "_background_noise_" in d[1]]  # (the generated words are identical tones)
    wave = dm.dataset("train", placement="device", augment=False)
    assert all(x["inputs"].shape[0] == 16000 for x in (wave[i] for i in range(len(wave))) if x is not None)


BENCHMARK_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def test_speech_commands_noise_augmentation_never_plays_validation_or_test_silence(tmp_path):
    """experiment=speech_commands_cnn mixes _background_noise_ into training recordings; the parts of
    those recordings cut into validation/test _silence_ clips must never be what is mixed in."""
    from audio_cls.config_checks import check_config
    from test_configs import compose_train

    # A ramp: the value of every noise sample says where in the recording it was taken from.
    total = 16000 * 12
    make_speech_commands(tmp_path, words=(*BENCHMARK_WORDS, "bed"), noise=0.1 + 0.8 * np.arange(total) / total)
    cfg = compose_train(
        [
            "experiment=speech_commands_cnn",
            f"data.root={tmp_path}",
            "data.num_workers=0",
            "augment.waveform.shift=0",
            "augment.waveform.gain_db=null",
        ],
        tmp_path / "run",
    )
    assert list(cfg.data.words) == list(BENCHMARK_WORDS)  # strings, not YAML's booleans for yes/no/on/off
    check_config(cfg)
    dm = instantiate_data(cfg)  # as train.py builds it
    dm.setup("fit")
    held_out = [it for split in ("val", "test") for it in dm.splits[split] if it.label == "_silence_"]
    assert held_out
    first_held_out = round(min(it.start for it in held_out) * 16000)  # sample index in the noise recording

    torch.manual_seed(0)
    clean, noisy = dm.dataset("train", placement="device", augment=False), dm.dataset("train", placement="device")
    ends = []
    for _ in range(3):
        for i in range(len(clean)):
            added = (noisy[i]["inputs"] - clean[i]["inputs"]).double().numpy()
            if not added.any():
                continue  # noise_prob: this one got none
            # added = scale * ramp[start : start + n]: its straight line gives the start
            slope, intercept = np.polyfit(np.arange(added.size), added, 1)
            assert np.abs(added - (intercept + slope * np.arange(added.size))).max() < 1e-4 * np.abs(added).max()
            start = intercept / slope - 0.125 * total
            ends.append(start + added.size)
    assert len(ends) > 100 and max(ends) > 0.6 * total  # enough draws, reaching near the boundary
    assert max(ends) <= first_held_out + 1, (
        f"noise drawn up to sample {max(ends):.0f}, validation/test _silence_ starts at {first_held_out}"
    )


def test_speech_commands_refuses_noise_augmentation_from_held_out_silence(tmp_path):
    make_speech_commands(tmp_path)
    noise_dir = str(tmp_path / "_background_noise_")
    for noise_range in ((0.0, 1.0), (0.5, 0.85)):
        with pytest.raises(
            ConfigError,
            match=r"augment.waveform.noise_range=\[.*\]: background noise would come from "
            r"the parts of .*_background_noise_ cut into _silence_ clips \(val",
        ):
            build(
                SpeechCommands,
                tmp_path,
                download=False,
                silence_share=0.1,
                waveform_augment=WaveformAugment(16000, noise_dir=noise_dir, noise_range=noise_range),
            )
    # the training part, or no _silence_ clips at all, is fine
    build(
        SpeechCommands,
        tmp_path,
        download=False,
        silence_share=0.1,
        waveform_augment=WaveformAugment(16000, noise_dir=noise_dir, noise_range=(0.0, 0.8)),
    )
    build(SpeechCommands, tmp_path, download=False, waveform_augment=WaveformAugment(16000, noise_dir=noise_dir))
    with pytest.raises(ConfigError, match=r"data.noise_shares: the train and val parts overlap"):
        build(
            SpeechCommands,
            tmp_path,
            download=False,
            noise_shares={"train": [0, 0.85], "val": [0.8, 0.9], "test": [0.9, 1]},
        )
    with pytest.raises(ConfigError, match=r"augment.waveform.noise_range=\[0.9, 0.2\]: expected \[start, end\]"):
        BackgroundNoise(noise_dir, 16000, noise_range=(0.9, 0.2))


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("audio_cls.data.speech_commands.URL", "http://127.0.0.1:9/speech_commands_v0.02.tar.gz")
    dm = SpeechCommands(root=str(tmp_path / "sc"), features=LogMel(16000), sample_rate=16000)
    with pytest.raises(
        DataError,
        match=r"Speech Commands v0.02 is not there and downloading it failed .*"
        r"On a machine with internet, download http://127.0.0.1:9/",
    ):
        dm.prepare_data()
    assert not (tmp_path / "sc").exists()  # nothing half-written
    with pytest.raises(DataError, match="no word folders; set data.download=true"):
        SpeechCommands(
            root=str(tmp_path / "sc"), features=LogMel(16000), sample_rate=16000, download=False
        ).prepare_data()


# --- ESC-50 ----------------------------------------------------------------------------------
def make_esc50(root, classes=("dog", "rain", "siren"), per_fold=2):
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for c, category in enumerate(classes):
        for fold in range(1, 6):
            for k in range(per_fold):
                name = f"{fold}-{c}{fold}{k}-A-{c}.wav"
                write_tone(root / "audio" / name, seconds=0.5, sample_rate=44100, freq=400 + 600 * c)
                rows.append(f"{name},{fold},{c},{category},{c < 2},{c}{fold}{k},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")


def test_esc50_splits_by_fold(tmp_path):
    make_esc50(tmp_path)
    dm = build(ESC50, tmp_path, download=False)
    assert {it.fold for it in dm.splits["test"]} == {5} and {it.fold for it in dm.splits["val"]} == {4}
    assert {it.fold for it in dm.splits["train"]} == {1, 2, 3} and dm.class_names == ["dog", "rain", "siren"]
    carved = build(ESC50, tmp_path, val_fold=None, download=False)
    assert {it.fold for it in carved.splits["val"]} <= {1, 2, 3, 4} and {it.fold for it in carved.splits["test"]} == {5}
    assert build(ESC50, tmp_path, esc10=True, download=False).class_names == ["dog", "rain"]  # the esc10 column


def test_esc50_missing_recordings_and_folds_are_named(tmp_path):
    make_esc50(tmp_path)
    (tmp_path / "audio" / "1-010-A-0.wav").unlink()
    with pytest.raises(DataError, match=r"1 recordings listed in meta/esc50.csv are missing \(e.g. 1-010-A-0.wav\)"):
        build(ESC50, tmp_path, download=False)
    with pytest.raises(ConfigError, match="data.test_fold=6: ESC-50 has folds 1-5"):
        ESC50(root=str(tmp_path), test_fold=6, features=LogMel(16000), sample_rate=16000)


def test_download_checks_and_unpacks_an_archive(tmp_path):
    make_esc50(tmp_path / "src" / "ESC-50-master")
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in (tmp_path / "src").rglob("*"):
            z.write(p, p.relative_to(tmp_path / "src"))
    download_and_extract(archive.as_uri(), tmp_path / "esc50", "ESC-50", strip="ESC-50-master")
    assert (tmp_path / "esc50" / "meta" / "esc50.csv").is_file()
    assert len(list((tmp_path / "esc50" / "audio").glob("*.wav"))) == 30
    with pytest.raises(DataError, match="the download is corrupt or changed"):
        download_and_extract(archive.as_uri(), tmp_path / "again", "ESC-50", sha256="0" * 64, strip="ESC-50-master")
    assert not (tmp_path / "again").exists()


# --- cross-validation --------------------------------------------------------------------------
def test_cv_folds_keep_the_test_fold_out_of_training(tones):
    items = Folder(root=str(tones), features=LogMel(16000), sample_rate=16000, group_pattern=SPEAKER).scan()
    seen_test = []
    for fold in range(3):
        splits = cv_split(items, "groups", 3, fold, 0.2, seed=0)
        test_groups = {it.group for it in splits["test"]}
        assert not test_groups & {it.group for it in splits["train"] + splits["val"]}
        seen_test += paths(splits["test"])
    assert sorted(seen_test) == sorted(paths(items))  # every recording is tested exactly once
    logo = [cv_split(items, "logo", 0, k, 0.2, seed=0)["test"] for k in range(4)]
    assert [{it.group for it in t} for t in logo] == [{"ann"}, {"bob"}, {"cem"}, {"dia"}]
    with pytest.raises(ConfigError, match="data.cv_fold=4: there are 4 folds"):
        cv_split(items, "logo", 0, 4, 0.2, seed=0)


@pytest.mark.slow
def test_cv_command_on_a_three_fold_dataset(tones, tmp_path):
    files = write_tone_dataset(tones)
    rows = [f"{p.relative_to(tones)},{label},{speaker},{i % 3 + 1}" for i, (p, label, speaker) in enumerate(files)]
    manifest = write_manifest(tones, rows, header="path,label,group,fold")
    run_dir = tmp_path / "cv"
    proc = run_entry(
        "audio_cls.cv",
        "data=manifest",
        f"data.root={manifest}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.accelerator=cpu",
        "model.channels=[8]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (run_dir / "cv_results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["fold"] for r in table] == ["0", "1", "2", "mean", "std"]
    assert [r["held_out"] for r in table[:3]] == ["fold 1", "fold 2", "fold 3"]
    accs = [float(r["test/acc"]) for r in table[:3]]
    for k in range(3):
        fold_metrics = json.loads((run_dir / f"fold_{k}" / "metrics.json").read_text())
        assert fold_metrics["status"] == "finished" and fold_metrics["test/acc"] == pytest.approx(accs[k])
        with (run_dir / f"fold_{k}" / "splits.csv").open(encoding="utf-8") as f:
            membership = list(csv.DictReader(f))
        test = {r["path"] for r in membership if r["split"] == "test"}
        assert test == {str(p) for i, (p, _, _) in enumerate(files) if i % 3 == k}
        assert not test & {r["path"] for r in membership if r["split"] != "test"}
    assert float(table[3]["test/acc"]) == pytest.approx(np.mean(accs))
    assert float(table[4]["test/acc"]) == pytest.approx(np.std(accs, ddof=1))
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["test/acc_mean"] == pytest.approx(np.mean(accs)) and len(summary["folds"]) == 3
    assert "mean ± std" in (run_dir / "cv_results.md").read_text()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # an interrupted cross-validation continues: finished folds are read, not trained again
    (run_dir / "fold_2" / "metrics.json").unlink()
    shutil.rmtree(run_dir / "fold_2" / "checkpoints")
    again = run_entry(
        "audio_cls.cv",
        "data=manifest",
        f"data.root={manifest}",
        f"hydra.run.dir={run_dir}",
        "resume=true",
        "trainer.max_epochs=2",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.accelerator=cpu",
        "model.channels=[8]",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    log = (run_dir / "cv.log").read_text()
    assert log.count("Fold 0 finished earlier") == 1 and log.count("Fold 2 finished earlier") == 0


# --- augmentation --------------------------------------------------------------------------------
def test_waveform_augmentations_do_what_they_say(tmp_path):
    torch.manual_seed(0)
    wave = torch.sin(torch.linspace(0, 400, 16000))
    gained = RandomGain(6.0, 6.0)(wave)
    torch.testing.assert_close(gained, wave * 10 ** (6 / 20))
    shifted = RandomShift(100)(wave)
    assert shifted.shape == wave.shape and not torch.equal(shifted, wave)
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(str(noise_dir / "n.wav"), 0.3 * np.random.default_rng(1).standard_normal(8000), 8000)
    noisy = BackgroundNoise(str(noise_dir), 16000, snr_db=(10.0, 10.0))(wave)
    snr = 10 * torch.log10(wave.pow(2).mean() / (noisy - wave).pow(2).mean())
    assert abs(snr.item() - 10.0) < 0.01
    assert not WaveformAugment(16000).active
    for factor in (0.9, 1.1):  # slower: longer and lower; faster: shorter and higher (torchaudio's resampling)
        sped = RandomSpeed(16000, [factor])(wave)
        assert sped.shape == (math.ceil(16000 / factor),)
        peak = lambda x: int(torch.fft.rfft(x).abs().argmax()) / x.shape[0]  # cycles per sample  # noqa: E731
        assert peak(sped) == pytest.approx(peak(wave) * factor, rel=0.01)
    with pytest.raises(ConfigError, match=r"augment.waveform.speed=\[0.0, 1.0\]: expected a list of factors"):
        WaveformAugment(16000, speed=[0.0, 1.0])
    with pytest.raises(ConfigError, match=r"augment.waveform.speed=\[True\]: expected a list of factors"):
        WaveformAugment(16000, speed=[True])  # not a factor of 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="augment.waveform.noise_dir=.*empty: no audio files"):
        BackgroundNoise(str(tmp_path / "empty"), 16000)


def test_augmentation_changes_training_data_only(tones, tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(str(noise_dir / "n.wav"), 0.3 * np.random.default_rng(1).standard_normal(16000), 16000)
    augment = WaveformAugment(16000, gain_db=(-6, 6), shift=0.05, noise_dir=str(noise_dir))
    plain = build(Folder, tones, features=LogMel(16000, hop_length=160))
    augmented = build(
        Folder,
        tones,
        features=LogMel(16000, hop_length=160),
        waveform_augment=augment,
        spec_augment=SpecAugment(freq_mask=8, time_mask=5),
    )
    for split in ("val", "test"):
        a, b = plain.dataset(split), augmented.dataset(split)
        for i in range(len(a)):
            torch.testing.assert_close(a[i]["inputs"], b[i]["inputs"])
    a, b = plain.dataset("train"), augmented.dataset("train")
    assert all(not torch.allclose(a[i]["inputs"], b[i]["inputs"]) for i in range(len(a)))
    assert all(torch.equal(a[i]["inputs"], augmented.dataset("train", augment=False)[i]["inputs"]) for i in range(3))
    with pytest.raises(ConfigError, match="augment.waveform is on but data.placement=cache"):
        build(Folder, tones, features=LogMel(16000), placement="cache", waveform_augment=augment)
    # speed perturbation comes before the crop: a data.duration crop keeps its length
    slower = build(
        Folder, tones, duration=0.3, placement="device", waveform_augment=WaveformAugment(16000, speed=[0.9])
    )
    assert all(slower.dataset("train")[i]["inputs"].shape == (4800,) for i in range(3))


def test_mixup_mixes_pairs_and_trains(tones):
    torch.manual_seed(0)
    x, lengths = torch.randn(4, 10, 3), torch.tensor([10, 7, 5, 2])
    mixed, mixed_lengths, perm, lam = mixup(x, lengths, alpha=0.4)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    assert (mixed_lengths == torch.maximum(lengths, lengths[perm])).all()

    import lightning as L

    from audio_cls.model import CNN1d
    from audio_cls.module import AudioClassifier

    dm = build(Folder, tones)
    module = AudioClassifier(CNN1d(64, 3, channels=[8]), dm.features, dm.class_names, mixup_alpha=0.4)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    with pytest.raises(ConfigError, match="augment.mixup_alpha=-1"):
        AudioClassifier(CNN1d(64, 3), None, ["a", "b", "c"], mixup_alpha=-1)


# --- imbalance --------------------------------------------------------------------------------
def test_balanced_sampling_draws_classes_equally(tmp_path):
    for label, count in (("common", 60), ("rare", 6)):
        (tmp_path / label).mkdir()
        for i in range(count):
            write_tone(tmp_path / label / f"{i}.wav", seconds=0.1, sample_rate=16000)
    plain = build(Folder, tmp_path, val_fraction=0.05, test_fraction=0.05)
    balanced = build(Folder, tmp_path, val_fraction=0.05, test_fraction=0.05, balanced_sampling=True)

    def drawn(dm):
        loader = dm.train_dataloader()
        counts = Counter()
        for epoch in range(5):  # the length-bucketed batches draw from the EpochSampler inside them
            loader.batch_sampler.sampler.set_epoch(epoch)
            counts.update(dm.splits["train"][i].label for batch in loader.batch_sampler for i, _seed in batch)
        return counts["rare"] / sum(counts.values())

    assert drawn(plain) < 0.15 and 0.4 < drawn(balanced) < 0.6


# --- every data and augment config, as composed from the command line ---------------------------
DATA_OPTIONS = ["fsdd", "folder", "manifest", "esc50", "speech_commands", "fsdd_mix", "fsd50k", "shards"]


def write_tone_shards(tmp_path):
    """A folder of tones written into shards by audio_cls.shard's function (data=shards; tests/test_shards.py)."""
    pytest.importorskip("litdata")
    from audio_cls.shard import write_shards
    from test_configs import CONF

    write_tone_dataset(tmp_path / "tones")
    overrides = ["data=folder", f"data.root={tmp_path / 'tones'}", f"output={tmp_path / 'shards'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        write_shards(compose("shard", overrides=[*overrides, f"paths.cache_dir={tmp_path / 'cache'}"]))
    return tmp_path / "shards"


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_each_data_config_composes_checks_and_builds(option, tmp_path, fsdd_slice):
    from audio_cls.config_checks import check_config
    from test_configs import compose_train, options

    assert set(options("data")) == set(DATA_OPTIONS)
    root = {
        "fsdd": lambda: fsdd_slice,
        "folder": lambda: (write_tone_dataset(tmp_path), tmp_path)[1],
        "esc50": lambda: (make_esc50(tmp_path), tmp_path)[1],
        "speech_commands": lambda: (make_speech_commands(tmp_path), tmp_path)[1],
        "manifest": lambda: write_manifest(
            tmp_path, [f"{p.relative_to(tmp_path)},{label},,{spk},," for p, label, spk in write_tone_dataset(tmp_path)]
        ),
        "fsdd_mix": lambda: tmp_path / "mix",
        "fsd50k": lambda: write_fsd50k(tmp_path),
        "shards": lambda: write_tone_shards(tmp_path),
    }[option]()
    overrides = [f"data={option}", f"data.root={root}", "data.num_workers=0", "augment=speech"]
    if option == "fsdd_mix":  # multi-label with event times: no time shift (it would move the audio off them)
        overrides += ["task=multilabel", "augment.waveform.shift=0", "data.clips={train: 60, val: 4, test: 4}"]
    if option == "fsd50k":
        overrides += ["task=multilabel"]
    cfg = compose_train(overrides, tmp_path)
    check_config(cfg)
    dm = instantiate_data(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes >= 3 and all(dm.splits.values())
    assert dm.waveform_augment is not None and dm.spec_augment is not None  # augment=speech reached both


def instantiate_data(cfg):
    from audio_cls.train import build_datamodule

    return build_datamodule(cfg)


def test_augmentation_is_off_by_default(tmp_path, fsdd_slice):
    from test_configs import compose_train

    cfg = compose_train([f"data.root={fsdd_slice}", "data.num_workers=0"], tmp_path)
    assert cfg.augment.mixup_alpha == 0
    dm = instantiate_data(cfg)
    assert dm.waveform_augment is None and dm.spec_augment is None and not dm.balanced_sampling


def test_batches_by_seconds_keep_one_count_per_epoch(tmp_path):
    """data.max_batch_seconds fills batches by duration, yet every epoch has the count Lightning read once, and
    data.shuffle=false gives the same batches every epoch."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(40):
            write_tone(tmp_path / label / f"{i}.wav", seconds=float(rng.uniform(0.1, 1.0)), sample_rate=16000)
    dm = build(Folder, tmp_path, max_batch_seconds=3.0, val_fraction=0.1, test_fraction=0.1)
    sampler = dm.train_dataloader().batch_sampler
    counts = set()
    for epoch in range(6):
        sampler.sampler.set_epoch(epoch)
        batches = list(sampler)
        counts.add(len(batches))
        assert all(
            len(b) * max(dm.seconds[dm.splits["train"][i]] for i, _ in b) <= 3.0 + 1e-6 or len(b) == 1 for b in batches
        )
    assert counts == {len(sampler)}
    fixed = build(Folder, tmp_path, shuffle=False, val_fraction=0.1, test_fraction=0.1).train_dataloader().batch_sampler
    first = [[i for i, _ in b] for b in fixed]
    fixed.sampler.set_epoch(3)
    assert [[i for i, _ in b] for b in fixed] == first
