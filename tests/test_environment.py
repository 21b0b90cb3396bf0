"""environment.yml mirrors pyproject's dependencies, so conda users get the same lower bounds."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge spells a few packages differently


def _split(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", req).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(_split(r) for r in extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # conda-forge packages first; a PyPI-only package sits in the pip section with the same bound
    listed = {**dict(_split(p) for p in pip if not p.startswith("-")),
              **dict(_split(d) for d in env["dependencies"] if isinstance(d, str))}
    for name, spec in wanted.items():
        cname = CONDA_NAMES.get(name, name)
        assert cname in listed, f"{cname} missing from environment.yml"
        assert listed[cname] == spec, f"{cname}: environment.yml says {listed[cname]!r}, pyproject {spec!r}"
    assert any(p.startswith("-e .") for p in pip), "environment.yml must install replib itself"


def test_replib_and_its_bench_import_without_the_notebook_stack():
    """`.ci/gpu-visit` runs `replib bench` on the device image, which has torch, numpy, scipy and
    tqdm but no IPython, Jupyter or papermill: importing replib must not need them."""
    import subprocess
    import sys

    code = ("import sys, replib, replib.cli, replib.bench; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'IPython', 'ipywidgets', 'papermill', 'nbclient', 'matplotlib', 'seaborn', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
