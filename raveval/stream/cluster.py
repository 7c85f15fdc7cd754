"""Ray for a run: start a local Ray (or join a cluster) with Serve, and check
that the model's replicas can be placed before anything waits on them."""
from __future__ import annotations

import logging
import os
import signal
import threading

from raveval.serving.deploy import ModelStartError


def init_ray(address: str, temp_dir: str | None = None, http_port: int | None = None) -> list[str]:
    """Start (or join) Ray and Serve. Serve's HTTP proxy runs only when asked
    for (`http_port`: a model serves an OpenAI-compatible route, e.g. as a judge).
    A local Ray starts the dashboard when RAVEVAL_DASHBOARD=1 (`raveval run --dashboard`).
    Returns lines saying where to watch the run (dashboard, metrics), when Ray was started here."""
    import ray
    from ray import serve

    where: list[str] = []
    if not ray.is_initialized():
        # Ray's own handlers replace the caller's (its C++ one dumps core on SIGTERM, its
        # Python one exits with 15): keep the caller's, and no core dump meanwhile.
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        # Ray's and Serve's worker logs (replica tracebacks included) stay in the session's
        # log files unless asked for (`raveval run -v`): raveval says what went wrong.
        quiet = os.environ.get("RAVEVAL_VERBOSE") != "1"
        if quiet:  # raveval draws its own progress (stream.progress); Ray's lines are for -v
            quiet_ray_logs()
        level = logging.ERROR if quiet else logging.INFO
        if address == "local":
            dashboard = os.environ.get("RAVEVAL_DASHBOARD") == "1"
            ctx = ray.init(address="local", include_dashboard=dashboard, _temp_dir=temp_dir,
                           log_to_driver=not quiet, logging_level=level)
            if dashboard and ctx.dashboard_url:
                where.append(f"dashboard: http://{ctx.dashboard_url}")
        else:
            ray.init(address=address, log_to_driver=not quiet, logging_level=level)
        port = next((n.get("MetricsExportPort") for n in ray.nodes() if n.get("Alive")
                     and n.get("NodeID") == ray.get_runtime_context().get_node_id()), None)
        if port:
            where.append(f"metrics (Prometheus): http://127.0.0.1:{port}/metrics")
        if threading.current_thread() is threading.main_thread():
            for s, h in handlers.items():
                if h is not None:
                    signal.signal(s, h)
    # Serve joins the instance already running, if any. No HTTP proxy unless a model
    # serves a route (on a cluster it would start one on every node).
    if http_port:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1" if address == "local" else "0.0.0.0",
                                                            "port": http_port},
                    logging_config={"enable_access_log": False})
    else:
        serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    return where


def quiet_ray_logs() -> None:
    """Ray Data's progress bars and lines, and Serve's INFO lines, off in this driver."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)


def check_resources(model, local: bool) -> None:
    """On a local Ray nothing will ever add GPUs: fail now instead of waiting forever."""
    import ray

    if not local:
        return  # an autoscaling cluster may add the nodes
    r = model.resources()
    have = ray.cluster_resources()
    for res, per in (("GPU", r.total_gpus), ("CPU", r.num_cpus)):
        need = per * model.min_replicas  # an autoscaled model needs its minimum to start
        if need > have.get(res, 0):
            raise ModelStartError(f"model {model.name}: {model.min_replicas} replica(s) x {res.lower()}s={per} need "
                                  f"{need} {res}, this machine's Ray has {have.get(res, 0)}")
