"""Prompts every engine test runs, so the engines are checked on the same text."""

PROMPTS = [
    "Question: What is 2 + 3? Answer:",
    "The capital of France is",
    "中国的首都是",
    "Let x = 4. Then 2x + 1 =",
    "A",
    "Once upon a time there was a little girl who lived in a village near the forest.",
]
