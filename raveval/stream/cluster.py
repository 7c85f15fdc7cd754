"""Ray for a run: start a local Ray (or join a cluster) with Serve, and check
that the model's replicas can be placed before anything waits on them."""
from __future__ import annotations


def init_ray(address: str, temp_dir: str | None = None, http_port: int | None = None) -> None:
    """Start (or join) Ray and Serve. Serve's HTTP proxy runs only when asked
    for (`http_port`: a model serves an OpenAI-compatible route, e.g. as a judge)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(address="local", include_dashboard=False, _temp_dir=temp_dir)
        if http_port:
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port},
                        logging_config={"enable_access_log": False})
        else:
            serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    else:
        ray.init(address=address)


def check_resources(model, local: bool) -> None:
    """On a local Ray nothing will ever add GPUs: fail now instead of waiting forever."""
    import ray

    if not local:
        return  # an autoscaling cluster may add the nodes
    r = model.resources()
    have = ray.cluster_resources()
    for res, per in (("GPU", r.total_gpus), ("CPU", r.num_cpus)):
        need = per * model.replicas
        if need > have.get(res, 0):
            raise RuntimeError(f"model {model.name}: {model.replicas} replica(s) x {res.lower()}s={per} need {need} {res}, "
                               f"this machine's Ray has {have.get(res, 0)}")
