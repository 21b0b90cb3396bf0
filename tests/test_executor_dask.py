"""`replib book --executor dask`: chapters as tasks on a LocalCluster of 2 CPU worker processes
give the same staged pages, cache records and results files as the local executor."""
import json
import shutil

import nbformat
import pytest

pytest.importorskip("distributed", reason="dask distributed is not installed (the `cluster` extra)")

from replib.book.chapters import toc_chapters  # noqa: E402
from replib.book.execute import _record_path, execute_many, stage_dir  # noqa: E402
from replib.experiment import Experiment  # noqa: E402

PARAMS = {"scale": "smoke", "device": "cpu"}
KERNEL_ENV = ("REPLIB_RESULTS_DIR", "JUPYTER_PATH", "TQDM_DISABLE", "REPLIB_STATIC",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _notebook(title: str, *cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('scale = "cpu"\ndevice = "auto"\nseeds = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), params,
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    return nb


def _book(root, record: dict):
    """Two chapters: 01-good counts its runs and writes a fixed results record; 02-bad raises."""
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   "  - file: notebooks/01-good\n  - file: notebooks/02-bad\n")
    count = ("import os, pathlib\n"
             "with open(pathlib.Path(os.environ['RUNS_DIR'], '{}'), 'a') as f:\n"
             "    f.write(str(os.getpid()) + '\\n')")
    nbformat.write(_notebook("Good", count.format("01-good"),
                             "out = pathlib.Path(os.environ['REPLIB_RESULTS_DIR'], scale,"
                             " '01-good.json')\n"
                             "out.parent.mkdir(parents=True, exist_ok=True)\n"
                             f"out.write_text({json.dumps(json.dumps(record))})"),
                   root / "notebooks" / "01-good.ipynb")
    nbformat.write(_notebook("Bad", count.format("02-bad"), "raise ValueError('boom')"),
                   root / "notebooks" / "02-bad.ipynb")


def _runs(runs_dir, chapter: str) -> list[str]:
    path = runs_dir / chapter
    return path.read_text().split() if path.exists() else []


def test_dask_executor_matches_the_local_one(tmp_path, monkeypatch):
    for var in KERNEL_ENV:  # execute_many sets these for its kernels; restored after the test
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    exp = Experiment("01-good", scale="smoke", device="cpu", seeds=[0])
    exp.measure("m", "a number", {"x": [2.0]})
    record = exp.to_json()
    local_root, dask_root = tmp_path / "local", tmp_path / "dask"
    _book(local_root, record)
    shutil.copytree(local_root, dask_root)  # byte for byte (nbformat draws random cell ids)
    chapters = {}
    for root in (local_root, dask_root):
        chapters[root] = toc_chapters(root)
        (root / "runs").mkdir()

    monkeypatch.setenv("RUNS_DIR", str(local_root / "runs"))
    local = execute_many(local_root, chapters[local_root], PARAMS)
    monkeypatch.setenv("RUNS_DIR", str(dask_root / "runs"))  # the workers inherit it
    started, done = [], []
    remote = execute_many(dask_root, chapters[dask_root], PARAMS, jobs=2, executor="dask",
                          on_start=lambda ch: started.append(ch.id),
                          on_done=lambda o: done.append(o.chapter))

    assert [o.status for o in remote] == [o.status for o in local] == ["executed", "failed"]
    assert "ValueError: boom" in remote[1].error  # reported, the cluster carried on
    assert sorted(started) == sorted(done) == ["01-good", "02-bad"]
    runs = {ch: _runs(dask_root / "runs", ch) for ch in ("01-good", "02-bad")}
    assert all(len(r) == 1 for r in runs.values())  # each executed once
    name = "01-good.json"
    assert ((dask_root / "results" / "smoke" / name).read_bytes()
            == (local_root / "results" / "smoke" / name).read_bytes())
    for ch_l, ch_d in zip(chapters[local_root], chapters[dask_root]):
        rec_l, rec_d = (json.loads(_record_path(stage_dir(r, "smoke"), c).read_text())
                        for r, c in ((local_root, ch_l), (dask_root, ch_d)))
        assert (rec_d["key"], rec_d["status"]) == (rec_l["key"], rec_l["status"])
    assert not (dask_root / "_build" / "pending").exists() or not any(
        (dask_root / "_build" / "pending").rglob("*.json"))
    staged = nbformat.read(stage_dir(dask_root, "smoke") / "notebooks" / "02-bad.ipynb", as_version=4)
    assert "ValueError: boom" in staged.cells[1].source  # the failure notice, as locally

    # the cache is the local executor's: the local path finds the chapter the cluster executed
    assert [o.status for o in execute_many(dask_root, chapters[dask_root][:1], PARAMS)] == ["cached"]
    assert len(_runs(dask_root / "runs", "01-good")) == 1


def test_scheduler_needs_the_dask_executor(capsys):
    from replib.cli import main

    assert main(["book", "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scheduler needs --executor dask" in err
