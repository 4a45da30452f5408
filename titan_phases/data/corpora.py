"""The two embedded corpora.

* ``python_docs`` (pretraining): docstrings of ~100 Python standard-library modules, extracted
  once from CPython 3.11 and shipped in ``texts/python_stdlib_docs.txt`` so every machine sees the
  same bytes whatever its Python patch release.
* ``recipes`` (fine-tuning): cooking recipes generated from a fixed seed. ``random.Random`` with
  an integer seed produces the same stream on every CPython >= 3.2, so the corpus is identical
  everywhere without shipping it.

Each corpus is a list of documents; the last ``VALIDATION_FRACTION`` of them form the
validation split, so the two splits never share a document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources

VALIDATION_FRACTION = 0.05
_RECORD_SEPARATOR = "\n\x1e\n"


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    documents: tuple[str, ...]

    def split(self, split: str) -> tuple[str, ...]:
        n_validation = max(1, int(len(self.documents) * VALIDATION_FRACTION))
        if split == "train":
            return self.documents[:-n_validation]
        if split == "validation":
            return self.documents[-n_validation:]
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'validation'")


def python_docs_corpus() -> Corpus:
    text = resources.files("titan_phases.data").joinpath("texts/python_stdlib_docs.txt").read_text()
    return Corpus(
        name="python_docs",
        description="Python standard-library docstrings (pretraining)",
        documents=tuple(doc for doc in text.split(_RECORD_SEPARATOR) if doc.strip()),
    )


_DISHES = (
    "soup", "stew", "salad", "pie", "risotto", "curry", "bread", "tart", "gratin", "pilaf",
    "omelette", "casserole", "chowder", "dumplings", "noodles", "pancakes", "frittata", "biscuits",
)
_MAIN = (
    "lentil", "pumpkin", "chicken", "mushroom", "leek", "tomato", "spinach", "salmon", "apple",
    "chickpea", "potato", "carrot", "barley", "cabbage", "beetroot", "onion", "pea", "corn",
    "aubergine", "pear", "plum", "rhubarb", "cod", "beef", "lamb", "tofu", "rice", "fennel",
)
_STYLE = (
    "rustic", "smoky", "spiced", "creamy", "lemony", "herbed", "golden", "slow-cooked",
    "roasted", "grandmother's", "summer", "winter", "harvest", "quick", "one-pot", "hearty",
)
_EXTRAS = (
    "garlic", "thyme", "rosemary", "butter", "olive oil", "black pepper", "sea salt", "cumin",
    "paprika", "parsley", "coriander", "ginger", "honey", "cream", "stock", "white wine",
    "bay leaves", "nutmeg", "cinnamon", "chilli flakes", "lemon zest", "mustard", "flour", "eggs",
)
_UNITS = ("g", "ml", "tablespoons", "teaspoons", "cups", "pinches", "handfuls")
_VERBS = (
    "Chop", "Slice", "Dice", "Whisk", "Simmer", "Roast", "Fry", "Stir", "Fold", "Season",
    "Knead", "Bake", "Toast", "Grate", "Mash", "Blend", "Poach", "Braise",
)
_MANNER = (
    "gently", "until golden", "until soft", "for a few minutes", "over a low heat",
    "until fragrant", "until thickened", "without stirring", "until tender", "briskly",
)


def _recipe(rng: random.Random, number: int) -> str:
    main = rng.choice(_MAIN)
    title = f"{rng.choice(_STYLE).capitalize()} {main} {rng.choice(_DISHES)}"
    serves = rng.randint(2, 8)
    minutes = rng.choice(range(15, 181, 5))
    ingredients = [main, *rng.sample(_EXTRAS, rng.randint(4, 8))]
    lines = [
        f"Recipe {number}: {title}",
        f"Serves {serves}. Ready in {minutes} minutes.",
        "",
        "Ingredients:",
    ]
    for item in ingredients:
        lines.append(f"- {rng.randint(1, 500) if rng.random() < 0.6 else rng.randint(1, 4)} "
                     f"{rng.choice(_UNITS)} {item}")
    lines += ["", "Method:"]
    for step in range(1, rng.randint(4, 9) + 1):
        a, b = rng.sample(ingredients, 2)
        lines.append(f"{step}. {rng.choice(_VERBS)} the {a} with the {b} {rng.choice(_MANNER)}.")
    lines += ["", f"Tip: the {main} keeps for {rng.randint(1, 5)} days in a cool place."]
    return "\n".join(lines)


def recipes_corpus(n_documents: int = 1500, seed: int = 20261122) -> Corpus:
    rng = random.Random(seed)
    return Corpus(
        name="recipes",
        description=f"{n_documents} generated cooking recipes, seed {seed} (fine-tuning)",
        documents=tuple(_recipe(rng, i + 1) for i in range(n_documents)),
    )


CORPORA = {"python_docs": python_docs_corpus, "recipes": recipes_corpus}
