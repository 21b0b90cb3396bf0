"""Where and with what a result was produced: hardware, library versions, git commit."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

CODE_PATHS = ("src", "notebooks", "pyproject.toml")  # what a modified checkout means for a result
LIBRARIES = ("replib", "torch", "numpy", "scikit-learn", "matplotlib", "seaborn", "papermill")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> dict[str, object]:
    """The commit replib's source came from: the checkout it lives in, else pip's install record.

    Notebooks run on a staged copy outside the checkout, so the working directory says nothing;
    the package's own location does. ``REPLIB_GIT_COMMIT`` overrides both (CI, containers).
    """
    if env := os.environ.get("REPLIB_GIT_COMMIT"):
        return {"commit": env, "dirty": None, "source": "env"}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # only the code that runs counts, not the results it writes
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--",
             *(f":(top){p}" for p in CODE_PATHS)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty), "source": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # installed with `pip install git+https://...@<ref>` (Colab): pip records the commit
        direct = json.loads(md.distribution("replib").read_text("direct_url.json") or "{}")
        commit = direct.get("vcs_info", {}).get("commit_id")
        if commit:
            return {"commit": commit, "dirty": False, "source": "pip"}
    except md.PackageNotFoundError:
        pass
    return {"commit": None, "dirty": None, "source": "unknown"}
