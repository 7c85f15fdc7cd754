"""Secrets in configs are typed, never guessed from key names:

- `SecretStr` (pydantic) for values that are credentials (an endpoint's
  `headers`, the keys the driver reads for judges and API models): repr, str
  and JSON dumps show `**********`; the value is read with
  `get_secret_value()` where it is sent.
- `Url` for URLs that may carry credentials (`https://user:pass@host/v1?key=...`):
  the URL works as given, and saved or printed forms go through `public_url`.

`redacted(model)` is the only form of a config that is saved or printed.
"""
from __future__ import annotations

import urllib.parse
from typing import Annotated

from pydantic import BaseModel, PlainSerializer, SerializationInfo


def public_url(url: str) -> str:
    """The URL without its user, password and query values (API keys travel there)."""
    u = urllib.parse.urlsplit(str(url))
    if not u.scheme and not u.netloc:
        return str(url)
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    if u.username or u.password:
        host = "***@" + host
    query = urllib.parse.urlencode([(k, "***") for k, _ in urllib.parse.parse_qsl(u.query, keep_blank_values=True)],
                                   safe="*")
    return urllib.parse.urlunsplit((u.scheme, host, u.path, query, ""))


def _serialize_url(value: str, info: SerializationInfo) -> str:
    return public_url(value) if (info.context or {}).get("redact") else value


# A URL field: as given in the running program, credentials removed where saved or printed.
Url = Annotated[str, PlainSerializer(_serialize_url, return_type=str)]


def redacted(model: BaseModel) -> dict:
    """The config as JSON-able data with every typed secret hidden: what is saved and printed."""
    return model.model_dump(mode="json", context={"redact": True})
