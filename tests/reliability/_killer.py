"""Installed as ``sitecustomize`` in a CLI subprocess of the reliability suite (never imported by the
library): SIGKILLs the process at a chosen point of a run, so that a test can kill a stage
deterministically.

``RELIABILITY_KILL`` (JSON) says where:

- ``{"track": REGEX, "at": K}``: when a progress loop whose description matches REGEX
  (``RunContext.track``: every pass, pruning block and training step goes through it) is about to
  process its item K;
- ``{"call": "module:function"}``: when ``function`` of ``module`` is called.

With ``"occurrence": N`` the N-th matching progress loop counts (default: the first); with
``"signal": "SIGSTOP"`` the process stops instead (alive, holding what it holds) until the test kills
it.
"""

import importlib.abc
import importlib.util
import json
import os
import re
import signal
import sys

_SPEC = json.loads(os.environ.get("RELIABILITY_KILL", "null"))


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), getattr(signal, _SPEC.get("signal", "SIGKILL")))


def _patch_track(module):
    original = module.RunContext.track
    pattern, at = re.compile(_SPEC["track"]), int(_SPEC["at"])
    seen = {"loops": 0}

    def track(self, items, total, description):
        hit = bool(pattern.search(description))
        if hit:
            seen["loops"] += 1
        hit = hit and seen["loops"] == int(_SPEC.get("occurrence", 1))
        for k, item in enumerate(original(self, items, total, description)):
            if hit and k == at:
                _die()
            yield item

    module.RunContext.track = track


def _patch_call(module, attr):
    original = getattr(module, attr)

    def killer(*args, **kwargs):
        _die()
        return original(*args, **kwargs)

    setattr(module, attr, killer)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patches ``target`` right after it is first imported."""

    def __init__(self, target, patch):
        self.target, self.patch = target, patch

    def find_spec(self, name, path=None, target=None):
        if name != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            self.patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _SPEC is not None:
    if "track" in _SPEC:
        sys.meta_path.insert(0, _AfterImport("layerif_core.context", _patch_track))
    else:
        _module, _attr = _SPEC["call"].split(":")
        sys.meta_path.insert(0, _AfterImport(_module, lambda m: _patch_call(m, _attr)))
