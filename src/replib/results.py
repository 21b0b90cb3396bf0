"""The results record ``results/<scale>/NN-slug.json``: a versioned schema, atomic writes, validated reads.

The scoreboard and ``replib list`` read these files, so a result from a GPU run shows in a book
built on a CPU. A file that is corrupt, foreign or of another schema version is an error with the
file's name in it, never a silently empty scoreboard row.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

from .claims import LEGACY_VERDICTS, Verdict
from .errors import ReplibError
from .scales import SCALES

SCHEMA_NAME = "replib.results"
SCHEMA_VERSION = 1

_number_or_null = {"type": ["number", "null"]}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "schema_version", "chapter", "paper", "scale", "seeds", "device",
                 "hardware", "versions", "git", "data", "started_at", "wall_time_s", "claims"],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "chapter": {"type": "string", "pattern": r"^\d\d-[a-z0-9-]+$"},
        "paper": {"type": "integer", "minimum": 1},
        "scale": {"enum": list(SCALES)},
        "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        "device": {"type": "string"},
        "hardware": {"type": "object"},
        "versions": {"type": "object", "required": ["python", "torch"]},
        "git": {"type": "object", "required": ["commit"]},
        "data": {"type": "object"},
        "started_at": {"type": "string"},
        "wall_time_s": {"type": "number", "minimum": 0},
        "claims": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "statement", "paper", "rule", "verdict", "ours", "analog",
                             "note", "metrics", "summary"],
                "properties": {
                    "id": {"type": "string", "pattern": r"^C\d+[a-z0-9-]*$"},
                    "verdict": {"enum": [v.value for v in Verdict] + list(LEGACY_VERDICTS)},
                    "analog": {"type": "boolean"},
                    "qualifiers": {"type": "array", "items": {"type": "string"}},
                    "metrics": {"type": "object",
                                "additionalProperties": {"type": "array", "items": _number_or_null}},
                    "summary": {"type": "object"},
                },
            },
        },
        "sweeps": {  # optional: learning-rate sweeps, {name: Sweep.to_json()}
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["grid", "select_on", "lower_is_better", "seeds", "runs", "best"],
                "properties": {"grid": {"type": "array", "items": {"type": "number"}, "minItems": 1},
                               "runs": {"type": "object"}, "best": {"type": "object"}},
            },
        },
        "measurements": {  # optional: a benchmark's numbers that answer no paper claim
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "description", "unit", "metrics", "summary"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "metrics": {"type": "object",
                                "additionalProperties": {"type": "array", "items": _number_or_null}},
                    "summary": {"type": "object"},
                },
            },
        },
    },
}


def results_dir(root: Path | None = None) -> Path:
    """Where records go: ``$REPLIB_RESULTS_DIR``, else ``results/`` of the book checkout above the
    working directory, else ``./results`` (a notebook opened on its own, e.g. in Colab)."""
    if env := os.environ.get("REPLIB_RESULTS_DIR"):
        return Path(env)
    if root is not None:
        return root / "results"
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "_toc.yml").exists() and (parent / "results").is_dir():
            return parent / "results"
    return Path.cwd() / "results"


def validate(record: Any, source: str = "record") -> dict:
    if not isinstance(record, dict) or record.get("schema") != SCHEMA_NAME:
        raise ReplibError(f"{source}: not a replib results record (no 'schema: {SCHEMA_NAME}')")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ReplibError(f"{source}: schema version {record.get('schema_version')!r}; this "
                          f"replib reads version {SCHEMA_VERSION}")
    try:
        jsonschema.validate(record, SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise ReplibError(f"{source}: invalid results record at {where}: {e.message}") from None
    return record


def write(record: dict, path: Path) -> Path:
    """Validate, then write atomically: a crash mid-write never leaves half a file behind."""
    validate(record, str(path))
    return write_json_atomic(record, path)


def write_json_atomic(record: dict, path: Path) -> Path:
    """Write ``record`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a record is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: Path | str) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReplibError(f"{path}: no such results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReplibError(f"{path}: corrupt results file ({e})") from None
    return validate(record, str(path))


def latest(chapter: str, root: Path | None = None) -> dict[str, dict]:
    """The recorded result of ``chapter`` at each scale that has one."""
    base = results_dir(root)
    return {scale: read(base / scale / f"{chapter}.json")
            for scale in SCALES if (base / scale / f"{chapter}.json").exists()}


def check_all(base: Path) -> dict[Path, str]:
    """Every unreadable file among ``base/<scale>/*.json``, with why (corrupt, foreign, another
    schema version, or a record filed under another chapter's or scale's name)."""
    bad = {}
    for path in sorted(p for p in base.glob("*/*.json") if p.parent.name in SCALES):
        try:
            record = read(path)
        except ReplibError as e:
            bad[path] = str(e).removeprefix(f"{path}: ")
            continue
        if (record["chapter"], record["scale"]) != (path.stem, path.parent.name):
            bad[path] = (f"holds {record['chapter']} at scale {record['scale']}, "
                         f"not {path.stem} at {path.parent.name}")
    return bad
