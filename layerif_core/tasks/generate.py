"""Generators of the bundled tasks; the same seed gives the same records on every machine.

``arithmetic`` has disjoint splits: a question belongs to the split that the SHA-256 of its text
picks (:func:`split_of`: 60% of all questions train, 20% validation, 20% test), whatever the seed, so
no seed's training question is another seed's test or validation question; within a split no
question repeats. Its question space (about 818,000 questions) gives each split up to
``MAX_RECORDS`` distinct questions. ``capitals`` (50 countries) and ``antonyms`` (40 words) draw
their questions with replacement from one table for every split: they cannot give thousands of
distinct questions, and their splits share questions.

A split's records are one seeded stream: the first k records of ``n`` are the k records of ``n = k``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

SPLIT_SIZES = {"train": 300, "validation": 100, "test": 100}  # records of a split unless n is given
_SPLIT_SALT = {"train": 0, "validation": 1, "test": 2}
SPLIT_SHARES = {"train": 0.6, "validation": 0.2, "test": 0.2}  # of the question space (disjoint tasks)
MAX_RECORDS = 20_000  # per split of a task with disjoint splits
VERSIONS = {"arithmetic": 2, "capitals": 1, "antonyms": 1}  # raised whenever a task's records change

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi",
          "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas"]
_ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells", "eggs",
          "cookies"]

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Chile": "Santiago", "Russia": "Moscow", "Poland": "Warsaw", "Greece": "Athens",
    "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "Austria": "Vienna",
    "Hungary": "Budapest", "Czechia": "Prague", "Australia": "Canberra", "Nigeria": "Abuja",
    "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Philippines": "Manila", "South Korea": "Seoul", "Cuba": "Havana",
    "Colombia": "Bogota", "Venezuela": "Caracas", "Morocco": "Rabat", "Algeria": "Algiers",
    "Ukraine": "Kyiv", "Romania": "Bucharest", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Switzerland": "Bern", "Pakistan": "Islamabad",
}

ANTONYMS = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
    "open": "closed", "high": "low", "strong": "weak", "rich": "poor", "young": "old", "hard": "soft",
    "full": "empty", "wet": "dry", "loud": "quiet", "thick": "thin", "clean": "dirty", "near": "far",
    "up": "down", "inside": "outside", "true": "false", "win": "lose", "buy": "sell", "push": "pull",
    "give": "take", "begin": "end", "love": "hate", "day": "night", "left": "right", "long": "short",
    "heavy": "light", "cheap": "expensive", "safe": "dangerous", "sharp": "dull", "wide": "narrow",
    "deep": "shallow", "sweet": "sour", "brave": "afraid", "tall": "short", "first": "last",
}

Record = dict[str, object]


def _mc(rng: random.Random, answer: str, pool: list[str], n: int = 4) -> tuple[list[str], int]:
    distractors = rng.sample(sorted(set(pool) - {answer}), n - 1)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def _arithmetic(rng: random.Random) -> Record:
    """One word problem over a, b in [2, 20]: a + b, (a + b) − b, a · c (c in [2, 9] bags) or
    a + b − c (c in [1, min(9, a + b)]: never more lost than held, so no answer is negative); the
    distractors are the non-negative integers within 6 of the answer."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    kind = rng.randrange(4)
    if kind == 0:
        q, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?", a + b
    elif kind == 1:
        a = a + b
        q, ans = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    elif kind == 2:
        c = rng.randint(2, 9)
        q, ans = f"{name} buys {c} bags with {a} {item} in each. How many {item} is that?", a * c
    else:
        c = rng.randint(1, min(9, a + b))
        q = (f"{name} has {a} {item}, finds {b} more and then loses {c}. "
             f"How many {item} does {name} have now?")
        ans = a + b - c
    choices, label = _mc(rng, str(ans), [str(ans + d) for d in range(-6, 7) if ans + d >= 0])
    return {"question": q, "answer": str(ans), "choices": choices, "label": label}


def _table_task(table: dict[str, str], template: str) -> Callable[[random.Random], Record]:
    keys = sorted(table)
    values = sorted(set(table.values()))

    def make(rng: random.Random) -> Record:
        key = rng.choice(keys)
        choices, label = _mc(rng, table[key], values)
        return {"question": template.format(key), "answer": table[key], "choices": choices,
                "label": label}

    return make


BUNDLED: dict[str, Callable[[random.Random], Record]] = {
    "arithmetic": _arithmetic,
    "capitals": _table_task(CAPITALS, "What is the capital of {}?"),
    "antonyms": _table_task(ANTONYMS, "What is the opposite of '{}'?"),
}


DISJOINT = {"arithmetic"}  # tasks whose splits share no question


def split_of(question: str) -> str:
    """The split that ``question`` belongs to in a task with disjoint splits: with
    u = (first 8 bytes of SHA-256(question)) / 2⁶⁴, train if u < 0.6, validation if u < 0.8, else test."""
    u = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, share in SPLIT_SHARES.items():
        edge += share
        if u < edge:
            return split
    return "test"


def _distinct(make: Callable[[random.Random], Record], rng: random.Random, split: str, n: int
              ) -> list[Record]:
    """The first ``n`` records of ``rng``'s stream whose question is in ``split`` and new."""
    out: list[Record] = []
    seen: set[object] = set()
    for _ in range(200 * n):
        record = make(rng)
        if record["question"] not in seen and split_of(str(record["question"])) == split:
            seen.add(record["question"])
            out.append(record)
            if len(out) == n:
                return out
    raise ValueError(f"found only {len(out)} distinct {split} questions; ask for fewer")


def bundled_records(task: str, split: str, seed: int = 0, n: int | None = None) -> list[Record]:
    """The records of bundled ``task``/``split``: ``SPLIT_SIZES[split]`` of them unless ``n``
    (a task with disjoint splits: at most ``MAX_RECORDS``, else ValueError)."""
    if task not in BUNDLED:
        raise KeyError(task)
    if split not in SPLIT_SIZES:
        raise KeyError(split)
    n = SPLIT_SIZES[split] if n is None else n
    rng = random.Random(f"{task}|{split}|{seed}|{_SPLIT_SALT[split]}")
    make = BUNDLED[task]
    if task in DISJOINT:
        if n > MAX_RECORDS:
            raise ValueError(f"bundled '{task}' gives at most {MAX_RECORDS} records per split, not {n}")
        return _distinct(make, rng, split, n)
    return [make(rng) for _ in range(n)]
