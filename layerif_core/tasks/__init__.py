"""Tasks and text corpora bundled with layerif (no download).

Generated tasks (deterministic from a seed; splits ``train``, ``validation``, ``test``): each record
has ``question``, ``answer``, ``choices`` (the answer among distractors) and ``label`` (the index of
the answer in ``choices``), so a task serves both as a generation task (the loss on the answer
tokens) and as a multiple-choice task (lm-eval).

- ``arithmetic``: one- and two-step word problems over small integers.
- ``capitals``: "What is the capital of X?" over a fixed table of countries.
- ``antonyms``: "What is the opposite of X?" over a fixed word list.

Text corpora (records ``{"text": line}``; see :mod:`layerif_core.tasks.text`):

- ``wikitext2``: WikiText-2 (word-level, ``<unk>`` tokens; CC BY-SA 3.0), splits ``validation`` and
  ``test``.
"""

from __future__ import annotations

from layerif_core.tasks.generate import BUNDLED, bundled_records
from layerif_core.tasks.text import TEXTS, corpus_records, corpus_text

__all__ = ["BUNDLED", "TEXTS", "bundled_records", "corpus_records", "corpus_text"]
