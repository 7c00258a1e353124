"""FLAN's two few-shot forms, checked against prompts rebuilt independently in the test.

Templates here mark themselves ("[T3] ...") and examples their number ("P17 ..."), so a
prompt can be parsed back into (template, example) exemplars and rebuilt from independent
renders of each exemplar.
"""

import re

import pytest
import seqio

from flan_jax.tasks import few_shot, naming, sources, templates

NUM_TEMPLATES = 10
TEMPLATES = tuple(
    templates.Template(f"[T{i}] Premise: {{premise}}", "ans{answer}", "zs", i)
    for i in range(NUM_TEMPLATES)
)
EXEMPLAR_RE = re.compile(r"\[T(\d+)\] Premise: P(\d+)\b")


def _example(j):
    # Premises of 2..8 words so the word-count budget prunes at varied places.
    return {"premise": f"P{j} " + "word " * (j % 7), "answer": str(j)}


POOL = tuple((f"train:{j}", _example(j)) for j in range(60))


def words(text):
    return len(text.split())


def _spec(forms, *, task="nli", variant="fs_opt", pool=POOL, budget=100_000, seed=0, tpl=None):
    builder = few_shot.FewShotSpec(
        pool=pool, count_tokens=words, max_input_tokens=budget, forms=forms
    )
    return sources.RenderSpec(
        naming.TaskId("demo", task, variant), tpl or TEMPLATES, seed=seed, few_shot=builder
    )


def _render_all(spec, pool=POOL):
    return {key: sources.render_example(spec, key, fields) for key, fields in pool}


def _exemplar_text(i, j):
    """Exemplar j through template i, rendered on its own, with template i's delimiter."""
    rendered = templates.render(
        TEMPLATES[i], _example(j), with_options=False, rng=templates.example_rng(0, "x", "y")
    )
    return rendered.inputs + few_shot.TEMPLATE_DELIMITERS[i % 6][0] + rendered.targets


def _parse(out):
    """[(template, example)] of the exemplars, and the query's (template, example)."""
    found = [(int(i), int(j)) for i, j in EXEMPLAR_RE.findall(out["inputs"])]
    return found[:-1], found[-1]


def test_template_mix_separator_is_one_per_task_and_exemplars_mix_templates():
    separators = {}
    for task in ("nli", "qa", "summary", "topic", "sentiment", "paraphrase"):
        outputs = _render_all(_spec(("template_mix",), task=task))
        seen, exemplar_templates = set(), set()
        for key, out in outputs.items():
            shots, (qi, qj) = _parse(out)
            assert len(shots) == few_shot.TEMPLATE_MIX_SHOTS
            assert qj == int(key.split(":")[1])
            assert qj not in {j for _, j in shots}  # never the example itself
            exemplar_texts = [_exemplar_text(i, j) for i, j in shots]
            query = templates.render(TEMPLATES[qi], _example(qj), with_options=False, rng=None)
            # The separator is what lies between the independently rendered exemplars.
            rest = out["inputs"]
            for text in exemplar_texts:
                assert rest.startswith(text)
                rest = rest[len(text) :]
                separator = rest[: len(rest) - len(rest.lstrip("\n"))]
                seen.add(separator)
                rest = rest[len(separator) :]
            assert rest == query.inputs
            exemplar_templates |= {i for i, _ in shots}
        assert len(seen) == 1 and seen <= set(few_shot.TEMPLATE_MIX_SEPARATORS)
        assert len(exemplar_templates) > 5  # each exemplar draws its own template
        separators[task] = seen.pop()
    assert len(set(separators.values())) > 1, separators


def test_zero_to_ten_keeps_only_same_template_exemplars_with_its_delimiters():
    outputs = _render_all(_spec(("zero_to_ten",)))
    counts = []
    for out in outputs.values():
        if out is None:
            continue
        shots, (qi, qj) = _parse(out)
        assert out["_template_idx"] == qi
        assert shots and {i for i, _ in shots} == {qi}
        separator = few_shot.TEMPLATE_DELIMITERS[qi % 6][1]
        query = templates.render(TEMPLATES[qi], _example(qj), with_options=False, rng=None)
        expected = separator.join([_exemplar_text(i, j) for i, j in shots] + [query.inputs])
        assert out["inputs"] == expected and out["targets"] == f"ans{qj}"
        counts.append(len(shots))
    # 25 candidates over 10 templates: 2.5 same-template exemplars on average.
    assert 1.5 < sum(counts) / len(counts) < 4 and max(counts) <= few_shot.ZERO_TO_TEN_CANDIDATES


@pytest.mark.parametrize("num_templates", [1, NUM_TEMPLATES])
def test_no_zero_exemplar_example_is_emitted(num_templates):
    tiny_pool = POOL[:2]
    spec = _spec(few_shot.FEW_SHOT_FORMS, pool=tiny_pool, tpl=TEMPLATES[:num_templates])
    raw = POOL[:40]
    emitted = list(sources.iterate_rendered(spec, raw))
    for out in emitted:
        shots, _ = _parse(out)
        assert shots
    if num_templates == 1:
        assert len(emitted) == len(raw)  # one exemplar always shares the only template
    else:
        # 0-to-10 with one candidate keeps it 1 time in 10: most of those are dropped.
        assert len(raw) / 2 - 15 < len(emitted) < len(raw)
    # A pool holding only the example itself leaves nothing to show: all dropped.
    alone = _spec(few_shot.FEW_SHOT_FORMS, pool=POOL[:1])
    assert list(sources.iterate_rendered(alone, POOL[:1])) == []


@pytest.mark.parametrize("form", few_shot.FEW_SHOT_FORMS)
def test_pruning_keeps_the_leading_exemplars_within_budget(form):
    pruned_somewhere = False
    for budget in (12, 20, 30, 45):
        full = _render_all(_spec((form,)))
        pruned = _render_all(_spec((form,), budget=budget))
        for key, out in full.items():
            if out is None:
                continue
            shots, (qi, qj) = _parse(out)
            query = templates.render(TEMPLATES[qi], _example(qj), with_options=False, rng=None)
            separator = (
                few_shot.task_separator(0, "demo__nli__fs_opt")
                if form == "template_mix"
                else few_shot.TEMPLATE_DELIMITERS[qi % 6][1]
            )
            texts = [_exemplar_text(i, j) for i, j in shots]
            # Independent greedy: take exemplars from the front while the prompt fits.
            kept = 0
            while kept < len(texts) and (
                words(separator.join(texts[: kept + 1] + [query.inputs])) <= budget
            ):
                kept += 1
            if kept == 0:
                assert pruned[key] is None
                continue
            expected = separator.join(texts[:kept] + [query.inputs])
            assert pruned[key]["inputs"] == expected and words(expected) <= budget
            pruned_somewhere |= 0 < kept < len(texts)
    assert pruned_somewhere


def test_real_token_budget_of_1920():
    vocabulary = seqio.PassThroughVocabulary(size=256)  # one "token" per character
    long_pool = tuple(
        (f"train:{j}", {"premise": f"P{j} " + "lorem ipsum " * 60, "answer": str(j)})
        for j in range(40)
    )
    spec = few_shot.make_few_shot_spec(
        lambda: iter(long_pool), vocabulary, settings=few_shot.FewShotSettings()
    )
    render_spec = sources.RenderSpec(
        naming.TaskId("demo", "nli", "fs_opt"), TEMPLATES, few_shot=spec
    )
    emitted = list(sources.iterate_rendered(render_spec, long_pool))
    assert emitted
    for out in emitted:
        assert len(vocabulary.encode(out["inputs"])) <= 1920
        assert 1 <= len(_parse(out)[0]) < few_shot.TEMPLATE_MIX_SHOTS


def test_rendering_is_seeded_per_example():
    first = _render_all(_spec(few_shot.FEW_SHOT_FORMS, seed=3))
    assert first == _render_all(_spec(few_shot.FEW_SHOT_FORMS, seed=3))
    # Rendering one example alone gives the same text as rendering it within the stream.
    key, fields = POOL[7]
    assert (
        sources.render_example(_spec(few_shot.FEW_SHOT_FORMS, seed=3), key, fields) == (first[key])
    )
    other = _render_all(_spec(few_shot.FEW_SHOT_FORMS, seed=4))
    assert sum(first[k] != other[k] for k in first) > len(first) / 2


def test_options_variant_mixes_both_forms_and_no_options_uses_zero_to_ten():
    def is_zero_to_ten(out):
        shots, (qi, _) = _parse(out)
        return {i for i, _ in shots} == {qi}

    opt = [o for o in _render_all(_spec(few_shot.FEW_SHOT_FORMS)).values() if o]
    share = sum(map(is_zero_to_ten, opt)) / len(opt)
    assert 0.25 < share < 0.75  # each example draws its form, one in two
    noopt = _spec(few_shot.FEW_SHOT_FORMS, variant="fs_noopt")
    assert all(is_zero_to_ten(o) for o in _render_all(noopt).values() if o)
    # A caller that asks for one form gets it, options or not.
    mix_only = _spec(("template_mix",), variant="fs_noopt")
    assert all(len(_parse(o)[0]) == 5 for o in _render_all(mix_only).values())


def test_settings_validate_forms_and_few_shot_sources_claim_no_count():
    assert few_shot.FewShotSettings().forms == few_shot.FEW_SHOT_FORMS
    assert few_shot.FewShotSettings(forms=["zero_to_ten"]).forms == ("zero_to_ten",)
    for bad in ((), ("five_shot",), ("template_mix", "template_mix")):
        with pytest.raises(ValueError, match="FewShotSettings.forms must be"):
            few_shot.FewShotSettings(forms=bad)
    counts = {"train": len(POOL)}
    few = sources.make_rendered_source(
        _spec(few_shot.FEW_SHOT_FORMS), lambda s: POOL, splits=["train"], num_input_examples=counts
    )
    assert few.num_input_examples("train") is None  # dropping makes the count unknown
    zero = sources.RenderSpec(naming.TaskId("demo", "nli", "zs_opt"), TEMPLATES)
    plain = sources.make_rendered_source(
        zero, lambda s: POOL, splits=["train"], num_input_examples=counts
    )
    assert plain.num_input_examples("train") == len(POOL)
