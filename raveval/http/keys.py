"""API keys: read once by the driver, handed to the actors that send them.

An endpoint names the environment variable that holds its key (`api_key_env`).
Only the process that runs the evaluation (the driver) reads it: judge callers
and API-model replicas may run on other nodes of a cluster, whose environment
never had it. The driver passes the key to them as a constructor argument
(`SecretStr`): Ray keeps actor arguments in its own memory and shows them
nowhere (state API, dashboard, logs), unlike runtime_env env_vars or Serve's
user_config. Where Ray does turn arguments into text (Ray Data's exported
operator arguments), `SecretStr` prints as `**********`.
"""
from __future__ import annotations

import os
from typing import Optional

from pydantic import SecretStr

from raveval.config.schema import EndpointConfig


class MissingApiKey(ValueError):
    """The variable an endpoint names is not set where the run was started."""


def read_key(cfg: Optional[EndpointConfig], user: str) -> Optional[SecretStr]:
    """The key of endpoint `cfg` from this process's environment; None when it
    takes no key. `user` names what uses the endpoint, for the error."""
    if cfg is None or not cfg.api_key_env:
        return None
    value = os.environ.get(cfg.api_key_env)
    if not value:
        raise MissingApiKey(f"environment variable {cfg.api_key_env} (api_key_env of {user}) is not set "
                            "where the run was started")
    return SecretStr(value)
