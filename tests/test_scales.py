import pytest

from replib import ReplibError
from replib.scales import SCALES, pick, resolve_seeds

TABLE = {"smoke": {"steps": 1, "width": 8}, "cpu": {"steps": 10, "width": 64},
         "gpu": {"steps": 100, "width": 512}}


def test_pick_returns_the_running_scale():
    assert pick(TABLE, "cpu").steps == 10
    assert pick(TABLE, "gpu").width == 512


def test_budgets_and_seed_counts():
    assert {s: (v.budget_s, v.n_seeds) for s, v in SCALES.items()} == {
        "smoke": (45, 1), "cpu": (600, 3), "gpu": (180, 5)}


def test_unknown_scale_lists_valid_ones():
    with pytest.raises(ReplibError, match="valid: smoke, cpu, gpu"):
        pick(TABLE, "huge")


def test_table_missing_a_scale():
    with pytest.raises(ReplibError, match="exactly the scales"):
        pick({"smoke": {}, "cpu": {}}, "cpu")


def test_table_keys_must_agree_across_scales():
    bad = {**TABLE, "gpu": {"steps": 100}}
    with pytest.raises(ReplibError, match="differ"):
        pick(bad, "cpu")


def test_seeds():
    assert resolve_seeds("cpu") == [0, 1, 2]
    assert resolve_seeds("smoke") == [0]
    assert resolve_seeds("gpu", 2) == [0, 1]
    assert resolve_seeds("cpu", [5, 9]) == [5, 9]
    for bad in ([], [1, 1], [-1], 0, ["a"]):
        with pytest.raises(ReplibError):
            resolve_seeds("cpu", bad)
