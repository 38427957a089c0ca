"""The generated world's knowledge graph: typed entities whose relations chain.

Structure (every relation is functional: one tail per head)::

    person --plays_for--> club --based_in--> city --located_in--> country --capital--> city
    person --born_in----> city --lies_on--> river --flows_through--> country --language--> language

so from a person there are chains of 1 to 4 hops (person, club, city, country, capital).
Languages have no images: they are answers only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from .names import NameGenerator
from .render import PATTERNS, SHAPES, Identity

#: entity types that get images, in generation order
IMAGED_TYPES = ("country", "city", "river", "club", "person")


@dataclass(frozen=True)
class WorldEntity:
    id: str
    name: str
    type: str
    identity: Identity | None  # None: the entity has no images


@dataclass
class World:
    entities: list[WorldEntity] = field(default_factory=list)
    triples: list[tuple[str, str, str]] = field(default_factory=list)


def _identities(count: int, rng: np.random.Generator, twin_fraction: float) -> list[Identity]:
    """``count`` distinct identities; about ``twin_fraction`` of them are look-alikes of another."""
    twins = int(round(count * twin_fraction))
    originals = count - twins
    hue_steps = 12
    accent_steps = 6
    while len(SHAPES) * len(PATTERNS) * hue_steps * accent_steps < 2 * originals:
        hue_steps *= 2
        accent_steps *= 2
    grid = list(itertools.product(SHAPES, PATTERNS, range(hue_steps), range(accent_steps)))
    chosen = rng.choice(len(grid), size=originals, replace=False)
    identities = [
        Identity(shape, pattern, hue / hue_steps, accent / accent_steps)
        for shape, pattern, hue, accent in (grid[i] for i in chosen)
    ]
    # A twin's hue sits between two grid hues, so it never coincides with another identity.
    for original in rng.choice(originals, size=twins, replace=twins > originals):
        identities.append(identities[int(original)].twin(0.4 / hue_steps))
    order = rng.permutation(count)
    return [identities[i] for i in order]


def generate_world(counts: dict[str, int], languages: int, seed: int, twin_fraction: float = 0.2) -> World:
    """A world with ``counts[type]`` imaged entities per type and ``languages`` image-less ones."""
    rng = np.random.default_rng([seed, 1])
    names = NameGenerator(np.random.default_rng([seed, 2]))
    world = World()
    by_type: dict[str, list[str]] = {}

    def add(entity_type: str, identity: Identity | None) -> str:
        index = len(by_type.setdefault(entity_type, []))
        entity_id = f"m.{entity_type}{index:05d}"
        world.entities.append(WorldEntity(entity_id, names.name(entity_type), entity_type, identity))
        by_type[entity_type].append(entity_id)
        return entity_id

    for _ in range(languages):
        add("language", None)
    identities = iter(_identities(sum(counts[t] for t in IMAGED_TYPES), rng, twin_fraction))
    for entity_type in IMAGED_TYPES:
        for _ in range(counts[entity_type]):
            add(entity_type, next(identities))

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    countries, cities = by_type["country"], by_type["city"]
    for country in countries:
        world.triples.append((country, "language", pick(by_type["language"])))
    # Every country gets at least one city, and its first city is its capital.
    city_country = {
        city: countries[i] if i < len(countries) else pick(countries) for i, city in enumerate(cities)
    }
    capitals: dict[str, str] = {}
    for city, country in city_country.items():
        world.triples.append((city, "located_in", country))
        capitals.setdefault(country, city)
    world.triples.extend((country, "capital", city) for country, city in capitals.items())
    river_country = {river: pick(countries) for river in by_type["river"]}
    world.triples.extend((river, "flows_through", country) for river, country in river_country.items())
    for city, country in city_country.items():
        local_rivers = [river for river, through in river_country.items() if through == country]
        if local_rivers and rng.random() < 0.7:
            world.triples.append((city, "lies_on", pick(local_rivers)))
    for club in by_type["club"]:
        world.triples.append((club, "based_in", pick(cities)))
    for person in by_type["person"]:
        world.triples.append((person, "plays_for", pick(by_type["club"])))
        world.triples.append((person, "born_in", pick(cities)))
    return world
