"""The ``replib`` command: run one chapter, list chapters and their results, build the book.

    replib run 16 --scale smoke --device cpu --seeds 0,1,2
    replib list
    replib book --scale smoke --jobs 2

Bad input (an unknown chapter, scale or device, CUDA asked for on a machine without it) stops
with a one-line error that lists the valid choices.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ReplibError
from .runtime import DEVICES
from .scales import DEFAULT_SCALE, SCALES, get_scale


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise ReplibError(message)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ReplibError(f"--seeds takes comma-separated non-negative ints, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ReplibError(f"--seeds takes comma-separated non-negative ints, got {text!r}")
    return seeds


def _parameters(args) -> dict:
    get_scale(args.scale)
    if args.device not in DEVICES:
        raise ReplibError(f"unknown device {args.device!r}; valid: {', '.join(DEVICES)}")
    from .runtime import resolve_device  # checks that the device exists here, before any kernel starts

    resolve_device(args.device)
    params = {"scale": args.scale, "device": args.device}
    if getattr(args, "seeds", None):
        params["seeds"] = _seeds(args.seeds)
    return params


def _print_outcome(o) -> None:
    budget = SCALES[o.parameters["scale"]].budget_s
    flag = "  OVER BUDGET" if o.status == "executed" and o.seconds > budget else ""
    print(f"  {o.chapter:<28} {o.status:<9} {o.seconds:7.1f} s{flag}"
          + (f"\n    {o.error}" if o.error else ""), flush=True)


def cmd_run(args) -> int:
    from .book.chapters import book_root, resolve
    from .book.execute import execute_many

    params = _parameters(args)
    root = book_root()
    chapter = resolve(root, args.chapter)
    print(f"executing {chapter.id} with {params}", flush=True)
    [outcome] = execute_many(root, [chapter], params, force=True, progress=True)
    _print_outcome(outcome)
    if outcome.ok:
        print(f"  notebook: {Path('_build/stage') / params['scale'] / chapter.path}\n"
              f"  results:  results/{params['scale']}/{chapter.id}.json")
    return 0 if outcome.ok else 1


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
            counts: dict[str, int] = {}
            for c in rec["claims"]:
                counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
            short = {"replicated": "ok", "partially replicated": "partial",
                     "not replicated": "not", "inconclusive at this scale": "inconcl.",
                     "not testable at this scale": "n/t"}
            summary = " ".join(f"{n} {short[v]}" for v, n in counts.items())
            cells.append(f"{summary} ({rec['started_at'][:10]}, {rec['wall_time_s']:.0f}s)")
        print(f"{ch.id:<28} " + "  ".join(f"{c:<38}" for c in cells))
    return 0


def cmd_book(args) -> int:
    from .book.build import build_html
    from .book.chapters import book_root, toc_chapters
    from .book.execute import execute_many, stage_dir

    root = book_root()
    params = _parameters(args)
    chapters = toc_chapters(root)
    budget = SCALES[args.scale].budget_s
    print(f"executing {len(chapters)} chapters at scale {args.scale!r} "
          f"(budget {budget:.0f} s each, {args.jobs} at a time)", flush=True)
    outcomes = execute_many(root, chapters, params, jobs=args.jobs, force=args.force,
                            on_done=_print_outcome)
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
    if over and args.fail_over_budget:
        print(f"over the {args.scale} budget of {budget:.0f} s: {', '.join(over)}")
    return 1 if failed or html_rc or (over and args.fail_over_budget) else 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="replib", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp, seeds=True):
        sp.add_argument("--scale", default=DEFAULT_SCALE, help=f"one of {', '.join(SCALES)}")
        sp.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)}")
        if seeds:
            sp.add_argument("--seeds", help="comma-separated seeds (default: the scale's)")

    run = sub.add_parser("run", help="execute one chapter with papermill")
    run.add_argument("chapter", help="number (16) or id (16-selu-snn)")
    common(run)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="every chapter with its last result per scale")
    lst.set_defaults(func=cmd_list)

    book = sub.add_parser("book", help="execute every chapter (cached) and render the site")
    common(book, seeds=False)
    book.add_argument("--jobs", type=int, default=1, help="chapters executed at once")
    book.add_argument("--force", action="store_true", help="ignore the execution cache")
    book.add_argument("--fail-over-budget", action="store_true",
                      help="exit non-zero when a chapter exceeds its scale's time budget")
    book.set_defaults(func=cmd_book)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "jobs", 1) < 1:
            raise ReplibError(f"--jobs must be >= 1, got {args.jobs}")
        return args.func(args)
    except ReplibError as e:
        print(f"replib: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
