"""Deploying the model: one Serve app per run, each replica asking Ray for
exactly the resources its engine uses; waiting (bounded by Serve's own status)
for the app to run."""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from typing import Optional

from pydantic import SecretStr
from ray import serve

from raveval.engines import ModelConfig
from raveval.serving.replica import ModelReplica


def deployment_options(cfg: ModelConfig, max_ongoing: int) -> dict:
    """Replica count and resources from the model config: each replica asks for
    exactly the GPUs its engine uses (a placement group when that is several)."""
    res = cfg.resources()
    scaling = ({"autoscaling_config": cfg.autoscaling.serve_config()} if cfg.autoscaling
               else {"num_replicas": cfg.replicas})
    opts = {
        "name": "model",
        **scaling,
        "ray_actor_options": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus},
        "max_ongoing_requests": max_ongoing,
        "logging_config": {"enable_access_log": False},
    }
    if res.bundles:
        opts["placement_group_bundles"] = res.bundles
        opts["placement_group_strategy"] = res.strategy
    return opts


def app_name(cfg: ModelConfig, run_id: str) -> str:
    """The Serve app of a run's model: `raveval-<run id>` (the run id starts with
    the model's name), so runs of the same model on one cluster never share
    replicas, and a run deletes only its own app. The one place that names apps:
    a long-lived shared deployment would get its name here."""
    return f"raveval-{run_id}"


WARM_PREFIX = "raveval-warm-"


def warm_app_name(cfg: ModelConfig) -> str:
    """The long-lived deployment of a model (`raveval serve up`): named by the model's
    identity (what its outputs depend on, as in row keys), so a run finds a warm
    deployment of exactly its model and never another's."""
    ident = hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.name).strip("-") or "model"
    return f"{WARM_PREFIX}{name}-{ident}"


def running_warm(cfg: ModelConfig) -> Optional[str]:
    """The warm deployment of this model if one is running on the cluster."""
    st = serve.status().applications.get(warm_app_name(cfg))
    return warm_app_name(cfg) if st is not None and st.status == "RUNNING" else None


def deploy_warm(cfg: ModelConfig, max_ongoing: int, api_key: Optional[SecretStr] = None) -> str:
    """Deploy the model's warm app; it stays until `raveval serve down` (no run deletes it)."""
    return _deploy(cfg, max_ongoing, warm_app_name(cfg), api_key)


def deploy(cfg: ModelConfig, max_ongoing: int, run_id: str, api_key: Optional[SecretStr] = None) -> str:
    """Start (or update) the run's Serve app for the model without waiting for its
    replicas (the Data callers start meanwhile and wait for the app in
    `wait_ready`); returns the app's name. `api_key`: the key of `cfg.endpoint()`,
    read by the driver; it goes to the replicas as an init argument, which Serve
    keeps pickled and shows nowhere (user_config and actor options are shown)."""
    return _deploy(cfg, max_ongoing, app_name(cfg, run_id), api_key, track=True)


def _deploy(cfg: ModelConfig, max_ongoing: int, app: str, api_key: Optional[SecretStr], track: bool = False) -> str:
    """Start (or keep) Serve app `app` for the model; `track`: this driver deletes it when done."""
    with _deploy_lock:
        return _deploy_now(cfg, max_ongoing, app, api_key, track)


def _deploy_now(cfg: ModelConfig, max_ongoing: int, app: str, api_key: Optional[SecretStr], track: bool) -> str:
    opts = deployment_options(cfg, max_ongoing)
    # Deploying the same model again in the same run (a second stream, e.g.
    # MT-Bench's turn 2) keeps the running replicas: Serve would otherwise
    # start new ones and load the model again.
    fingerprint = hashlib.sha256(json.dumps([cfg.model_dump(), opts], sort_keys=True, default=str).encode()).hexdigest()
    if _deployed.get(app) == fingerprint:
        st = serve.status().applications.get(app)
        if st is not None and st.status in ("RUNNING", "DEPLOYING"):
            return app
    dep = serve.deployment(ModelReplica).options(**opts)
    # An HTTP route only when asked for (the OpenAI-compatible route, e.g. for a local judge).
    # Only the keys the user set: the replica validates them again, and checks of
    # the form "set explicitly" (num_gpus, dtype) must see the same config.
    target = serve.RunTarget(dep.bind(cfg.model_dump(exclude_unset=True), api_key), name=app, route_prefix=cfg.http_route)
    serve.run_many([target], wait_for_applications_running=False)
    if track:
        _deployed[app] = fingerprint
    return app


_deployed: dict[str, str] = {}  # app -> config fingerprint of what this driver deployed and has not deleted
# One deploy at a time in this driver: Serve's configs serialize their classes through
# cloudpickle's by-value registry, which is not thread-safe, and several models' runs
# (raveval.run.models) may deploy at once.
_deploy_lock = threading.Lock()


def delete(app: str, wait: bool) -> None:
    """Delete a Serve app of this driver if it is up (waiting until its replicas are gone when `wait`)."""
    import ray

    _deployed.pop(app, None)
    if ray.is_initialized() and app in serve.status().applications:  # empty when no Serve runs here
        serve.delete(app, _blocking=wait)


def delete_deployed(wait: bool = True) -> None:
    """Delete every app this driver deployed (never another driver's)."""
    for app in list(_deployed):
        delete(app, wait)


def forget_deployed() -> None:
    """Ray itself is going: nothing this driver deployed will be left."""
    _deployed.clear()


class ModelStartError(RuntimeError):
    pass


async def wait_ready(app: str, timeout_s: float | None = None, poll_s: float = 0.2) -> None:
    """Return once the app runs; raise with Serve's reason if it failed to deploy
    (requests sent to a failed app would wait forever), or if it is not running
    after `timeout_s` (its replicas could not be placed or did not start)."""
    start = time.monotonic()
    while True:
        st = (await asyncio.to_thread(serve.status)).applications.get(app)
        if st is not None and st.status == "RUNNING":
            return
        if st is not None and st.status == "DEPLOY_FAILED":
            raise ModelStartError(failed_to_start(app, st))
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise ModelStartError(f"Serve app {app} is not running after {timeout_s:g}s (startup_timeout_s): "
                                  f"{waiting_for(st)}")
        await asyncio.sleep(poll_s)


def failed_to_start(app: str, st) -> str:
    """Why a failed app failed, in one line: the exception that ended its replicas'
    constructor (the last line of the traceback Serve keeps), not the whole traceback."""
    reasons = []
    for d in st.deployments.values():
        lines = [ln.strip() for ln in (d.message or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
        if errors or lines:
            reasons.append((errors or lines)[-1])
    return f"Serve app {app} failed to start: {'; '.join(dict.fromkeys(reasons)) or st.message}"


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def waiting_for(st) -> str:
    """What an app that is not running yet waits for, in Serve's words (its
    replicas' required resources against what the cluster has)."""
    if st is None:
        return "the app was never created"
    said = [d.message for d in st.deployments.values() if d.message] + ([st.message] if st.message else [])
    return " ".join(said) or f"app {getattr(st.status, 'value', st.status)}"


def watch_ready(app: str, log=print, timeout_s: float | None = None, need: str = "", every_s: float = 30.0,
                poll_s: float = 0.2) -> threading.Thread:
    """A thread that notes when the app starts serving (`.at`), for the start-up
    figure, and says every `every_s` what it is still waiting for. When the app
    failed, or is not running after `timeout_s`, `.error` says why (the callers
    stop the stream then; the driver reports this). Set `.stop` to end it (it
    also ends once Ray is shut down)."""
    import ray

    def why(st) -> str:
        have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU") or "accelerator" in k}
        return f"{waiting_for(st)}; replicas need {need}; the cluster has {have}"

    def watch():
        start = last = time.monotonic()
        while not t.stop and ray.is_initialized():
            try:
                st = serve.status().applications.get(app)
                if st is not None and st.status == "RUNNING":
                    t.at = time.perf_counter()
                    return
                if st is not None and st.status == "DEPLOY_FAILED":
                    t.error = failed_to_start(app, st)
                    return
                waited = time.monotonic() - start
                if timeout_s is not None and waited > timeout_s:
                    t.error = f"Serve app {app} is not running after {timeout_s:g}s (startup_timeout_s): {why(st)}"
                    return
                if time.monotonic() - last >= every_s:
                    log(f"waiting {waited:.0f}s for the model replicas ({app}): {why(st)}")
                    last = time.monotonic()
            except Exception:  # Ray going down under us: nothing left to watch
                return
            time.sleep(poll_s)

    t = threading.Thread(target=watch, daemon=True)
    t.at, t.error, t.stop = None, None, False
    t.start()
    return t
