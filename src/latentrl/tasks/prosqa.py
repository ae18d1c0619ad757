"""``prosqa``: ProsQA-style reasoning over a random DAG of made-up concepts.

Facts are sentences ``"Every wumpus is a yimpus."`` (concept -> concept) and ``"Tom is a
wumpus."`` (person -> concept). The question lists the facts, shuffled, then asks
``"Is Tom a yimpus or a zorpus?"``; exactly one option is reachable from Tom. The steps
are the edges of the unique path from Tom to the answer, one sentence each, and the
answer is ``"Tom is a yimpus."``.

Construction: the path Tom -> p1 -> ... -> p_depth is laid first; the distractor is
another concept. ``extra_edges`` random edges are then added, keeping the graph acyclic,
never entering a path concept (so the proof is unique) and never letting Tom reach the
distractor. The distractor gets an incoming edge first, when one is possible, so it is not
the only concept no fact mentions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from latentrl.tasks.base import DataError, Example, Problem, int_knob

TASK = "prosqa"
PROSQA_DEFAULTS: dict[str, Any] = dict(num_concepts=12, depth=3, extra_edges=6)

_ONSETS = ("b", "br", "d", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "r", "s", "sh", "st", "t", "v", "w", "y", "z", "zh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("mp", "rp", "lp", "mb")
CONCEPT_WORDS: tuple[str, ...] = tuple(sorted(o + v + c + "us" for o in _ONSETS for v in _VOWELS for c in _CODAS))
PERSON_NAMES: tuple[str, ...] = (
    "Alex", "Bob", "Davis", "Eva", "Fae", "Jack", "Max", "Polly", "Rex", "Sally",
    "Sam", "Stella", "Tom", "Wren", "Nora", "Leo", "Gina", "Owen", "Ruth", "Theo",
)

Graph = dict[str, set[str]]


def check_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated knobs: room for the path plus a distractor, within the word pool."""
    depth = int_knob(TASK, "depth", knobs["depth"], 1)
    num_concepts = int_knob(TASK, "num_concepts", knobs["num_concepts"], 2, len(CONCEPT_WORDS))
    if num_concepts < depth + 1:
        raise DataError(f"task {TASK!r}: knob 'num_concepts' must be >= depth + 1 = {depth + 1}, got {num_concepts}")
    extra_edges = int_knob(TASK, "extra_edges", knobs["extra_edges"], 0)
    return dict(num_concepts=num_concepts, depth=depth, extra_edges=extra_edges)


def reachable(graph: Graph, start: str) -> set[str]:
    """Every node reachable from ``start`` (``start`` included)."""
    found, stack = {start}, [start]
    while stack:
        for child in graph.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def edge_allowed(graph: Graph, u: str, v: str, person: str, path: set[str], distractor: str) -> bool:
    """An extra edge u -> v keeps the DAG acyclic, the proof unique and the distractor unreachable."""
    if u == v or v in path or v in graph[u] or u in reachable(graph, v):
        return False
    tom_reaches_u = u in reachable(graph, person)
    return not (tom_reaches_u and distractor in reachable(graph, v))


def add_extra_edges(
    rng: random.Random, graph: Graph, person: str, path: list[str], distractor: str, count: int
) -> None:
    """Add up to ``count`` random allowed edges in place (the distractor's in-edge first)."""
    concepts = sorted(graph.keys() - {person})
    path_set = set(path)
    feeders = [c for c in concepts if c not in path_set and c != distractor]  # Tom cannot reach these yet
    added = 0
    if count > 0 and feeders:
        graph[rng.choice(feeders)].add(distractor)
        added = 1
    for _ in range(20 * count + 20):
        if added >= count:
            return
        u, v = rng.choice([person, *concepts]), rng.choice(concepts)
        if edge_allowed(graph, u, v, person, path_set, distractor):
            graph[u].add(v)
            added += 1


def fact(subject: str, concept: str, person: str) -> str:
    """The sentence stating the edge subject -> concept."""
    return f"{person} is a {concept}." if subject == person else f"Every {subject} is a {concept}."


def make_problem(rng: random.Random, knobs: Mapping[str, Any]) -> Problem:
    """Draw one graph and query; the canonical text is the sorted facts plus the sorted options."""
    depth = knobs["depth"]
    words = rng.sample(CONCEPT_WORDS, knobs["num_concepts"])
    person = rng.choice(PERSON_NAMES)
    path, distractor = words[:depth], words[depth]
    graph: Graph = {person: set(), **{w: set() for w in words}}
    chain = [person, *path]
    for u, v in zip(chain, chain[1:]):
        graph[u].add(v)
    add_extra_edges(rng, graph, person, path, distractor, knobs["extra_edges"])

    facts = [fact(u, v, person) for u in sorted(graph) for v in sorted(graph[u])]
    rng.shuffle(facts)
    options = [path[-1], distractor]
    rng.shuffle(options)
    question = " ".join(facts) + f" Is {person} a {options[0]} or a {options[1]}?"
    steps = tuple(fact(u, v, person) for u, v in zip(chain, chain[1:]))
    canonical = "\n".join(sorted(facts)) + f"\n{person}?" + "|".join(sorted(options))
    return Example(question=question, steps=steps, answer=f"{person} is a {path[-1]}."), canonical
