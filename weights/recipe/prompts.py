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


def chat_questions() -> list[str]:
    return list(QUESTIONS)


def mixed_prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (kind, prompt) pairs: 80% stories, 12% dialogues, 8% chat questions, shuffled."""
    rng = random.Random(seed)
    stories, dialogues, questions = story_prompts(), dialogue_prompts(), chat_questions()
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.80:
            out.append(("story", rng.choice(stories)))
        elif r < 0.92:
            out.append(("dialogue", rng.choice(dialogues)))
        else:
            out.append(("chat", rng.choice(questions)))
    return out
