"""The package's shape: every import points down the stack of stages, with no
cycles, and an installed wheel finds its configs and demo data."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raveval"
# The data flow, bottom to top: a module may import its own stage and the ones below it.
STACK = ["config", "tasks", "http", "engines", "serving", "stream", "results", "run", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """raveval modules `path` imports, anywhere in it (functions included)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    # `from raveval.x import name`: keep the deepest part that is a module.
    return {m for m in found if m in modules and m != me}


def stage_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # raveval/__init__.py
        return -1
    name = "cli" if parts[1] in ("cli", "__main__") else parts[1]
    assert name in STACK, f"{module}: not in a stage of the stack {STACK}; add it to one"
    return STACK.index(name)


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down_the_stack():
    upward = [f"{m} ({STACK[stage_of(m)] if stage_of(m) >= 0 else 'raveval'}) imports {d} ({STACK[stage_of(d)]})"
              for m, deps in graph().items() for d in deps if stage_of(d) > stage_of(m)]
    assert not upward, "imports pointing up the stack:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    done: set[str] = set()
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        for d in sorted(g.get(m, ())):
            if d in path:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in done:
                visit(d, path + [d])
        done.add(m)

    for m in sorted(g):
        if m not in done:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_stack_check_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "raveval" / "config" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from raveval.run.plan import make_plan\n")
    global ROOT, PACKAGE
    saved = ROOT, PACKAGE
    ROOT, PACKAGE = tmp_path, tmp_path / "raveval"
    try:
        (PACKAGE / "run").mkdir()
        (PACKAGE / "run" / "plan.py").write_text("from ..config import x\n")
        g = graph()
    finally:
        ROOT, PACKAGE = saved
    assert g["raveval.config.x"] == {"raveval.run.plan"}
    assert g["raveval.run.plan"] == {"raveval.config.x"}


def test_installed_wheel_finds_its_configs_and_demo_data(tmp_path):
    """Build the wheel, install it apart from the checkout, and run `raveval list`
    and the demo's dry run from a folder that has no conf/ of its own."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("raveval-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def raveval(*args):
        return subprocess.run([sys.executable, "-m", "raveval", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import raveval; print(raveval.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    listed = raveval("list")
    assert listed.returncode == 0, listed.stderr
    assert "demo" in listed.stdout and "tiny_hf" in listed.stdout and "mmlu_ll" in listed.stdout
    dry = raveval("run", "demo", f"work_dir={tmp_path / 'work'}", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "demo_mmlu_ll: mmlu mode=ll" in dry.stdout and "rows=24" in dry.stdout
    assert "CANNOT RUN" not in dry.stdout
