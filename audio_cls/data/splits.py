"""How labelled recordings are divided into train / val / test, and into cross-validation folds.

Rules shared by every dataset (the dataset's `scan()` only says what it knows of each `Item`):

  - A split the data defines (a manifest's `split` column, Speech Commands' lists, ESC-50's folds,
    FSDD's protocols) is used as it is. Test is carved only when the data defines none, from the
    items without a split; validation likewise, from the training items.
  - Carving is by hash (`data.stratify=hash`, and `auto` for single-label data): each unit (a
    speaker/source `group` when every item has one, else a file) goes to test when hash(seed, unit)
    falls below `test_fraction`, to validation when it falls below `val_fraction` (salted apart). The
    hash of a unit never changes, so adding files never moves the files already there, and the same
    seed gives the same split on any machine. Segments of one file are one unit, so a recording never
    straddles two splits.
  - Multi-label data (`data.stratify=auto` when any item has a label set; `iterative` forces it for
    any data) is carved by iterative stratification (Sechidis et al. 2011, the `iterative-stratification`
    package) over the same units: one multi-hot row per unit (the union of its items' labels), units in
    name order, so that validation and test hold each class in about the proportion of the whole set,
    rare classes included, where a hash leaves them to chance. What it trades away: a stratified split is
    a function of the whole set of units, so it is the same for a given seed and set of files (on any
    machine), but adding or removing files can move files already placed; hash splits never do.
  - After either carve, two rescues for small data: a split left empty gets the unit of lowest hash,
    and a class whose every unit would leave training keeps them in training, whole units, so groups
    stay disjoint. Both are logged, and both can move files already placed once new files change which
    case applies.
  - Cross-validation folds follow the data's own folds (ESC-50), else its groups (k folds of
    speakers, or one fold per speaker), else files (stratified by label: dealt out per label, or by
    iterative stratification where `data.stratify` resolves to it); the fold under test never takes part
    in training or in selecting the model (validation is carved from the other folds).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

from audio_cls.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_BY = ("auto", "group", "file")
CV_SCHEMES = ("auto", "folds", "groups", "logo", "files")
STRATIFY = ("auto", "iterative", "hash")


def labels_of(item) -> tuple[str, ...]:
    """The classes heard in an item: its label set (multi-label data), else its one label."""
    return item.labels if getattr(item, "labels", None) is not None else (item.label,)


def unit_hash(seed: int, unit: str) -> float:
    """A number in [0, 1) fixed by (seed, unit): the same on every machine and Python run."""
    digest = hashlib.sha1(f"{seed}/{unit}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def check_stratify(stratify: str) -> None:
    if stratify not in STRATIFY:
        raise ConfigError(f"data.stratify={stratify!r}: expected one of {', '.join(STRATIFY)}")


def stratify_method(items: list, stratify: str) -> str:
    """`data.stratify` made concrete for `items`: `auto` is iterative when they are multi-label (any has a
    label set), hash otherwise."""
    check_stratify(stratify)
    if stratify == "auto":
        return "iterative" if any(getattr(it, "labels", None) is not None for it in items) else "hash"
    return stratify


def multi_hot(label_sets: list[set]):
    """Rows of a boolean class matrix, one per label set, classes in name order (at least two columns:
    the library takes a one-column matrix for binary targets and refuses it)."""
    import numpy as np

    classes = sorted(set().union(*label_sets))
    column = {name: i for i, name in enumerate(classes)}
    rows = np.zeros((len(label_sets), max(len(classes), 2)), dtype=bool)
    for r, names in enumerate(label_sets):
        rows[r, [column[name] for name in names]] = True
    return rows


def hash_assign(hashes: dict[str, float], fractions: dict[str, float]) -> dict[str, str]:
    """{unit: split}: each split in `fractions`, in order, takes its fraction of the hash range."""
    split_of = {}
    for unit, value in hashes.items():
        edge = 0.0
        for name, fraction in fractions.items():
            edge += fraction
            if value < edge:
                split_of[unit] = name
                break
        else:
            split_of[unit] = "train"
    return split_of


def stratified_assign(labels: dict[str, set], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """{unit: split} by iterative stratification of the units' label sets: each split in `fractions`, in
    order, takes its fraction of all units from those the splits before it left."""
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # imports scikit-learn: only when used

    units = sorted(labels)  # the order decides ties: by name, not by the order the dataset listed its files
    rows = multi_hot([labels[u] for u in units])
    split_of = dict.fromkeys(units, "train")
    left, share = np.arange(len(units)), 1.0
    for name, fraction in fractions.items():
        # As many units as test_size=fraction of those left would take (sklearn rounds up), but always
        # one unit left over for training, which the library insists on.
        count = min(math.ceil(fraction / share * len(left)), len(left) - 1)
        share -= fraction
        if fraction <= 0 or count < 1:
            continue
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=count, random_state=seed % 2**32)
        keep, take = next(splitter.split(np.zeros(len(left)), rows[left]))
        for i in left[take]:
            split_of[units[i]] = name
        left = left[keep]
    return split_of


def use_groups(items: list, split_by: str, purpose: str) -> bool:
    """Whether to split `items` by group: `auto` does so when every item has a group, and says when not."""
    if split_by not in SPLIT_BY:
        raise ConfigError(f"data.split_by={split_by!r}: expected one of {', '.join(SPLIT_BY)}")
    missing = sum(it.group is None for it in items)
    if split_by == "group" and missing:
        raise ConfigError(
            f"data.split_by=group: {missing} of {len(items)} recordings have no group (speaker/source) to split by"
        )
    if split_by == "file" or not items:
        return False
    if missing:
        why = (
            "no recording has a group"
            if missing == len(items)
            else f"{missing} of {len(items)} recordings have no group"
        )
        log.info("%s: random per-file split (%s, so a speaker may appear in several splits)", purpose, why)
        return False
    return True


def unit_of(item, by_group: bool, root: Path | None) -> str:
    """What is kept together: the group, or the file (by its path relative to the dataset root, so
    moving the dataset does not change the split)."""
    if by_group:
        return f"group:{item.group}"
    return os.path.relpath(item.path, root) if root is not None else item.path


def carve(
    items: list,
    fractions: dict[str, float],
    seed: int,
    by_group: bool,
    root: Path | None = None,
    method: str = "hash",
) -> dict[str, list]:
    """Divide `items` among the splits named in `fractions` (each taking about its fraction of the units)
    and "train" (the rest): by hash, or by iterative stratification (`method`, see the module doc). Then
    the rescues both share: a class whose every unit would leave training stays in training, and a split
    left empty takes a unit."""
    if method not in ("hash", "iterative"):
        raise ValueError(f"carve: method={method!r}, expected hash or iterative")
    unit = {id(it): unit_of(it, by_group, root) for it in items}
    hashes = {u: unit_hash(seed, u) for u in unit.values()}
    if method == "iterative":
        labels = defaultdict(set)
        for it in items:
            labels[unit[id(it)]].update(labels_of(it))
        split_of = stratified_assign(labels, fractions, seed)
    else:
        split_of = hash_assign(hashes, fractions)
    out = {name: [] for name in (*fractions, "train")}
    for item in items:
        out[split_of[unit[id(item)]]].append(item)
    log.info(
        "%s carved by %s of %d %s",
        "/".join(fractions),
        "iterative stratification" if method == "iterative" else "hash",
        len(hashes),
        "groups" if by_group else "files",
    )

    def move(units: set, source: str, target: str) -> None:
        out[target] += [it for it in out[source] if unit[id(it)] in units]
        out[source] = [it for it in out[source] if unit[id(it)] not in units]

    def classes(split: list) -> set:  # by class, not by label set: multi-label sets are mostly unique
        return {name for it in split for name in labels_of(it)}

    stranded = sorted(classes(items) - classes(out["train"]))
    if stranded:
        # Whole units return to training, so a group-disjoint split stays group-disjoint: a speaker's
        # recordings of other classes come back with those of the stranded class.
        back = {unit[id(it)] for name in fractions for it in out[name] if set(labels_of(it)) & set(stranded)}
        log.warning(
            "%d classes have too few %s to give some to %s; all of theirs stay in training: %s%s",
            len(stranded),
            "groups" if by_group else "recordings",
            "/".join(fractions),
            ", ".join(stranded[:10]),
            f" (with every recording of {len(back)} groups: {', '.join(sorted(back)[:10])})" if by_group else "",
        )
        for name in fractions:
            move(back, name, "train")
    for name, fraction in fractions.items():
        if fraction > 0 and not out[name]:
            # Small data can leave a split empty (by chance, or every class too rare to give a unit): it takes
            # the training unit of lowest hash whose departure leaves every class in training.
            kept = classes(out["train"])
            for candidate in sorted({unit[id(it)] for it in out["train"]}, key=hashes.get):
                if classes([it for it in out["train"] if unit[id(it)] != candidate]) == kept:
                    log.info("%s: no unit was carved into it; it takes %s", name, candidate)
                    move({candidate}, "train", name)
                    break
    return out


def assign_splits(
    items: list,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    split_by: str,
    root: Path | None = None,
    stratify: str = "hash",
) -> dict[str, list]:
    """Items (with or without a predefined `split`) -> {"train", "val", "test"} (see the module doc).
    `stratify`: `data.stratify` (hash by default here, as before it existed; the shipped config says auto)."""
    check_stratify(stratify)
    bad = sorted({it.split for it in items} - {None, *SPLITS})
    if bad:
        raise DataError(f"unknown split names {bad}: expected train, val or test")
    fixed = {name: [it for it in items if it.split == name] for name in SPLITS}
    unmarked = [it for it in items if it.split is None]
    test = fixed["test"]
    if not test and test_fraction > 0:
        by_group = use_groups(unmarked, split_by, "test split")
        carved = carve(unmarked, {"test": test_fraction}, seed, by_group, root, stratify_method(unmarked, stratify))
        test, unmarked = carved["test"], carved["train"]
    pool = fixed["train"] + unmarked
    val = fixed["val"]
    if not val and val_fraction > 0:
        by_group = use_groups(pool, split_by, "validation split")
        # Salted apart from the test carve, so validation is not simply the next slice of the same hash.
        carved = carve(pool, {"val": val_fraction}, seed + 1, by_group, root, stratify_method(pool, stratify))
        val, pool = carved["val"], carved["train"]
    splits = {"train": pool, "val": val, "test": test}
    for name in ("val", "test"):
        if not splits[name]:
            key = "val_fraction" if name == "val" else "test_fraction"
            raise DataError(
                f"the {name} split is empty: the data defines none and data.{key} "
                f"carves no recording from {len(items)}; raise data.{key} or add recordings"
            )
    return splits


# --- cross-validation --------------------------------------------------------------------------
def cv_scheme(items: list, scheme: str) -> str:
    """Resolve `auto`: the data's own folds, else its groups, else files."""
    if scheme not in CV_SCHEMES:
        raise ConfigError(f"cv.scheme={scheme!r}: expected one of {', '.join(CV_SCHEMES)}")
    has_folds = all(it.fold is not None for it in items)
    has_groups = all(it.group is not None for it in items)
    with_fold = sum(it.fold is not None for it in items)
    if 0 < with_fold < len(items):
        log.warning("Only %d of %d recordings have a fold: the folds are not used", with_fold, len(items))
    if scheme == "auto":
        return "folds" if has_folds else "groups" if has_groups else "files"
    if scheme == "folds" and not has_folds:
        raise ConfigError("cv.scheme=folds: this dataset defines no folds (use groups, logo or files)")
    if scheme in ("groups", "logo") and not has_groups:
        raise ConfigError(f"cv.scheme={scheme}: not every recording has a group (speaker/source)")
    return scheme


def cv_folds(
    items: list, scheme: str, num_folds: int, seed: int, root: Path | None = None, stratify: str = "hash"
) -> list[tuple[str, list]]:
    """[(fold name, test items)] for a resolved scheme. Fold membership is balanced: units are ordered by
    hash and dealt out in turn (per label for files, so every fold holds every class), or, for files where
    `stratify` resolves to iterative, divided by iterative stratification of their label sets."""
    if scheme == "folds":
        by_fold = defaultdict(list)
        for it in items:
            by_fold[it.fold].append(it)
        return [(f"fold {f}", by_fold[f]) for f in sorted(by_fold)]
    if scheme == "logo":
        by_group = defaultdict(list)
        for it in items:
            by_group[it.group].append(it)
        return [(str(g), by_group[g]) for g in sorted(by_group)]
    if num_folds < 2:
        raise ConfigError(f"cv.folds={num_folds}: cross-validation needs at least 2 folds")
    folds = [[] for _ in range(num_folds)]
    if scheme == "groups":
        groups = sorted({it.group for it in items}, key=lambda g: unit_hash(seed, f"group:{g}"))
        if len(groups) < num_folds:
            raise ConfigError(f"cv.folds={num_folds}: only {len(groups)} groups to divide")
        fold_of = {g: i % num_folds for i, g in enumerate(groups)}
        for it in items:
            folds[fold_of[it.group]].append(it)
    elif stratify_method(items, stratify) == "iterative":
        import numpy as np
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports scikit-learn: only when used

        by_unit = defaultdict(list)
        for it in items:
            by_unit[unit_of(it, False, root)].append(it)
        units = sorted(by_unit)
        if len(units) < num_folds:
            raise ConfigError(f"cv.folds={num_folds}: only {len(units)} recordings to divide")
        rows = multi_hot([{name for it in by_unit[u] for name in labels_of(it)} for u in units])
        splitter = MultilabelStratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed % 2**32)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(units)), rows)):
            for i in test:
                folds[k] += by_unit[units[i]]
        log.info("cross-validation: %d folds by iterative stratification of %d files", num_folds, len(units))
    else:
        by_label = defaultdict(lambda: defaultdict(list))
        for it in items:
            by_label[it.label][unit_of(it, False, root)].append(it)
        # One deal over all labels, each label's units in a row: every label is spread evenly over the folds,
        # and labels with a single unit (common for the label sets of multi-label data) do not all land in fold 0.
        dealt = 0
        for label in sorted(by_label):
            for unit in sorted(by_label[label], key=lambda u: unit_hash(seed, u)):
                folds[dealt % num_folds] += by_label[label][unit]
                dealt += 1
    return [(f"fold {i}", fold) for i, fold in enumerate(folds)]


def cv_split(
    items: list,
    scheme: str,
    num_folds: int,
    fold: int,
    val_fraction: float,
    seed: int,
    split_by: str = "auto",
    root: Path | None = None,
    stratify: str = "hash",
) -> dict[str, list]:
    """Fold `fold` as the test split; validation carved from the other folds (by group when known)."""
    folds = cv_folds(items, cv_scheme(items, scheme), num_folds, seed, root, stratify)
    if not 0 <= fold < len(folds):
        raise ConfigError(f"data.cv_fold={fold}: there are {len(folds)} folds (0-{len(folds) - 1})")
    test = folds[fold][1]
    held_out = set(map(id, test))
    rest = [it for it in items if id(it) not in held_out]
    by_group = use_groups(rest, split_by, "validation split")
    carved = carve(rest, {"val": val_fraction}, seed + 1, by_group, root, stratify_method(rest, stratify))
    return {"train": carved["train"], "val": carved["val"], "test": test}


# --- checks --------------------------------------------------------------------------------------
def shared_groups(splits: dict[str, list]) -> dict[str, int]:
    """{"train/test": number of groups found in both, ...} for groups known in both splits."""
    groups = {name: {it.group for it in items if it.group is not None} for name, items in splits.items()}
    pairs = (("train", "val"), ("train", "test"), ("val", "test"))
    return {f"{a}/{b}": len(groups[a] & groups[b]) for a, b in pairs if groups[a] & groups[b]}


def duplicates_across_splits(splits: dict[str, list], entries: dict | None = None) -> list[tuple[str, str, str, str]]:
    """[(split, path, other split, other path)] for recordings with identical bytes (or the same file)
    in two splits, where the parts used overlap (segments of one long file in different splits are
    fine when they do not). Files are compared by size, then by a hash of their first 64 KiB, and only
    then by a hash of all their content, so datasets of equal-length clips are not read whole at every start.
    `entries` ({path: FileEntry}, the file index's) give sizes and first-64-KiB hashes without reading."""
    segments = defaultdict(list)  # (split, path) -> [(start, end)] used from it
    for name, items in splits.items():
        for it in items:
            segments[name, it.path].append((it.start or 0.0, math.inf if it.end is None else it.end))
    candidates = [sorted(segments)]
    if entries is not None:
        keys = (lambda p: (entries[p].size, entries[p].head_hash), _content_hash)
    else:
        keys = (os.path.getsize, lambda p: _content_hash(p, 1 << 16), _content_hash)
    for key in keys:
        groups = defaultdict(list)
        for group in candidates:
            for name, path in group:
                groups[key(path)].append((name, path))
        # Only groups spanning two splits can hold a leak.
        candidates = [g for g in groups.values() if len({name for name, _ in g}) > 1]

    def overlap(a, b) -> bool:
        return any(max(s0, t0) < min(s1, t1) for s0, s1 in segments[a] for t0, t1 in segments[b])

    found = []
    for group in candidates:  # identical content, in two or more splits
        for k, b in enumerate(group):
            a = next((a for a in group[:k] if a[0] != b[0] and overlap(a, b)), None)
            if a is not None:
                found.append((*a, *b))
    return found


def _content_hash(path: str, limit: int | None = None) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if limit is not None:
            h.update(f.read(limit))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
