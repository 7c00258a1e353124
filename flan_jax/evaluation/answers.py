"""Final-answer extraction and canonical comparison for math word problems and CoT targets.

A model's output, a gold solution and a distillation target all end in an answer written in
one of a few ways. `extract_answer` finds it, in this order of preference:

1. after the last `####` (the GSM8K gold solutions: `... \\n#### 1,080`);
2. after the last "the answer is" / "the final answer is" (the CoT formats:
   `... So the answer is 72.`), up to the end of that sentence, where the period of a title
   or a dotted abbreviation ("Mrs. Hilt", "3 p.m.") does not end it;
3. otherwise the last number in the text (the rule of the CoT-specialisation evaluation).

Numbers are read with thousands separators (`1,080`), signs (`-5`, `-$5`, Unicode minus),
decimals (`0.25`, `.5`), fractions (`3/4`) and proper mixed numbers (`1 1/2`); currency
symbols, trailing units (`12 apples`, `50%`) and a sentence's final period are ignored.
Numeric answers are compared as exact rationals (`fractions.Fraction`), with a relative
tolerance only to absorb float round-off in gold files (SVAMP stores `8/3` as
`2.6666666666666665`). Non-numeric answers ("yes", "(C)", "Sentence A", "bloody mess") are
compared as normalised text.

Worked example:

    extract_answer("She pays 2 x $1,250 = $2,500. So the answer is $2,500.")  -> "2500"
    extract_answer("Natalia sold 48 + 24 = 72 clips.\\n#### 72")               -> "72"
    extract_answer("... the answer is 1 1/2 cups.")                           -> "1.5"
    extract_answer("So the answer is (C).", numeric=False)                   -> "(C)"
    extract_answer("So the answer is Mrs. Hilt.", numeric=False)             -> "Mrs. Hilt"
    answers_match("... The answer is 3/4.", "0.75")                          -> True
"""

from __future__ import annotations

import fractions
import re
from collections.abc import Iterator

# `<<48/2=24>>`: the calculator annotations of the GSM8K gold solutions.
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")

# One number as written in a sentence. Alternatives are tried left to right, so a proper
# mixed number ("1 1/2") wins over its integer part and a fraction over its numerator.
# The look-behind keeps digits glued to a word ("A1", "x2") or to a decimal point from
# starting a number; the look-ahead keeps "1,2345" from reading as a thousands group. A
# minus sign counts only when glued to the number: "12 - 5" is a subtraction.
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    rf"""(?<![\w.])
    (?P<sign>-)?(?:\$\s?)?
    (?:
        (?P<whole>\d+)\s+(?P<mnum>\d+)/(?P<mden>\d+)(?!\d)         # mixed number
      | (?P<fnum>\d+)/(?P<fden>\d+)(?!\d)                         # fraction
      | (?P<plain>{_UNSIGNED})                                   # integer or decimal
    )""",
    re.VERBOSE,
)
_MARKER_RE = re.compile(r"(?:####|\bthe\s+(?:final\s+)?answer\s+is\b\s*:?)", re.IGNORECASE)
# The span after "the answer is" stops at the end of its sentence: a period, "!" or "?"
# followed by whitespace or the end (so "d.c" and "3.5" stay whole), or a line break.
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")
# A period inside a sentence: after a title or a dotted abbreviation ("Mrs. Hilt", "Dr. Lee",
# "5 p.m. on Monday", "the U.S. team"); ASDiv has such non-numeric answers. Only a period
# followed by more text on the line is read this way; a final one still ends the sentence.
_ABBREVIATIONS = frozenset(["mr", "mrs", "ms", "dr", "prof", "st", "mt", "jr", "sr"])
_WORD_BEFORE_RE = re.compile(r"(?<![\w.])([A-Za-z][A-Za-z.]*)$")
_TEXT_FOLLOWS_RE = re.compile(r"[ \t]+\S")
_OPTION_LABEL_RE = re.compile(r"^[(\[]?([A-Z])[)\].]?$")
_REL_TOL = fractions.Fraction(1, 10**6)


def strip_calculator_annotations(text: str) -> str:
    """Removes GSM8K calculator annotations: `48/2 = <<48/2=24>>24` -> `48/2 = 24`."""
    return _CALCULATOR_RE.sub("", text)


def _normalise_symbols(text: str) -> str:
    # Unicode minus and dashes used as minus signs by some generators and data files.
    return text.replace("\u2212", "-").replace("\u2013", "-")


def _match_value(match: re.Match) -> fractions.Fraction | None:
    if match["whole"] is not None:
        numerator, denominator = int(match["mnum"]), int(match["mden"])
        if denominator == 0 or numerator >= denominator:
            return None  # "15 15/3" is two numbers in a rationale, not a mixed number
        value = int(match["whole"]) + fractions.Fraction(numerator, denominator)
    elif match["fnum"] is not None:
        if int(match["fden"]) == 0:
            return None
        value = fractions.Fraction(int(match["fnum"]), int(match["fden"]))
    else:
        value = fractions.Fraction(match["plain"].replace(",", ""))
    return -value if match["sign"] else value


def _iter_numbers(text: str) -> Iterator[tuple[fractions.Fraction, int, int]]:
    """(value, start, end) of each number in `text` (already symbol-normalised), in order."""
    position = 0
    while (match := _NUMBER_RE.search(text, position)) is not None:
        value = _match_value(match)
        if value is None and match["whole"] is not None:
            # An improper "15 15/3": yield the whole part, then read on from the fraction.
            whole = fractions.Fraction(int(match["whole"]))
            yield (-whole if match["sign"] else whole), match.start(), match.end("whole")
            position = match.start("mnum")
            continue
        if value is not None:
            yield value, match.start(), match.end()
        position = match.end()


def find_numbers(text: str) -> list[fractions.Fraction]:
    """All numbers in `text`, in order, as exact rationals.

    Args:
      text: free text, e.g. `"He paid -$1,250.50 for 1 1/2 tons."`.

    Returns:
      The values, e.g. `[Fraction(-2501, 2), Fraction(3, 2)]`. A mixed-number candidate
      that is not proper ("15 15/3") is read as two numbers.
    """
    return [value for value, _, _ in _iter_numbers(_normalise_symbols(text))]


def parse_number(text: str) -> fractions.Fraction | None:
    """The value of `text` when it is one number with optional currency, units or period.

    `"1,080"`, `"$2,500."`, `"-3/4"`, `"9 (apples)"` and `"50%"` parse; `"3 + 4"`,
    `"Sentence A"` and `""` do not (None).
    """
    stripped = _normalise_symbols(text).strip()
    match = _NUMBER_RE.match(stripped)
    if match is None:
        return None
    value = _match_value(match)
    rest = stripped[match.end() :].strip()
    # What may follow the number: a unit word or a parenthesised unit, never another number.
    if value is None or re.search(r"\d", rest):
        return None
    return value


def format_number(value: fractions.Fraction) -> str:
    """The canonical spelling: `72`, `-0.25`, `2.6` when exact in decimal, else `8/3`."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if scaled < 0 else ""
    magnitude = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{magnitude[:-digits]}.{magnitude[-digits:]}"


def canonicalize_answer(text: str) -> str:
    """A gold answer's canonical string: a canonical number when it is one, else clean text.

    `"1,080"` -> `"1080"`, `"39.0"` -> `"39"`, `"9 (apples)"` -> `"9"`,
    `" Mrs. Hilt "` -> `"Mrs. Hilt"`.
    """
    value = parse_number(text)
    return format_number(value) if value is not None else " ".join(text.split())


def _is_abbreviation_period(text: str, position: int) -> bool:
    """Whether the period at `position` closes an abbreviation inside a sentence."""
    if text[position] != "." or not _TEXT_FOLLOWS_RE.match(text, position + 1):
        return False
    word = _WORD_BEFORE_RE.search(text, 0, position)
    if word is None:
        return False
    # "p.m", "U.S", "D.C": a dotted abbreviation; "Mrs", "Dr": a title.
    return "." in word.group(1) or word.group(1).lower() in _ABBREVIATIONS


def _sentence_end(text: str) -> int:
    """Where the sentence starting `text` ends (the end of `text` when it does not)."""
    for match in _SENTENCE_END_RE.finditer(text):
        if not _is_abbreviation_period(text, match.start()):
            return match.start()
    return len(text)


def _span_after_last_marker(text: str) -> str | None:
    markers = list(_MARKER_RE.finditer(text))
    if not markers:
        return None
    tail = text[markers[-1].end() :].lstrip()
    return tail[: _sentence_end(tail)].strip() or None


def marked_answer_span(text: str) -> str | None:
    """The raw answer after the last `####` or "the answer is", to the end of its sentence.

    None when the text has no such marker (or nothing follows it). Periods of titles and
    dotted abbreviations do not end the sentence:
    `"So the answer is Mrs. Hilt."` -> `"Mrs. Hilt"`; `"... is 5 p.m. today."` -> `"5 p.m. today"`.
    """
    return _span_after_last_marker(_normalise_symbols(strip_calculator_annotations(text)))


def extract_answer_span(text: str) -> str | None:
    """The raw text of the final answer: after `####` or "the answer is", or the last number.

    Returns None when the text has no answer marker and no number.
    """
    text = _normalise_symbols(strip_calculator_annotations(text))
    span = _span_after_last_marker(text)
    if span:
        return span
    numbers = list(_iter_numbers(text))
    if not numbers:
        return None
    _, start, stop = numbers[-1]
    return text[start:stop].strip()


def extract_answer(text: str, *, numeric: bool = True) -> str | None:
    """The final answer of a solution or model output, canonicalised.

    Args:
      text: a gold solution or a model prediction.
      numeric: read the answer as a number (math sets). The first number of the marked span
        is the answer ("the answer is 5 apples, not 7" -> "5"); a marked span without a
        number falls back to the last number of the whole text. With False, the marked
        span's text is returned as is (option letters, yes/no, free-text answers).

    Returns:
      The canonical answer string, or None when nothing answer-like is found.
    """
    span = extract_answer_span(text)
    if span is None or not numeric:
        return span
    numbers = find_numbers(span)
    if not numbers:
        numbers = find_numbers(strip_calculator_annotations(text))[-1:]
    return format_number(numbers[0]) if numbers else None


def normalise_text_answer(text: str) -> str:
    """Case-, space- and final-period-insensitive text form; option labels reduce to a letter.

    `"(C)"`, `"C)"` and `"C"` -> `"c"`; `"Washington D.C."` -> `"washington d.c"`.
    """
    text = " ".join(text.split()).rstrip(".").strip()
    label = _OPTION_LABEL_RE.match(text)
    return (label.group(1) if label else text).lower()


def numbers_equal(a: fractions.Fraction, b: fractions.Fraction) -> bool:
    """Exact equality, or within a relative 1e-6 for golds stored as rounded floats."""
    return a == b or abs(a - b) <= _REL_TOL * max(fractions.Fraction(1), abs(b))


def answer_equals(answer: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold: numerically when the gold is a number,
    else as normalised text. None (nothing extracted) is never correct."""
    if answer is None:
        return False
    gold_value = parse_number(gold)
    if gold_value is None:
        return normalise_text_answer(answer) == normalise_text_answer(gold)
    value = parse_number(answer)
    return value is not None and numbers_equal(value, gold_value)


def answers_match(prediction: str, gold: str) -> bool:
    """Whether a prediction's final answer equals the gold answer.

    Args:
      prediction: the model's full output (rationale and answer).
      gold: the canonical gold answer (`MathExample.answer`). When it is a number the
        prediction's answer is read as a number, otherwise as text.
    """
    numeric = parse_number(gold) is not None
    return answer_equals(extract_answer(prediction, numeric=numeric), gold)
