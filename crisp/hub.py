"""Whether the Hugging Face Hub can be used: its offline switches, and one quick probe of its endpoint.

Imports no transformers or datasets: the fetch jobs decide in a second that a download is impossible
(crisp.fetch), and crisp.modeling and crisp.data use the same probe.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

import huggingface_hub.constants

HUB_PROBE_TIMEOUT_S = 3.0
# Environment switches that forbid Hub access for models (crisp.data adds the datasets one).
MODEL_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT


def hub_unreachable_reason(
    offline_variables: tuple[str, ...] = MODEL_OFFLINE_VARIABLES,
    timeout_s: float = HUB_PROBE_TIMEOUT_S,
) -> str | None:
    """None when the Hub can be used; otherwise why not (offline switch, no answer, ...).

    The probe is one HTTP HEAD request to the endpoint. Name resolution cannot be given a
    timeout through urllib, so the probe runs in a daemon thread that is abandoned when it
    takes longer than timeout_s.
    """
    for variable in offline_variables:
        if os.environ.get(variable, "").upper() in _TRUE_VALUES:
            return f"{variable}={os.environ[variable]} is set"

    outcome: list[str | None] = []

    def probe() -> None:
        request = urllib.request.Request(hub_endpoint(), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # an error status still proves the server is there
        except urllib.error.URLError as error:
            outcome.append(f"connection failed ({error.reason})")
        except (OSError, ValueError) as error:
            outcome.append(f"connection failed ({error})")

    thread = threading.Thread(target=probe, name="crisp-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"
