"""`raveval report` and the report at the end of `raveval run`: report.html is
self-contained and draws in a real browser (headless Chromium) without console
errors; the charts come as PNGs too; runs side by side show their deltas; the
run posts its notifications."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from browser import Browser, find_chromium
from report_fixture import write_work_dir
from webhook_server import WebhookServer

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (apt-get install chromium, "
                                                              "or set RAVEVAL_CHROMIUM to one)")
ALL_CHARTS = {"accuracy", "scores", "deltas", "subjects-mmlu", "subjects-ceval", "radar-mt_bench",
              "categories-alignbench", "pairwise", "errors"}
SECRET = "sign-secret-xyz"


def raveval(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "raveval", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def colored_pixels(png: bytes, box=None) -> int:
    """Pixels with a clear hue (bars, cells, lines): a blank or grey-only image has none."""
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if box:
        im = im.crop(box)
    im = im.resize((max(1, im.width // 2), max(1, im.height // 2)))
    px = im.tobytes()
    return sum(1 for i in range(0, len(px), 3) if max(px[i:i + 3]) - min(px[i:i + 3]) > 60)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return write_work_dir(root / "a", "model-a", 0.55, 0), write_work_dir(root / "b", "model-b", 0.8, 1)


@pytest.fixture(scope="module")
def compared(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = raveval("report", *two_runs, "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res


def test_report_compares_runs_with_deltas_and_every_chart_as_png(compared):
    out, res = compared
    lines = res.stdout.splitlines()
    assert lines[0] == "| dataset | metric | model-a | model-b | Δ model-b |"
    row = next(ln for ln in lines if ln.startswith("| mmlu | accuracy |"))
    a, b, delta = (float(c) for c in row.strip("|").split("|")[2:])
    assert delta == pytest.approx(b - a, abs=0.011)
    assert f"report: {out}/report.html" in lines
    assert {p.stem for p in (out / "png").glob("*.png")} == ALL_CHARTS
    for png in (out / "png").glob("*.png"):
        assert colored_pixels(png.read_bytes()) > 100, png.name
    page = (out / "report.html").read_text()
    # Offline: the charts' JavaScript is in the page; nothing is loaded from elsewhere.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)
    assert "window.vegaEmbed=" in page and all(f'id="{c}"' in page for c in ALL_CHARTS)
    # MMLU's 57 subjects and C-Eval's 52 each get a heatmap cell per run.
    specs = {c["id"]: c["spec"] for c in json.loads(re.search(
        r'<script type="application/json" id="charts-data">(.*?)</script>', page, re.S).group(1))}
    cells = [x for block in specs["subjects-mmlu"]["vconcat"] for x in block["data"]["values"]]
    assert len({x["subject"] for x in cells}) == 57 and len(cells) == 114
    assert {x["category"] for x in cells} == {"stem", "humanities", "social_sciences", "other"}
    cells = [x for block in specs["subjects-ceval"]["vconcat"] for x in block["data"]["values"]]
    assert len({x["subject"] for x in cells}) == 52
    radar = specs["radar-mt_bench"]["layer"][-1]["data"]["values"]
    assert len({p["category"] for p in radar}) == 8 and len(radar) == 2 * 9  # closed polygons


@needs_chromium
def test_browser_draws_every_chart_and_filters_rows(compared):
    out, _ = compared
    with Browser(CHROMIUM) as b:
        b.open((out / "report.html").as_uri())
        drawn = b.wait_for("document.body.dataset.chartsDrawn === document.body.dataset.chartsTotal"
                           " && Number(document.body.dataset.chartsTotal)")
        assert drawn == len(ALL_CHARTS), b.errors
        assert b.eval("document.querySelectorAll('.chart svg .mark-rect path, .chart svg .mark-line path').length") > 50
        assert b.eval("document.querySelector('#rows tbody').rows.length") == 50
        # Filters: one dataset, one subject, only error rows.
        b.choose("f-dataset", "mmlu")
        b.choose("f-subject", "anatomy")
        b.choose("f-error", "yes")
        rows = b.eval("Array.from(document.querySelectorAll('#rows tbody tr')).map(r => r.innerText)")
        assert len(rows) == 2 and all("timeout after 120s" in r for r in rows)  # one per run
        shot = b.screenshot()
        box = b.eval("(() => { const r = document.querySelector('.charts').getBoundingClientRect();"
                     " return [r.left, r.top + scrollY, r.right, r.bottom + scrollY]; })()")
        assert b.errors == []
    assert colored_pixels(shot, tuple(int(v) for v in box)) > 2000  # the charts drew: not a blank page


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo run by the command line, with notifications to a local server: Lark (signed),
    Slack, a generic webhook, and one target that is down (a warning, not a failure)."""
    tmp = tmp_path_factory.mktemp("demo")
    with WebhookServer(lark_secret=SECRET) as srv:
        cfg = tmp / "demo_notify.yaml"
        cfg.write_text(f"""defaults:
  - base
  - model: tiny_hf
  - datasets: [demo_mmlu_ll, demo_ceval_gen, demo_gsm8k_gen]
  - _self_
work_dir: {tmp}/work
datasets:
  demo_gsm8k_gen: {{limit: 3}}
  demo_ceval_gen: {{limit: 2}}
notify:
  timeout_s: 5
  targets:
    - {{kind: lark, url: '${{oc.env:RV_LARK_URL}}', secret: '${{oc.env:RV_LARK_SECRET}}'}}
    - {{kind: slack, url: '{srv.url}/slack/T000/B000/slack-token'}}
    - {{kind: webhook, url: '{srv.url}/hook/hook-token', events: [finish]}}
    - {{kind: webhook, url: 'http://127.0.0.1:9/hook/dead-token'}}
""")
        env = {**os.environ, "RV_LARK_URL": f"{srv.url}/lark/lark-token", "RV_LARK_SECRET": SECRET}
        res = raveval("run", str(cfg), env=env)
    return tmp / "work", res, srv


def test_run_ends_with_the_report_and_posts_start_and_finish(demo_run):
    work, res, srv = demo_run
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1].startswith("raveval: ")
    assert f"report: {work}/report/report.html" in res.stdout.splitlines()
    assert (work / "report" / "report.html").is_file() and (work / "report" / "png" / "accuracy.png").is_file()
    lark = [p for p in srv.posts if p["path"] == "/lark/lark-token"]
    assert [p["sign_ok"] for p in lark] == [True, True]
    start, finish = (p["body"]["content"]["text"] for p in lark)
    assert start.startswith("raveval run started: model tiny-llama")
    assert finish.startswith("raveval run finished: model tiny-llama, run tiny-llama-")
    assert "demo_mmlu_ll | accuracy |" in finish and "demo_gsm8k_gen | accuracy |" in finish
    assert [b["text"].split(":")[0] for b in srv.bodies("slack")] == ["raveval run started", "raveval run finished"]
    (hook,) = srv.bodies("hook")
    assert hook["event"] == "finish" and {r["dataset"] for r in hook["summary"]} == {
        "demo_mmlu_ll", "demo_ceval_gen", "demo_gsm8k_gen"}
    # The target that is down: one warning per event, the run still exits 0.
    warnings = [ln for ln in res.stderr.splitlines() if "notification to webhook" in ln]
    assert len(warnings) == 2 and all(ln.startswith("raveval: warning: the ") for ln in warnings)
    saved = (work / "config.yaml").read_text()
    everything = saved + res.stdout + res.stderr
    assert not any(t in everything for t in ("lark-token", "slack-token", "hook-token", "dead-token", SECRET))


@needs_chromium
def test_the_demo_report_draws_in_a_browser_without_console_errors(demo_run):
    work, res, _ = demo_run
    assert res.returncode == 0, res.stderr
    with Browser(CHROMIUM) as b:
        b.open((work / "report" / "report.html").as_uri())
        total = b.wait_for("document.body.dataset.chartsDrawn === document.body.dataset.chartsTotal"
                           " && Number(document.body.dataset.chartsTotal)")
        assert total >= 3, b.errors  # accuracy bars, two subject heatmaps
        assert b.eval("document.querySelector('#rows tbody').rows.length") > 0
        shot = b.screenshot()
        box = b.eval("(() => { const r = document.querySelector('.charts').getBoundingClientRect();"
                     " return [r.left, r.top + scrollY, r.right, r.bottom + scrollY]; })()")
        assert b.errors == []
    assert colored_pixels(shot, tuple(int(v) for v in box)) > 1000


def test_the_row_browser_holds_100k_rows_in_bounded_size(tmp_path):
    from raveval.results.report import build_report

    work = write_work_dir(tmp_path / "big", "model-big", 0.6, 2, extra_rows=100_000)
    page, pngs = build_report([work], str(tmp_path / "out"), png=False)
    assert pngs == []
    size = os.path.getsize(page)
    assert size < 40_000_000, size  # the prompts are cut to a budget, not embedded whole
    text = open(page, encoding="utf-8").read()
    data = json.loads(re.search(r'<script type="application/json" id="rows-data">(.*?)</script>', text, re.S).group(1))
    assert len(data["rows"]) > 100_000
    prompt = data["fields"].index("prompt")
    assert max(len(r[prompt]) for r in data["rows"]) < 200
    if CHROMIUM is None:
        return
    with Browser(CHROMIUM) as b:  # paged: one page of rows in the DOM, filters over all
        b.open(f"file://{page}")
        assert b.wait_for("document.body.dataset.rowsShown") == "50"
        b.choose("f-error", "yes")
        info = b.eval("document.getElementById('page-info').textContent")
        pages, hits, total = (int(x) for x in re.search(r"page 1 of (\d+) \((\d+) of (\d+) rows\)", info).groups())
        assert total == len(data["rows"]) and hits == sum(1 for r in data["rows"] if r[data["fields"].index("error")])
        assert pages == -(-hits // 50) and b.errors == []


def test_without_the_extra_the_report_says_what_to_install(two_runs):
    code = ("import sys; sys.modules['vl_convert'] = None\n"
            "from raveval.cli import main\n"
            f"sys.exit(main(['report', {two_runs[0]!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "| mmlu | accuracy |" in res.stdout
    assert "pip install 'raveval[report]'" in res.stderr and "Traceback" not in res.stderr


def test_a_folder_without_a_run_is_one_line(tmp_path):
    res = raveval("report", str(tmp_path))
    assert res.returncode == 1 and res.stderr.strip() == (
        f"raveval: no summary at {tmp_path}/summary.parquet (has a run finished there?)")


def test_the_javascript_bundle_is_built_once_and_kept(two_runs, tmp_path, monkeypatch):
    """vl-convert's bundle (1.4 s to build) is cached per vl-convert version; a report
    from the cache embeds the same bundle."""
    import vl_convert

    from raveval.results.report import build_report

    monkeypatch.setenv("RAVEVAL_CACHE", str(tmp_path / "cache"))
    first, _ = build_report([two_runs[0]], out=str(tmp_path / "r1"), png=False, log=lambda *a: None)
    kept = list((tmp_path / "cache").glob("vl-convert-*-bundle.js"))
    assert [p.name for p in kept] == [f"vl-convert-{vl_convert.__version__}-bundle.js"]
    assert kept[0].read_text() == vl_convert.javascript_bundle()
    second, _ = build_report([two_runs[0]], out=str(tmp_path / "r2"), png=False, log=lambda *a: None)
    assert open(first).read() == open(second).read()
