"""JSON decoding: schema-constrained generation with jump-forward on and off, in one run.

Every request asks for one city's record under a fixed JSON schema (keys, separators and enum
spellings are forced; names and numbers are the model's), as in the SGLang paper's JSON-decoding
workload. Both runs decode the same prompts greedily from a cold cache; the table shows requests/s,
output tokens/s, decode tokens (one per request per decode step), the tokens jump-forward appended
instead, and forward steps.
"""

from __future__ import annotations

import argparse
import json
import time

from sglbench.bench.common import add_model_args, print_table, resolve_model

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
        "country": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"},
        "continent": {"enum": ["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]},
        "capital": {"type": "boolean"},
        "population": {"type": "integer", "minimum": 0, "maximum": 50000000},
        "founded": {"type": "integer", "minimum": -3000, "maximum": 2025},
    },
    "required": ["name", "country", "continent", "capital", "population", "founded"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Sydney", "Toronto", "Hanoi", "Quito",
          "Nairobi", "Berlin", "Seoul", "Bogota", "Perth", "Madrid"]


def build_prompts(num_requests: int) -> list[str]:
    """One extraction prompt per request, cycling through the cities."""
    return [f"Record {i}: give the facts about {CITIES[i % len(CITIES)]} as JSON.\n" for i in range(num_requests)]


def run_once(rt, prompts: list[str], max_new_tokens: int) -> dict:
    """Decode all prompts as one batch from a cold cache; throughput and step counters."""
    rt.generate(prompts[0], max_new_tokens=max_new_tokens, temperature=0, json_schema=CITY_SCHEMA)  # warm-up
    rt.wait_idle()
    rt.flush_cache()
    before = rt.metrics()
    start = time.perf_counter()
    results = rt.generate(prompts, max_new_tokens=max_new_tokens, temperature=0, json_schema=CITY_SCHEMA)
    wall = time.perf_counter() - start
    rt.wait_idle()
    after = rt.metrics()
    output_tokens = sum(r["meta_info"]["completion_tokens"] for r in results)
    return {
        "jump_forward": "on" if rt.config.jump_forward else "off",
        "requests_s": len(prompts) / wall,
        "output_tok_s": output_tokens / wall,
        "output_tokens": output_tokens,
        "decode_tokens": after.decode_tokens - before.decode_tokens,
        "jumped_tokens": after.jump_forward_tokens - before.jump_forward_tokens,
        "forward_steps": after.num_steps - before.num_steps,
        "valid_json": sum(_parses(r["text"]) for r in results),
        "wall_s": wall,
    }


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench json", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    from sglbench.runtime.runtime import Runtime

    path, label = resolve_model(args)
    prompts = build_prompts(args.requests)
    rows = []
    for disable in (False, True):
        with Runtime(path, device=args.device, dtype=args.dtype, max_running_requests=max(args.requests, 1),
                     disable_jump_forward=disable) as rt:
            rows.append(run_once(rt, prompts, args.max_new_tokens))
            device, dtype = rt.config.device, rt.model_info().dtype
    print_table(rows, f"JSON decoding ({args.requests} requests): {label}, device={device}, dtype={dtype}")
    return rows


if __name__ == "__main__":
    main()
