"""Config composition (Hydra compose API), validation and saving.

A run config is a YAML file with a Hydra defaults list that picks one
`model` and a list of `datasets` from the config groups in `conf/`, plus
`key=value` overrides from the command line. The composed dict is validated
against a typed schema (the run's is `run.config.RunConfig`); an error names
the key and the file (or override) it came from, before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, Discriminator, ValidationError

from raveval.config.secrets import redacted

M = TypeVar("M", bound=BaseModel)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the raveval package
# An installed wheel carries the configs as raveval/conf; a checkout keeps them at its top, conf/.
PACKAGE_CONF = next((d for d in (PACKAGE_ROOT / "conf", PACKAGE_ROOT.parent / "conf") if d.is_dir()), PACKAGE_ROOT / "conf")
DEFAULT_CONFIG = "demo"
GROUPS = ("model", "datasets", "judges")


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and its source."""


def _pkg_path(rel: str = "") -> str:
    return str((PACKAGE_ROOT / rel).resolve())


# `${pkg:demo_data/gsm8k/test.jsonl}` points into the installed package.
if not OmegaConf.has_resolver("pkg"):
    OmegaConf.register_new_resolver("pkg", _pkg_path)


def search_dirs() -> list[Path]:
    """Config folders, first match wins: ./conf of the user, then the package's."""
    user = Path.cwd() / "conf"
    if user.resolve() == PACKAGE_CONF.resolve():  # running from the checkout itself
        return [PACKAGE_CONF]
    return [d for d in (user, PACKAGE_CONF) if d.is_dir()]


def _locate(config: str) -> tuple[Path, str]:
    """Return (primary config folder, config name) for a path or a name."""
    p = Path(config)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {config}")
        return p.resolve().parent, p.stem
    for d in search_dirs():
        if (d / f"{config}.yaml").is_file():
            return d, config
    names = ", ".join(sorted(list_configs("")["run"]))
    raise ConfigError(f"no run config named {config!r} (have: {names}); or pass a path to a .yaml file")


def compose(config: str | None = None, overrides: list[str] = ()) -> tuple[dict, dict]:
    """Compose a run config with Hydra. Returns (plain dict, provenance info)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    primary_dir, name = _locate(config or DEFAULT_CONFIG)
    for o in overrides:  # Hydra would merge the listed model configs into one model
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "model" and value.lstrip().startswith("["):
            raise ConfigError(f"override {o!r}: `model` takes one model config; to evaluate several in one run, "
                              f"use models={value.strip()}")
    extra = [d for d in search_dirs() if d != primary_dir]
    search = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in extra)}]"] if extra else []
    # Plain `key=value` sets a value whether or not the YAML has the key (`++`):
    # the schema, not Hydra, rejects unknown keys, with the override named.
    forced = [o if o[0] in "+~" or o.split("=", 1)[0] in GROUPS else "++" + o for o in map(_quote_plain, overrides)]
    try:
        with initialize_config_dir(config_dir=str(primary_dir), version_base=None, job_name="raveval"):
            cfg = hydra_compose(config_name=name, overrides=[*search, *forced], return_hydra_config=True)
            choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
            data = OmegaConf.to_container(cfg, resolve=False)
            data.pop("hydra")
            data = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"config {primary_dir / (name + '.yaml')}: {e}") from None
    except yaml.YAMLError as e:  # a config file that is not YAML: its file, line and column
        raise ConfigError(f"not valid YAML: {_yaml_place(e)}") from None
    if isinstance(choices.get("model"), list):
        raise ConfigError(f"config {primary_dir / (name + '.yaml')}: its defaults list `model: {choices['model']}`; "
                          f"`model` takes one model config: to evaluate several, list them under `models:`")
    sources = {"primary": primary_dir / f"{name}.yaml", "choices": choices, "overrides": list(overrides)}
    return data, sources


def _quote_plain(override: str) -> str:
    """Quote a plain value that Hydra's override grammar cannot read unquoted
    (non-ASCII, as in a path `work_dir=/data/résultats`)."""
    key, eq, value = override.partition("=")
    if eq and value and not value.isascii() and value[0] not in "'\"[{" and not set("'\"\\") & set(value):
        return f"{key}='{value}'"
    return override


def _yaml_place(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return problem
    return f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _group_file(group: str, option: str) -> Path | None:
    for d in search_dirs():
        f = d / group / f"{option}.yaml"
        if f.is_file():
            return f
    return None


def _dataset_file(name: str, group: str = "datasets") -> Path | None:
    """The <group>/*.yaml that defines `name` (by convention, <group>/<name>.yaml)."""
    found = _group_file(group, name)
    if found:
        return found
    for d in search_dirs():
        for f in sorted((d / group).glob("*.yaml")):
            if name in (yaml.safe_load(f.read_text()) or {}):
                return f
    return None


def _has_path(node, path: tuple) -> bool:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def source_of(path: tuple, sources: dict) -> str:
    """Where the value at `path` was set: an override, a group file, or the primary file."""
    dotted = ".".join(str(p) for p in path)
    for o in reversed(sources["overrides"]):
        key = o.split("=", 1)[0].lstrip("+~")
        if key in GROUPS:  # a group choice, not a value
            continue
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            return f"command-line override {o!r}"
    choices = sources["choices"]
    candidates: list[tuple[Path, tuple]] = []
    if path and path[0] == "model" and choices.get("model"):
        candidates.append((_group_file("model", choices["model"]), path[1:]))
    if len(path) > 1 and path[0] in ("datasets", "judges"):
        # Hydra records no choice for a list, so find the file that defines this entry.
        candidates.append((_dataset_file(str(path[1]), path[0]), path[1:]))
    candidates.append((sources["primary"], path))
    for f, sub in candidates:
        if f is None:
            continue
        raw = yaml.safe_load(f.read_text()) or {}
        raw.pop("defaults", None)
        if _has_path(raw, sub):
            return str(f)
    # Missing keys live nowhere: blame the group file that should hold them.
    for f, _ in candidates:
        if f is not None:
            return str(f)
    return str(sources["primary"])


def _key_path(schema: type[BaseModel], loc: tuple) -> tuple:
    """An error location as the keys the user wrote. pydantic puts a
    discriminated union's tag after the field (('model', 'vllm', 'num_gpu')
    for `model.num_gpu`); a field whose type carries a Discriminator has
    that tag dropped (its own fields are not looked into further)."""
    out, node, parts = [], schema, iter(loc)
    for part in parts:
        out.append(part)
        fields = node.model_fields if isinstance(node, type) and issubclass(node, BaseModel) else {}
        f = fields.get(part) if isinstance(part, str) else None
        if f is not None and (f.discriminator is not None or any(isinstance(m, Discriminator) for m in f.metadata)):
            next(parts, None)  # the tag
            f = None
        node = f.annotation if f is not None else None
    return tuple(out)


def validate(data: dict, sources: dict, schema: type[M], moved: dict[str, str] | None = None) -> M:
    """`data` as an instance of `schema`, or a ConfigError with one line per
    problem naming the key and where it was set. `moved`: old key -> its new
    place, for keys that moved (reported as such, not as unknown)."""
    lines = []
    for old, new in (moved or {}).items():
        if old in data:
            lines.append(f"  {old}: moved to {new} (from {source_of((old,), sources)})")
    data = {k: v for k, v in data.items() if k not in (moved or {})}
    try:
        result = schema.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = _key_path(schema, err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {key}: {msg} (from {source_of(loc, sources)})")
    if lines:
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
    return result


def config_yaml(cfg: BaseModel) -> str:
    """The config as saved beside the results: YAML with its typed secrets hidden."""
    return yaml.safe_dump(redacted(cfg), sort_keys=False, allow_unicode=True)


def list_configs(words: str | list[str]) -> dict[str, list[str]]:
    """Model, dataset and run config names matching all the words (case-insensitive)."""
    words = [w.lower() for w in ([words] if isinstance(words, str) else words) if w]
    found: dict[str, set[str]] = {**{g: set() for g in GROUPS}, "run": set()}
    for d in search_dirs():
        for kind in GROUPS:
            found[kind] |= {f.stem for f in (d / kind).glob("*.yaml")}
        found["run"] |= {f.stem for f in d.glob("*.yaml") if f.stem != "base"}
    return {k: sorted(n for n in v if all(w in n.lower() for w in words)) for k, v in found.items()}
