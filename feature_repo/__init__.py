"""The Feast feature repository: entities, data sources, feature views, feature services."""

import os

# Importing `feast.metrics` (Feast does it lazily, mid-request, from `feast.utils`) sets
# PROMETHEUS_MULTIPROC_DIR for its own Gunicorn mode. Every process this one starts then
# inherits it, and prometheus-client there stores *our* metrics in mmap files and warns on
# `remove()`. So import it here, once, and take back what it set, unless the user set it.
_FEAST_SETS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
_user_set = {name for name in _FEAST_SETS if name in os.environ}
import feast.metrics  # noqa: E402, F401

for _name in _FEAST_SETS:
    if _name not in _user_set:
        os.environ.pop(_name, None)
