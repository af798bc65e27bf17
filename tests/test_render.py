from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.alarm import parse
from bot.diagnosis import diagnose
from bot.errors import RenderError
from bot.knowledge import Knowledge
from bot.render import ReplyRenderer, split_message, tidy

from .test_alarm import SAMPLES, VARIANTS


def test_split_message_short_text_is_one_message() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("") == []


def test_split_message_respects_byte_limit_and_keeps_paragraphs() -> None:
    paragraph = "\n".join(["排查步骤第一行"] * 20)  # 20 lines × 22 bytes
    text = "\n\n".join([paragraph] * 10)
    messages = split_message(text, limit=1000)
    assert len(messages) > 1
    assert all(len(m.encode()) <= 1000 for m in messages)
    assert "\n\n".join(messages).replace("\n", "") == text.replace("\n", "")


def test_split_message_cuts_an_overlong_line_on_character_boundary() -> None:
    text = "报" * 2000  # 6000 bytes, one line
    messages = split_message(text, limit=2048)
    assert all(len(m.encode()) <= 2048 for m in messages)
    assert "".join(messages) == text


@given(st.text(max_size=3000), st.integers(min_value=16, max_value=400))
def test_split_message_never_exceeds_limit_and_loses_no_characters(
    text: str, limit: int
) -> None:
    messages = split_message(text, limit)
    assert all(len(m.encode()) <= limit for m in messages)
    squeezed = "".join(text.split())
    assert "".join("".join(messages).split()) == squeezed


def test_tidy_collapses_blank_runs() -> None:
    assert tidy("a  \n\n\n\nb\n") == "a\n\nb"


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("case", SAMPLES + VARIANTS, ids=lambda c: c["id"])
def test_every_case_renders_a_reply(
    case: dict, lang: str, knowledge: Knowledge
) -> None:
    renderer = ReplyRenderer(knowledge, lang)
    alarms = parse(case["alarm_text"], knowledge.matcher)
    reply = renderer.alarm_reply([diagnose(a, knowledge) for a in alarms])
    assert reply
    for alarm in alarms:
        assert knowledge.alarm(alarm.type).names.get(lang) in reply
    assert "{{" not in reply
    assert "{%" not in reply


def test_missing_template_raises_render_error(knowledge: Knowledge) -> None:
    with pytest.raises(RenderError, match="no-such-template"):
        ReplyRenderer(knowledge).render("no-such-template")


@pytest.mark.parametrize(
    "source",
    [
        "{{ alarm.__class__.__mro__ }}",
        "{{ alarm.get.__globals__ }}",
        "{{ entry.names.__class__ }}",
        "{{ steps.__class__ }}",
    ],
)
def test_sandbox_still_guards_the_fast_path(source: str, knowledge: Knowledge) -> None:
    from bot.kbcheck import sample_alarm

    renderer = ReplyRenderer(knowledge)
    alarm = sample_alarm("markfail")
    context = {"alarm": alarm, "entry": knowledge.alarms["markfail"], "steps": {"a": 1}}
    with pytest.raises(RenderError):
        renderer.render_text(source, **context)


def test_fast_path_reads_dict_keys_and_methods(knowledge: Knowledge) -> None:
    renderer = ReplyRenderer(knowledge)
    assert renderer.render_text("{{ d.a }}", d={"a": 1}) == "1"
    assert renderer.render_text("{{ d.items() | list }}", d={"a": 1}) == "[('a', 1)]"


def test_high_failure_rate_raises_severity(knowledge: Knowledge) -> None:
    from bot.kbcheck import sample_alarm

    renderer = ReplyRenderer(knowledge)
    calm = sample_alarm("connect_timeout")
    busy = sample_alarm("connect_timeout")
    object.__setattr__(busy, "count", 7289)
    assert renderer.alarm_context(diagnose(calm, knowledge))["severity"] == "warning"
    assert renderer.alarm_context(diagnose(busy, knowledge))["severity"] == "high"
