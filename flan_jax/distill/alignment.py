"""Aligning a teacher's tokens to the student's tokens, and mapping the teacher's top-k.

The teacher (e.g. a GPT-style byte-level BPE model) and the student (a T5 SentencePiece
model) split the same text differently. Following arXiv 2301.12726, the two token sequences
are aligned by dynamic programming

    D[i, j] = c(s_i, t_j) + min(D[i-1, j], D[i, j-1], D[i-1, j-1])

where s are the teacher tokens, t the student tokens and c the Levenshtein distance between
the tokens' strings after removing whitespace and the word markers ("▁" of SentencePiece,
"Ġ"/"Ċ" of byte-level BPE). The backtrace from the last cell pairs every token with at least
one token of the other side; moves are diagonal (one-to-one), up (two teacher tokens share a
student token) or left (two student tokens share a teacher token); `backtrace` says how ties
are broken.

A student token paired with exactly one teacher token that is paired only with it, with equal
normalised strings, takes the teacher's top-k distribution (converted into student ids;
tokens missing from the student vocabulary are dropped). Every other student token falls back
to a one-hot target on itself.

Worked example::

    teacher  [" is", " 12", "34", "."]      normalised  ["is", "12", "34", "."]
    student  ["▁is", "▁1234", "."]          normalised  ["is", "1234", "."]
    pairs    (0,0) (1,1) (2,1) (3,2)        cost 0 + 2 + 2 + 0 = 4
    targets  "▁is": teacher top-k of " is";  "▁1234": one-hot;  ".": teacher top-k of "."

Summing Levenshtein costs favours short groups: teacher [" $", "1", ",", "000"] against
student ["▁$", "1,000"] pairs " $", "1" and "," with "▁$" (cost 0 + 1 + 1) rather than "1"
and "," with "1,000" (4 + 4), so "▁$" falls back too. This is the paper's cost, kept as is;
the fallback rate reports what it costs.

Both dynamic programmes (Levenshtein between all token pairs, and the alignment itself) are
vectorised with numpy: along one axis each cell depends on its left neighbour through
`min(x, left + cost)`, which unrolls into a prefix minimum (`np.minimum.accumulate`), so each
row is a handful of array operations instead of a Python loop over cells.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from flan_jax.distill.teacher_store import TeacherStore

SENTENCEPIECE_SPACE = "▁"
# Whitespace and word-boundary markers dropped before comparing token strings: SentencePiece's
# "▁" and byte-level BPE's "Ġ" (space) and "Ċ" (newline).
_MARKERS = re.compile(r"[\s▁ĠĊ]+")
PAD_STUDENT_ID = 0  # padding id of aligned targets; padding is marked by a -inf log-prob


def normalize_token(token: str) -> str:
    """The token string compared by the alignment: no whitespace and no word markers.

    >>> normalize_token("▁The"), normalize_token("Ġ42"), normalize_token(" ,\\n")
    ('The', '42', ',')
    """
    return _MARKERS.sub("", token)


def to_sentencepiece_piece(token: str) -> str:
    """Writes a teacher token string the way SentencePiece spells it ("Ġthe", " the" -> "▁the")."""
    return token.replace("Ġ", " ").replace("Ċ", "\n").replace(" ", SENTENCEPIECE_SPACE)


def _encode_strings(strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Code points `[n, max_len]` of a numpy unicode array (0-padded), and lengths `[n]`."""
    width = max(strings.dtype.itemsize // 4, 1)
    codes = np.ascontiguousarray(strings, dtype=f"<U{width}").view(np.int32)
    return codes.reshape(len(strings), width), np.char.str_len(strings)


def _edit_distance_block(
    codes_a: np.ndarray, len_a: np.ndarray, codes_b: np.ndarray, len_b: np.ndarray
) -> np.ndarray:
    """Levenshtein `[X, Y]` for code points sorted so that `len_a` is non-increasing.

    One vectorised step per character of a; strings of a that are finished drop out. Padding
    needs no special value: a's characters are read only while a is unfinished, and cells
    beyond len(b) never feed the cells read at len(b).
    """
    width = int(len_b.max()) + 1
    codes_b = codes_b[:, : width - 1].T  # [q, y]
    ramp = np.arange(width, dtype=np.int16)[:, None, None]
    # prev[q, x, y]: distance between the current prefix of a_x and b_y[:q]; q first so the
    # prefix minimum runs over contiguous rows.
    prev = np.broadcast_to(ramp, (width, len(len_a), len(len_b))).astype(np.int16)
    result = np.broadcast_to(len_b, (len(len_a), len(len_b))).astype(np.int16)
    columns = np.arange(len(len_b))
    for p in range(int(len_a.max(initial=0))):
        active = int(np.count_nonzero(len_a > p))
        prev = prev[:, :active]
        mismatch = codes_a[None, :active, p, None] != codes_b[:, None, :]  # [q, x, y]
        candidates = np.empty_like(prev)
        candidates[0] = p + 1
        np.minimum(prev[1:] + 1, prev[:-1] + mismatch, out=candidates[1:])
        # cur[q] = min(candidates[q], cur[q-1] + 1) == q + prefix-min(candidates - q).
        candidates -= ramp
        prev = np.minimum.accumulate(candidates, axis=0) + ramp
        done = np.flatnonzero(len_a[:active] == p + 1)
        result[done] = prev[len_b[None, :], done[:, None], columns[None, :]]
    return result


def pairwise_edit_distance(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Levenshtein distance between every string of `a` and every string of `b`.

    Runs the character-level DP for all pairs of distinct strings at once, with the strings
    of b grouped by length (1, 2-3, 4-7, ...) so that short strings do not pay for the
    longest one.

    Returns:
      int32 `[len(a), len(b)]`.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.int32)
    unique_a, inverse_a = np.unique(np.array(list(a), dtype=str), return_inverse=True)
    unique_b, inverse_b = np.unique(np.array(list(b), dtype=str), return_inverse=True)
    by_length = np.argsort(-np.char.str_len(unique_a), kind="stable")
    codes_a, len_a = _encode_strings(unique_a[by_length])
    codes_b, len_b = _encode_strings(unique_b)
    distances = np.empty((len(unique_a), len(unique_b)), np.int32)
    groups = np.frexp(np.maximum(len_b, 1))[1]  # 1 -> 1, 2-3 -> 2, 4-7 -> 3, ...
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        distances[by_length[:, None], members[None, :]] = _edit_distance_block(
            codes_a, len_a, codes_b[members], len_b[members]
        )
    return distances[inverse_a.reshape(-1)][:, inverse_b.reshape(-1)]


def alignment_costs(cost: np.ndarray) -> np.ndarray:
    """Accumulated cost table `D [m, n]` of the alignment DP, row by row.

    Within row i, `D[i, j] = C[i, j] + min(A[j], D[i, j-1])` with `A[j] = min(D[i-1, j],
    D[i-1, j-1])`; unrolled, `D[i, j] = S[j] + min_{j' <= j}(A[j'] - S[j'-1])` where S is the
    row's running sum of C, i.e. one prefix minimum per row.
    """
    m, n = cost.shape
    table = np.zeros((m, n), np.int64)
    if m == 0 or n == 0:
        return table
    inclusive = np.cumsum(cost, axis=1, dtype=np.int64)  # S[j] for every row at once
    exclusive = inclusive - cost  # S[j - 1]
    table[0] = inclusive[0]
    best_prev = np.empty((n,), np.int64)
    for i in range(1, m):
        above = table[i - 1]
        best_prev[0] = above[0]
        np.minimum(above[1:], above[:-1], out=best_prev[1:])
        np.subtract(best_prev, exclusive[i], out=best_prev)
        np.minimum.accumulate(best_prev, out=best_prev)
        np.add(inclusive[i], best_prev, out=table[i])
    return table


def backtrace(table: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Pairs `[P, 2]` (teacher index, student index) of an optimal path, in order.

    Among equally cheap predecessors, a cell whose tokens match exactly (cost 0) prefers the
    diagonal, and a mismatched cell prefers up, then left, then the diagonal. Mismatched
    pieces of a split token then stay grouped with each other instead of attaching to an
    exactly matching neighbour, which would cost that neighbour its one-to-one match: with
    teacher [" is", " 12", "34"] and student ["▁is", "▁1234"] both paths cost 4, and this rule
    keeps "is"-"is" one-to-one.
    """
    m, n = table.shape
    if m == 0 or n == 0:
        return np.zeros((0, 2), np.int64)
    i, j = m - 1, n - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diagonal, up, left = table[i - 1, j - 1], table[i - 1, j], table[i, j - 1]
            best = min(diagonal, up, left)
            if diagonal == best and (cost[i, j] == 0 or (up > best and left > best)):
                i, j = i - 1, j - 1
            elif up == best:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    return np.array(path[::-1], np.int64)


@dataclasses.dataclass(frozen=True)
class TokenAlignment:
    """The alignment of one teacher sequence to one student sequence.

    Attributes:
      pairs: `[P, 2]` (teacher index, student index) along the optimal path.
      teacher_for_student: `[n]` the teacher index whose distribution student token j takes,
        or -1 when j falls back to one-hot.
      cost: total alignment cost `D[m-1, n-1]` (0 when either side is empty).
    """

    pairs: np.ndarray
    teacher_for_student: np.ndarray
    cost: int


def align_tokens(teacher_tokens: Sequence[str], student_tokens: Sequence[str]) -> TokenAlignment:
    """Aligns two tokenisations of (about) the same text; see the module docstring."""
    teacher_norm = [normalize_token(t) for t in teacher_tokens]
    student_norm = [normalize_token(t) for t in student_tokens]
    cost = pairwise_edit_distance(teacher_norm, student_norm)
    table = alignment_costs(cost)
    pairs = backtrace(table, cost)
    matched = np.full((len(student_tokens),), -1, np.int64)
    if len(pairs):
        per_teacher = np.bincount(pairs[:, 0], minlength=len(teacher_tokens))
        per_student = np.bincount(pairs[:, 1], minlength=len(student_tokens))
        for i, j in pairs[(per_teacher[pairs[:, 0]] == 1) & (per_student[pairs[:, 1]] == 1)]:
            if teacher_norm[i] == student_norm[j]:
                matched[j] = i
    return TokenAlignment(pairs, matched, int(table[-1, -1]) if table.size else 0)


def map_teacher_vocabulary(
    teacher_vocabulary: Sequence[str],
    piece_to_id: Mapping[str, int],
    *,
    to_student_piece: Callable[[str], str] = to_sentencepiece_piece,
) -> np.ndarray:
    """Student id of every teacher token string, -1 where the student has no such piece.

    Args:
      teacher_vocabulary: teacher token strings by teacher id (a store's `vocabulary`).
      piece_to_id: the student's pieces, e.g. `{sp.id_to_piece(i): i for i in range(n)}`.
      to_student_piece: spells a teacher string as a student piece.

    Returns:
      int64 `[len(teacher_vocabulary)]`.
    """
    return np.array(
        [piece_to_id.get(to_student_piece(token), -1) for token in teacher_vocabulary], np.int64
    ).reshape(-1)


@dataclasses.dataclass(frozen=True)
class AlignedTargets:
    """Per student token, the distillation target as a top-k in student ids.

    Attributes:
      ids: `[n, k]` int32 student ids; padding uses id 0.
      logprobs: `[n, k]` f32 log-probs, decreasing; -inf marks padding. A one-hot fallback
        is `[student id, 0, ...]` with log-probs `[0, -inf, ...]`.
      fallback: `[n]` bool, True where the target is the one-hot fallback.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    fallback: np.ndarray


def _merge_top_k(ids: np.ndarray, logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops ids < 0, sums duplicate ids' probabilities, sorts, cuts / pads to k."""
    keep = (ids >= 0) & (logprobs > -np.inf)
    ids, logprobs = ids[keep], logprobs[keep].astype(np.float64)
    unique, inverse = np.unique(ids, return_inverse=True)
    merged = np.full(unique.shape, -np.inf)
    np.logaddexp.at(merged, inverse, logprobs)
    order = np.argsort(-merged, kind="stable")[:k]
    out_ids = np.full((k,), PAD_STUDENT_ID, np.int32)
    out_logprobs = np.full((k,), -np.inf, np.float32)
    out_ids[: len(order)] = unique[order]
    out_logprobs[: len(order)] = merged[order]
    return out_ids, out_logprobs


def build_aligned_targets(
    alignment: TokenAlignment,
    student_ids: Sequence[int],
    teacher_top_ids: np.ndarray,
    teacher_top_logprobs: np.ndarray,
    teacher_to_student: np.ndarray,
    *,
    k: int,
) -> AlignedTargets:
    """Student targets from an alignment and the teacher's per-position top-k.

    Args:
      alignment: `align_tokens(teacher tokens, student tokens)`.
      student_ids: `[n]` the student token ids.
      teacher_top_ids: `[m, k_t]` teacher-vocabulary top-k ids (-1 padding).
      teacher_top_logprobs: `[m, k_t]` their log-probs (-inf padding).
      teacher_to_student: `map_teacher_vocabulary(...)`.
      k: top-k width of the targets.

    Returns:
      `AlignedTargets`; a matched position whose top-k has no token in the student
      vocabulary also falls back to one-hot.
    """
    student_id_array = np.asarray(student_ids, np.int64).reshape(-1)
    n = len(student_id_array)
    ids = np.full((n, k), PAD_STUDENT_ID, np.int32)
    logprobs = np.full((n, k), -np.inf, np.float32)
    fallback = np.ones((n,), bool)
    for j, i in enumerate(alignment.teacher_for_student):
        if i >= 0:
            teacher_ids = np.asarray(teacher_top_ids[i], np.int64)
            mapped = np.where(teacher_ids >= 0, teacher_to_student[np.maximum(teacher_ids, 0)], -1)
            row_ids, row_logprobs = _merge_top_k(mapped, np.asarray(teacher_top_logprobs[i]), k)
            if row_logprobs[0] > -np.inf:
                ids[j], logprobs[j], fallback[j] = row_ids, row_logprobs, False
                continue
        ids[j, 0], logprobs[j, 0] = student_id_array[j], 0.0
    return AlignedTargets(ids, logprobs, fallback)


@dataclasses.dataclass
class AlignmentStats:
    """Running counts over aligned examples; `fallback_rate` is the headline number."""

    num_examples: int = 0
    num_student_tokens: int = 0
    num_fallback: int = 0

    def update(self, targets: AlignedTargets) -> None:
        self.num_examples += 1
        self.num_student_tokens += len(targets.fallback)
        self.num_fallback += int(targets.fallback.sum())

    @property
    def fallback_rate(self) -> float:
        """Fraction of student tokens trained on a one-hot target instead of the teacher's."""
        return self.num_fallback / max(self.num_student_tokens, 1)


def align_teacher_store(
    store: TeacherStore,
    encode: Callable[[str], tuple[list[int], list[str]]],
    piece_to_id: Mapping[str, int],
    *,
    k: int | None = None,
    stats: AlignmentStats | None = None,
) -> Iterator[tuple[str, list[int], AlignedTargets]]:
    """Aligns every example of a teacher store to the student's tokenisation of its text.

    The text of an example is its `metadata["text"]` when present (the OpenAI producer records
    the completion text), else the concatenation of its token strings.

    Args:
      store: the teacher store.
      encode: student tokenizer, `text -> (ids, pieces)`.
      piece_to_id: the student's piece -> id table.
      k: width of the targets (default: the store's k).
      stats: updated in place when given.

    Yields:
      `(key, student ids, AlignedTargets)` per example.
    """
    k = store.k if k is None else k
    teacher_to_student = map_teacher_vocabulary(store.vocabulary, piece_to_id)
    for example in store:
        teacher_tokens = store.token_strings(example.tokens)
        text = example.metadata.get("text")
        student_ids, student_pieces = encode("".join(teacher_tokens) if text is None else text)
        alignment = align_tokens(teacher_tokens, student_pieces)
        targets = build_aligned_targets(
            alignment, student_ids, example.top_ids, example.top_logprobs, teacher_to_student, k=k
        )
        if stats is not None:
            stats.update(targets)
        yield example.key, list(student_ids), targets
