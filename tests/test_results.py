import json

import pytest

from replib import Experiment, ReplibError, Rule, graded, judge, results


def _experiment(scale="smoke"):
    exp = Experiment("16-selu-snn", scale=scale, device="cpu")
    rule = Rule("replicated if x < 1", lambda m: graded(m["x"].mean < 1))
    exp.record(judge("C1", "x is small", paper="x < 1", rule=rule, metrics={"x": [0.5]}))
    return exp


def test_round_trip(tmp_path):
    path = _experiment().save(tmp_path)
    assert path == tmp_path / "smoke" / "16-selu-snn.json"
    rec = results.read(path)
    assert rec["chapter"] == "16-selu-snn" and rec["paper"] == 16 and rec["seeds"] == [0]
    assert rec["claims"][0]["verdict"] == "replicated"
    assert rec["claims"][0]["summary"]["x"]["mean"] == 0.5
    assert "smoke scale" in rec["claims"][0]["note"]
    for field in ("hardware", "versions", "git", "wall_time_s", "started_at", "device"):
        assert field in rec
    assert not list(tmp_path.rglob("*.tmp"))  # the atomic write left nothing behind


def test_corrupt_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "replib.results", "schema_ver')
    with pytest.raises(ReplibError, match="corrupt results file"):
        results.read(p)


def test_foreign_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ReplibError, match="not a replib results record"):
        results.read(p)


def test_wrong_version(tmp_path):
    rec = _experiment().to_json()
    rec["schema_version"] = 99
    p = tmp_path / "x.json"
    p.write_text(json.dumps(rec))
    with pytest.raises(ReplibError, match="schema version 99"):
        results.read(p)


def test_invalid_field_names_its_place(tmp_path):
    rec = _experiment().to_json()
    rec["claims"][0]["verdict"] = "sort of"
    with pytest.raises(ReplibError, match="claims/0/verdict"):
        results.write(rec, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_nothing_to_save(tmp_path):
    with pytest.raises(ReplibError, match="no claims"):
        Experiment("16-selu-snn", scale="smoke", device="cpu").save(tmp_path)


def test_bad_chapter_id():
    with pytest.raises(ReplibError, match="NN-slug"):
        Experiment("selu", scale="smoke")


def test_measurements_round_trip_and_are_validated(tmp_path):
    from replib import Experiment
    from replib.results import read

    exp = Experiment("90-all-norms", scale="smoke", device="cpu")
    with pytest.raises(ReplibError, match="nothing to save"):
        exp.save(tmp_path)
    exp.measure("final-loss", "validation loss after training", {"layernorm": [1.5, None],
                                                                  "identity": [float("nan"), float("inf")]},
                unit="nats")
    rec = read(exp.save(tmp_path))
    m = rec["measurements"][0]
    assert m["metrics"]["layernorm"] == [1.5, None]
    assert m["summary"]["layernorm"]["n_diverged"] == 1 and m["summary"]["layernorm"]["mean"] == 1.5
    assert m["metrics"]["identity"] == [None, None] and m["summary"]["identity"]["n_diverged"] == 2
    with pytest.raises(ReplibError, match="no metrics"):
        exp.measure("empty", "nothing", {})


def test_sweeps_qualifiers_and_legacy_verdicts_round_trip(tmp_path):
    import math

    from replib import lr_sweep
    from replib.claims import Claim
    exp = _experiment()
    sweep = lr_sweep(["a"], [0.01, 0.1, 1.0], [0], lambda arm, lr, s: {"val": math.nan if lr == 1 else lr},
                     select_on="val", progress=False)
    exp.sweep("lr", sweep)
    exp.claims["C1"].qualifiers.append("under-trained: a 1/1 seeds")
    rec = results.read(exp.save(tmp_path))
    assert rec["sweeps"]["lr"]["best"] == {"a": 0.01} and rec["sweeps"]["lr"]["runs"]["a"]["1"] == [{"val": None}]
    assert rec["claims"][0]["qualifiers"] == ["under-trained: a 1/1 seeds"]
    # a file written with the old vocabulary still reads, and maps onto the new words
    rec["claims"][0]["verdict"] = "inconclusive at this scale"
    (tmp_path / "old.json").write_text(json.dumps(rec))
    old = results.read(tmp_path / "old.json")
    assert Claim.from_json(old["claims"][0]).verdict.value == "inconclusive"


def test_sizes_entry_may_ask_for_more_seeds_and_the_parameter_wins():
    table = {s: {"steps": 1, "seeds": n} for s, n in (("smoke", 1), ("cpu", 10), ("gpu", 10))}
    exp = Experiment("99-x", scale="cpu")
    exp.sizes(table)
    assert exp.seeds == list(range(10))
    given = Experiment("99-x", scale="cpu", seeds=[4, 5])
    given.sizes(table)
    assert given.seeds == [4, 5]
    plain = Experiment("99-x", scale="cpu")
    plain.sizes({s: {"steps": 1} for s in ("smoke", "cpu", "gpu")})
    assert plain.seeds == [0, 1, 2]
