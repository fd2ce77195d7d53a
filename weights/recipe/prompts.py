"""Prompts for the synthetic corpus: short stories, simple dialogues and chat answers.

Every prompt is built from small word lists, so the corpus covers many combinations without any
outside data. The teacher (SmolLM2-135M-Instruct) answers each one in its chat format.
"""

from __future__ import annotations

import itertools
import random

CHARACTERS = [
    "a little rabbit", "a brave girl named Lily", "a curious boy named Tom", "an old fisherman",
    "a small dragon", "a friendly robot", "a shy cat", "a busy bee", "a lost puppy", "a clever fox",
    "a kind grandmother", "two best friends", "a young king", "a tiny ant", "a happy elephant",
    "a girl named Mia", "a boy named Ben", "a sleepy bear", "a baby duck", "a wise owl",
]
GOALS = [
    "wants to find a lost toy", "learns to share", "is afraid of the dark", "makes a new friend",
    "helps a neighbor", "goes to the sea for the first time", "plants a garden", "bakes a cake",
    "gets lost in the forest", "wants to fly", "learns to ride a bike", "finds a secret door",
    "must be patient", "tells the truth", "builds a boat", "visits the city",
    "has a bad day that turns good", "cares for a sick bird", "goes on a picnic", "loses a race",
]
PLACES = ["in a small village", "in the forest", "by the river", "at school", "on a farm",
          "in a big city", "on a snowy mountain", "at the beach", "in a garden", "in the park"]
STYLES = ["happy", "funny", "gentle", "exciting", "sweet", "simple"]
TOPICS = [
    "the weather", "a favorite food", "weekend plans", "a school project", "a new pet",
    "a birthday party", "a broken toy", "a trip to the zoo", "learning to cook", "a rainy day",
    "a lost book", "a soccer game", "moving to a new house", "a visit to the doctor", "a camping trip",
]
PAIRS = [("Anna", "her mother"), ("Sam", "his teacher"), ("a boy", "his grandfather"),
         ("two friends", None), ("a girl", "a shopkeeper"), ("Max", "his sister")]
QUESTIONS = [
    "Why is the sky blue?", "What do bees do?", "How do plants grow?", "What is a rainbow?",
    "Why do we need sleep?", "What do cats like to eat?", "How do fish breathe?", "What is snow?",
    "Can you tell me a joke?", "What is the capital of France?", "How many legs does a spider have?",
    "What is the sun?", "Why do leaves change color?", "How do birds fly?", "What is a good breakfast?",
    "How can I be a good friend?", "What is the moon made of?", "Why is it important to wash hands?",
    "What is your favorite color?", "How do you make a sandwich?", "What animals live in the ocean?",
    "What should I do on a rainy day?", "How do I say thank you in French?", "What is two plus three?",
]


def story_prompts() -> list[str]:
    out = []
    for who, goal, where, style in itertools.product(CHARACTERS, GOALS, PLACES, STYLES):
        out.append(f"Write a short, {style} story for young children about {who} who {goal} {where}. "
                   "Use simple words.")
    return out


def dialogue_prompts() -> list[str]:
    out = []
    for (a, b), topic in itertools.product(PAIRS, TOPICS):
        people = f"{a} and {b}" if b else a
        out.append(f"Write a short, simple dialogue between {people} about {topic}. "
                   "Write each line as Name: words.")
    return out


# Templated everyday questions, so that `gatedgen chat` sees many more than the fixed list above.
THINGS = [
    "a volcano", "a rainbow", "a cloud", "the ocean", "a tree", "a bicycle", "a library", "a farm",
    "the moon", "a star", "a river", "a desert", "a forest", "a train", "a bridge", "a garden",
    "a computer", "a clock", "a map", "a museum", "an island", "a mountain", "a honeybee", "a whale",
    "a dinosaur", "a butterfly", "a penguin", "a lighthouse", "a kite", "a piano", "a castle", "a snowman",
]
ANIMALS = ["dogs", "cats", "birds", "fish", "frogs", "horses", "rabbits", "owls", "ants", "elephants",
           "turtles", "bees", "bears", "dolphins", "squirrels", "cows"]
ANIMAL_FACTS = ["eat", "sleep", "live", "talk to each other", "keep warm in winter", "raise their babies"]
ACTIVITIES = ["reading more books", "making friends at a new school", "keeping my room clean",
              "learning to swim", "saving money", "drawing a cat", "staying calm", "learning a new word every day",
              "a rainy afternoon", "a long car trip", "helping at home", "taking care of a plant",
              "getting ready for school", "planning a picnic", "being kind to others", "sleeping well"]
FOODS = ["bread", "pancakes", "soup", "a fruit salad", "cookies", "pizza", "rice", "lemonade"]
QUESTION_TEMPLATES = [
    ("What is {t}?", THINGS), ("Tell me about {t}.", THINGS), ("Describe {t} in a few sentences.", THINGS),
    ("How do {t} {f}?", None), ("Give me three tips for {t}.", ACTIVITIES), ("How do you make {t}?", FOODS),
    ("Write a short poem about {t}.", THINGS), ("What can I do with {t}?", FOODS),
]


def chat_questions() -> list[str]:
    out = list(QUESTIONS)
    for template, words in QUESTION_TEMPLATES:
        if words is None:
            out += [template.format(t=a, f=f) for a, f in itertools.product(ANIMALS, ANIMAL_FACTS)]
        else:
            out += [template.format(t=w) for w in words]
    return out


# Share of each kind in the corpus.
MIX = (("story", 0.66), ("dialogue", 0.14), ("chat", 0.20))


def prompt_stream(seed: int = 0):
    """Endless (kind, prompt) pairs in the proportions of MIX, reproducible from ``seed``."""
    rng = random.Random(seed)
    pools = {"story": story_prompts(), "dialogue": dialogue_prompts(), "chat": chat_questions()}
    while True:
        r, kind = rng.random(), MIX[-1][0]
        for name, share in MIX:
            if r < share:
                kind = name
                break
            r -= share
        yield kind, rng.choice(pools[kind])
