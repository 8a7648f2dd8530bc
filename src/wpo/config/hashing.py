"""The hash that keys a stage's result: stable over key order and whitespace."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def config_hash(payload: Any) -> str:
    """A stable short hash of any JSON-serializable config fragment."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
