"""JSON decoding with a regex: extract a city record from an encyclopedia page, the output constrained
to a fixed JSON layout (keys and punctuation forced, so jump-forward skips them).

Only the instruction line is shared; each page is its own. Shape (small / full): 32 / 256 pages of
~145 / 525 words (~390 / 1,440 tokens); the record is ~50 tokens (at most 256).

    python -m sglbench.bench json-regex --size small
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, greedy
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import NOUNS, city_name, paragraph

_NAME = r'"[A-Za-z ]{1,16}"'
CITY_REGEX = (
    r"\{\n"
    rf'  "name": {_NAME},\n'
    rf'  "country": {_NAME},\n'
    r'  "founded": [0-9]{3,4},\n'
    r'  "population": [0-9]{1,8},\n'
    rf'  "landmarks": \[{_NAME}, {_NAME}\]'
    r"\n\}"
)
INSTRUCTION = "Extract the facts about the city described on this encyclopedia page as one JSON record.\n\n"
FIELDS = ("name", "country", "founded", "population", "landmarks")
MAX_TOKENS = 256


@dataclass(frozen=True)
class Shape:
    pages: int
    page_words: int = 200


SHAPES = {"tiny": Shape(3, page_words=30), "small": Shape(32, page_words=120), "full": Shape(256, page_words=500)}


def prompt(page: str) -> str:
    return INSTRUCTION + page + "\n\nJSON:\n"


@sgl.function
def json_regex(s, page):
    s += prompt(page)
    s += sgl.gen("record", max_tokens=MAX_TOKENS, regex=CITY_REGEX)


def conforms(arguments: Mapping[str, Any], outputs: Any) -> bool:
    """The record matches the regex in full and parses as JSON with the five fields."""
    record = outputs["record"]
    if re.fullmatch(CITY_REGEX, record) is None:
        return False
    try:
        parsed = json.loads(record)
    except ValueError:
        return False
    return isinstance(parsed, dict) and tuple(parsed) == FIELDS


def _page(rng: random.Random, words: int) -> str:
    city, country = city_name(rng), city_name(rng) + "ia"
    facts = (f"{city} is a city in {country}. It was founded in {rng.randint(800, 1990)} and has "
             f"{rng.randint(5, 900) * 1000} inhabitants. Visitors come for the {rng.choice(NOUNS)} and the "
             f"{rng.choice(NOUNS)}. ")
    return facts + paragraph(rng, words)


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    rng = random.Random(3)
    pages = tuple({"page": _page(rng, shape.page_words)} for _ in range(shape.pages))
    # The grammar decides where the output ends, so eos is never ignored here.
    return WorkloadRun("json-regex", json_regex, pages, greedy(False), conforms,
                       {"regex": CITY_REGEX, "max_tokens": MAX_TOKENS}, False)


WORKLOADS = (Workload("json-regex", "city record from a page, regex-constrained JSON", build),)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="json-regex")
