"""`raveval run | list | report`. Heavy packages load only inside the commands."""
from __future__ import annotations

import argparse
import os
import signal
import sys


def _split(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [key=value ...]: the first word without '=' names the config."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_run(ns) -> int:
    from raveval.config.compose import ConfigError
    from raveval.run.models import ModelsRun, load_run

    config, overrides = _split(ns.args)
    try:
        cfg = load_run(config, overrides)
    except ConfigError as e:
        print(f"raveval: {e}", file=sys.stderr)
        return 2
    from raveval.results.workdir import WorkDir, WorkDirError

    try:
        if isinstance(cfg, ModelsRun):
            if ns.dry_run:
                return _dry_run_models(cfg)
            return _run_models(cfg, ns)
        work = WorkDir(cfg.work_dir)
        if ns.dry_run:  # no Ray: the plan only
            return _dry_run(cfg, work)
        return _run(cfg, work, ns)
    except WorkDirError as e:  # storage unreachable, no such bucket, no permission: one line
        print(f"raveval: {e}", file=sys.stderr)
        return 1


def _dry_run(cfg, work) -> int:
    from raveval.results.store import Store
    from raveval.run.plan import describe, make_plan

    plan = make_plan(cfg)
    store = Store(work, log=lambda msg: print(msg, file=sys.stderr), set_aside=False)  # a dry run changes nothing
    print(describe(plan, store.finished_keys() if cfg.resume else set()))
    return 1 if any(d.error for d in plan.datasets) else 0


def _dry_run_models(many) -> int:
    from raveval.results.workdir import WorkDir
    from raveval.run.models import describe_placement

    print(f"work_dir: {many.work_dir} (a sub-directory per model)")
    print(describe_placement(many.configs))
    code = 0
    for cfg in many.configs:
        print()
        code |= _dry_run(cfg, WorkDir(cfg.work_dir))
    return code


def _run(cfg, work, ns) -> int:
    from raveval.results.summary import markdown
    from raveval.run.evaluate import run

    result = _guarded(lambda: run(cfg), cfg, [work], work, ns)
    if isinstance(result, int):
        return result
    print()
    print(markdown(result.summary, subjects=ns.subjects))
    code, reasons = _outcome(result, cfg, work, report=ns.report)
    _notify_outcome(cfg, work, result.stats.get("run_id", ""), result.summary, reasons)
    return code


def _run_models(many, ns) -> int:
    from raveval.results.summary import wide_markdown
    from raveval.results.workdir import WorkDir
    from raveval.run.models import run_models

    works = [WorkDir(c.work_dir) for c in many.configs]
    top = WorkDir(many.work_dir)
    out = _guarded(lambda: run_models(many), many.configs[0], works, top, ns)
    if isinstance(out, int):
        return out
    code, reasons = 0, []
    for cfg, work in zip(many.configs, works):
        name = cfg.model.name
        print()
        print(f"model {name} ({work}):")
        if name in out.errors:
            print(f"raveval: model {name} FAILED: {out.errors[name]}", file=sys.stderr)
            code = 1
        else:
            c, why = _outcome(out.results[name], cfg, work)
            code |= c
            reasons += [f"{name}: {r}" for r in why]
    print()
    print(wide_markdown(out.summary, many.names, subjects=ns.subjects))
    print("results: " + ", ".join(str(f) for f in out.files))
    if ns.report:
        _report_after_run([w for c, w in zip(many.configs, works) if c.model.name not in out.errors], top)
    if out.errors:
        print(f"raveval: {len(out.errors)} of {len(many.configs)} models failed: "
              + "; ".join(f"{n}: {why}" for n, why in out.errors.items()), file=sys.stderr)
        reasons += [f"{n}: {why}" for n, why in out.errors.items()]
    _notify_outcome(many.configs[0], top, _run_id(top), out.summary, reasons)
    return code


def _guarded(go, cfg, works, work, ns):
    """`go()`'s result, or the exit status after saying in one line why it stopped
    (an error, or a signal: then Ray is shut down and the process exits here).
    `works`: the work_dirs of the models; `work`: the run's (notifications name it)."""
    from raveval.http.keys import MissingApiKey
    from raveval.http.preflight import PreflightFailed
    from raveval.results.lock import WorkDirLocked
    from raveval.results.workdir import WorkDirError
    from raveval.run.evaluate import shutdown
    from raveval.serving.deploy import ModelStartError

    if ns.verbose:
        os.environ["RAVEVAL_VERBOSE"] = "1"  # Ray's worker logs too (stream.cluster.init_ray)
    if ns.dashboard:
        os.environ["RAVEVAL_DASHBOARD"] = "1"  # a local Ray with its dashboard (stream.cluster.init_ray)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    _notify(cfg, work, "start")
    try:
        return go()
    # Another run holds the work_dir (nothing touched); the model could not start (Serve's
    # reason, or what it waited for) or its API key is not set here; an endpoint failed the
    # preflight; the work_dir cannot be read or written: one line each.
    except (WorkDirLocked, ModelStartError, MissingApiKey, PreflightFailed, WorkDirError) as e:
        print(f"raveval: {e}", file=sys.stderr)
        # (A locked work_dir's run.json is the other run's: no run id then.)
        _notify(cfg, work, "failure", run_id="-" if isinstance(e, WorkDirLocked) else "", reason=str(e))
        return 1
    except BaseException as e:
        signum = _signal_of(e)
        if signum is None:
            if ns.verbose or not isinstance(e, Exception):
                raise
            print(f"raveval: the run failed: {type(e).__name__}: {_first_line(e)} (run with -v for the traceback "
                  f"and Ray's logs); {_kept(works)}; run the same command again to resume", file=sys.stderr)
            _notify(cfg, work, "failure", reason=f"{type(e).__name__}: {_first_line(e)}")
            return 1
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        print(f"raveval: stopped by {signal.Signals(signum).name}; {_kept(works)}; "
              f"run the same command again to resume", file=sys.stderr)
        try:
            shutdown(cfg)
            _notify(cfg, work, "failure", status="interrupted", reason=f"stopped by {signal.Signals(signum).name}")
        finally:
            # Exit now: an interrupted Ray's exit hooks can still crash the interpreter's
            # teardown, and the status must say "interrupted", not "segfault".
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
    finally:
        shutdown(cfg)


def _outcome(result, cfg, work, report: bool = False) -> tuple[int, list[str]]:
    """Print how one model's run went (rows, judge stage, files, the report if
    `report`, failures); its exit status and the reasons it failed."""
    s = result.stats
    if s.get("rows"):
        print(f"{s['rows']} rows in {s['wall_s']:.1f}s: model serving after {s['ready_s']:.1f}s, first batch after "
              f"{s['first_batch_s']:.1f}s, then {s['rows_per_s']:.1f} rows/s; {s['reused']} rows reused from {work}")
    elif s.get("rows_turn"):  # only later turns were generated (said below)
        print(f"{s['reused']} rows reused from {work}")
    else:
        print(f"all {s['reused']} rows reused from {work}")
    if "judged" in s:
        later = f", {s['rows_turn']} later-turn rows generated" if s.get("rows_turn") else ""
        print(f"judge stage: {s['judged']} judgements asked, {s['judge_errors']} error rows{later}; "
              f"judgements in {work}/judgements")
    print("results: " + ", ".join(str(f) for f in result.files))
    if report:
        _report_after_run([work], work)
    reasons = list(result.failed)
    for reason in result.failed:
        print(f"raveval: FAILED: {reason}", file=sys.stderr)
    errors, total = error_rows(result.summary)
    if errors and errors > cfg.max_error_rate * total:
        bad = result.plan.bad
        if bad:
            print(f"raveval: {len(bad)} rows are records of the data files that cannot be read; fix them and run "
                  f"again (first: {next(iter(bad.values()))})", file=sys.stderr)
        print(f"raveval: {errors} of {total} rows ended in errors (max_error_rate {cfg.max_error_rate:g}); "
              f"they are in {work}/predictions with the reason, and a re-run retries them", file=sys.stderr)
        reasons.append(f"{errors} of {total} rows ended in errors (max_error_rate {cfg.max_error_rate:g})")
    if reasons:
        return 1, reasons
    print(f"raveval: {total - errors} of {total} rows scored" + (f", {errors} error rows within max_error_rate "
                                                                 f"{cfg.max_error_rate:g}" if errors else ""))
    return 0, []


def _notify_outcome(cfg, work, run_id: str, summary, reasons: list[str]) -> None:
    if reasons:
        _notify(cfg, work, "failure", run_id=run_id, summary=summary, reason="; ".join(reasons))
    else:
        _notify(cfg, work, "finish", run_id=run_id, summary=summary)


def _notify(cfg, work, event: str, run_id: str = "", **details) -> None:
    """Post a run event to the `notify:` targets (nothing without them); a failed post is one warning line."""
    if not cfg.notify.targets:
        return
    from raveval.results.notify import notify

    if not run_id and event != "start":  # the run's id, if the run got as far as writing run.json
        run_id = _run_id(work)
    run_id = "" if run_id == "-" else run_id
    notify(cfg.notify, event, model=cfg.model.name, work_dir=str(work), run_id=run_id,
           log=lambda msg: print(msg, file=sys.stderr), **details)


def _run_id(work) -> str:
    import json

    try:
        return json.loads(work.read_bytes("run.json") or b"{}").get("run_id", "")
    except Exception:  # unreadable, or the storage is what failed
        return ""


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


def _kept(works) -> str:
    from raveval.results.store import Store

    n = 0
    try:
        for work in works:
            table = Store(work).read(columns=["key"])
            n += 0 if table is None else table.num_rows
    except Exception as e:  # the interrupt may have cut a read or write short
        return f"the finished rows are kept in {', '.join(map(str, works))} (not counted: {type(e).__name__})"
    return f"{n} finished rows are kept in {', '.join(map(str, works))}"


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


def error_rows(summary) -> tuple[int, int]:
    """(error rows, all rows) over the datasets: each dataset's headline row counts both."""
    seen, errors, total = set(), 0, 0
    for r in summary.to_pylist():
        if r["level"] == "dataset" and r["dataset"] not in seen:
            seen.add(r["dataset"])
            errors += r["errors"]
            total += r["n"] + r["errors"]
    return errors, total


def cmd_serve(ns) -> int:
    """raveval serve up CONFIG [KEY=VALUE ...] | ls | down [NAME ...]"""
    from raveval.config.compose import ConfigError
    from raveval.run.config import load_config
    from raveval.run.warm import WarmError, down, listing, up
    from raveval.serving.deploy import ModelStartError

    try:
        if ns.action == "up":
            config, overrides = _split(ns.args)
            up(load_config(config, overrides))
        elif ns.action == "ls":
            for a in listing(ns.address):
                print(f"{a['name']}  {a['status']}  {a['replicas']} replica(s)")
        else:
            for name in down(ns.address, ns.args):
                print(f"deleted {name}")
    except ConfigError as e:
        print(f"raveval: {e}", file=sys.stderr)
        return 2
    except (WarmError, ModelStartError) as e:
        print(f"raveval: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_list(ns) -> int:
    from raveval.config.compose import list_configs

    found = list_configs(ns.words)
    for kind, names in found.items():
        if names:
            print(f"{kind}:")
            print("".join(f"  {n}\n" for n in names), end="")
    return 0 if any(found.values()) else 1


def cmd_report(ns) -> int:
    """Print the summary (several work_dirs: side by side, with deltas), then write report.html and PNGs."""
    from raveval.results.report_data import ReportError, beside, expand_work_dirs, label_runs, load_run
    from raveval.results.workdir import WorkDirError

    try:
        # A run of several models (models: [...]) stands for its models' work_dirs.
        work_dirs = expand_work_dirs(ns.work_dirs)
        out = ns.out or (beside(ns.work_dirs[0], "report") if len(ns.work_dirs) == 1 and len(work_dirs) > 1
                         else None)
        runs = [load_run(w, log=lambda msg: print(msg, file=sys.stderr)) for w in work_dirs]
        label_runs(runs)
        from raveval.results.report import ReportExtraMissing, build_report, wide_markdown

        print(wide_markdown(runs, subjects=ns.subjects), end="")
        if ns.no_html:
            return 0
        try:
            page, pngs = build_report(work_dirs, out, png=not ns.no_png,
                                      log=lambda msg: print(msg, file=sys.stderr), runs=runs)
        except ReportExtraMissing as e:
            print(f"raveval: {e}", file=sys.stderr)
            return 1
    except (ReportError, WorkDirError) as e:
        print(f"raveval: {e}", file=sys.stderr)
        return 1
    if pngs:
        print(f"charts (PNG): {len(pngs)} files in {pngs[0].rsplit('/', 2)[0]}/png")
    print(f"report: {page}")
    return 0


def _report_after_run(works, top) -> None:
    """The end of `raveval run`: the HTML report of the models' work_dirs (in `top`/report),
    or one line on why not (never fails the run)."""
    if not works:
        return
    try:
        from raveval.results.report import ReportExtraMissing, build_report
        from raveval.results.report_data import beside
    except ImportError as e:  # pragma: no cover - a broken install
        print(f"raveval: no HTML report: {e}", file=sys.stderr)
        return
    try:
        out = None if len(works) == 1 else beside(top.spec, "report")
        page, _ = build_report([w.spec for w in works], out, log=lambda msg: print(msg, file=sys.stderr))
    except ReportExtraMissing as e:
        print(f"raveval: no HTML report: {e}".replace("the HTML report needs", "it needs"), file=sys.stderr)
        return
    except Exception as e:  # a report is a view of the results: it must not fail the run
        print(f"raveval: no HTML report: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return
    print(f"report: {page}")


def main(argv: list[str] | None = None) -> int:
    # raveval starts or joins Ray itself (stream.cluster.init_ray). Without this, a Ray call
    # from one of the run's threads after Ray went (an interrupted run's) starts a new local
    # Ray from that thread; with it, the call fails and the thread ends with the run.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    p = argparse.ArgumentParser(prog="raveval", description="Ray-native evaluation of large language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run an evaluation", description=(
        "Run CONFIG (a .yaml path or a config name under conf/; default: the demo) with key=value overrides, "
        "e.g. `raveval run demo datasets.demo_gsm8k_gen.limit=4 model.replicas=2`; several models with "
        "models=[tiny_hf,instant]."))
    r.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]")
    r.add_argument("--dry-run", action="store_true", help="print the plan (model, replicas, datasets, rows) and stop")
    r.add_argument("-v", "--verbose", action="store_true", help="show Ray's worker logs, and tracebacks of errors")
    r.add_argument("--dashboard", action="store_true", help="a local Ray starts its dashboard; its URL is printed")
    r.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the HTML report (report.html and PNGs in WORK_DIR/report) at the end")
    r.add_argument("--no-subjects", dest="subjects", action="store_false", help="leave per-subject rows out of the printed table")
    r.set_defaults(fn=cmd_run)
    ls = sub.add_parser("list", help="list model, dataset and run configs matching all WORDs")
    ls.add_argument("words", nargs="*")
    ls.set_defaults(fn=cmd_list)
    sv = sub.add_parser("serve", help="warm models on a running cluster: up CONFIG [KEY=VALUE ...] | ls | down [NAME ...]",
                        description="`serve up` deploys a config's model and leaves it running (ray_address=auto); "
                                    "runs of the same model use it instead of starting their own replicas. `serve ls` "
                                    "lists the warm models, `serve down [NAME ...]` removes them (all with no NAME).")
    sv.add_argument("action", choices=["up", "ls", "down"])
    sv.add_argument("args", nargs="*", metavar="ARG")
    sv.add_argument("--address", default="auto", help="the cluster for ls / down (default: auto)")
    sv.set_defaults(fn=cmd_serve)
    rep = sub.add_parser("report", help="summary, HTML report and PNG charts of finished runs (several: side by side)",
                         description="Print the summary of WORK_DIR (several: one column each, with each one's change "
                                     "against the first) and write report.html (self-contained: charts, run facts, a "
                                     "row browser) and png/*.png into --out (default: WORK_DIR/report for one work_dir, "
                                     "./raveval-report for several).")
    rep.add_argument("work_dirs", nargs="+", metavar="WORK_DIR")
    rep.add_argument("--out", help="folder (or URI) for report.html and png/")
    rep.add_argument("--no-png", action="store_true", help="write report.html only")
    rep.add_argument("--no-html", action="store_true", help="print the summary only")
    rep.add_argument("--subjects", action="store_true", help="print per-subject rows too")
    rep.set_defaults(fn=cmd_report)
    # Options may come between overrides (`raveval run demo -v x=y`): argparse leaves
    # the words after an option over, and they are overrides too.
    ns, extra = p.parse_known_args(argv)
    if extra and ns.cmd == "run" and not any(e.startswith("-") for e in extra):
        ns.args += extra
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return ns.fn(ns)


if __name__ == "__main__":
    sys.exit(main())
