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

FLAN's task names (`register_flan_task_names`, opt-in: about 20,000 extra tasks) name a
dataset's variants and single templates, on FLAN's name of the dataset (`flan_dataset_name`):

    anli_r1_template_0to10_zero_shot         flan2021__anli_r1__zs_opt, same examples
    anli_r1_template_3_zero_shot             ... rendered with template 3 only
    anli_r1_template_0to10_no_opt_zero_shot  flan2021__anli_r1__zs_noopt
    anli_r1_template_mix_five_shot           flan2021__anli_r1__fs_opt, "template mix" form only
    anli_r1_template_0to10_x_shot            ... "0 to 10" form only
    anli_r1_template_0to10_no_opt_x_shot     flan2021__anli_r1__fs_noopt
    cot_gsm8k_..., stream_aqua_..., cot_input_inversion_gsm8k_..., qrecc_input_inversion_...,
    t0_task_adaptation:<P3 task>_...          (the other sources)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import seqio

from flan_jax.tasks import mixtures, naming, sources

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
# FLAN's names of a dataset's whole variant, and the few-shot form each holds
# (flan/v2/mixtures_utils.py ZS_OPT_TEMPLATES ... FS_NOOPT_TEMPLATES).
FLAN_VARIANT_SUFFIXES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "zs_opt": (("_template_0to10_zero_shot", None),),
    "zs_noopt": (("_template_0to10_no_opt_zero_shot", None),),
    "fs_opt": (
        ("_template_mix_five_shot", "template_mix"),
        ("_template_0to10_x_shot", "zero_to_ten"),
    ),
    "fs_noopt": (("_template_0to10_no_opt_x_shot", "zero_to_ten"),),
}
# FLAN's names of one template of a zero-shot variant.
FLAN_TEMPLATE_SUFFIXES = {
    "zs_opt": "_template_{index}_zero_shot",
    "zs_noopt": "_template_{index}_no_opt_zero_shot",
}
# CoT datasets FLAN names "stream_<dataset>" (lower-quality rationales; flan/v2/task_configs.py);
# the others are "cot_<dataset>".
COT_STREAM_DATASETS = ("aqua", "qed")
# FLAN's T0 task names are P3's with this prefix (flan/v2/constants_t0.py T0_TASK_PREFIX).
T0_TASK_PREFIX = "t0_task_adaptation:"


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


def flan_dataset_name(task_id: naming.TaskId) -> str:
    """FLAN's name of `task_id`'s dataset (inverted CoT and dialog tasks have their own).

    NIv2 tasks keep their NIv2 names (FLAN mixes NIv2 as one task). T0 names are P3's
    without the trailing "_" some P3 names have (as our dataset names are).
    """
    dataset = task_id.dataset
    if task_id.source == "t0":
        return T0_TASK_PREFIX + dataset
    if task_id.source == "cot":
        cot_type = "stream" if dataset in COT_STREAM_DATASETS else "cot"
        return (
            f"{cot_type}_input_inversion_{dataset}" if task_id.inverted else f"{cot_type}_{dataset}"
        )
    return f"{dataset}_input_inversion" if task_id.inverted else dataset


def flan_task_copies(task_name: str) -> list[sources.RenderSpec]:
    """The render specs of FLAN's names for our task `task_name` (see the module docstring)."""
    task = seqio.TaskRegistry.get(task_name)
    spec = task.source.render_spec
    base = flan_dataset_name(spec.task_id)
    copies = []
    for suffix, form in FLAN_VARIANT_SUFFIXES[spec.task_id.variant]:
        few_shot = spec.few_shot
        if form is not None:
            few_shot = dataclasses.replace(few_shot, forms=(form,))
        copies.append(dataclasses.replace(spec, registered_name=base + suffix, few_shot=few_shot))
    template_suffix = FLAN_TEMPLATE_SUFFIXES.get(spec.task_id.variant)
    if template_suffix is not None:
        copies += [
            dataclasses.replace(
                spec,
                registered_name=base + template_suffix.format(index=template.index),
                templates=(template,),
            )
            for template in spec.templates
        ]
    return copies


def register_flan_task_names(task_names: Iterable[str]) -> dict[str, str]:
    """Registers FLAN's names for our tasks `task_names`; returns {FLAN name: our task}.

    Each reads the same examples as our task. The zero-shot whole-variant names render
    exactly our task's text; a few-shot form's name renders every example in that form
    (ours draws the form per example); a template's name renders with that template only.

    Raises:
      ValueError: when two of our tasks would get the same FLAN name.
    """
    registered: dict[str, str] = {}
    for task_name in task_names:
        task = seqio.TaskRegistry.get(task_name)
        for spec in flan_task_copies(task_name):
            if spec.name in seqio.TaskRegistry.names():
                holder = seqio.TaskRegistry.get(spec.name).source.render_spec.task_name
                if holder != task_name:
                    raise ValueError(
                        f"FLAN name {spec.name!r} given to both {holder} and {task_name}."
                    )
            sources.register_rendered_copy(task, spec)
            registered[spec.name] = task_name
    return registered
