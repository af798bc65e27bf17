"""This module answers free-text questions from the knowledge base.

Questions arrive in Chinese, English or both ("nginx 499 是什么"). Text is cut
into ASCII words and Chinese character bigrams; each entry is scored by the
rarity-weighted share of the question's terms it holds, field by field, with a
bonus when one of its names, aliases or keywords appears in the question whole.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from bot.knowledge import Knowledge, Text, normalize

_WORD_RE = re.compile(r"[a-z0-9_$.()]+|[\u3400-\u9fff]+")
# Question words carry no topic; they are dropped before scoring.
_STOP = frozenset(
    (
        "是什么 什么 怎么 怎么办 如何 为什么 为何 哪些 一下 请问 这个 那个 "
        "的 了 吗 呢 啊 是 有 和 与 在 要 会 能 "
        "the a an is are what how why which do does to of for in on and or "
        "my me i we it this that"
    ).split()
)
_ASCII_WORD_RE = re.compile(r"[A-Za-z0-9_]+")
_STOP_BIGRAMS = frozenset(
    {"什么", "怎么", "如何", "为什", "么是", "是什", "一下", "请问"}
)
# Field weights: a term in a name or keyword says more than one in a long answer.
W_NAME, W_KEY, W_BODY = 3.0, 2.0, 1.0
PHRASE_BONUS = 0.6


@dataclass(frozen=True, slots=True)
class Match:
    """One search hit: an entry of the knowledge base and its score in 0..1."""

    id: str
    kind: str
    score: float
    row: str | None = None

    def to_json(self) -> dict[str, object]:
        """Return the hit in the ``ask --json`` shape."""
        return {"id": self.id, "kind": self.kind, "score": round(self.score, 3)}


@dataclass(frozen=True, slots=True)
class _Doc:
    id: str
    kind: str
    terms: dict[str, float]
    phrases: tuple[str, ...]
    rows: tuple[tuple[str, tuple[str, ...]], ...] = ()


def terms(text: str) -> list[str]:
    """Cut ``text`` into search terms: ASCII words and Chinese bigrams."""
    return list(_terms(text))


# NOTE: a reload indexes the same texts again; cutting them was most of its time.
@functools.lru_cache(maxsize=65536)
def _terms(text: str) -> tuple[str, ...]:
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for word in _WORD_RE.findall(folded):
        if word in _STOP:
            continue
        if word.isascii():
            out.append(word.strip("._$()") or word)
            out.extend(p for p in re.split(r"[_.$()]+", word) if p and p != word)
        elif len(word) == 1:
            out.append(word)
        else:
            out.extend(
                word[i : i + 2]
                for i in range(len(word) - 1)
                if word[i : i + 2] not in _STOP_BIGRAMS
            )
    return tuple(t for t in out if t)


class KnowledgeSearch:
    """An index over every alarm type, FAQ entry and reference table."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.docs = [
            *_alarm_docs(knowledge),
            *_faq_docs(knowledge),
            *_table_docs(knowledge),
        ]
        self.by_id = {doc.id.casefold(): doc for doc in self.docs}
        frequency: Counter[str] = Counter()
        for doc in self.docs:
            frequency.update(doc.terms.keys())
        total = len(self.docs) or 1
        self.idf = {t: math.log(1 + total / n) for t, n in frequency.items()}
        self.default_idf = math.log(1 + total)

    def search(self, question: str, limit: int = 5) -> list[Match]:
        """Return the best entries for ``question``, best first, score > 0."""
        wanted = list(dict.fromkeys(terms(question)))
        if not wanted:
            return []
        weight = {t: self.idf.get(t, self.default_idf) for t in wanted}
        norm = sum(weight.values()) * W_NAME
        said = _Said(question)
        exact = self.by_id.get(question.strip().casefold())
        hits = []
        for doc in self.docs:
            covered = sum(weight[t] * doc.terms.get(t, 0.0) for t in wanted)
            score = covered / norm
            if any(said.names(phrase) for phrase in doc.phrases):
                score += PHRASE_BONUS
            if doc is exact:
                # Replies point at entries by id ("见 /ask nginx_status").
                score = 1.0
            if score > 0.12:
                hits.append(Match(doc.id, doc.kind, min(score, 1.0), _row(doc, said)))
        exact_id = exact.id if exact is not None else None
        hits.sort(key=lambda m: (m.id != exact_id, -m.score, m.kind, m.id))
        return hits[:limit]


class _Said:
    """A question, ready to be asked whether it names a phrase."""

    def __init__(self, question: str) -> None:
        self.folded = normalize(question)
        self.words = {normalize(w) for w in _ASCII_WORD_RE.findall(question)}

    def names(self, phrase: str) -> bool:
        """Whether the question holds ``phrase``; a short Latin one as a whole word.

        Otherwise "ss" (the socket tool) would match inside "access" or "success".
        """
        if phrase.isascii() and len(phrase) < 5:
            return phrase in self.words
        return bool(phrase) and phrase in self.folded


def _row(doc: _Doc, said: _Said) -> str | None:
    """The table row the question names, e.g. ``499`` in "nginx 499 是什么"."""
    best = None
    for key, names in doc.rows:
        for name in names:
            if said.names(name) and (best is None or len(name) > best[1]):
                best = (key, len(name))
    return best[0] if best else None


def _add(terms_: dict[str, float], text: str, weight: float) -> None:
    for term in terms(text):
        terms_[term] = max(terms_.get(term, 0.0), weight)


def _both(text: Text | None) -> str:
    return f"{text.zh} {text.en}" if text else ""


def _alarm_docs(knowledge: Knowledge) -> list[_Doc]:
    docs = []
    for alarm in knowledge.alarms.values():
        found: dict[str, float] = {}
        _add(found, " ".join([alarm.id, *alarm.aliases, _both(alarm.names)]), W_NAME)
        _add(found, " ".join([_both(alarm.summary), *alarm.examples]), W_KEY)
        body = [_both(alarm.platform_action)]
        body += [_both(s.title) + " " + _both(s.detail) for s in alarm.steps]
        _add(found, " ".join(body), W_BODY)
        phrases = [alarm.id, alarm.names.zh, alarm.names.en, *alarm.aliases]
        docs.append(_Doc(alarm.id, "alarm", found, _phrases(phrases)))
    return docs


def _faq_docs(knowledge: Knowledge) -> list[_Doc]:
    docs = []
    for entry in knowledge.faq.values():
        found: dict[str, float] = {}
        _add(found, " ".join(entry.keywords) + " " + _both(entry.question), W_NAME)
        _add(found, _both(entry.answer), W_BODY)
        for step in entry.steps:
            _add(found, _both(step.title), W_BODY)
        docs.append(_Doc(entry.id, "faq", found, _phrases(entry.keywords)))
    return docs


def _table_docs(knowledge: Knowledge) -> list[_Doc]:
    docs = []
    for table in knowledge.tables.values():
        found: dict[str, float] = {}
        _add(found, " ".join([table.id, *table.keywords, _both(table.title)]), W_NAME)
        rows = []
        for row in table.rows:
            _add(found, " ".join([row.key, *row.aliases]), W_KEY)
            _add(found, _both(row.meaning), W_BODY)
            rows.append((row.key, _phrases([row.key, *row.aliases])))
        docs.append(
            _Doc(table.id, "reference", found, _phrases(table.keywords), tuple(rows))
        )
    return docs


def _phrases(words: list[str]) -> tuple[str, ...]:
    """Names worth a bonus when they appear whole: two characters or more."""
    return tuple(p for p in (normalize(w) for w in words) if len(p) >= 2)
