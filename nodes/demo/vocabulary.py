"""Class prompts of the demo model: a colour and a shape, e.g. "a red star"."""
from typing import Tuple

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "stripes", "glyphs")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
NULL_TOKEN = 0                       # the unconditional (CFG-dropout) class
WORDS = ("<null>",) + COLOURS + SHAPES
PROMPT_TOKENS = 2                    # colour word, shape word


def parse_prompt(prompt: str) -> Tuple[int, int]:
    """'a red star' -> (token of 'red', token of 'star'); an empty prompt is the null class."""
    words = prompt.lower().replace(",", " ").split()
    if not words:
        return NULL_TOKEN, NULL_TOKEN
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(colours) != 1 or len(shapes) != 1:
        raise ValueError(f"prompt '{prompt}' needs one colour ({', '.join(COLOURS)}) "
                         f"and one shape ({', '.join(SHAPES)}), e.g. 'a red star'")
    return WORDS.index(colours[0]), WORDS.index(shapes[0])
