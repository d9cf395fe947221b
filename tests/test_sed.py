"""Sound event detection: frame scores -> events (hand-made arrays, hop 0.1 s), and the metrics via sed_scores_eval."""

import sys
import warnings

import numpy as np
import pytest

from audio_cls.errors import ConfigError
from audio_cls.sed import events_from_scores, sed_metrics, smooth

HOP = 0.1


def track(frames: int, *spans: tuple[int, int], value: float = 0.9, background: float = 0.0) -> np.ndarray:
    """One class's scores: `value` on frames [start, stop) of each span, `background` elsewhere."""
    scores = np.full(frames, background)
    for start, stop in spans:
        scores[start:stop] = value
    return scores


def spans(events) -> list[tuple[float, float, str]]:
    return [(onset, offset, label) for onset, offset, label, _ in events]


@pytest.fixture
def sed_scores_eval():
    with warnings.catch_warnings():
        # sed_scores_eval imports sed_eval -> dcase_util, which imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return pytest.importorskip("sed_scores_eval")


# --- events_from_scores ---


def test_events_onsets_offsets_and_scores():
    scores = np.zeros((20, 2))
    scores[2:6, 0] = [0.6, 0.9, 0.7, 0.6]  # speech, frames 2-5: [0.2, 0.6) s
    scores[10:13, 0] = 0.4  # speech, frames 10-12, below 0.5
    scores[10:13, 1] = 0.4  # dog, frames 10-12
    scores[13, 1] = 0.3  # dog, frame 13: exactly dog's threshold below
    events = events_from_scores(scores, HOP, ["speech", "dog"], thresholds=[0.5, 0.3])
    # score >= threshold is active: frame 13 of dog counts; the score is the largest inside the event
    assert events == [(0.2, 0.6, "speech", 0.9), (1.0, 1.4, "dog", 0.4)]

    # one threshold for all classes; simultaneous onsets sort by label
    events = events_from_scores(scores, HOP, ["speech", "dog"], thresholds=0.35)
    assert spans(events) == [(0.2, 0.6, "speech"), (1.0, 1.3, "dog"), (1.0, 1.3, "speech")]

    # an event running to the last frame ends at frames * hop
    assert spans(events_from_scores(track(10, (7, 10))[:, None], HOP, ["x"], 0.5)) == [(0.7, 1.0, "x")]
    assert events_from_scores(np.zeros((10, 1)), HOP, ["x"], 0.5) == []


def test_median_filter_removes_a_spike_and_fills_a_hole():
    scores = track(20, (3, 4), (8, 11), (12, 16), value=1.0)[:, None]  # spike at frame 3, hole at frame 11
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5)) == [(0.3, 0.4, "x"), (0.8, 1.1, "x"), (1.2, 1.6, "x")]
    # a 3-frame median: the spike goes, the hole fills, the event's edges stay where they were
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5, median_frames=3)) == [(0.8, 1.6, "x")]
    assert np.array_equal(smooth(scores, 1), scores) and np.array_equal(smooth(scores, 0), scores)


@pytest.mark.parametrize("median_frames", [2, 4])
def test_even_median_frames_is_a_config_error(median_frames):
    with pytest.raises(ConfigError, match="median_frames"):
        smooth(np.zeros((10, 2)), median_frames)
    with pytest.raises(ConfigError, match="median_frames"):
        events_from_scores(np.zeros((10, 2)), HOP, ["a", "b"], 0.5, median_frames=median_frames)


def test_min_gap_merges_and_min_duration_drops():
    # events [0.2, 0.5), [0.8, 1.1) (0.3 s gap) and [1.6, 1.9) (0.5 s gap)
    scores = track(20, (2, 5), (8, 11), (16, 19))[:, None]
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5, min_gap=0.3)) == [
        (0.2, 0.5, "x"),
        (0.8, 1.1, "x"),
        (1.6, 1.9, "x"),
    ]  # a gap of exactly min_gap stays
    merged = events_from_scores(scores, HOP, ["x"], 0.5, min_gap=0.31)
    assert spans(merged) == [(0.2, 1.1, "x"), (1.6, 1.9, "x")]

    # 1-frame and 3-frame events: shorter than min_duration goes, exactly min_duration stays
    scores = track(20, (2, 3), (8, 11))[:, None]
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5, min_duration=0.3)) == [(0.8, 1.1, "x")]
    # merging comes first: two 1-frame events 1 frame apart make one 0.3 s event
    scores = track(20, (2, 3), (4, 5))[:, None]
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5, min_duration=0.3)) == []
    assert spans(events_from_scores(scores, HOP, ["x"], 0.5, min_gap=0.15, min_duration=0.3)) == [(0.2, 0.5, "x")]


def test_bad_shapes_and_thresholds():
    with pytest.raises(ConfigError, match="thresholds"):
        events_from_scores(np.zeros((10, 2)), HOP, ["a", "b"], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="2 classes"):
        events_from_scores(np.zeros((10, 3)), HOP, ["a", "b"], 0.5)


# --- sed_metrics ---

CLASSES = ["speech", "dog"]
DURATIONS = {"a": 5.0, "b": 5.0, "c": 5.0}
REFERENCE = {"a": [(1.0, 2.0, "speech"), (3.0, 4.0, "dog")], "b": [(2.0, 3.0, "speech")], "c": []}


def perfect_scores() -> dict[str, np.ndarray]:
    return {
        "a": np.stack([track(50, (10, 20), background=0.1), track(50, (30, 40), background=0.1)], axis=1),
        "b": np.stack([track(50, (20, 30), background=0.1), track(50, background=0.1)], axis=1),
        "c": np.full((50, 2), 0.1),
    }


def imperfect_scores() -> dict[str, np.ndarray]:
    """a: dog missed; b: speech detected until 3.5 s, not 3.0 s; c (no events): dog false alarm [4.0, 4.5)."""
    return {
        "a": np.stack([track(50, (10, 20), background=0.1), track(50, background=0.1)], axis=1),
        "b": np.stack([track(50, (20, 35), background=0.1), track(50, background=0.1)], axis=1),
        "c": np.stack([track(50, background=0.1), track(50, (40, 45), value=0.8, background=0.1)], axis=1),
    }


def test_metrics_of_a_perfect_system_are_one(sed_scores_eval):
    metrics = sed_metrics(perfect_scores(), HOP, CLASSES, REFERENCE, DURATIONS, median_frames=3)
    for key in ("segment_f1", "segment_f1_macro", "event_f1", "event_f1_macro"):
        assert metrics[key] == 1.0, key
    assert metrics["per_class"] == {label: {"segment_f1": 1.0, "event_f1": 1.0} for label in CLASSES}
    assert metrics["psds1"] == pytest.approx(1.0)


def test_metrics_by_hand(sed_scores_eval):
    metrics = sed_metrics(imperfect_scores(), HOP, CLASSES, REFERENCE, DURATIONS)
    # Segment-based, 1 s segments; F1 = 2 TP / (2 TP + FP + FN).
    #   speech: a [1, 2) TP; b [2, 3) TP, [3, 4) FP    -> TP 2, FP 1, FN 0: F1 = 4 / 5 = 0.8
    #   dog:    a [3, 4) FN; c [4, 5) FP               -> TP 0, FP 1, FN 1: F1 = 0
    #   micro: TP 2, FP 2, FN 1: F1 = 4 / 7; macro: (0.8 + 0) / 2 = 0.4
    # Event-based, 200 ms onset collar, offset collar max(200 ms, 20% of 1 s) = 200 ms:
    #   speech: a TP; b's offset 3.5 s is 0.5 s late   -> TP 1, FP 1, FN 1: F1 = 2 / 4 = 0.5
    #   dog:    a missed (FN), c false alarm (FP)      -> F1 = 0
    #   micro: TP 1, FP 2, FN 2: F1 = 2 / 6 = 1/3; macro: (0.5 + 0) / 2 = 0.25
    assert metrics["segment_f1"] == pytest.approx(4 / 7)
    assert metrics["segment_f1_macro"] == pytest.approx(0.4)
    assert metrics["event_f1"] == pytest.approx(1 / 3)
    assert metrics["event_f1_macro"] == pytest.approx(0.25)
    assert metrics["per_class"] == {
        "speech": {"segment_f1": pytest.approx(0.8), "event_f1": pytest.approx(0.5)},
        "dog": {"segment_f1": 0.0, "event_f1": 0.0},
    }
    # PSDS1 takes the per-class true positive rates (x, 0) (dog is never detected) minus their spread
    # (alpha_st = 1): x/2 - x/2 = 0 at every operating point.
    assert metrics["psds1"] == pytest.approx(0.0)

    # Per-class thresholds: dog's at 0.85 removes c's false alarm (scored 0.8).
    #   segment micro: TP 2, FP 1, FN 1 -> 4 / 6; event micro: TP 1, FP 1, FN 2 -> 2 / 5
    metrics = sed_metrics(imperfect_scores(), HOP, CLASSES, REFERENCE, DURATIONS, thresholds=[0.5, 0.85], psds=False)
    assert "psds1" not in metrics
    assert metrics["segment_f1"] == pytest.approx(4 / 6)
    assert metrics["event_f1"] == pytest.approx(2 / 5)
    # A score equal to its threshold is active here as in events_from_scores (sed_scores_eval itself uses >).
    metrics = sed_metrics(imperfect_scores(), HOP, CLASSES, REFERENCE, DURATIONS, thresholds=[0.9, 0.8], psds=False)
    assert metrics["segment_f1"] == pytest.approx(4 / 7)
    assert metrics["event_f1"] == pytest.approx(1 / 3)


def test_metrics_agree_with_sed_eval(sed_scores_eval):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        sed_eval = pytest.importorskip("sed_eval")
    scores = imperfect_scores()
    estimated = {audio_id: events_from_scores(s, HOP, CLASSES, 0.5) for audio_id, s in scores.items()}
    assert {audio_id: spans(events) for audio_id, events in estimated.items()} == {
        "a": [(1.0, 2.0, "speech")],
        "b": [(2.0, 3.5, "speech")],
        "c": [(4.0, 4.5, "dog")],
    }
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=CLASSES, time_resolution=1.0)
    event = sed_eval.sound_event.EventBasedMetrics(event_label_list=CLASSES, t_collar=0.2, percentage_of_length=0.2)

    def events(audio_id, items):
        return [{"filename": audio_id, "onset": on, "offset": off, "event_label": label} for on, off, label in items]

    for audio_id in scores:
        reference, estimate = events(audio_id, REFERENCE[audio_id]), events(audio_id, spans(estimated[audio_id]))
        segment.evaluate(reference_event_list=reference, estimated_event_list=estimate)
        event.evaluate(reference_event_list=reference, estimated_event_list=estimate)

    ours = sed_metrics(scores, HOP, CLASSES, REFERENCE, DURATIONS, psds=False)
    for name, metric in (("segment", segment), ("event", event)):
        assert ours[f"{name}_f1"] == pytest.approx(metric.results_overall_metrics()["f_measure"]["f_measure"])
        macro = metric.results_class_wise_average_metrics()["f_measure"]["f_measure"]
        assert ours[f"{name}_f1_macro"] == pytest.approx(macro)
        for label in CLASSES:
            theirs = metric.results_class_wise_metrics()[label]["f_measure"]["f_measure"]
            assert ours["per_class"][label][f"{name}_f1"] == pytest.approx(theirs)


def test_metrics_check_their_inputs(sed_scores_eval):
    scores = perfect_scores()
    with pytest.raises(ValueError, match="'c'"):
        sed_metrics(scores, HOP, CLASSES, {k: v for k, v in REFERENCE.items() if k != "c"}, DURATIONS)
    with pytest.raises(ValueError, match="'d'"):
        sed_metrics(scores, HOP, CLASSES, REFERENCE, {**DURATIONS, "d": 5.0})
    with pytest.raises(ValueError, match="'cat'"):
        sed_metrics(scores, HOP, CLASSES, {**REFERENCE, "c": [(0.0, 1.0, "cat")]}, DURATIONS)
    with pytest.raises(ValueError, match="no reference events of class 'dog'"):
        sed_metrics(scores, HOP, CLASSES, {**REFERENCE, "a": [(1.0, 2.0, "speech")]}, DURATIONS)
    with pytest.raises(ValueError, match="overlap or touch"):
        sed_metrics(scores, HOP, CLASSES, {**REFERENCE, "c": [(0.0, 1.0, "dog"), (1.0, 2.0, "dog")]}, DURATIONS)


def test_metrics_without_sed_scores_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "sed_scores_eval", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[sed\]'"):
        sed_metrics(perfect_scores(), HOP, CLASSES, REFERENCE, DURATIONS)
