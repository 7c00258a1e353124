"""FLAN's names for our mixtures, and mixture suites for any zero-shot / options ratio.

Researchers who used google-research/FLAN (`flan/v2/mixtures.py`) know its mixtures as
`<submix>_<setting>`: `flan_zsopt`, `t0_fsopt`, `niv2_zsopt`, `cot_fsopt`, ... These are
registered here as aliases of ours, with the same tasks at the same rates:

    flan_zsopt  -> flan2021_zs_opt          t0_fsnoopt -> t0_fs_noopt
    cot_zsopt   -> cot_zs_opt at 1 and cot_inverted_zs_opt at 0.3 (FLAN's "CoT" and
                   "CoT-II" submixes; dialog likewise)

`register_mixture_suite` builds the mixture FLAN's `generate_mixture_suites` builds: per
source, the four variant mixtures weighted by the zero-shot ratio z and the options ratio
o (zs_opt z*o, fs_opt (1-z)*o, zs_noopt z*(1-o), fs_noopt (1-z)*(1-o)), inverted tasks at
0.3 of their originals, and the sources at the `flan2022_submix` weights. With z = o = 0.5
it is `flan2022_submix` itself, share for share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import seqio

from flan_jax.tasks import mixtures

# Our source -> FLAN's submix name in its mixture names (flan/v2/mixtures.py).
FLAN_SUBMIX_NAMES = {
    "flan2021": "flan",
    "t0": "t0",
    "niv2": "niv2",
    "cot": "cot",
    "dialog": "dialog",
}
# Our variant -> FLAN's setting token: zero-/few-shot, with / without answer options.
FLAN_SETTINGS = {"zs_opt": "zsopt", "zs_noopt": "zsnoopt", "fs_opt": "fsopt", "fs_noopt": "fsnoopt"}


def flan_mixture_name(source: str, variant: str) -> str:
    """FLAN's name of the mixture of `source`'s `variant` (inverted tasks included)."""
    return f"{FLAN_SUBMIX_NAMES[source]}_{FLAN_SETTINGS[variant]}"


def _registered(name: str) -> bool:
    return name in seqio.MixtureRegistry.names()


def _variant_members(source: str, variant: str, weight: float) -> list[tuple[str, float]]:
    """The registered variant mixtures of `source` (originals, then inverted at 0.3)."""
    members = []
    for inverted, factor in ((False, 1.0), (True, mixtures.INVERTED_WEIGHT)):
        name = mixtures.variant_mixture_name(source, variant, inverted)
        if _registered(name):
            members.append((name, weight * factor))
    return members


def register_flan_mixture_aliases() -> dict[str, str]:
    """Registers FLAN's mixture names over our registered mixtures; returns {alias: ours}.

    A source with only original tasks gets an alias holding exactly its variant mixture's
    tasks and rates; one with inverted tasks (CoT, Dialog) gets the originals at 1 and the
    inverted at `mixtures.INVERTED_WEIGHT`, as FLAN's `cot_zsopt` holds "CoT" and "CoT-II".
    Variants we do not register (no "noopt" CoT, NIv2 or Dialog tasks) get no alias.
    """
    aliases = {}
    for source in FLAN_SUBMIX_NAMES:
        for variant in FLAN_SETTINGS:
            members = _variant_members(source, variant, 1.0)
            if not members:
                continue
            alias = flan_mixture_name(source, variant)
            if len(members) == 1:
                ours = members[0][0]
                rates = seqio.get_mixture_or_task(ours).rate_per_task_name
                mixtures.add_mixture(alias, sorted(rates.items()))
            else:
                ours = " + ".join(f"{name} x{rate:g}" for name, rate in members)
                mixtures.add_mixture(alias, members)
            aliases[alias] = ours
    logging.info("Registered %d FLAN mixture names.", len(aliases))
    return aliases


def variant_weights(*, ratio_zero_shot: float, ratio_answer_options: float) -> dict[str, float]:
    """{variant: weight} for a zero-shot ratio z and an options ratio o (FLAN's scores)."""
    for field, value in (
        ("ratio_zero_shot", ratio_zero_shot),
        ("ratio_answer_options", ratio_answer_options),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{field} must be between 0 and 1, got {value!r}.")
    z, o = ratio_zero_shot, ratio_answer_options
    return {
        "zs_opt": z * o,
        "fs_opt": (1 - z) * o,
        "zs_noopt": z * (1 - o),
        "fs_noopt": (1 - z) * (1 - o),
    }


def register_mixture_suite(
    name: str,
    *,
    ratio_zero_shot: float,
    ratio_answer_options: float,
    submix_weights: Mapping[str, float] = mixtures.SUBMIX_WEIGHTS,
) -> str:
    """Registers a mixture of the registered sources at any zero-shot / options ratio.

    Each source becomes the sub-mixture `<name>_<source>` of its variant mixtures weighted
    by `variant_weights` (inverted ones at `mixtures.INVERTED_WEIGHT` of theirs); `name`
    weighs the sources by `submix_weights`. A source with none of the asked variants
    registered (e.g. CoT when `ratio_answer_options=0`: it has no "noopt" tasks) is left
    out with a warning, and its weight goes to the others through seqio's normalisation.

    Args:
      name: the mixture's name.
      ratio_zero_shot: share of zero-shot variants (1: all zero-shot, 0: all few-shot).
      ratio_answer_options: share of variants with answer options.
      submix_weights: {source: weight}; the sources to include.

    Returns:
      `name`.

    Raises:
      ValueError: for a ratio outside [0, 1], an unknown source, or when no source has
        any of the asked variants registered.
    """
    weights = variant_weights(
        ratio_zero_shot=ratio_zero_shot, ratio_answer_options=ratio_answer_options
    )
    unknown = sorted(set(submix_weights) - set(FLAN_SUBMIX_NAMES))
    if unknown:
        raise ValueError(f"Unknown sources {unknown}; known: {list(FLAN_SUBMIX_NAMES)}.")
    sources, left_out = [], []
    for source, source_weight in submix_weights.items():
        members = [
            member
            for variant, weight in weights.items()
            if weight > 0
            for member in _variant_members(source, variant, weight)
        ]
        if members:
            sources.append((mixtures.add_mixture(f"{name}_{source}", members), source_weight))
        else:
            left_out.append(source)
    if not sources:
        raise ValueError(
            f"Mixture suite {name!r}: no source has the variants asked for "
            f"(ratio_zero_shot={ratio_zero_shot}, ratio_answer_options="
            f"{ratio_answer_options}); register the tasks first."
        )
    if left_out:
        logging.warning(
            "Mixture suite %r leaves out %s: none of the asked variants are registered.",
            name,
            ", ".join(left_out),
        )
    return mixtures.add_mixture(name, sources)


def describe_flan_names(aliases: Mapping[str, str]) -> list[str]:
    """ "FLAN name<TAB>our mixture(s)" lines, for `flan-jax tasks list --flan-names`."""
    return [f"{alias}\t{ours}" for alias, ours in sorted(aliases.items())]
