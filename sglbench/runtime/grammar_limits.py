"""Bounds on grammar work, checked before and after xgrammar reads a grammar: size, nesting and property limits
(`check_grammar_limits`), JSON schemas with a part no finite document completes (`incompletable_part`), and the
shape of a grammar's rules (`grammar_shape`): whether every reachable rule can end, and whether the text
jump-forward may have to walk is provably short (xgrammar's forced-text search has no bound of its own)."""

from __future__ import annotations

import heapq
import json
import re
import urllib.parse
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sglbench.runtime.regex_dialect import _CATEGORIES, _complement, _merge
from sglbench.runtime.sampling_params import GrammarSpec

if TYPE_CHECKING:
    import xgrammar as xgr

try:  # Python's own regex parser: the dialect is read exactly as `re` reads it
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# Limits on what a request may ask xgrammar to compile (xgrammar 0.2.9 has no compile timeout).
MAX_GRAMMAR_CHARS = 256 * 1024  # characters in a regex, JSON schema or EBNF grammar
MAX_SCHEMA_NESTING = 64  # nested objects/arrays in a JSON schema: xgrammar's grammar grows with its square
MAX_PATTERN_GROUPS = 1024  # "(" and "{" in one regex: xgrammar's regex parser recurses (crashes past ~20 k)
MAX_OBJECT_PROPERTIES = 512  # properties of one schema object: compile time grows steeply past this
# Jump-forward bounds (see `grammar_shape`): the most text the forced-text search may have to walk.
MAX_FORCED_BYTES = 256 * 1024  # along any chain of non-recursive rules open at once
MAX_FORCED_PER_LEVEL = 512  # per open recursive rule, which the output's nesting may repeat


# ---------------------------------------------------------------------------- limits
def check_grammar_limits(spec: GrammarSpec) -> None:
    """ValueError, naming the limit, when spec is over one of the bounds that keep xgrammar's compile time
    and memory small: MAX_GRAMMAR_CHARS; for a JSON schema MAX_SCHEMA_NESTING and MAX_OBJECT_PROPERTIES;
    for a regex (a regex spec or a schema's `pattern` / `patternProperties`) MAX_PATTERN_GROUPS."""
    if len(spec.pattern) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"{spec.kind} is {len(spec.pattern)} characters, over the limit of {MAX_GRAMMAR_CHARS}")
    if spec.kind == "regex":
        _check_pattern(spec.pattern, "regex")
    elif spec.kind == "json_schema":
        try:
            schema = json.loads(spec.pattern)
        except RecursionError:
            raise ValueError(f"json_schema nests deeper than the limit of {MAX_SCHEMA_NESTING}") from None
        except ValueError as exc:
            raise ValueError(f"json_schema {shorten(spec.pattern)} is not valid JSON: {exc}") from None
        _check_schema(schema)


def _check_schema(schema: Any) -> None:
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_SCHEMA_NESTING:
            raise ValueError(f"json_schema nests deeper than the limit of {MAX_SCHEMA_NESTING} "
                             f"(at {_pointer_text(path[:8])}/...)")
        if isinstance(value, list):
            stack.extend((v, (*path, str(i))) for i, v in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        where = _pointer_text(path)
        if isinstance(value.get("pattern"), str):
            _check_pattern(value["pattern"], f"json_schema pattern at {where}")
        if isinstance(value.get("patternProperties"), dict):
            for key in value["patternProperties"]:
                _check_pattern(key, f"json_schema patternProperties key at {where}")
        if isinstance(value.get("properties"), dict) and len(value["properties"]) > MAX_OBJECT_PROPERTIES:
            raise ValueError(f"json_schema object at {where} has {len(value['properties'])} properties, over "
                             f"the limit of {MAX_OBJECT_PROPERTIES}")
        stack.extend((v, (*path, str(k))) for k, v in value.items())


def _check_pattern(pattern: str, what: str) -> None:
    """Unescaped "(" and "{" bound how deep xgrammar's regex parser recurses, whatever the dialect."""
    bare = re.sub(r"\\.", "", pattern, flags=re.DOTALL)
    groups = bare.count("(") + bare.count("{")
    if groups > MAX_PATTERN_GROUPS:
        raise ValueError(f"{what} has {groups} groups and counted repeats ('(' and '{{'), over the limit "
                         f"of {MAX_PATTERN_GROUPS}")


# ---------------------------------------------------------------------------- schemas that never end
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties", "patternProperties",
                              "minProperties", "maxProperties", "propertyNames"})
_ARRAY_KEYWORDS = frozenset({"items", "prefixItems", "minItems", "maxItems", "contains", "uniqueItems"})
SchemaPath = tuple[str, ...]  # JSON pointer tokens from the schema's root


@dataclass(frozen=True)
class _Need:
    """When a schema node has a finite instance: all of its parts (every) or any. A part is (why, part):
    why names the keyword that makes it needed, part is a node's path, a nested _Need or True."""

    every: bool
    parts: tuple[tuple[str, Any], ...]


def incompletable_part(schema: Any) -> str | None:
    """Why a part of schema reachable from its root can never be completed, None when every one can.

    A least fixed point over the schema graph ($ref `#`, `#/$defs/...`, `#/definitions/...`): a node has a
    finite instance when its required properties, its first minItems items and every allOf part do, and
    one anyOf/oneOf branch and one of its types do; a type is inferred from the keywords as xgrammar does;
    enum, const and anything this does not read count as finite. Optional recursion is finite (omit it).
    """
    needs: dict[SchemaPath, _Need] = {}
    order: list[SchemaPath] = []
    queue: deque[SchemaPath] = deque([()])
    while queue:
        path = queue.popleft()
        if path in needs:
            continue
        kids: list[SchemaPath] = []
        needs[path] = _schema_need(_resolve(schema, path), path, kids)
        order.append(path)
        queue.extend(k for k in kids if k not in needs and _resolve(schema, k) is not _MISSING)
    finite = _least_fixed_point(needs)
    stuck = next((p for p in order if p not in finite), None)
    return None if stuck is None else _explain(stuck, needs, finite)


def _schema_need(node: Any, path: SchemaPath, kids: list[SchemaPath]) -> _Need:
    """node's condition for a finite instance; appends every subschema it can reach to kids."""
    if not isinstance(node, dict) or "enum" in node or "const" in node:
        return _Need(True, ())
    parts: list[tuple[str, Any]] = []
    ref = node.get("$ref")
    target = _ref_path(ref) if isinstance(ref, str) else None
    if target is not None:
        parts.append(("$ref", target))
        kids.append(target)
    for key in ("allOf", "anyOf", "oneOf"):
        subs = node.get(key)
        if isinstance(subs, list) and subs:
            paths = [(*path, key, str(i)) for i in range(len(subs))]
            kids.extend(paths)
            if key == "allOf":
                parts.extend((key, p) for p in paths)
            else:
                parts.append((f"every {key} branch", _Need(False, tuple(("", p) for p in paths))))
    types = _types(node)
    if types is not None:
        options = []
        for kind in sorted(types):
            if kind == "object":
                options.append(("", _object_need(node, path, kids)))
            elif kind == "array":
                options.append(("", _array_need(node, path, kids)))
            else:
                options.append(("", True))
        parts.append(("", _Need(False, tuple(options))))
    return _Need(True, tuple(parts))


def _types(node: dict) -> set[str] | None:
    """The JSON types node allows: its `type`, else those its keywords imply; None for any type."""
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list) and kind and all(isinstance(k, str) for k in kind):
        return set(kind)
    implied = {"object"} if _OBJECT_KEYWORDS & node.keys() else set()
    implied |= {"array"} if _ARRAY_KEYWORDS & node.keys() else set()
    return implied or None


def _object_need(node: dict, path: SchemaPath, kids: list[SchemaPath]) -> _Need:
    props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    kids.extend((*path, "properties", name) for name in props)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        kids.append((*path, "additionalProperties"))
    if isinstance(node.get("patternProperties"), dict):
        kids.extend((*path, "patternProperties", key) for key in node["patternProperties"])
    parts = []
    required = node.get("required") if isinstance(node.get("required"), list) else []
    for name in dict.fromkeys(r for r in required if isinstance(r, str)):
        if name in props:
            parts.append(("required properties", (*path, "properties", name)))
        elif isinstance(extra, dict):
            parts.append(("required properties", (*path, "additionalProperties")))
    return _Need(True, tuple(parts))


def _array_need(node: dict, path: SchemaPath, kids: list[SchemaPath]) -> _Need:
    prefix = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
    kids.extend((*path, "prefixItems", str(i)) for i in range(len(prefix)))
    rest = node.get("items")
    if isinstance(rest, dict):
        kids.append((*path, "items"))
    least = node.get("minItems")
    least = least if isinstance(least, int) and not isinstance(least, bool) else 0
    parts = [("minItems", (*path, "prefixItems", str(i))) for i in range(min(least, len(prefix)))]
    if least > len(prefix) and isinstance(rest, dict):
        parts.append(("minItems", (*path, "items")))
    return _Need(True, tuple(parts))


def _holds(part: Any, finite: set[SchemaPath]) -> bool:
    if isinstance(part, _Need):
        test = all if part.every else any
        return test(_holds(p, finite) for _, p in part.parts)
    return part is True or part in finite


def _mentions(part: Any) -> Iterable[SchemaPath]:
    if isinstance(part, _Need):
        for _, p in part.parts:
            yield from _mentions(p)
    elif isinstance(part, tuple):
        yield part


def _least_fixed_point(needs: dict[SchemaPath, _Need]) -> set[SchemaPath]:
    """The nodes with a finite instance: each is checked again whenever a node it mentions becomes one. A
    reference to nothing ("#/$defs/absent") is not analysed: it counts as finite."""
    dependents: dict[SchemaPath, list[SchemaPath]] = {}
    for path, need in needs.items():
        for mentioned in set(_mentions(need)):
            dependents.setdefault(mentioned, []).append(path)
    finite: set[SchemaPath] = set(dependents) - set(needs)
    queue = deque(needs)
    while queue:
        path = queue.popleft()
        if path not in finite and _holds(needs[path], finite):
            finite.add(path)
            queue.extend(d for d in dependents.get(path, ()) if d not in finite)
    return finite


def _explain(start: SchemaPath, needs: dict[SchemaPath, _Need], finite: set[SchemaPath]) -> str:
    """Follow what keeps start from being finite until it comes back round, and name the node closing it."""
    trail, whys, seen = [start], [], {start: 0}
    while True:
        step = _blocker(needs[trail[-1]], finite)
        if step is None:  # not from a cycle (cannot happen: every leaf is finite); name where it stopped
            return f"{_pointer_text(trail[-1])} can never be completed"
        why, nxt = step
        whys.append(why)
        if nxt in seen:
            kinds = [w for w in dict.fromkeys(whys[seen[nxt]:]) if w != "$ref"]
            how = f"through {' and '.join(kinds)}" if kinds else "through $ref alone"
            return f"{_pointer_text(trail[-1])} can never be completed: it requires itself {how}"
        seen[nxt] = len(trail)
        trail.append(nxt)


def _blocker(part: Any, finite: set[SchemaPath]) -> tuple[str, SchemaPath] | None:
    """A (why, node) that is not finite and that part cannot do without."""
    if not isinstance(part, _Need):
        return None if part is True or part in finite else ("", part)
    for why, sub in part.parts:
        if not _holds(sub, finite):
            found = _blocker(sub, finite)
            if found is not None:
                return (found[0] or why), found[1]
    return None


_MISSING = object()


def _resolve(schema: Any, path: SchemaPath) -> Any:
    node = schema
    for token in path:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node


def _ref_path(ref: str) -> SchemaPath | None:
    """A local `$ref` ("#", "#/$defs/x") as a path; None for any other reference (not analysed)."""
    if ref == "#":
        return ()
    if not ref.startswith("#/"):
        return None
    tokens = urllib.parse.unquote(ref[2:]).split("/")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def _pointer_text(path: SchemaPath) -> str:
    return "#" + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in path)


# ---------------------------------------------------------------------------- compiled-grammar analysis
_XGRAMMAR_SERIAL_VERSION = "v18"  # xgrammar 0.2.9's Grammar.serialize_json layout, which this reads
# Its expression types (data: [type, length, *payload]); others (tag dispatch, token sets) are not read.
_BYTES, _CLASS, _CLASS_STAR, _EMPTY, _RULE_REF, _SEQUENCE, _CHOICES, _REPEAT, _REGEX = 0, 1, 2, 3, 4, 5, 6, 8, 12


@dataclass(frozen=True)
class GrammarShape:
    """What `grammar_shape` proved: why a part of the grammar can never be completed (None: every part
    can), and whether jump-forward is bounded on it."""

    stuck: str | None
    jump_forward_safe: bool


def grammar_shape(grammar: xgr.Grammar) -> GrammarShape:
    """Read xgrammar's rules of grammar (before compilation) to bound what its matcher can be made to do.

    `stuck`: a rule reachable from the root that no finite text completes, e.g. root in `root ::= "a" root`,
    or one with such a part (from shortest-completion lengths, Knuth's generalization of Dijkstra).
    `jump_forward_safe`: no rule is stuck and the forced text is short. xgrammar's search follows the
    forced text until the grammar can end or branch, so it stops within the shortest completion of the
    current state: the shortest rest of the innermost open rule, plus, for each rule open around it, the
    shortest text that must follow the reference it is in. Along any chain of non-recursive rules that
    sum is at most MAX_FORCED_BYTES; each level of a recursive rule (which the output's nesting may
    repeat) adds at most MAX_FORCED_PER_LEVEL. Anything the analysis cannot read (another serialization
    version, an expression type not listed, a regex Python cannot parse) is not proven safe: jump-forward
    is skipped for it.
    """
    data = json.loads(grammar.serialize_json())
    if data.get("__VERSION__") != _XGRAMMAR_SERIAL_VERSION:
        return GrammarShape(None, False)
    flat = data["grammar_expr_data"]
    exprs = [(flat[a], flat[a + 2 : a + 2 + flat[a + 1]]) for a in data["grammar_expr_indptr"]]
    rules = [(rule[0], rule[1], rule[2]) for rule in data["rules"]]
    shortest, readable = _shortest_lengths(exprs, rules)
    parts: dict[int, list[int]] = {}  # reachable rule -> its expressions
    tails: dict[int, dict[int, int]] = {}  # reachable rule -> referenced rule -> longest text due after it
    queue = [data["root_rule_id"]]
    while queue:
        rule = queue.pop()
        if rule not in parts:
            parts[rule], tails[rule] = _rule_references(exprs, shortest, rules[rule][1:])
            queue.extend(r for r in tails[rule] if r not in parts)
    n_exprs = len(exprs)
    never = [rules[r][0] for r in sorted(parts) if shortest[n_exprs + r] is None]
    if never:
        return GrammarShape(f"rule {', '.join(never[:3])} can never be completed: no finite text matches it", False)
    dead = [rules[r][0] for r in sorted(parts) if any(shortest[e] is None for e in parts[r])]
    if dead:
        return GrammarShape(f"rule {', '.join(dead[:3])} has a part that can never be completed: no finite "
                            "text matches it", False)
    longest = {r: max(shortest[e] for e in parts[r]) for r in parts}  # the most one open rule can force
    return GrammarShape(None, readable and _forced_text_bounded(data["root_rule_id"], longest, tails))


def _forced_text_bounded(root: int, longest: dict[int, int], tails: dict[int, dict[int, int]]) -> bool:
    """The bound of `grammar_shape` over the rules' components, innermost first (Tarjan's order)."""
    components = _components({r: list(t) for r, t in tails.items()})
    component_of = {r: i for i, rules in enumerate(components) for r in rules}
    bound: list[int] = []
    for i, rules in enumerate(components):
        recursive = len(rules) > 1 or rules[0] in tails[rules[0]]
        most = 0
        for rule in rules:
            if recursive and longest[rule] > MAX_FORCED_PER_LEVEL:
                return False
            most = max(most, longest[rule])
            for inner, tail in tails[rule].items():
                if component_of[inner] != i:
                    most = max(most, tail + bound[component_of[inner]])
                elif tail > MAX_FORCED_PER_LEVEL:
                    return False
        bound.append(most)
    return bound[component_of[root]] <= MAX_FORCED_BYTES


def _rule_references(exprs: list[tuple[int, list[int]]], shortest: list[int | None], rule: tuple[int, int]
                     ) -> tuple[list[int], dict[int, int]]:
    """The expressions of one rule (body and lookahead, not entering other rules), and for each rule it
    references the longest of the shortest texts that must follow one of those references in it."""
    body, lookahead = rule
    seen: set[int] = set()
    tails: dict[int, int] = {}
    stack = [(body, 0)] + ([(lookahead, 0)] if lookahead >= 0 else [])
    visited: set[tuple[int, int]] = set()
    while stack:
        expr, after = stack.pop()
        if (expr, after) in visited:
            continue
        visited.add((expr, after))
        seen.add(expr)
        kind, data = exprs[expr]
        if kind == _SEQUENCE:
            rest = after
            for part in reversed(data):
                stack.append((part, rest))
                rest += shortest[part] or 0
        elif kind == _CHOICES:
            stack.extend((part, after) for part in data)
        elif kind == _RULE_REF:
            tails[data[0]] = max(tails.get(data[0], 0), after)
        elif kind == _REPEAT:  # inside one repetition, the others still due follow
            due = after + max(data[1] - 1, 0) * (shortest[len(exprs) + data[0]] or 0)
            tails[data[0]] = max(tails.get(data[0], 0), due)
    return sorted(seen), tails


def _components(refs: dict[int, list[int]]) -> list[list[int]]:
    """Strongly connected components of the reference graph, each after those it references (Tarjan's
    algorithm, without recursion)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []
    for start in refs:
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(refs[start]))]
        while work:
            node, todo = work[-1]
            for nxt in todo:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(refs[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = [stack.pop()]
                    while component[-1] != node:
                        component.append(stack.pop())
                    on_stack.difference_update(component)
                    components.append(component)
    return components


def _shortest_lengths(exprs: list[tuple[int, list[int]]], rules: list[tuple[str, int, int]]
                      ) -> tuple[list[int | None], bool]:
    """The fewest bytes each expression (then each rule) matches, None where no finite text does; and
    False when an expression's type is not one this reads (it counts as matching the empty text)."""
    n_exprs = len(exprs)
    size = n_exprs + len(rules)
    parents: list[list[int]] = [[] for _ in range(size)]
    pending, total, times, choice = [0] * size, [0] * size, [1] * size, [False] * size
    heap: list[tuple[int, int]] = []
    readable = True

    def needs(node: int, inputs: list[int], scale: int = 1) -> None:  # a sum over inputs
        pending[node], times[node] = len(inputs), scale
        for i in inputs:
            parents[i].append(node)
        if not inputs:
            heap.append((0, node))

    for i, (kind, data) in enumerate(exprs):
        if kind == _BYTES:
            heap.append((len(data), i))
        elif kind == _CLASS:
            pairs = list(zip(data[1::2], data[2::2]))
            if (_complement(_merge(pairs)) if data[0] else pairs):
                heap.append((1, i))
        elif kind in (_CLASS_STAR, _EMPTY):
            heap.append((0, i))
        elif kind == _RULE_REF:
            needs(i, [n_exprs + data[0]])
        elif kind == _SEQUENCE:
            needs(i, list(data))
        elif kind == _CHOICES:
            choice[i] = True
            for part in data:
                parents[part].append(i)
        elif kind == _REPEAT:
            rule, low, high = data[0], data[1], data[2]
            if low == 0:
                heap.append((0, i))
            elif high < 0 or low <= high:
                needs(i, [n_exprs + rule], low)
        elif kind == _REGEX:
            length, known = _regex_shortest(bytes(data[1:]).decode("utf-8", "replace"))
            readable &= known
            if length is not None:
                heap.append((length, i))
        else:
            readable = False
            heap.append((0, i))
    for r, (_, body, _) in enumerate(rules):
        needs(n_exprs + r, [body])
    heapq.heapify(heap)
    shortest: list[int | None] = [None] * size
    while heap:
        length, node = heapq.heappop(heap)
        if shortest[node] is not None:
            continue
        shortest[node] = length
        for parent in parents[node]:
            if shortest[parent] is not None:
                continue
            if choice[parent]:
                heapq.heappush(heap, (length, parent))
                continue
            total[parent] += length * times[parent]
            pending[parent] -= 1
            if pending[parent] == 0:
                heapq.heappush(heap, (total[parent], parent))
    return shortest, readable


def _regex_shortest(pattern: str) -> tuple[int | None, bool]:
    """(fewest characters a text matching pattern has, or None when a class in it matches no character;
    whether that is certain). xgrammar's regex dialect is read with Python's parser; a pattern it cannot
    parse, or a negated class whose emptiness depends on the dialect, is not certain."""
    try:
        parsed = _sre_parse.parse(pattern)
        classes = _negated_classes_nonempty(parsed)
        return (None if classes is False else parsed.getwidth()[0]), classes is not None
    except (re.error, RecursionError, OverflowError, ValueError):
        return 0, False


_COMPLEMENTARY_CATEGORIES = ((_sre.CATEGORY_DIGIT, _sre.CATEGORY_NOT_DIGIT), (_sre.CATEGORY_SPACE, _sre.CATEGORY_NOT_SPACE),
                             (_sre.CATEGORY_WORD, _sre.CATEGORY_NOT_WORD))
_WITNESSES = "a0 _-!.\u00e9\u4e00\U0001f600"  # characters one of which a non-empty negated class leaves out


def _negated_classes_nonempty(parsed: Any) -> bool | None:
    """Whether every negated class (`[^...]`) of a parsed regex matches a character: False when one matches
    none (`[^\\x00-\\U0010ffff]`, `[^\\s\\S]`), None when a class's emptiness depends on the dialect (whether
    \\d or \\w are ASCII). Checked without scanning the character set, so a long pattern stays cheap."""
    verdict: bool | None = True
    stack = [(list(parsed), parsed.state.flags)]
    while stack:
        items, flags = stack.pop()
        for op, av in items:
            if op is _sre.IN and av and av[0][0] is _sre.NEGATE:
                nonempty = _negated_class_nonempty(av[1:], flags)
                if nonempty is False:
                    return False
                verdict = verdict and nonempty
            elif op is _sre.BRANCH:
                stack.extend((list(b), flags) for b in av[1])
            elif op is _sre.SUBPATTERN:
                stack.append((list(av[3]), (flags | av[1]) & ~av[2]))
            elif isinstance(av, tuple) and av and isinstance(av[-1], _sre_parse.SubPattern):
                stack.append((list(av[-1]), flags))  # repeats, assertions
            elif isinstance(av, _sre_parse.SubPattern):
                stack.append((list(av), flags))  # atomic groups
    return verdict


def _negated_class_nonempty(items: list, flags: int) -> bool | None:
    spans = _merge([(av, av) if op is _sre.LITERAL else av for op, av in items if op is not _sre.CATEGORY])
    categories = {av for op, av in items if op is _sre.CATEGORY}
    if any({a, b} <= categories for a, b in _COMPLEMENTARY_CATEGORIES):
        return False
    if not categories and not flags & re.IGNORECASE:
        return bool(_complement(spans))
    for char in _WITNESSES:  # left out under both readings of the categories (and of case) means non-empty
        variants = {ord(c) for c in (char, char.lower(), char.upper())} if flags & re.IGNORECASE else {ord(char)}
        in_spans = any(low <= v <= high for v in variants for low, high in spans)
        in_category = any(re.fullmatch(_CATEGORIES[category], char, f | (flags & re.IGNORECASE))
                          for category in categories for f in (0, re.ASCII))
        if not in_spans and not in_category:
            return True
    return None

def shorten(pattern: str, keep: int = 200) -> str:
    """repr of pattern, cut after `keep` characters so an error message stays small."""
    return repr(pattern) if len(pattern) <= keep else f"{pattern[:keep]!r}... ({len(pattern)} characters)"
