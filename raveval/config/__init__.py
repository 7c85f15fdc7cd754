"""Config schema, composition and secrets; and where raveval caches what it builds."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$RAVEVAL_CACHE, or ~/.cache/raveval: the tiny model, the report's JavaScript bundle."""
    return Path(os.environ.get("RAVEVAL_CACHE") or Path.home() / ".cache" / "raveval")
