"""Synthetic English film reviews: the "synthetic" data source, for offline runs and tests.

generate_synthetic writes single reviews labelled negative (0) or positive (1);
generate_synthetic_pairs writes pairs of reviews labelled by whether they agree (PAIR_LABEL_NAMES).
Both are deterministic in (seed, split), so the data is the same on every machine and needs no
download, and both are hard enough that a model must read the sentences, not count words.
crisp.data turns a task's `synthetic` settings into train and validation splits.
"""

from __future__ import annotations

import random

import pandas as pd

from crisp.errors import ConfigError

PAIR_LABEL_NAMES = ("disagree", "agree")

# Built so that word counts alone cannot solve it: negation flips an adjective ("not good"),
# and in "X, but Y" / "although X, Y" the second clause decides, while X usually carries the
# opposite sentiment with the same kind of words. Label noise adds a floor no model can pass.
# The pair task asks whether a second review agrees with the first: each review's words say
# nothing about agreement on their own (both sentiments are equally likely in either class), so
# only reading the two together solves it.

POSITIVE_WORDS = [
    "good",
    "great",
    "wonderful",
    "delightful",
    "charming",
    "moving",
    "brilliant",
    "funny",
    "engaging",
    "beautiful",
    "clever",
    "gripping",
    "touching",
    "superb",
    "memorable",
    "enjoyable",
    "fresh",
    "thoughtful",
    "powerful",
    "entertaining",
]
NEGATIVE_WORDS = [
    "bad",
    "dull",
    "boring",
    "tedious",
    "clumsy",
    "awful",
    "bland",
    "predictable",
    "messy",
    "lifeless",
    "forgettable",
    "shallow",
    "tiresome",
    "painful",
    "weak",
    "flat",
    "pointless",
    "silly",
    "sloppy",
    "uninspired",
]
INTENSIFIERS = ["very", "extremely", "really", "incredibly", "truly", "remarkably", "quite", "so"]
SUBJECTS = {  # subject -> is it plural
    "the movie": False,
    "the film": False,
    "this picture": False,
    "the story": False,
    "the plot": False,
    "the script": False,
    "the acting": False,
    "the cast": False,
    "the dialogue": False,
    "the soundtrack": False,
    "the ending": False,
    "the direction": False,
    "the humor": False,
    "the pacing": False,
    "the lead actor": False,
    "the final act": False,
    "the performances": True,
    "the characters": True,
    "the jokes": True,
    "the visuals": True,
}
# (affirmative, negated forms) for singular and plural subjects
LINKING_VERBS = {
    False: [
        ("is", ["is not", "isn't", "is never"]),
        ("was", ["was not", "wasn't", "was never"]),
        ("feels", ["does not feel", "doesn't feel", "never feels"]),
        ("seems", ["does not seem"]),
    ],
    True: [
        ("are", ["are not", "aren't", "are never"]),
        ("were", ["were not", "weren't"]),
        ("feel", ["do not feel", "don't feel", "never feel"]),
        ("seem", ["do not seem"]),
    ],
}
# (past tense, base form) of verbs a viewer uses about the film
POSITIVE_VERBS = [
    ("loved", "love"),
    ("enjoyed", "enjoy"),
    ("liked", "like"),
    ("admired", "admire"),
    ("adored", "adore"),
]
NEGATIVE_VERBS = [("hated", "hate"), ("disliked", "dislike"), ("resented", "resent"), ("loathed", "loathe")]
OPENERS = ["honestly, ", "overall, ", "in the end, ", "to be fair, ", "frankly, "]


def _check_label_noise(label_noise: float) -> None:
    # 0.5 is allowed: the labels are then coin flips, a control with nothing to learn.
    if not 0.0 <= label_noise <= 0.5:
        raise ConfigError(f"config key 'synthetic.label_noise': {label_noise} is not in [0, 0.5]")


def generate_synthetic(size: int, seed: int, label_noise: float = 0.0, split: str = "train") -> pd.DataFrame:
    """`size` sentiment sentences with columns text and label (0 negative, 1 positive).

    The same (seed, split) always gives the same sentences; label noise is drawn from its own
    stream, so changing it flips labels without changing the texts.
    """
    _check_label_noise(label_noise)
    # String seeds are hashed with SHA-512 by `random`, so they are stable across processes.
    texts_rng = random.Random(f"crisp-synthetic-text:{seed}:{split}")
    noise_rng = random.Random(f"crisp-synthetic-noise:{seed}:{split}")
    texts, labels = [], []
    for _ in range(size):
        label = texts_rng.randint(0, 1)
        texts.append(_synthetic_sentence(texts_rng, positive=bool(label)))
        labels.append(1 - label if noise_rng.random() < label_noise else label)
    return pd.DataFrame({"text": texts, "label": labels})


def generate_synthetic_pairs(size: int, seed: int, label_noise: float = 0.0, split: str = "train") -> pd.DataFrame:
    """`size` pairs of short reviews, columns text, text_pair and label (0 disagree, 1 agree).

    Each review's sentiment is drawn independently, so agreement is as likely as not and no
    word is a clue to it; negation ("i did not enjoy ...", "... isn't dull") means the reader
    must work out each sentiment before comparing. Deterministic in (seed, split), like
    generate_synthetic, with label noise from its own stream.
    """
    _check_label_noise(label_noise)
    texts_rng = random.Random(f"crisp-synthetic-pairs:{seed}:{split}")
    noise_rng = random.Random(f"crisp-synthetic-pairs-noise:{seed}:{split}")
    firsts, seconds, labels = [], [], []
    for _ in range(size):
        first_positive, second_positive = texts_rng.random() < 0.5, texts_rng.random() < 0.5
        firsts.append(_clause(texts_rng, first_positive) + texts_rng.choice([" .", " !", ""]))
        seconds.append(_clause(texts_rng, second_positive) + texts_rng.choice([" .", " !", ""]))
        label = int(first_positive == second_positive)
        labels.append(1 - label if noise_rng.random() < label_noise else label)
    return pd.DataFrame({"text": firsts, "text_pair": seconds, "label": labels})


def _synthetic_sentence(rng: random.Random, positive: bool) -> str:
    shape = rng.random()
    if shape < 0.35:
        body = _clause(rng, positive)
    elif shape < 0.65:
        first = _clause(rng, positive if rng.random() < 0.2 else not positive)
        body = f"{first}, but {_clause(rng, positive)}"
    elif shape < 0.8:
        conjunction = rng.choice(["although", "even though", "while"])
        body = f"{conjunction} {_clause(rng, not positive)}, {_clause(rng, positive)}"
    else:
        subject = rng.choice(list(SUBJECTS))
        verb = rng.choice(LINKING_VERBS[SUBJECTS[subject]])[0]
        first, second = rng.sample(POSITIVE_WORDS if positive else NEGATIVE_WORDS, 2)
        body = f"{subject} {verb} {_intensify(rng, first)} and {second}"
    opener = rng.choice(OPENERS) if rng.random() < 0.25 else ""
    return opener + body + rng.choice([" .", " .", " !", ""])


def _clause(rng: random.Random, positive: bool) -> str:
    negated = rng.random() < 0.35
    if rng.random() < 0.25:  # the viewer speaks: "i loved the plot" / "i did not enjoy the plot"
        verbs = POSITIVE_VERBS if positive != negated else NEGATIVE_VERBS
        past, base = rng.choice(verbs)
        verb = rng.choice([f"did not {base}", f"didn't {base}"]) if negated else past
        return f"i {verb} {rng.choice(list(SUBJECTS))}"
    subject = rng.choice(list(SUBJECTS))
    affirmative, negations = rng.choice(LINKING_VERBS[SUBJECTS[subject]])
    # A negated adjective carries the opposite sentiment: "not good" is negative.
    words = POSITIVE_WORDS if positive != negated else NEGATIVE_WORDS
    verb = rng.choice(negations) if negated else affirmative
    return f"{subject} {verb} {_intensify(rng, rng.choice(words))}"


def _intensify(rng: random.Random, adjective: str) -> str:
    return f"{rng.choice(INTENSIFIERS)} {adjective}" if rng.random() < 0.3 else adjective
