"""Evidence JSON is canonical: stable key order, strict JSON, records through as_dict()."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from modellineage.reporting.evidence import display_path, dumps, to_jsonable


@dataclass(frozen=True)
class Rec:
    x: float

    def as_dict(self):
        return {"x": self.x, "path": Path("/a/b")}


def test_records_numpy_and_non_finite_values_become_strict_json():
    text = dumps({"b": Rec(0.5), "a": (np.float64(1.5), np.int64(3), float("nan"), float("-inf")),
                  "s": {3, 1}})
    assert json.loads(text) == {"a": [1.5, 3, "NaN", "-Infinity"], "b": {"x": 0.5, "path": "/a/b"}, "s": [1, 3]}
    assert text.index('"a"') < text.index('"b"')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_round_trips_and_is_independent_of_insertion_order(value):
    text = dumps(value)
    assert json.loads(text) == to_jsonable(value)
    if isinstance(value, dict):
        assert dumps(dict(reversed(list(value.items())))) == text


def test_display_path_is_relative_inside_root(tmp_path):
    assert display_path(tmp_path / "a" / "b.json", tmp_path) == "a/b.json"
    assert display_path("/elsewhere/x", tmp_path) == "/elsewhere/x"
