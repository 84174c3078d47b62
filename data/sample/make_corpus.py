"""Writes data/sample/corpus and data/sample_long/corpus: five long documents each, hiding the facts
their questions.jsonl asks about among many similar-looking entries. data/sample (2,900-5,600 tokens a
document, 20,590 in all with the default model's tokenizer: 40 times its 512-token window) is what the
default model reads; data/sample_long is the same five documents three times as long (6,400-13,700
tokens each, 48,580 in all with the Qwen2.5 tokenizer: 1.5 times that base's 32K window), for a real
base. Deterministic (seeded); run it to regenerate both:

    python data/sample/make_corpus.py
"""

from __future__ import annotations

import random
from pathlib import Path

# scale -> folder: every entry count (days, blocks, weeks, stations) and each needle's place times the scale
SETS = {1: Path(__file__).parent / "corpus", 3: Path(__file__).parent.parent / "sample_long" / "corpus"}
WORDS = (
    "amber arrow autumn badge basket birch blade bloom breeze brick bridge cabin candle canyon castle cedar"
    " cherry cliff cloud comet copper coral crane crystal daisy dawn delta desert dune eagle ember falcon"
    " feather fern field flame forest fossil fountain galaxy garden glacier granite harbor hazel honey horizon"
    " island ivory jade kettle lagoon lantern lemon lily maple marble meadow mint moon mountain nectar oasis"
    " ocean olive orbit orchid otter palm pebble pepper pine planet plum pond prairie quartz rain raven reef"
    " ridge river robin ruby saddle sage salmon sand shadow silver sky slate snow spark spruce star stone storm"
    " summit sun swan thunder tiger timber topaz tulip valley velvet violet walnut willow wind winter wolf"
).split()
WEATHER = ["clear", "overcast", "light rain", "fog from the east", "gusty wind", "drizzle", "calm and cold", "haze"]
SHIPS = [
    "the ferry Morning Gull",
    "a grain barge",
    "two fishing boats",
    "the pilot launch",
    "a survey vessel",
    "the coastal freighter Tern",
    "a sailing yacht",
    "no traffic",
]

DONE = ["sown", "thinned", "watered", "picked", "mulched", "staked"]
WATER, BANKS = ["clear", "muddy", "green", "brown"], ["reed", "gravel", "clay", "rock"]
SIGHT = ["visible", "in cloud", "lit at dusk"]
BUOY = ["checked", "repainted", "reported adrift", "relit"]
MARKER = ["is fine", "needs a new lens", "was cleaned"]


ASKED = {"harbor", "lantern", "orbit", "cedar", "river", "delta", "glacier", "quartz"}  # in the questions' keys
FILLER = [w for w in WORDS if w not in ASKED]  # look-alike keys never share a word with an asked one


def key(rng: random.Random) -> str:
    a, b = rng.sample(FILLER, 2)
    return f"{a.upper()}_{b.upper()}_{rng.randint(10, 99)}"


def value(rng: random.Random) -> str:
    return str(rng.randint(1000, 99999)) if rng.random() < 0.5 else "-".join(rng.sample(FILLER, 2))


def lighthouse(rng: random.Random, scale: int) -> str:
    lines = [
        "# Harbor lighthouse: keeper's log, autumn season",
        "",
        "Daily entries of the keeper of the north harbor light: weather, traffic, lamp hours and the",
        "settings of the lamp controller as they were changed during the season.",
        "",
    ]
    for day in range(1, 60 * scale + 1):
        lines.append(f"## Day {day}")
        lines.append(
            f"Weather: {rng.choice(WEATHER)}. Traffic: {rng.choice(SHIPS)}. "
            f"Lamp lit at {17 + rng.randint(0, 2)}:{rng.randint(10, 59)}, out at 0{6 + rng.randint(0, 1)}:"
            f"{rng.randint(10, 59)}. Oil level {rng.randint(40, 95)} percent."
        )
        if day == 37 * scale:
            lines.append('Controller setting changed today: HARBOR_LANTERN_42 = "amber-falcon"')
        elif rng.random() < 0.5:
            lines.append(f'Controller setting changed today: {key(rng)} = "{value(rng)}"')
        lines.append(
            f"Note: the {rng.choice(FILLER)} buoy was {rng.choice(BUOY)}"
            f" and the {rng.choice(FILLER)} channel marker {rng.choice(MARKER)}."
        )
        lines.append("")
    return "\n".join(lines)


def config_file(rng: random.Random, scale: int) -> str:
    lines = [
        "# orbit_config.txt: settings of the orbit tracking station",
        "",
        "# Each block configures one tracking dish. Values are read at start-up; comments explain them.",
        "",
    ]
    for block in range(1, 40 * scale + 1):
        lines.append(f"[dish-{block:02d}]")
        lines.append(
            f"# dish {block} tracks the {rng.choice(FILLER)} constellation on {rng.choice(['odd', 'even'])} nights"
        )
        for _ in range(5):
            lines.append(f'{key(rng)} = "{value(rng)}"')
        if block == 23 * scale:
            lines.append('ORBIT_CEDAR_31 = "48213"')
        lines.append(f"azimuth_offset = {rng.uniform(-2, 2):.3f}")
        lines.append(f"elevation_limit = {rng.randint(5, 20)}")
        lines.append("")
    return "\n".join(lines)


def garden(rng: random.Random, scale: int) -> str:
    plants = ["tomatoes", "beans", "lettuce", "carrots", "sunflowers", "garlic", "peas", "squash", "basil", "onions"]
    lines = [
        "# Garden notes",
        "",
        "A season of notes from the community garden: what was sown, watered and picked,",
        "and what the volunteers asked each other to remember.",
        "",
    ]
    for week in range(1, 40 * scale + 1):
        lines.append(f"## Week {week}")
        for _ in range(3):
            lines.append(
                f"Bed {rng.randint(1, 24)}: {rng.choice(plants)} {rng.choice(DONE)}"
                f", soil {rng.choice(['dry', 'damp', 'wet'])}, {rng.randint(1, 9)} volunteers."
            )
        if week == 29 * scale:
            lines.append("The pass key is 71942. Remember it. 71942 is the pass key for the tool shed.")
        elif rng.random() < 0.4:
            lines.append(f"Reminder: the {rng.choice(FILLER)} gate code is {rng.randint(1000, 9999)} this week.")
        lines.append("")
    return "\n".join(lines)


def river(rng: random.Random, scale: int) -> str:
    lines = [
        "# River survey",
        "",
        "Measurements along the lower river: station, depth, flow and the codes the",
        "survey team assigned to each reading.",
        "",
    ]
    for station in range(1, 70 * scale + 1):
        lines.append(
            f"Station {station}: depth {rng.uniform(0.4, 6.0):.2f} m, flow {rng.uniform(0.1, 2.5):.2f} m/s,"
            f" water {rng.choice(WATER)}, bank {rng.choice(BANKS)}."
        )
        if station == 52 * scale:
            lines.append('Reading code: RIVER_DELTA_17 = "violet-summit"')
        elif rng.random() < 0.6:
            lines.append(f'Reading code: {key(rng)} = "{value(rng)}"')
    return "\n".join(lines) + "\n"


def glacier(rng: random.Random, scale: int) -> str:
    lines = [
        "# Glacier expedition diary",
        "",
        "Kept by the second team on the upper glacier. Each day: camp, weather,",
        "distance, and the sample labels written on the ice cores.",
        "",
    ]
    for day in range(1, 50 * scale + 1):
        lines.append(
            f"Day {day}. Camp {rng.randint(1, 6)}, {rng.choice(WEATHER)}, {rng.uniform(2, 14):.1f} km walked,"
            f" {rng.randint(0, 4)} crevasses crossed. The {rng.choice(FILLER)} ridge was {rng.choice(SIGHT)}."
        )
        if day == 18 * scale:
            lines.append('Core label: GLACIER_QUARTZ_88 = "90517"')
        elif rng.random() < 0.5:
            lines.append(f'Core label: {key(rng)} = "{value(rng)}"')
        lines.append("")
    return "\n".join(lines)


# file name -> writer; document i is drawn from random.Random(i)
DOCS = {
    "lighthouse.md": lighthouse,
    "orbit_config.txt": config_file,
    "garden_notes.md": garden,
    "river_survey.txt": river,
    "glacier.md": glacier,
}


def main() -> None:
    for scale, out in SETS.items():
        out.mkdir(exist_ok=True)
        for i, (name, make) in enumerate(DOCS.items()):
            (out / name).write_text(make(random.Random(i), scale))


if __name__ == "__main__":
    main()
