"""The terrain preference spec: schema and semantic errors naming the entry, implied orderings, categories."""

from __future__ import annotations

import numpy as np
import pytest

from src.terrain import spec
from src.terrain.spec import SpecError


@pytest.fixture
def root(tmp_path):
    for name in ("ep0", "ep1"):
        (tmp_path / name).mkdir()
    (tmp_path.parent / "outside").mkdir(exist_ok=True)
    return tmp_path


def _data(**changes):
    data = {
        "categories": {
            "concrete": [{"path": "ep0", "start": 0.0, "end": 5.0}],
            "grass": [{"path": "ep0", "start": 5.0, "end": 9.0}],
            "gravel": [{"path": "ep1", "start": 0.0, "end": 3.0}],
        },
        "orderings": [
            {"first": "concrete", "second": "grass", "label": -1},
            {"first": "gravel", "second": "grass", "label": -1},
        ],
    }
    data.update(changes)
    return data


def _orderings(*triples):
    return [{"first": a, "second": b, "label": label} for a, b, label in triples]


def test_valid_spec_parses(root):
    s = spec.parse_spec(_data(), root)
    assert s.names == ["concrete", "grass", "gravel"]
    assert s.orderings == [("concrete", "grass", -1), ("gravel", "grass", -1)]
    assert s.categories["grass"][0].path == (root / "ep0").resolve()


def test_schema_error_names_the_key(root):
    data = _data()
    del data["categories"]["grass"][0]["end"]
    with pytest.raises(SpecError, match=r"\$\.categories\.grass\[0\]: 'end' is a required property"):
        spec.parse_spec(data, root)


def test_unknown_category(root):
    with pytest.raises(SpecError, match=r"orderings\[0\] \(concrete vs sand\): unknown category 'sand'"):
        spec.parse_spec(_data(orderings=_orderings(("concrete", "sand", -1))), root)


def test_label_outside_minus_one_zero_one(root):
    with pytest.raises(SpecError, match=r"orderings\[1\] .*label 2 is not one of -1, 0, 1"):
        spec.parse_spec(_data(orderings=_orderings(("concrete", "grass", -1), ("grass", "gravel", 2))), root)


def test_empty_time_range(root):
    data = _data()
    data["categories"]["gravel"][0]["end"] = 0.0
    with pytest.raises(SpecError, match=r"categories\.gravel\[0\]: empty time range \(start 0.0 >= end 0.0\)"):
        spec.parse_spec(data, root)


def test_missing_path(root):
    data = _data()
    data["categories"]["gravel"][0]["path"] = "ep9"
    with pytest.raises(SpecError, match=r"categories\.gravel\[0\]: path 'ep9' does not exist"):
        spec.parse_spec(data, root)


def test_path_escaping_the_root(root):
    data = _data()
    data["categories"]["gravel"][0]["path"] = "../outside"
    with pytest.raises(SpecError, match=r"categories\.gravel\[0\]: .*escapes the dataset root"):
        spec.parse_spec(data, root)
    data["categories"]["gravel"][0]["path"] = str(root / "ep1")
    with pytest.raises(SpecError, match=r"categories\.gravel\[0\]: absolute path"):
        spec.parse_spec(data, root)


def test_overlapping_ranges(root):
    data = _data()
    data["categories"]["grass"][0]["start"] = 4.0
    with pytest.raises(SpecError, match=r"categories\.concrete\[0\] and categories\.grass\[0\] overlap"):
        spec.parse_spec(data, root)


def test_direct_contradiction(root):
    orderings = _orderings(("concrete", "grass", -1), ("grass", "concrete", -1))
    with pytest.raises(SpecError, match=r"contradicting.*orderings\[0\].*orderings\[1\]"):
        spec.parse_spec(_data(orderings=orderings), root)
    orderings = _orderings(("concrete", "grass", -1), ("concrete", "grass", 1))
    with pytest.raises(SpecError, match="contradicting"):
        spec.parse_spec(_data(orderings=orderings), root)


def test_contradiction_through_transitivity(root):
    orderings = _orderings(("concrete", "grass", -1), ("grass", "gravel", -1), ("gravel", "concrete", -1))
    with pytest.raises(SpecError, match=r"orderings\[0\].*orderings\[1\].*orderings\[2\]"):
        spec.parse_spec(_data(orderings=orderings), root)


def test_contradiction_through_an_equality(root):
    orderings = _orderings(("concrete", "grass", 0), ("concrete", "gravel", -1), ("gravel", "grass", -1))
    with pytest.raises(SpecError, match="contradicting"):
        spec.parse_spec(_data(orderings=orderings), root)


def test_implied_orderings_follow_transitivity_and_equalities(root):
    orderings = _orderings(("concrete", "grass", -1), ("grass", "gravel", -1))
    truth = spec.implied_orderings(spec.parse_spec(_data(orderings=orderings), root))
    assert truth[("concrete", "gravel")] == -1 and truth[("gravel", "concrete")] == 1
    assert truth[("grass", "concrete")] == 1
    orderings = _orderings(("concrete", "grass", 0), ("grass", "gravel", -1))
    truth = spec.implied_orderings(spec.parse_spec(_data(orderings=orderings), root))
    assert truth[("concrete", "grass")] == 0 and truth[("concrete", "gravel")] == -1
    truth = spec.implied_orderings(spec.parse_spec(_data(orderings=[]), root))
    assert truth == {}


def test_categories_assigned_by_time_and_empty_category_is_an_error(root):
    s = spec.parse_spec(_data(), root)
    source = np.array([0, 0, 0, 1, 1])
    time = np.array([1.0, 5.0, 9.5, 2.0, 3.0])
    category = spec.assign_categories(s, [root / "ep0", root / "ep1"], source, time)
    np.testing.assert_array_equal(category, [0, 1, -1, 2, -1])
    with pytest.raises(SpecError, match="category 'gravel' has no patches"):
        spec.assign_categories(s, [root / "ep0", root / "ep1"], source, np.array([1.0, 5.0, 9.5, 4.0, 3.5]))
