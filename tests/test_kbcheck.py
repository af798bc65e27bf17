from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bot.cli import cli
from bot.dispatch import Dispatcher
from bot.kbcheck import check_knowledge
from bot.knowledge import Knowledge, default_root

from .conftest import DATA

BAD = sorted((DATA / "knowledge").glob("bad-*.yaml"))
_SIZES = re.compile(r"\d+ bytes in \d+ messages")


def blur(text: str) -> str:
    """Reply sizes move with every template edit; the rest of a message may not."""
    return _SIZES.sub("N bytes in M messages", text)


def broken_copy(spec_path: Path, tmp_path: Path) -> tuple[Path, str]:
    """Copy the shipped knowledge and break it as the spec file says."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    root = tmp_path / "knowledge"
    shutil.copytree(default_root(), root)
    target = root / spec["target"]
    if spec.get("delete"):
        target.unlink()
    elif spec.get("append"):
        # {line}: the last appended line; {index}: the appended list item.
        before = target.read_text(encoding="utf-8").rstrip("\n") + "\n"
        items = len(next(iter(yaml.safe_load(before).values())))
        target.write_text(before + spec["content"], encoding="utf-8")
        line = before.count("\n") + spec["content"].rstrip("\n").count("\n") + 1
        return root, spec["expected"].format(line=line, index=items)
    else:
        target.write_text(spec["content"], encoding="utf-8")
    return root, spec["expected"]


def test_shipped_knowledge_has_no_problems() -> None:
    knowledge, problems = check_knowledge()
    assert problems == []
    assert knowledge is not None


@pytest.mark.parametrize("spec", BAD, ids=lambda p: p.stem)
def test_kb_check_names_file_key_and_value(spec: Path, tmp_path: Path) -> None:
    root, expected = broken_copy(spec, tmp_path)
    _, problems = check_knowledge(root)
    assert blur(expected) in [blur(p) for p in problems]
    result = CliRunner().invoke(cli, ["kb", "check", str(root)])
    assert result.exit_code == 1
    assert blur(expected) in blur(result.output)


@pytest.mark.parametrize("spec", BAD, ids=lambda p: p.stem)
def test_reload_of_broken_knowledge_keeps_the_old(
    spec: Path, tmp_path: Path, knowledge: Knowledge
) -> None:
    from bot.channels.base import Incoming
    from bot.kbcheck import load_checked

    root, expected = broken_copy(spec, tmp_path)
    dispatcher = Dispatcher(
        knowledge, admins=("admin",), loader=lambda: load_checked(root)
    )
    incoming = Incoming(room="r", sender="admin", text="/reload")
    (reply,) = dispatcher.dispatch(incoming)
    assert blur(expected) in blur(reply.text)
    assert dispatcher.knowledge is knowledge


def test_every_alarm_type_faq_and_table_is_reachable_by_ask(
    knowledge: Knowledge,
) -> None:
    from bot.search import KnowledgeSearch

    search = KnowledgeSearch(knowledge)
    for alarm in knowledge.alarms.values():
        hits = search.search(alarm.names.zh)
        assert alarm.id in [h.id for h in hits[:2]], alarm.id
    for entry in knowledge.faq.values():
        hits = search.search(entry.question.zh)
        assert entry.id in [h.id for h in hits[:3]], entry.id
    for table in knowledge.tables.values():
        hits = search.search(table.title.zh)
        assert table.id in [h.id for h in hits[:3]], table.id


def test_kb_check_limits_are_options() -> None:
    result = CliRunner().invoke(cli, ["kb", "check", "--alarm-messages", "1"])
    assert result.exit_code == 1
    assert "knowledge/alarms/connect_timeout.yaml: alarm reply (" in result.output
    assert "over the limit of 1" in result.output


def test_kb_preview_renders_a_built_in_example_of_the_type() -> None:
    result = CliRunner().invoke(cli, ["kb", "preview", "markfail"])
    assert result.exit_code == 0, result.output
    assert "【MarkFail（自动屏蔽）】wx0123456789abcdef「示例公众号」" in result.output
    assert "message(s)" in result.output


def test_kb_preview_renders_the_alarm_text_given_on_stdin() -> None:
    from .test_alarm import VARIANTS

    text = VARIANTS[0]["alarm_text"]
    result = CliRunner().invoke(
        cli, ["kb", "preview", "request_timeout", "-", "--lang", "en"], input=text
    )
    assert result.exit_code == 0, result.output
    assert "Request timeout" in result.output
    assert "1,272" in result.output


def test_kb_preview_shows_an_over_long_reply_with_the_problem(
    tmp_path: Path,
) -> None:
    root, expected = broken_copy(
        DATA / "knowledge" / "bad-long-alarm-reply.yaml", tmp_path
    )
    result = CliRunner().invoke(
        cli, ["kb", "preview", "dns_timeout", "--knowledge", str(root)]
    )
    assert result.exit_code == 0, result.output
    assert f"warning: {blur(expected)}" in blur(result.output)
    assert "--- message 3/" in result.output


def test_kb_preview_refuses_an_unknown_type() -> None:
    result = CliRunner().invoke(cli, ["kb", "preview", "timeout"])
    assert result.exit_code == 2
    assert "'timeout' is not an alarm type" in result.output


def test_a_probe_finding_that_fails_to_render_is_named(tmp_path: Path) -> None:
    root = tmp_path / "knowledge"
    shutil.copytree(default_root(), root)
    path = root / "findings.yaml"
    text = path.read_text(encoding="utf-8")
    old = "服务器返回 HTTP {{ f.code }}，平台只认 HTTP 200。"
    path.write_text(text.replace(old, "HTTP {{ f.code + 1 }}"), encoding="utf-8")
    _, problems = check_knowledge(root)
    assert (
        'knowledge/findings.yaml: TypeError: can only concatenate str (not "int") '
        "to str" in problems
    )
