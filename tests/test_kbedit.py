"""The knowledge editor: locate, propose, validate, confirm, journal, undo, git."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.alarm import PLATFORM_TZ
from bot.errors import KnowledgeEditError
from bot.kbedit import (
    Author,
    KnowledgeEditor,
    MemoryAuditLog,
    locate_entry,
    normalize_yaml,
    write_atomic,
)
from bot.knowledge import Knowledge, default_root, load_knowledge

ADMIN = Author("admin", "wxid_admin", "ops")
MEMBER = Author("mei", "wxid_mei", "ops")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 9, 0, tzinfo=PLATFORM_TZ)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "knowledge"
    shutil.copytree(default_root(), copy)
    return copy


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def editor(
    root: Path, tmp_path: Path, audit: MemoryAuditLog, clock: Clock
) -> KnowledgeEditor:
    # The schema loader is enough for the editor's mechanics and 5x faster;
    # the scenario tests validate with load_checked, as the bot does.
    return KnowledgeEditor(
        root, tmp_path / "history", loader=load_knowledge, audit=audit, clock=clock
    )


def edited(entry: str) -> str:
    """The entry with its English question changed."""
    return entry.replace("alarm group?", "alarm group? (v2)")


def faq_ids(root: Path) -> list[str]:
    data = yaml.safe_load((root / "faq.yaml").read_text(encoding="utf-8"))
    return [item["id"] for item in data["faq"]]


def test_every_entry_shown_and_set_back_gives_the_file_byte_for_byte(
    root: Path,
) -> None:
    ids = [*faq_ids(root), "markfail", "nginx_status"]
    for entry_id in ids:
        span = locate_entry(root, entry_id)
        assert span is not None, entry_id
        assert span.replaced(span.entry_text()) == span.text, entry_id
        assert yaml.safe_load(span.entry_text())["id"] == entry_id


def test_faq_entry_text_has_no_dash_and_no_section_comment(root: Path) -> None:
    span = locate_entry(root, "alarm_examples")
    assert span is not None
    text = span.entry_text()
    assert text.startswith("id: alarm_examples\n")
    assert "# ----" not in text  # the next section's header stays with it
    assert not text.endswith("\n\n")


def test_unknown_entry_has_suggestions(editor: KnowledgeEditor) -> None:
    with pytest.raises(KnowledgeEditError) as caught:
        editor.show("alarm_setpu")
    assert caught.value.code == "unknown_entry"
    assert "alarm_setup" in caught.value.details["suggestions"]  # type: ignore[operator]


def test_faq_change_rewrites_only_that_entry(
    editor: KnowledgeEditor, root: Path, audit: MemoryAuditLog
) -> None:
    path = root / "faq.yaml"
    before = path.read_text(encoding="utf-8")
    span = editor.show("alarm_setup")
    new = span.entry_text().replace(
        "bind an alarm group?", "bind an alarm group? # (edited)"
    )
    new = "# kept: a note from the editor\n" + new

    proposal = editor.propose("alarm_setup", new, ADMIN, is_suggestion=False)
    assert path.read_text(encoding="utf-8") == before  # nothing written yet
    assert any(line.startswith("+") and "(edited)" in line for line in proposal.diff)
    assert any(line.startswith("-") for line in proposal.diff)
    record = editor.confirm(proposal.change_id, ADMIN)

    after = path.read_text(encoding="utf-8")
    assert after[: span.start] == before[: span.start]
    assert after.endswith(before[span.end :])
    assert "  # kept: a note from the editor\n  - id: alarm_setup\n" in after
    assert faq_ids(root) == faq_ids_of(before)
    assert record.path == "faq.yaml"
    assert record.entry_id == "alarm_setup"
    assert [row["action"] for row in audit.rows] == ["kb.propose", "kb.confirm"]
    assert audit.rows[1]["actor"] == "admin"
    assert audit.rows[1]["change"] == proposal.change_id


def faq_ids_of(text: str) -> list[str]:
    return [item["id"] for item in yaml.safe_load(text)["faq"]]


def test_alarm_file_is_written_as_given_with_its_comments(
    editor: KnowledgeEditor, root: Path
) -> None:
    path = root / "alarms" / "markfail.yaml"
    text = path.read_text(encoding="utf-8")
    new = text.replace("id: markfail\n", "# a new comment\nid: markfail\n")

    proposal = editor.propose("markfail", new, ADMIN, is_suggestion=False)
    editor.confirm(proposal.change_id, ADMIN)

    assert path.read_text(encoding="utf-8") == new


def test_pasted_yaml_with_odd_spaces_and_a_dash_is_understood() -> None:
    pasted = "  - id: x\n  \u00a0 question: {zh: 问, en: q}\n"
    assert normalize_yaml(pasted) == "id: x\nquestion: {zh: 问, en: q}\n"


def test_change_that_breaks_the_knowledge_is_refused_naming_file_and_line(
    editor: KnowledgeEditor, root: Path
) -> None:
    before = (root / "faq.yaml").read_text(encoding="utf-8")
    span = editor.show("alarm_setup")
    bad = span.entry_text() + "colour: blue\n"

    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose("alarm_setup", bad, ADMIN, is_suggestion=False)

    assert caught.value.code == "invalid"
    problems = caught.value.details["problems"]
    assert isinstance(problems, list)
    line = before[: span.end].count("\n") + 1
    index = faq_ids(root).index("alarm_setup")
    assert problems == [
        f"knowledge/faq.yaml:{line}: faq[{index}].colour: unknown key 'colour'"
    ]
    assert (root / "faq.yaml").read_text(encoding="utf-8") == before
    assert editor.pending() == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "no_yaml"),
        ("id: [unclosed\n", "bad_yaml"),
        ("- just\n- a list\n", "not_mapping"),
        ("id: other_id\nquestion: {zh: a, en: b}\n", "id_mismatch"),
        ("id: alarm_setup\nkeywords: [a]\nkeywords: [b]\n", "bad_yaml"),
    ],
)
def test_unusable_yaml_is_refused(
    editor: KnowledgeEditor, text: str, code: str
) -> None:
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose("alarm_setup", text, ADMIN, is_suggestion=False)
    assert caught.value.code == code


def test_a_repeated_key_is_refused_with_its_line(editor: KnowledgeEditor) -> None:
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose(
            "alarm_setup",
            "id: alarm_setup\nanswer:\n  zh: a\n  zh: b\n",
            ADMIN,
            is_suggestion=False,
        )
    assert caught.value.details == {
        "line": 4,
        "problem": "duplicate key 'zh'",
        "has_tab": False,
    }


def test_a_tab_in_the_line_yaml_stumbled_on_is_pointed_out(
    editor: KnowledgeEditor,
) -> None:
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose(
            "alarm_setup", "id: alarm_setup\nq:\n\t- a\n", ADMIN, is_suggestion=False
        )
    assert caught.value.details["line"] == 3
    assert caught.value.details["has_tab"] is True


def test_a_suggestion_full_of_aliases_is_refused_before_it_is_expanded(
    editor: KnowledgeEditor,
) -> None:
    # Nine levels of ten aliases each stand for 10^9 strings; expanding them
    # froze the bot for minutes. Refused from the node tree, without expanding.
    lines = ["id: alarm_setup", 'l0: &l0 ["lol", "lol"]']
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 9)]
    lines += [f"answer: [{', '.join(['*l8'] * 10)}]"]
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose("alarm_setup", "\n".join(lines), MEMBER, is_suggestion=True)
    assert caught.value.code == "bad_yaml"
    assert caught.value.details["line"] == 2
    assert "aliases" in str(caught.value.details["problem"])
    assert editor.pending() == []


@pytest.mark.parametrize("entry_id", ["../faq", "../../etc/x", "Faq", ""])
def test_an_id_that_could_name_another_path_is_refused(
    editor: KnowledgeEditor, root: Path, entry_id: str
) -> None:
    assert locate_entry(root, entry_id) is None
    text = f"id: {entry_id!r}\nrows: [{{key: a, meaning: {{zh: a, en: a}}}}]\n"
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose(entry_id, text, ADMIN, is_suggestion=False)
    assert caught.value.code == "bad_id"


def test_same_text_is_no_change(editor: KnowledgeEditor) -> None:
    text = editor.show("alarm_setup").entry_text()
    with pytest.raises(KnowledgeEditError) as caught:
        editor.propose("alarm_setup", text, ADMIN, is_suggestion=False)
    assert caught.value.code == "no_change"


def test_confirm_refuses_when_the_file_changed_since_the_proposal(
    editor: KnowledgeEditor, root: Path
) -> None:
    span = editor.show("alarm_setup")
    proposal = editor.propose(
        "alarm_setup", edited(span.entry_text()), ADMIN, is_suggestion=False
    )
    path = root / "faq.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "# hand edit\n", "utf-8")

    with pytest.raises(KnowledgeEditError) as caught:
        editor.confirm(proposal.change_id, ADMIN)

    assert caught.value.code == "stale"
    assert editor.pending() == []


def test_undo_puts_back_the_old_text_and_walks_back_in_history(
    editor: KnowledgeEditor, root: Path, tmp_path: Path
) -> None:
    path = root / "alarms" / "markfail.yaml"
    original = path.read_text(encoding="utf-8")
    first = original.replace("id: markfail\n", "id: markfail\n# one\n")
    second = first.replace("# one\n", "# one\n# two\n")
    for text in (first, second):
        proposal = editor.propose("markfail", text, ADMIN, is_suggestion=False)
        editor.confirm(proposal.change_id, ADMIN)

    undo = editor.undo(ADMIN)
    assert path.read_text(encoding="utf-8") == first
    assert undo.action == "undo"
    editor.undo(ADMIN)
    assert path.read_text(encoding="utf-8") == original
    with pytest.raises(KnowledgeEditError) as caught:
        editor.undo(ADMIN)
    assert caught.value.code == "nothing_to_undo"

    log = editor.log()
    assert [r.action for r in log] == ["undo", "undo", "set", "set"]
    assert log[0].reverts == log[3].change_id
    backups = tmp_path / "history" / log[3].change_id
    assert (backups / "before" / "alarms" / "markfail.yaml").read_text(
        encoding="utf-8"
    ) == original


def test_undo_refuses_when_the_file_was_edited_after_the_change(
    editor: KnowledgeEditor, root: Path
) -> None:
    path = root / "alarms" / "markfail.yaml"
    text = path.read_text(encoding="utf-8")
    proposal = editor.propose("markfail", "# x\n" + text, ADMIN, is_suggestion=False)
    editor.confirm(proposal.change_id, ADMIN)
    path.write_text("# by hand\n" + text, encoding="utf-8")

    with pytest.raises(KnowledgeEditError) as caught:
        editor.undo(ADMIN)

    assert caught.value.code == "edited_since"


def test_new_faq_entry_is_appended_and_undo_removes_it(
    editor: KnowledgeEditor, root: Path
) -> None:
    path = root / "faq.yaml"
    before = path.read_text(encoding="utf-8")
    entry = (
        "id: brand_new\n"
        "question: {zh: 新问题, en: A new question}\n"
        "answer: {zh: 新回答。, en: A new answer.}\n"
    )
    proposal = editor.propose("brand_new", entry, MEMBER, is_suggestion=True)
    assert proposal.is_new
    assert proposal.is_suggestion
    editor.confirm(proposal.change_id, ADMIN)

    after = path.read_text(encoding="utf-8")
    assert after.startswith(before)
    assert faq_ids(root)[-1] == "brand_new"
    editor.undo(ADMIN)
    assert path.read_text(encoding="utf-8") == before


def test_new_reference_table_gets_its_own_file(
    editor: KnowledgeEditor, root: Path
) -> None:
    entry = (
        "id: http_codes\n"
        "title: {zh: HTTP 状态码, en: HTTP codes}\n"
        "rows:\n"
        "  - key: '418'\n"
        "    meaning: {zh: 我是茶壶, en: I'm a teapot}\n"
    )
    proposal = editor.propose("http_codes", entry, ADMIN, is_suggestion=False)
    editor.confirm(proposal.change_id, ADMIN)
    path = root / "reference" / "http_codes.yaml"
    assert path.read_text(encoding="utf-8") == entry

    editor.undo(ADMIN)
    assert not path.exists()


def test_reject_drops_the_proposal(editor: KnowledgeEditor, root: Path) -> None:
    span = editor.show("alarm_setup")
    proposal = editor.propose(
        "alarm_setup", edited(span.entry_text()), MEMBER, is_suggestion=True
    )
    assert editor.reject(proposal.change_id, ADMIN) == proposal
    with pytest.raises(KnowledgeEditError) as caught:
        editor.confirm(proposal.change_id, ADMIN)
    assert caught.value.code == "unknown_change"


def test_proposals_expire_after_a_day(editor: KnowledgeEditor, clock: Clock) -> None:
    span = editor.show("alarm_setup")
    editor.propose("alarm_setup", edited(span.entry_text()), ADMIN, is_suggestion=False)
    clock.now += timedelta(hours=25)
    assert editor.pending() == []


def restarted(editor: KnowledgeEditor, clock: Clock) -> KnowledgeEditor:
    """A new editor on the same directories, as after the bot restarts."""
    return KnowledgeEditor(
        editor.root, editor.history_dir, loader=load_knowledge, clock=clock
    )


def test_a_proposal_outlives_a_restart_and_can_be_confirmed(
    editor: KnowledgeEditor, clock: Clock, root: Path
) -> None:
    span = editor.show("alarm_setup")
    proposal = editor.propose(
        "alarm_setup", edited(span.entry_text()), MEMBER, is_suggestion=True
    )

    again = restarted(editor, clock)

    assert again.pending() == [proposal]
    again.confirm(proposal.change_id, ADMIN)
    assert "alarm group? (v2)" in (root / "faq.yaml").read_text(encoding="utf-8")
    assert restarted(editor, clock).pending() == []


def test_a_kept_proposal_still_expires_after_a_day(
    editor: KnowledgeEditor, clock: Clock
) -> None:
    span = editor.show("alarm_setup")
    editor.propose("alarm_setup", edited(span.entry_text()), ADMIN, is_suggestion=False)
    clock.now += timedelta(hours=25)
    assert restarted(editor, clock).pending() == []
    assert restarted(editor, clock).pending() == []  # and the file forgot it


def test_a_proposal_kept_over_its_day_cannot_be_confirmed(
    editor: KnowledgeEditor, clock: Clock
) -> None:
    span = editor.show("alarm_setup")
    proposal = editor.propose(
        "alarm_setup", edited(span.entry_text()), ADMIN, is_suggestion=False
    )
    again = restarted(editor, clock)
    clock.now += timedelta(hours=25)
    with pytest.raises(KnowledgeEditError) as caught:
        again.confirm(proposal.change_id, ADMIN)
    assert caught.value.code == "unknown_change"


def test_an_unreadable_pending_file_costs_the_proposals_not_the_editor(
    editor: KnowledgeEditor, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    editor.history_dir.mkdir(parents=True, exist_ok=True)
    (editor.history_dir / "pending.json").write_text("{not json", encoding="utf-8")
    again = restarted(editor, clock)
    assert again.pending() == []
    assert "pending.json: unreadable, pending proposals dropped" in caplog.text
    span = again.show("alarm_setup")
    again.propose("alarm_setup", edited(span.entry_text()), ADMIN, is_suggestion=False)
    assert len(restarted(editor, clock).pending()) == 1


def test_write_atomic_keeps_the_mode_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o640)
    write_atomic(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.yaml"]


def git(root: Path, *args: str) -> str:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "setup",
        "GIT_AUTHOR_EMAIL": "setup@example.com",
        "GIT_COMMITTER_NAME": "setup",
        "GIT_COMMITTER_EMAIL": "setup@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout


def test_in_a_git_repository_each_change_is_a_commit_by_its_author(
    root: Path, tmp_path: Path
) -> None:
    git(root, "init", "--quiet")
    git(root, "add", ".")
    git(root, "commit", "--quiet", "-m", "initial")
    (root / "notes.txt").write_text("not the editor's business\n", encoding="utf-8")
    editor = KnowledgeEditor(root, tmp_path / "history", loader=load_knowledge)
    assert editor.is_git

    span = editor.show("alarm_setup")
    proposal = editor.propose(
        "alarm_setup", edited(span.entry_text()), MEMBER, is_suggestion=True
    )
    record = editor.confirm(proposal.change_id, ADMIN)

    assert record.commit
    head = git(root, "log", "-1", "--format=%an <%ae>|%cn|%s%n%b")
    assert head.startswith("mei <wxid_mei@wechat>|alarm-bot|kb set alarm_setup")
    assert "Confirmed-by: admin" in head
    assert git(root, "status", "--porcelain") == "?? notes.txt\n"

    undo = editor.undo(ADMIN)
    assert undo.commit
    assert "kb undo alarm_setup" in git(root, "log", "-1", "--format=%s")
    assert git(root, "diff", "HEAD~2", "--stat") == ""


def test_a_knowledge_directory_inside_another_repository_is_not_committed_to(
    tmp_path: Path,
) -> None:
    outer = tmp_path / "project"
    root = outer / "knowledge"
    shutil.copytree(default_root(), root)
    git(outer, "init", "--quiet")
    editor = KnowledgeEditor(root, tmp_path / "history", loader=load_knowledge)
    assert not editor.is_git


def test_shipped_knowledge_loads_for_the_editor(knowledge: Knowledge) -> None:
    # NOTE: guards the fixture above: the copy is of a valid knowledge base.
    assert "alarm_setup" in knowledge.faq
