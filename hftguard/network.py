"""Whether the Hugging Face Hub may be used (``HF_HUB_OFFLINE``) and can be reached.

Torch-free. Model loading, hub datasets, model judges and ``export --push-to-hub`` ask here
before they wait on the hub client's retries; tests patch this module's functions.
"""

from __future__ import annotations

import os


def offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so a machine without network fails in seconds
    instead of after the hub client's retries (skipped, i.e. True, behind a proxy)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
