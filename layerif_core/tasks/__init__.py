"""Tasks bundled with layerif, generated deterministically from a seed (no download).

Each record has ``question``, ``answer``, ``choices`` (the answer among distractors) and ``label``
(the index of the answer in ``choices``), so a task serves both as a generation task (the loss on
the answer tokens) and as a multiple-choice task (lm-eval).

- ``arithmetic``: one- and two-step word problems over small integers.
- ``capitals``: "What is the capital of X?" over a fixed table of countries.
- ``antonyms``: "What is the opposite of X?" over a fixed word list.
"""

from __future__ import annotations

from layerif_core.tasks.generate import BUNDLED, bundled_records

__all__ = ["BUNDLED", "bundled_records"]
