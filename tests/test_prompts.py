import pytest

from promptrec.prompts.tasks import TASKS
from promptrec.prompts.templates import TemplateError, TemplateSet


def test_every_family_has_seen_and_unseen_templates_with_its_fields():
    ts = TemplateSet.load()
    for family in ("sequential", "yesno", "choose", "rating"):
        seen, unseen = ts.family(family, seen=True), ts.family(family, seen=False)
        assert len(seen) >= 2 and len(unseen) >= 1
        for t in seen + unseen:
            assert t.fields <= set(TASKS.get(family).fields), t.id


def test_missing_field_fails_loudly():
    t = TemplateSet.load().family("sequential")[0]
    with pytest.raises(TemplateError, match="history"):
        t.render({"user": "<u_1>", "target": "<a_1>"})
    with pytest.raises(TemplateError, match="history"):
        t.render_input({"user": "<u_1>"})


def test_adding_a_template_needs_no_code(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "sequential:\n"
        "  - id: mine-1\n    input: 'next for {user} after {history}'\n    target: '{target}'\n"
        "  - id: mine-2\n    seen: false\n    input: '{history} then ?'\n    target: '{target}'\n"
    )
    ts = TemplateSet.load(path)
    src, tgt = ts.get("mine-1").render({"user": "<u_3>", "history": "<a_1><b_2>", "target": "<a_4><b_0>"})
    assert src == "next for <u_3> after <a_1><b_2>" and tgt == "<a_4><b_0>"
    assert [t.id for t in ts.family("sequential", seen=False)] == ["mine-2"]


def test_bad_template_files_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sequential:\n  - id: x\n    input: a\n")
    with pytest.raises(TemplateError, match="target"):
        TemplateSet.load(path)
    path.write_text("sequential:\n  - {id: x, input: a, target: b}\n  - {id: x, input: c, target: d}\n")
    with pytest.raises(TemplateError, match="duplicate"):
        TemplateSet.load(path)
