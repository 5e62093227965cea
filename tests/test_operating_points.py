"""The one threshold rule: stored record, legacy fields, user override, and the fallbacks said out loud."""

from __future__ import annotations

import math

import pytest

from utils.operating_points import FALLBACK, OperatingPoints


def test_stored_record_and_override() -> None:
    points = OperatingPoints.from_info({"operating_points": {"verification": 0.4, "identification": 0.55}})
    assert points.resolve("verification") == 0.4 and points.resolve("identification") == 0.55
    assert points.resolve("identification", 0.7) == 0.7 and points.resolve("verification", -0.1) == -0.1
    assert OperatingPoints.from_info({"operating_points": points.to_dict()}) == points


def test_files_written_before_the_record_read_the_same() -> None:
    legacy = {"threshold": 0.32, "meta": {"recognition_threshold": 0.42, "test_list": "dataset/test_list.txt"}}
    points = OperatingPoints.from_info(legacy)
    assert (points.verification, points.identification) == (0.32, 0.42)


def test_fallbacks_warn() -> None:
    only_one = OperatingPoints(verification=0.3)
    with pytest.warns(UserWarning, match="no 1:N threshold; using its 1:1 EER threshold 0.300"):
        assert only_one.resolve("identification") == 0.3
    with pytest.warns(UserWarning, match="no verification threshold; using 0.5"):
        assert OperatingPoints().resolve("verification") == FALLBACK
    with pytest.raises(ValueError, match="unknown operating point"):
        OperatingPoints().resolve("1:1")


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.4"])
def test_damaged_points_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="invalid identification threshold"):
        OperatingPoints(verification=0.3, identification=bad).check()
