"""Deterministic filler text for the paper workloads: English-looking sentences of a chosen length.

Only the shape matters (how many words, where prompts share prefixes), so the text is sampled from small
word lists with a seeded `random.Random`; the same seed always gives the same data set.
"""

from __future__ import annotations

import random

NOUNS = (
    "river", "engine", "market", "garden", "theory", "village", "signal", "harbor", "library", "mountain",
    "council", "bridge", "forest", "factory", "planet", "school", "farmer", "painter", "doctor", "sailor",
    "student", "teacher", "merchant", "kingdom", "machine", "network", "storm", "island", "museum", "orchard",
    "glacier", "valley", "railway", "tower", "crystal", "desert", "lantern", "voyage", "treaty", "festival",
)
VERBS = (
    "builds", "crosses", "measures", "protects", "follows", "changes", "describes", "carries", "explains",
    "reaches", "supports", "divides", "gathers", "improves", "records", "shapes", "connects", "replaces",
    "observes", "delivers", "repairs", "collects", "predicts", "reduces",
)
ADJECTIVES = (
    "ancient", "quiet", "bright", "narrow", "modern", "careful", "distant", "famous", "simple", "heavy",
    "gentle", "rapid", "hidden", "golden", "frozen", "crowded", "steady", "curious", "broken", "silent",
)
CONNECTIVES = ("because", "while", "although", "after", "before", "since", "when", "until")
SUBJECTS = (
    "astronomy", "economics", "geography", "biology", "chemistry", "history", "philosophy", "statistics",
    "law", "medicine", "physics", "music", "linguistics", "agriculture", "architecture", "psychology",
)
CITY_PARTS = ("Ash", "Bel", "Cor", "Dun", "El", "Fen", "Gal", "Hol", "Ir", "Kel", "Lor", "Mar", "Nor", "Ost")
CITY_ENDS = ("ford", "ton", "mere", "vale", "burg", "port", "wick", "haven", "field", "stead")


def phrase(rng: random.Random) -> str:
    """Four words: 'the quiet river', 'a heavy engine' ..."""
    return f"{rng.choice(('the', 'a', 'every', 'one'))} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def _words(rng: random.Random, n: int) -> list[str]:
    """Exactly n words of clauses: 'the quiet river carries a heavy engine while ...'."""
    out = [*phrase(rng).split(), rng.choice(VERBS), *phrase(rng).split()]
    while len(out) < n:
        out += [rng.choice(CONNECTIVES), *phrase(rng).split(), rng.choice(VERBS), *phrase(rng).split()]
    return out[:n]


def sentence(rng: random.Random, words: int = 12) -> str:
    """A capitalised sentence of exactly `words` words ending in a full stop."""
    text = " ".join(_words(rng, max(words, 1)))
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, words: int) -> str:
    """Sentences of 8-16 words, exactly `words` words in all."""
    out: list[str] = []
    left = words
    while left > 0:
        n = min(rng.randint(8, 16), left)
        out.append(sentence(rng, n))
        left -= n
    return " ".join(out)


def question(rng: random.Random, words: int = 20) -> str:
    """A paragraph ending in a 6-word question, exactly `words` words (at least 7)."""
    body = paragraph(rng, max(words - 6, 1))
    return f"{body} Which {rng.choice(NOUNS)} {rng.choice(VERBS)} {phrase(rng)}?"


def city_name(rng: random.Random) -> str:
    return rng.choice(CITY_PARTS) + rng.choice(CITY_ENDS)
