"""The ``replib`` command: run one chapter, list chapters and their results, build the book.

    replib run 16 --scale smoke --device cpu --seeds 0,1,2
    replib list
    replib book --scale smoke --jobs 2
    replib book --scale gpu --executor dask            # one chapter per GPU
    replib bench --device cuda --seconds 30 --compile --amp bf16

Bad input (an unknown chapter, scale or device, CUDA asked for on a machine without it, bad seeds,
a results folder it cannot write) stops with a one-line error before any kernel starts. Ctrl-C (or
SIGTERM, SIGHUP) kills the running kernels, keeps the interrupted chapters' results files as they
were, and exits 130 (143, 129).
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ReplibError
from .runtime import DEVICES
from .scales import DEFAULT_SCALE, SCALES, get_scale

MAX_SEED = 2**32 - 1  # NumPy's legacy seeding takes no more


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise ReplibError(message)


def _seeds(text: str) -> list[int]:
    parts = [s.strip() for s in text.split(",")]
    if not any(parts):
        raise ReplibError("--seeds is empty; give comma-separated non-negative ints, or leave it "
                          "out for the scale's default")
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise ReplibError(f"--seeds takes comma-separated non-negative ints, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise ReplibError(f"--seeds takes comma-separated non-negative ints, got {text!r}")
    if too_large := [s for s in seeds if s > MAX_SEED]:
        raise ReplibError(f"--seeds: {too_large[0]} is too large (at most {MAX_SEED})")
    if repeated := sorted({s for s in seeds if seeds.count(s) > 1}):
        raise ReplibError(f"--seeds repeats {', '.join(map(str, repeated))}; each seed once")
    return seeds


def _cell_timeout(text: str) -> int:
    seconds = int(text) if text.strip().isdigit() else 0
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"a whole number of seconds >= 1, got {text!r}")
    return seconds


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    jobs = int(text) if text.strip().isdigit() else 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"auto or a whole number >= 1, got {text!r}")
    return jobs


def _parameters(args) -> dict:
    get_scale(args.scale)
    from .runtime import resolve_device  # checks that the device exists here, before any kernel starts

    resolve_device(args.device)
    params = {"scale": args.scale, "device": args.device}
    if getattr(args, "seeds", None) is not None:
        params["seeds"] = _seeds(args.seeds)
    return params


def _writable(root: Path, scale: str) -> None:
    """Fail now, not after the compute, when the results of ``scale`` cannot be written."""
    folder = root / "results" / scale
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ReplibError(f"cannot write results to {folder}: {e.strerror or e}") from None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    return f"about {seconds / 60:.0f} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


class Progress:
    """Chapters done and to go, and the time left from each one's last recorded wall time."""

    def __init__(self, total: int, estimates: dict[str, float], jobs: int):
        self.total, self.estimates, self.jobs, self.finished = total, dict(estimates), jobs, 0

    def left(self) -> str:
        seconds = sum(self.estimates.values()) / self.jobs
        eta = time.strftime("%H:%M", time.localtime(time.time() + seconds))
        return f"{_duration(seconds)} left (done near {eta})"

    def started(self, chapter) -> str:
        expected = self.estimates.get(chapter.id)
        return f"  {chapter.id:<28} started" + (f"   (expected: {_duration(expected)})"
                                                  if expected is not None else "")

    def done(self, outcome) -> str:
        self.finished += 1
        self.estimates.pop(outcome.chapter, None)
        to_go = self.total - self.finished
        return f"[{self.finished}/{self.total} done" + (f", {to_go} to go, {self.left()}]"
                                                       if to_go else "]")


def _print_outcome(o, suffix: str = "") -> None:
    budget = SCALES[o.parameters["scale"]].budget_s
    flag = "  OVER BUDGET" if o.status == "executed" and o.seconds > budget else ""
    print(f"  {o.chapter:<28} {o.status:<9} {o.seconds:7.1f} s{flag}  {suffix}".rstrip()
          + (f"\n    {o.error}" if o.error else ""), flush=True)


def cmd_run(args) -> int:
    from .book.chapters import book_root, resolve
    from .book.execute import execute_many

    params = _parameters(args)
    root = book_root()
    chapter = resolve(root, args.chapter)
    _writable(root, params["scale"])
    print(f"executing {chapter.id} with {params}", flush=True)
    [outcome] = execute_many(root, [chapter], params, force=True, progress=True,
                             timeout=args.cell_timeout)
    _print_outcome(outcome)
    if outcome.ok:
        print(f"  notebook: {Path('_build/stage') / params['scale'] / chapter.path}\n"
              f"  results:  results/{params['scale']}/{chapter.id}.json")
    return 0 if outcome.ok else 1


def _summary(record: dict) -> str:
    if not record["claims"]:  # a benchmark: measurements, no verdicts
        return f"benchmark, {len(record.get('measurements', []))} measurements"
    from .claims import Verdict  # reads the older words too

    short = {Verdict.REPLICATED: "ok", Verdict.PARTIAL: "partial", Verdict.NOT_REPLICATED: "not",
             Verdict.INCONCLUSIVE: "inconcl.", Verdict.NOT_TESTABLE: "n/t",
             Verdict.NOT_RUN: "not run", Verdict.REFERENCE: "ref."}
    counts = Counter(Verdict(c["verdict"]) for c in record["claims"])
    return " ".join(f"{n} {short.get(v, v.value)}" for v, n in counts.items())


def _stale(root: Path, chapter, scale: str, record: dict) -> str:
    """A note when this chapter's last run at ``scale`` failed after the recorded result."""
    from .book.execute import last_outcome, stage_dir

    last = last_outcome(stage_dir(root, scale), chapter)
    if last and last.status == "failed" and last.finished_at > record["started_at"]:
        return f" STALE: the last run failed ({last.finished_at[:10]})"
    return ""


def cmd_list(args) -> int:
    from .book.chapters import book_root, toc_chapters
    from .results import read, results_dir

    root = book_root()
    print(f"{'chapter':<28} " + "  ".join(f"{s:<38}" for s in SCALES))
    for ch in toc_chapters(root):
        cells = []
        for scale in SCALES:
            path = results_dir(root) / scale / f"{ch.id}.json"
            if not path.exists():
                cells.append("not yet run")
                continue
            try:
                rec = read(path)
            except ReplibError as e:
                cells.append(f"unreadable ({e})")
                continue
            cells.append(f"{_summary(rec)} ({rec['started_at'][:10]}, {rec['wall_time_s']:.0f}s)"
                         + _stale(root, ch, scale, rec))
        print(f"{ch.id:<28} " + "  ".join(f"{c:<38}" for c in cells))
    return 0


def _unreadable(root: Path) -> list[str]:
    from .results import check_all

    bad = check_all(root / "results")
    return [f"  {path.relative_to(root)}: {why}" for path, why in bad.items()]


def cmd_book(args) -> int:
    from .book.build import build_html
    from .book.chapters import book_root, toc_chapters
    from .book.execute import execute_many, expected_seconds, stage_dir, up_to_date

    if args.scheduler and args.executor != "dask":
        raise ReplibError("--scheduler needs --executor dask")
    root = book_root()
    params = _parameters(args)
    if args.jobs == "auto":
        from .runtime import auto_jobs, resolve_device
        args.jobs = auto_jobs(resolve_device(args.device))
    chapters = toc_chapters(root)
    _writable(root, args.scale)
    if bad := _unreadable(root):
        print("unreadable results files (the site marks their chapters unreadable):", *bad,
              sep="\n", flush=True)
    todo = [ch for ch in chapters if args.force or not up_to_date(root, ch, params)]
    progress = Progress(len(chapters), {ch.id: expected_seconds(root, ch, args.scale)
                                        for ch in todo}, args.jobs)
    budget = SCALES[args.scale].budget_s
    print(f"executing {len(chapters)} chapters at scale {args.scale!r} "
          f"(budget {budget:.0f} s each, {args.jobs} at a time): {len(todo)} to execute, "
          f"{len(chapters) - len(todo)} unchanged; {progress.left()} by their last recorded "
          "wall times", flush=True)
    outcomes = execute_many(root, chapters, params, jobs=args.jobs, force=args.force,
                            timeout=args.cell_timeout, executor=args.executor,
                            scheduler=args.scheduler,
                            on_start=lambda ch: print(progress.started(ch), flush=True),
                            on_done=lambda o: _print_outcome(o, progress.done(o)))
    print("rendering the site with jupyter-book ...", flush=True)
    html_rc = build_html(root, stage_dir(root, args.scale), args.scale, chapters)

    print(f"\n{'chapter':<28} {'status':<9} {'seconds':>8} {'budget':>7}")
    over = []
    for o in outcomes:
        late = o.status == "executed" and o.seconds > budget
        over += [o.chapter] if late else []
        print(f"{o.chapter:<28} {o.status:<9} {o.seconds:8.1f} {budget:7.0f}" + ("  OVER" if late else ""))
    failed = [o.chapter for o in outcomes if not o.ok]
    print(f"site: {root / '_build' / 'html' / 'index.html'}" if html_rc == 0 else
          f"jupyter-book failed (exit {html_rc})")
    if failed:
        print(f"failed chapters: {', '.join(failed)}")
    if bad := _unreadable(root):
        print("unreadable results files:", *bad, sep="\n")
    if over and args.fail_over_budget:
        print(f"over the {args.scale} budget of {budget:.0f} s: {', '.join(over)}")
    return 1 if failed or bad or html_rc or (over and args.fail_over_budget) else 0


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, got {text!r}")
    return seconds


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive ints, got {text!r}")
    return values


def cmd_bench(args) -> int:
    from .bench import AMP, bench, bench_compile_costs, bench_norm_kernels
    from .book.chapters import book_root

    root, out = (Path.cwd() if args.out else book_root()), (Path(args.out) if args.out else None)
    if args.compile_costs:
        print(f"timing torch.compile's first steps on {args.device} (a cold cache)", flush=True)
        print(f"  results: {bench_compile_costs(root, device=args.device, out=out)}")
        return 0

    if args.norm_kernels:
        kw = {k: v for k, v in (("hidden", args.hidden), ("tokens", args.tokens)) if v}
        if args.models:
            kw["norms"] = tuple(m.strip() for m in args.models.split(","))
        print(f"benchmarking the norm kernels on {args.device}", flush=True)
        path = bench_norm_kernels(root, device=args.device, out=out, **kw)
        print(f"  results: {path}")
        return 0
    if args.amp not in AMP:
        raise ReplibError(f"--amp: one of {', '.join(AMP)}, got {args.amp!r}")
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    print(f"benchmarking on {args.device}: {args.seconds:g} s per model, "
          f"{'compiled' if args.compile else 'eager'}, amp {args.amp}"
          + (f", {args.processes} processes" if args.processes > 1 else ""), flush=True)
    path = bench(root, device=args.device, models=models, seconds=args.seconds,
                 warmup=args.warmup, compile=args.compile, threads=args.threads,
                 processes=args.processes, budget=args.budget, amp=args.amp, out=out)
    print(f"  results: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="replib", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp, seeds=True):
        sp.add_argument("--scale", default=DEFAULT_SCALE, help=f"one of {', '.join(SCALES)}")
        sp.add_argument("--device", default="auto",
                        help=f"one of {', '.join(DEVICES)}, or cuda:N for one GPU of several")
        if seeds:
            sp.add_argument("--seeds", help="comma-separated seeds (default: the scale's)")
        sp.add_argument("--cell-timeout", type=_cell_timeout, metavar="SECONDS",
                        help="seconds one cell may run before its kernel counts as hung "
                             "(default: 30 min, or 10x the scale's budget if longer)")

    run = sub.add_parser("run", help="execute one chapter with papermill")
    run.add_argument("chapter", help="number (16) or id (16-selu-snn)")
    common(run)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="every chapter with its last result per scale")
    lst.set_defaults(func=cmd_list)

    book = sub.add_parser("book", help="execute every chapter (cached) and render the site")
    common(book, seeds=False)
    book.add_argument("--jobs", type=_jobs, default="auto",
                      help="chapters executed at once (default auto: one per CPU core, each on "
                           "one thread, as the Performance page's comparison chose; one on a GPU)")
    book.add_argument("--force", action="store_true", help="ignore the execution cache")
    book.add_argument("--executor", choices=("local", "dask"), default="local",
                      help="local: kernels of this machine; dask: chapters as tasks of a Dask "
                           "cluster (a LocalCluster of --jobs workers, one per GPU on a GPU "
                           "machine, or --scheduler's)")
    book.add_argument("--scheduler", metavar="ADDRESS",
                      help="with --executor dask: an existing Dask scheduler (tcp://host:8786); "
                           "its workers must see this checkout at the same path")
    book.add_argument("--fail-over-budget", action="store_true",
                      help="exit non-zero when a chapter exceeds its scale's time budget "
                           "(measured after it ends; the budget never stops a chapter)")
    book.set_defaults(func=cmd_book)

    bench = sub.add_parser("bench", help="training throughput of the shared models "
                                         "(results/bench/<device-kind>.json)")
    bench.add_argument("--device", default="auto",
                       help=f"one of {', '.join(DEVICES)}, or cuda:N for one GPU of several")
    bench.add_argument("--models", help="comma-separated workloads (default: all; see replib.bench)")
    bench.add_argument("--seconds", type=_positive_seconds, default=10.0,
                       help="timed seconds per model, after the warm-up (default 10)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the model (its compile time is the first step's)")
    bench.add_argument("--threads", type=int, help="torch intra-op CPU threads (default: torch's)")
    bench.add_argument("--amp", default="none", help="autocast dtype: none or bf16")
    bench.add_argument("--out", help="write here instead of results/bench/<device-kind>.json")
    bench.add_argument("--budget", action="store_true",
                       help="--seconds is the whole run's, build and compile included (a fixed "
                            "budget, as a chapter has), not the timed loop's after warm-up")
    bench.add_argument("--processes", type=int, default=1,
                       help="train this many copies at once, one process each (CPU; as "
                            "`replib book --jobs N` runs chapters); throughputs add up")
    bench.add_argument("--compile-costs", action="store_true",
                       help="time torch.compile's first steps as a chapter meets them (a new "
                            "model per arm, lr and seed) from a cold cache, instead")
    bench.add_argument("--norm-kernels", action="store_true",
                       help="time the fused norm kernels against eager, compiled and native norms "
                            "instead (--models then names norms)")
    bench.add_argument("--hidden", type=_ints, help="with --norm-kernels: hidden sizes (512,2048,8192)")
    bench.add_argument("--tokens", type=_ints, help="with --norm-kernels: token counts (4096,65536)")
    bench.set_defaults(func=cmd_bench)
    return p


class Interrupted(KeyboardInterrupt):
    """A signal that stops a run the way Ctrl-C does; the exit status is 128 + its number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM (kill, a cancelled CI job) and SIGHUP (a closed terminal) clean up as Ctrl-C does:
    without this the kernels would be orphaned and the pages left half-written."""
    def interrupt(signum, frame):
        raise Interrupted(signum)

    names = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {s: signal.signal(s, interrupt) for s in names}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        with _stop_on_signals():
            args = build_parser().parse_args(argv)
            command = args.command
            return args.func(args)
    except ReplibError as e:
        print(f"replib: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("replib: interrupted; " + (
            "the models measured so far are in the results file" if command == "bench" else
            "the running kernels were stopped and their chapters' results files left as they were"),
            file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
