"""`raveval run | list | report`. Heavy packages load only inside the commands."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...]: the first word without '=' names the config."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_run(ns) -> int:
    from raveval.config.compose import ConfigError
    from raveval.run.config import load_config

    config, overrides = _split(ns.args)
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"raveval: {e}", file=sys.stderr)
        return 2
    if ns.dry_run:  # no Ray: the plan only
        from raveval.results.store import Store
        from raveval.run.plan import describe, make_plan

        plan = make_plan(cfg)
        print(describe(plan, Store(cfg.work_dir).finished_keys() if cfg.resume else set()))
        return 1 if any(d.error for d in plan.datasets) else 0

    from raveval.http.keys import MissingApiKey
    from raveval.results.lock import WorkDirLocked
    from raveval.results.summary import markdown
    from raveval.run.evaluate import run, shutdown
    from raveval.serving.deploy import ModelStartError

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        result = run(cfg)
    except WorkDirLocked as e:  # another run holds the work_dir: one line, nothing touched
        print(f"raveval: {e}", file=sys.stderr)
        return 1
    except (ModelStartError, MissingApiKey) as e:  # the model could not start, or its API key is not set here
        print(f"raveval: {e}", file=sys.stderr)
        return 1
    except BaseException as e:
        signum = _signal_of(e)
        if signum is None:
            raise
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        print(f"raveval: stopped by {signal.Signals(signum).name}; {_kept(cfg.work_dir)}; "
              f"run the same command again to resume", file=sys.stderr)
        try:
            shutdown(cfg)
        finally:
            # Exit now: an interrupted Ray's exit hooks can still crash the interpreter's
            # teardown, and the status must say "interrupted", not "segfault".
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
    finally:
        shutdown(cfg)
    print()
    print(markdown(result.summary, subjects=ns.subjects))
    s = result.stats
    if s.get("rows"):
        print(f"{s['rows']} rows in {s['wall_s']:.1f}s: model serving after {s['ready_s']:.1f}s, first batch after "
              f"{s['first_batch_s']:.1f}s, then {s['rows_per_s']:.1f} rows/s; {s['reused']} rows reused from {cfg.work_dir}")
    else:
        print(f"all {s['reused']} rows reused from {cfg.work_dir}")
    if "judged" in s:
        later = f", {s['rows_turn']} later-turn rows generated" if s.get("rows_turn") else ""
        print(f"judge stage: {s['judged']} judgements asked, {s['judge_errors']} error rows{later}; "
              f"judgements in {cfg.work_dir}/judgements")
    print("results: " + ", ".join(str(f) for f in result.files))
    for reason in result.failed:
        print(f"raveval: FAILED: {reason}", file=sys.stderr)
    errors, total = error_rows(result.summary)
    if errors and errors > cfg.max_error_rate * total:
        print(f"raveval: {errors} of {total} rows ended in errors (max_error_rate {cfg.max_error_rate:g}); "
              f"they are in {cfg.work_dir}/predictions with the reason, and a re-run retries them", file=sys.stderr)
        return 1
    if result.failed:
        return 1
    print(f"raveval: {total - errors} of {total} rows scored" + (f", {errors} error rows within max_error_rate "
                                                                 f"{cfg.max_error_rate:g}" if errors else ""))
    return 0


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a run (a BaseException, so no handler on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def _signal_of(e: BaseException) -> int | None:
    """The signal that ended the run, if one did: our Interrupted (raised inside
    Ray's C code it arrives as the cause of a SystemError), or the exit code 15 of
    Ray's own SIGTERM handler, which is in place while ray.init runs."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Interrupted):
            return e.signum
        if isinstance(e, SystemExit) and e.code == signal.SIGTERM:
            return signal.SIGTERM
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _kept(work_dir: str) -> str:
    from raveval.results.store import Store

    table = Store(work_dir).read(columns=["key"])
    return f"{0 if table is None else table.num_rows} finished rows are kept in {work_dir}"


def error_rows(summary) -> tuple[int, int]:
    """(error rows, all rows) over the datasets: each dataset's headline row counts both."""
    seen, errors, total = set(), 0, 0
    for r in summary.to_pylist():
        if r["level"] == "dataset" and r["dataset"] not in seen:
            seen.add(r["dataset"])
            errors += r["errors"]
            total += r["n"] + r["errors"]
    return errors, total


def cmd_list(ns) -> int:
    from raveval.config.compose import list_configs

    found = list_configs(ns.words)
    for kind, names in found.items():
        if names:
            print(f"{kind}:")
            print("".join(f"  {n}\n" for n in names), end="")
    return 0 if any(found.values()) else 1


def cmd_report(ns) -> int:
    path = Path(ns.work_dir) / "summary.md"
    if not path.is_file():
        print(f"raveval: no summary at {path}", file=sys.stderr)
        return 1
    print(path.read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raveval", description="Ray-native evaluation of large language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an evaluation", description=(
        "Run CONFIG (a .yaml path or a config name under conf/; default: the demo) with key=value overrides, "
        "e.g. `raveval run demo datasets.demo_gsm8k_gen.limit=4 model.replicas=2`."))
    r.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]")
    r.add_argument("--dry-run", action="store_true", help="print the plan (model, replicas, datasets, rows) and stop")
    r.add_argument("--no-subjects", dest="subjects", action="store_false", help="leave per-subject rows out of the printed table")
    r.set_defaults(fn=cmd_run)
    ls = sub.add_parser("list", help="list model, dataset and run configs matching all WORDs")
    ls.add_argument("words", nargs="*")
    ls.set_defaults(fn=cmd_list)
    rep = sub.add_parser("report", help="print the summary of a finished run")
    rep.add_argument("work_dir")
    rep.set_defaults(fn=cmd_report)
    ns = p.parse_args(argv)
    return ns.fn(ns)


if __name__ == "__main__":
    sys.exit(main())
