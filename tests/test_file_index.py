"""The file index (audio_cls/data/file_index.py): a second start reads no file, a changed file is read again, bad
files found by on_bad_file=skip stay found, and the global statistics are measured once."""

import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_cls.data.file_index as file_index
from audio_cls.data.folder import Folder
from audio_cls.errors import DataError
from audio_cls.features import LogMel
from helpers import write_tone_dataset


def build(root, cache_dir, **kwargs):
    dm = Folder(
        root=str(root),
        features=LogMel(16000, hop_length=160, normalize="global"),
        sample_rate=16000,
        batch_size=4,
        num_workers=2,  # the shipped default: workers on
        cache_dir=str(cache_dir),
        placement="worker",
        **kwargs,
    )
    dm.setup("fit")
    return dm


@pytest.fixture
def counted(monkeypatch):
    """Counts of header reads and full decodes made through the index."""
    counts = {"headers": 0, "decodes": 0}
    audio_info, load_audio = file_index.audio_info, file_index.load_audio

    def count_info(path):
        counts["headers"] += 1
        return audio_info(path)

    def count_load(*args, **kwargs):
        counts["decodes"] += 1
        return load_audio(*args, **kwargs)

    monkeypatch.setattr(file_index, "audio_info", count_info)
    monkeypatch.setattr(file_index, "load_audio", count_load)
    return counts


def test_a_second_start_reads_no_header_and_sees_the_same_data(tmp_path, counted):
    files = write_tone_dataset(tmp_path / "data")
    first = build(tmp_path / "data", tmp_path / "cache")
    assert counted["headers"] == len(files)
    second = build(tmp_path / "data", tmp_path / "cache")
    assert counted["headers"] == len(files)  # nothing read again
    assert second.splits == first.splits and second.seconds == first.seconds
    assert second.shortest_path == first.shortest_path
    off = build(tmp_path / "data", tmp_path / "cache", file_index=False)
    assert counted["headers"] == 2 * len(files) and off.seconds == first.seconds


def test_a_changed_added_or_removed_file_is_seen(tmp_path, counted):
    files = write_tone_dataset(tmp_path / "data")
    build(tmp_path / "data", tmp_path / "cache")
    changed, removed = files[0][0], files[1][0]
    sf.write(str(changed), np.zeros(16000 * 2), 16000)  # now 2 s long
    os.utime(changed, ns=(1, 1))  # a different modification time even on coarse clocks
    removed.unlink()
    added = changed.with_name("new_0.wav")
    sf.write(str(added), 0.1 * np.ones(8000), 16000)
    counted["headers"] = 0
    dm = build(tmp_path / "data", tmp_path / "cache")
    assert counted["headers"] == 2  # the changed file and the new one
    seconds = {item.path: s for item, s in dm.seconds.items()}
    assert seconds[str(changed)] == 2.0 and seconds[str(added)] == 0.5 and str(removed) not in seconds
    index = file_index.FileIndex.for_dataset(tmp_path / "cache", "Folder", tmp_path / "data")
    assert str(removed) not in index.entries and len(index.entries) == len(files)


def test_bad_files_found_by_skip_stay_found_without_reading_them_again(tmp_path, counted, caplog):
    files = write_tone_dataset(tmp_path / "data")
    broken, nan = files[2][0], files[3][0]
    broken.write_bytes(b"not audio at all")
    sf.write(str(nan), np.full(4000, np.nan), 16000, subtype="FLOAT")
    first = build(tmp_path / "data", tmp_path / "cache", on_bad_file="skip")
    assert counted["decodes"] == len(files) - 1  # every file with a readable header is decoded once
    second = build(tmp_path / "data", tmp_path / "cache", on_bad_file="skip")
    # the good files are not read again; the two bad ones are (the cause may have been the machine's)
    assert counted["decodes"] == len(files) and counted["headers"] == len(files) + 2
    assert sorted(second.skipped) == sorted(first.skipped) and len(second.skipped) == 2
    assert any("NaN" in reason for _, reason in second.skipped)
    # on_bad_file=error stops at the unreadable one, naming it
    with pytest.raises(DataError, match=broken.name):
        build(tmp_path / "data", tmp_path / "cache")


def test_skip_decodes_the_segments_a_manifest_uses_not_the_whole_file(tmp_path):
    """A NaN stretch of a long file drops the segments that overlap it, not the file's other segments."""
    from audio_cls.data.manifest import Manifest

    wave = 0.1 * np.sin(np.arange(16000 * 3) / 10)
    wave[16000 * 2 + 100] = np.nan  # in the third second
    sf.write(str(tmp_path / "long.wav"), wave, 16000, subtype="FLOAT")
    rows = ["path,label,start,end,split"]
    rows += [f"long.wav,{'ab'[k % 2]},{k * 0.5},{k * 0.5 + 0.5},{'train' if k < 4 else 'val'}" for k in range(6)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows + ["long.wav,a,0.0,0.25,test"]) + "\n")
    dm = Manifest(
        root=str(tmp_path / "manifest.csv"),
        features=LogMel(16000, hop_length=160),
        sample_rate=16000,
        cache_dir=str(tmp_path / "cache"),
        on_bad_file="skip",
        placement="worker",
        check_duplicates=False,
    )
    dm.setup("fit")
    assert [(it.start, it.end) for it in dm.splits["val"]] == [(2.5, 3.0)]  # 2.0-2.5 holds the NaN
    assert len(dm.splits["train"]) == 4 and len(dm.skipped) == 1 and "NaN" in dm.skipped[0][1]


def test_global_statistics_are_measured_once_on_a_sample_of_files(tmp_path, monkeypatch):
    write_tone_dataset(tmp_path / "data")
    first = build(tmp_path / "data", tmp_path / "cache", norm_max_files=10)
    measured = []
    fit = first.features.norm.fit.__func__

    def counting_fit(self, batches):
        batches = list(batches)
        measured.append(sum(len(lengths) for _, lengths in batches))
        return fit(self, batches)

    monkeypatch.setattr(type(first.features.norm), "fit", counting_fit)
    second = build(tmp_path / "data", tmp_path / "cache", norm_max_files=10)
    assert measured == []  # read back from the cache
    torch.testing.assert_close(second.features.norm.mean, first.features.norm.mean, rtol=0, atol=0)
    every = build(tmp_path / "data", tmp_path / "cache", norm_max_files=None)
    assert measured == [len(every.splits["train"])] and len(every.splits["train"]) > 10
    build(tmp_path / "data", tmp_path / "other_cache", norm_max_files=10)
    assert measured[-1] == 10


def test_a_cache_folder_that_cannot_be_written_costs_a_warning_only(tmp_path, caplog):
    write_tone_dataset(tmp_path / "data")
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        dm = build(tmp_path / "data", blocked)
    assert dm.splits["train"]
    assert "Could not write the file index" in caplog.text and "Could not keep the feature statistics" in caplog.text


def test_an_index_from_another_version_or_damaged_is_rebuilt(tmp_path, counted, caplog):
    files = write_tone_dataset(tmp_path / "data")
    build(tmp_path / "data", tmp_path / "cache")
    (index_file,) = (tmp_path / "cache" / "index").iterdir()
    index_file.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        build(tmp_path / "data", tmp_path / "cache")
    assert "Ignoring the file index" in caplog.text and counted["headers"] == 2 * len(files)


def test_building_or_reading_caches_leaves_the_global_random_state_alone(tmp_path):
    """Measuring statistics and filling the feature cache happen in the first run only: if their loaders drew
    from torch's global generator, the first run after a change would start from other weights, and draw
    other batches, than every later run with the same seed."""
    write_tone_dataset(tmp_path / "data")
    after = []
    for _ in range(2):  # cold: statistics and features computed; warm: read back
        torch.manual_seed(0)
        dm = Folder(
            root=str(tmp_path / "data"),
            features=LogMel(16000, hop_length=160, normalize="global"),
            sample_rate=16000,
            num_workers=2,
            cache_dir=str(tmp_path / "cache"),
            placement="cache",
        )
        dm.setup("fit")
        after.append(torch.rand(3))
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=0)
