"""Knowledge reload time: the shipped knowledge and a generated one of 1,000 entries.

Run on demand:  .venv/bin/python bench/bench_reload.py [--runs 7] [--entries 1000]
Targets (issue 5): a reload of the shipped knowledge under 100 ms, of a 1,000-entry
knowledge base under 1 s. A reload is what ``/reload``, SIGHUP and the file watcher
do: ``load_checked`` (schema, references, every template rendered in both
languages, reply sizes) plus the renderer and search index of the new snapshot.
The first run of a process compiles every template; later runs reuse the compiled
code of unchanged templates, as a running bot does, so both are reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bot.dispatch import Dispatcher
from bot.kbcheck import check_knowledge, load_checked
from bot.knowledge import default_root, load_knowledge

LINE = "先看服务器负载、网络和日志，再看回包格式。"


def generate(root: Path, entries: int) -> tuple[int, int, int]:
    """Grow the knowledge copied to ``root`` to ``entries`` entries in all."""
    knowledge = load_knowledge(root)
    have = len(knowledge.alarms) + len(knowledge.faq) + len(knowledge.tables)
    tables = max((entries - have) // 16, 0)
    faq = max(entries - have - tables, 0)
    items = []
    for n in range(faq):
        items.append(
            f"  - id: gen_faq_{n:04d}\n"
            f"    question: {{zh: 生成的问题 {n}, en: generated question {n}}}\n"
            f"    keywords: [生成{n}, gen{n}, 负载, load]\n"
            f"    answer:\n"
            f"      zh: 第 {n} 条：{LINE}{LINE}\n"
            f"      en: Entry {n}, check the load, the network and the logs first.\n"
            f"    steps:\n"
            f"      - id: look-{n}\n"
            f"        title: {{zh: 查看第 {n} 项, en: look at item {n}}}\n"
            f"        commands:\n"
            f"          - run: \"curl -sS '{{{{ url }}}}' | head -{n % 50 + 1}\"\n"
            f"    related: [alarm_setup, gen_faq_{(n + 1) % faq:04d}]\n"
        )
    with (root / "faq.yaml").open("a", encoding="utf-8") as out:
        out.write("\n" + "\n".join(items))
    for n in range(tables):
        rows = "".join(
            f"  - key: k{n}_{r}\n"
            f"    meaning: {{zh: 含义 {r}，{LINE}, en: meaning {r}}}\n"
            for r in range(12)
        )
        text = (
            f"id: gen_table_{n:03d}\n"
            f"title: {{zh: 生成的参考表 {n}, en: generated table {n}}}\n"
            f"rows:\n{rows}"
        )
        (root / "reference" / f"gen_table_{n:03d}.yaml").write_text(text, "utf-8")
    return (
        len(knowledge.alarms),
        len(knowledge.faq) + faq,
        len(knowledge.tables) + tables,
    )


def timed(action: Callable[[], object], runs: int) -> tuple[float, float, float, float]:
    """First, median and worst CPU time of ``action``, and its median wall time (ms).

    CPU time is reported because a shared machine's load stretches wall time;
    a reload runs in one thread, so its CPU time is what it costs.
    """
    cpu, wall = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        cpu.append((time.process_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    rest = cpu[1:] or cpu
    return cpu[0], statistics.median(rest), max(rest), statistics.median(wall)


def clear_caches() -> None:
    """Forget every parse, validation, compile and render cache: a cold start."""
    from bot import kbcheck, knowledge, render

    knowledge._VALID.items.clear()
    knowledge._source_problems.cache_clear()
    knowledge._syntax_error.cache_clear()
    kbcheck._RESULTS.clear()
    render._TEMPLATE_CODES.codes.clear()
    render._CODE.clear()


def editing(path: Path, dispatcher: Dispatcher) -> Callable[[], object]:
    """Reload after a new edit to ``path`` (a comment with a new number)."""
    original = path.read_text(encoding="utf-8")
    count = iter(range(1_000_000))

    def edit_and_reload() -> object:
        path.write_text(f"{original}# edit {next(count)}\n", encoding="utf-8")
        return dispatcher.reload()

    return edit_and_reload


def report(name: str, root: Path, runs: int) -> None:
    clear_caches()
    started = time.process_time()
    _, problems = check_knowledge(root)
    cold = (time.process_time() - started) * 1000
    assert not problems, problems[:5]
    dispatcher = Dispatcher(load_knowledge(root), loader=lambda: load_checked(root))
    rows = [
        ("load (schema, refs)", lambda: load_knowledge(root)),
        ("kb check (full)", lambda: check_knowledge(root)),
        ("reload, no change", dispatcher.reload),
        (
            "reload, alarm edited",
            editing(root / "alarms" / "markfail.yaml", dispatcher),
        ),
        ("reload, faq.yaml edited", editing(root / "faq.yaml", dispatcher)),
    ]
    print(f"\n{name}: {root}")
    print(f"  kb check, cold start: {cold:.0f}ms CPU")
    print(f"  {'CPU time':24} {'first':>9} {'median':>9} {'worst':>9} {'wall':>9}")
    for label, action in rows:
        first, median, worst, wall = timed(action, runs)
        print(
            f"  {label:24} {first:7.0f}ms {median:7.0f}ms {worst:7.0f}ms {wall:7.0f}ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--entries", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        shipped = Path(tmp) / "shipped" / "knowledge"
        shutil.copytree(default_root(), shipped)
        report("shipped knowledge", shipped, args.runs)

        big = Path(tmp) / "big" / "knowledge"
        shutil.copytree(default_root(), big)
        alarms, faq, tables = generate(big, args.entries)
        total = alarms + faq + tables
        report(
            f"generated: {total:,} entries ({alarms} alarm types, {faq} FAQ, "
            f"{tables} tables)",
            big,
            args.runs,
        )


if __name__ == "__main__":
    main()
