"""A naive pure-Python token alignment: the reference for `flan_jax.distill.alignment`.

This is the O(m n) double loop with a Python Levenshtein per cell that the vectorised
implementation replaces; tests check both give the same table and path, and
`benchmarks/kernel_bench.py` times one against the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from flan_jax.distill.alignment import normalize_token


def naive_levenshtein(a: str, b: str) -> int:
    """Textbook edit distance (unit insert, delete, substitute)."""
    previous = list(range(len(b) + 1))
    for p, char_a in enumerate(a, start=1):
        current = [p]
        for q, char_b in enumerate(b, start=1):
            current.append(
                min(previous[q] + 1, current[q - 1] + 1, previous[q - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def naive_align(
    teacher_tokens: Sequence[str], student_tokens: Sequence[str]
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """(cost table, path) of the alignment DP, cell by cell, with the library's tie-breaking."""
    s = [normalize_token(t) for t in teacher_tokens]
    t = [normalize_token(t) for t in student_tokens]
    m, n = len(s), len(t)
    if m == 0 or n == 0:
        return [[0] * n for _ in range(m)], []
    table = [[0] * n for _ in range(m)]
    for i in range(m):
        for j in range(n):
            cost = naive_levenshtein(s[i], t[j])
            if i == 0 and j == 0:
                table[i][j] = cost
            elif i == 0:
                table[i][j] = cost + table[i][j - 1]
            elif j == 0:
                table[i][j] = cost + table[i - 1][j]
            else:
                table[i][j] = cost + min(table[i - 1][j], table[i][j - 1], table[i - 1][j - 1])
    i, j = m - 1, n - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = table[i - 1][j - 1], table[i - 1][j], table[i][j - 1]
            best = min(diagonal, up, left)
            exact = s[i] == t[j]
            if diagonal == best and (exact or (up > best and left > best)):
                i, j = i - 1, j - 1
            elif up == best:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    return table, path[::-1]
