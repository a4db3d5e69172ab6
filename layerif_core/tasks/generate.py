"""Generators of the bundled tasks; the same seed gives the same records on every machine."""

from __future__ import annotations

import random
from collections.abc import Callable

SPLIT_SIZES = {"train": 300, "validation": 100, "test": 100}
_SPLIT_SALT = {"train": 0, "validation": 1, "test": 2}

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
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(1, 9)
    kind = rng.randrange(4)
    if kind == 0:
        q, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?", a + b
    elif kind == 1:
        a = a + b
        q, ans = f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    elif kind == 2:
        q, ans = f"{name} buys {c} bags with {a} {item} in each. How many {item} is that?", a * c
    else:
        q = (f"{name} has {a} {item}, finds {b} more and then loses {c}. "
             f"How many {item} does {name} have now?")
        ans = a + b - c
    pool = [str(ans + d) for d in range(-6, 7) if ans + d >= 0]
    if len(set(pool) - {str(ans)}) < 3:  # ans ≤ −5 (c > a + b + 4): negative distractors too
        pool = [str(ans + d) for d in range(-6, 7)]
    choices, label = _mc(rng, str(ans), pool)
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


def bundled_records(task: str, split: str, seed: int = 0, n: int | None = None) -> list[Record]:
    """The records of bundled ``task``/``split``: ``SPLIT_SIZES[split]`` of them unless ``n``."""
    if task not in BUNDLED:
        raise KeyError(task)
    if split not in SPLIT_SIZES:
        raise KeyError(split)
    rng = random.Random(f"{task}|{split}|{seed}|{_SPLIT_SALT[split]}")
    make = BUNDLED[task]
    return [make(rng) for _ in range(n or SPLIT_SIZES[split])]
