"""Warm models (`raveval serve up | ls | down`): a model deployed on a running cluster
and left there, so runs of the same model (same identity, as in row keys) use it
instead of starting and loading their own replicas."""
from __future__ import annotations

import asyncio
import time

from raveval.http.keys import read_key
from raveval.run.config import RunConfig
from raveval.serving.deploy import WARM_PREFIX, deploy_warm, delete, wait_ready
from raveval.stream.cluster import init_ray


class WarmError(RuntimeError):
    """A warm deployment cannot be made or found here (one line for the CLI)."""


def up(cfg: RunConfig, log=print) -> str:
    """Deploy the config's model as a warm app and wait until it serves; returns its name."""
    if cfg.ray_address == "local":
        raise WarmError("a warm model lives on a running cluster: start one (ray start --head) and pass "
                        "ray_address=auto (a local Ray ends with this command)")
    init_ray(cfg.ray_address)
    ms = cfg.model_stream
    t0 = time.perf_counter()
    app = deploy_warm(cfg.model, max_ongoing=ms.callers * ms.calls_per_caller * 2,
                      api_key=read_key(cfg.model.endpoint(), f"model {cfg.model.name}"))
    asyncio.run(wait_ready(app, cfg.startup_timeout_s))
    log(f"{app}: model {cfg.model.name} serving ({time.perf_counter() - t0:.1f}s); runs of this model use it "
        f"until `raveval serve down {app}`")
    return app


def listing(address: str) -> list[dict]:
    """The warm apps on the cluster: name, status, running replicas."""
    from ray import serve

    init_ray(address)
    out = []
    for name, st in sorted(serve.status().applications.items()):
        if name.startswith(WARM_PREFIX):
            replicas = sum(d.replica_states.get("RUNNING", 0) for d in st.deployments.values())
            out.append({"name": name, "status": getattr(st.status, "value", str(st.status)), "replicas": replicas})
    return out


def down(address: str, names: list[str]) -> list[str]:
    """Delete the named warm apps (all of them with no names); returns those deleted."""
    have = [a["name"] for a in listing(address)]
    unknown = [n for n in names if n not in have]
    if unknown:
        raise WarmError(f"no warm deployment {', '.join(unknown)} (there are: {', '.join(have) or 'none'})")
    gone = names or have
    for name in gone:
        delete(name, wait=True)
    return gone
