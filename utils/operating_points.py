"""Operating points: which similarity counts as "the same person", in one place.

A model file stores an `operating_points` record, measured by train.py on its validation split
(speakers held out of training, never the set a result is reported on):

    {"verification": 0.41,      # 1:1: the EER threshold (infer_contrast.py, POST /contrast)
     "identification": 0.52,    # 1:N: the threshold at 1% false accepts (infer_recognition.py, POST /recognize)
     "measured_on": "3 speakers held out of dataset/train_list.txt",
     "calibration": None}       # reserved for score calibration

1:N needs the stricter point because a stranger is compared with every enrolled voiceprint and the
best of N scores is taken. Files written before this record existed kept the 1:1 value in
`threshold` and the 1:N value in `meta["recognition_threshold"]`; they read the same way.

The one fallback rule (`resolve`): a threshold given by the user wins; else the stored point;
for 1:N without a stored point, the 1:1 point (with a warning: it accepts more strangers); else
FALLBACK (0.5), said out loud.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

FALLBACK = 0.5
KINDS = ("verification", "identification")


@dataclass
class OperatingPoints:
    verification: float | None = None
    identification: float | None = None
    measured_on: str = ""
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> OperatingPoints:
        """From a loaded model's info: the record, or the fields older files kept."""
        stored = info.get("operating_points")
        if isinstance(stored, dict):
            known = {k: stored.get(k) for k in ("verification", "identification", "measured_on", "calibration")}
            known["measured_on"] = known["measured_on"] or ""
            return cls(**known)
        meta = info.get("meta") or {}
        return cls(
            verification=info.get("threshold"),
            identification=meta.get("recognition_threshold"),
            measured_on=str(meta.get("test_list", "")),
        )

    def check(self) -> None:
        """ValueError for a stored point that is not a finite number (a damaged or hand-edited file)."""
        for kind in KINDS:
            value = getattr(self, kind)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"stores an invalid {kind} threshold: {value!r}")

    def resolve(self, kind: str, override: float | None = None) -> float:
        """The threshold to use for `kind` ("verification" 1:1 or "identification" 1:N)."""
        if kind not in KINDS:
            raise ValueError(f"unknown operating point {kind!r}; choose from {', '.join(KINDS)}")
        if override is not None:
            return float(override)
        value = getattr(self, kind)
        if value is not None:
            return float(value)
        if kind == "identification" and self.verification is not None:
            warnings.warn(
                f"the model stores no 1:N threshold; using its 1:1 EER threshold {self.verification:.3f}, which "
                "accepts more strangers (pass --threshold, or retrain: train.py stores the threshold at 1% false "
                "accepts)",
                UserWarning,
                stacklevel=3,
            )
            return float(self.verification)
        warnings.warn(
            f"the model stores no {kind} threshold; using {FALLBACK} (pass --threshold)", UserWarning, stacklevel=3
        )
        return FALLBACK
