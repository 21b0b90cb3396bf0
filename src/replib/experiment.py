"""One chapter's run: validated parameters, provenance, claims, the verdict table and the record.

The notebook's parameters cell feeds :class:`Experiment`; everything a chapter needs to know about
its scale, device and seeds comes from here, and everything it concludes goes back in here::

    exp = Experiment("16-selu-snn", scale=scale, device=device, seeds=seeds)
    cfg = exp.sizes({"smoke": {...}, "cpu": {...}, "gpu": {...}})
    exp.record(judge("C1", ..., rule=rule, metrics=...))
    exp.verdict_table(); exp.save()
"""
from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

from . import provenance
from .claims import Claim, Stat, Verdict
from .errors import ReplibError
from .results import results_dir, write
from .runtime import resolve_device
from .scales import get_scale, pick, resolve_seeds
from .show import VerdictTable

CHAPTER_RE = re.compile(r"^(\d\d)-[a-z0-9-]+$")


class Experiment:
    def __init__(self, chapter: str, scale: str = "cpu", device: str = "auto",
                 seeds: Sequence[int] | int | None = None):
        m = CHAPTER_RE.match(chapter)
        if not m:
            raise ReplibError(f"chapter id {chapter!r} is not of the form NN-slug")
        self.chapter, self.paper = chapter, int(m.group(1))
        self.scale = get_scale(scale)
        self.device = resolve_device(device)
        self.seeds = resolve_seeds(scale, seeds)
        self._seeds_given = seeds is not None
        self.claims: dict[str, Claim] = {}
        self.measurements: dict[str, dict] = {}
        self.sweeps: dict[str, dict] = {}
        self.data: dict[str, dict] = {}
        self.started_at = datetime.now(timezone.utc)
        self.git = provenance.git_commit()  # the code that runs is the code at the start
        self._t0 = time.perf_counter()

    def __repr__(self) -> str:
        return (f"Experiment({self.chapter!r}, scale={self.scale.name!r}, "
                f"device={str(self.device)!r}, seeds={self.seeds})")

    def _repr_markdown_(self) -> str:
        """The run's provenance as one line at the top of the executed chapter."""
        hw = provenance.hardware(self.device)
        commit = (self.git["commit"] or "unknown")[:10] + (" (modified)" if self.git["dirty"] else "")
        versions = provenance.library_versions()
        return (f"**scale** `{self.scale.name}` · **device** `{self.device}` "
                f"({hw.get('gpu') or hw['cpu']}, {hw['torch_threads']} threads) · "
                f"**seeds** `{self.seeds}` · **replib** {versions.get('replib', '?')} @ `{commit}` · "
                f"**torch** {versions['torch']} · **started** "
                f"{self.started_at.strftime('%Y-%m-%d %H:%M UTC')}")

    def sizes(self, table: Mapping[str, Mapping]) -> SimpleNamespace:
        """The running scale's entry of a chapter's sizes table. An entry may hold ``seeds`` (a
        count or a list): a chapter whose runs are cheap asks for more seeds than the scale's
        default that way; the notebook's ``seeds`` parameter, when given, still wins."""
        cfg = pick(table, self.scale.name)
        if getattr(cfg, "seeds", None) is not None and not self._seeds_given:
            self.seeds = resolve_seeds(self.scale.name, cfg.seeds)
        return cfg

    def uses(self, name: str, **facts) -> None:
        """Record a data set's provenance (its sha256, size, source) in the results file."""
        self.data[name] = facts

    def record(self, claim: Claim) -> Claim:
        if self.scale.name == "smoke":
            claim.note = ("smoke scale: pipeline check only, not a result. " + claim.note).strip()
        self.claims[claim.id] = claim
        return claim

    def measure(self, name: str, description: str, metrics: Mapping[str, Sequence[float | None]],
                unit: str = "") -> dict:
        """Record numbers that answer no paper claim (a benchmark's), per seed, with a summary.

        ``metrics`` maps a label (say a norm's name) to its per-seed values; None, NaN and inf are
        stored as None (a divergence), as in claims.
        """
        if not metrics:
            raise ReplibError(f"measurement {name!r} has no metrics")
        stats = {k: Stat.of(v) for k, v in metrics.items()}
        entry = {"name": name, "description": description, "unit": unit,
                 "metrics": {k: [None if v is None or not math.isfinite(float(v)) else float(v)
                                 for v in vals] for k, vals in metrics.items()},
                 "summary": {k: st.summary() for k, st in stats.items()}}
        self.measurements[name] = entry
        return entry

    def sweep(self, name: str, sweep) -> None:
        """Record a learning-rate sweep (:class:`replib.train.Sweep`) in the results file."""
        self.sweeps[name] = sweep.to_json()

    def verdict_table(self) -> VerdictTable:
        """Claim (full text), the paper's number, ours formatted by its spread with what qualifies
        it (gates, the paired interval, under-training), the verdict badge and the rule behind a
        disclosure: rendered like the scoreboard. ``.to_frame()`` gives a pandas DataFrame."""
        return VerdictTable([c.to_json() for c in self.claims.values()], self.scale.name)

    def counts(self) -> dict[str, int]:
        """How many claims got each verdict (reference checks and not-run kept apart)."""
        return {v.value: sum(c.verdict is v for c in self.claims.values()) for v in Verdict}

    def to_json(self) -> dict:
        return {
            "schema": "replib.results", "schema_version": 1,
            "chapter": self.chapter, "paper": self.paper, "scale": self.scale.name,
            "seeds": self.seeds, "device": str(self.device),
            "hardware": provenance.hardware(self.device), "versions": provenance.library_versions(),
            "git": self.git, "data": self.data,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - self._t0, 2),
            "claims": [c.to_json() for c in self.claims.values()],
            "measurements": list(self.measurements.values()),
            **({"sweeps": self.sweeps} if self.sweeps else {}),
        }

    def save(self, directory: Path | None = None) -> Path:
        """Write ``results/<scale>/<chapter>.json`` and say where, with the run's wall time."""
        if not self.claims and not self.measurements:
            raise ReplibError(f"{self.chapter}: no claims or measurements recorded; nothing to save")
        record = self.to_json()
        base = directory or results_dir()
        path = write(record, base / self.scale.name / f"{self.chapter}.json")
        print(f"{len(self.claims)} claims, {len(self.measurements)} measurements recorded in {path.name} "
              f"(wall time {record['wall_time_s']:.0f} s at scale {self.scale.name})")
        return path
