"""Text corpora shipped inside the package (read from the installed files; no download).

- ``wikitext2``: WikiText-2 (Merity et al., 2016; CC BY-SA 3.0), the word-level version with
  ``<unk>`` tokens, splits ``validation`` and ``test`` exactly as shipped (gzip-compressed here).
  The pruning literature's perplexity benchmark. A record is one line of the file (``{"text": line}``,
  the newline removed), as ``datasets``' ``text`` loader reads a ``.txt`` file, so a spec naming the
  same file on disk gives the same records.
"""

from __future__ import annotations

import gzip
from importlib import resources

TEXTS: dict[str, tuple[str, ...]] = {"wikitext2": ("validation", "test")}


def corpus_text(name: str, split: str) -> str:
    """The whole text of bundled corpus ``name``, split ``split`` (``KeyError`` if there is none)."""
    if split not in TEXTS[name]:
        raise KeyError(split)
    data = resources.files("layerif_core.tasks").joinpath(name, f"{split}.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


def corpus_records(name: str, split: str) -> list[dict[str, str]]:
    """One record ``{"text": line}`` per line of :func:`corpus_text` (blank lines included)."""
    return [{"text": line} for line in corpus_text(name, split).splitlines()]
