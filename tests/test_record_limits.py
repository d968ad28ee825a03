"""Record files at their limits, through ``newsletter sessions import``: YAML aliases and anchors,
files over 1 MiB and talks outside their session are refused with the file named, nothing kept.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import run

RECORD = """\
number: 71
series: 机器学习学术沙龙
title: 限制测试
starts_at: 2021-01-09T19:30:00+08:00
ends_at: 2021-01-09T21:30:00+08:00
venue:
  mode: online
  streams:
    - {name: Mo平台直播, url: "https://momodel.cn"}
talks:
"""

TALK = """\
  - kind: paper
    title: 第一个报告
    starts_at: {starts}
    ends_at: {ends}
"""


def import_file(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "record.yaml"
    path.write_text(text, encoding="utf-8")
    result = run(tmp_path, "sessions", "import", str(path))
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stderr


def stored_sessions(tmp_path: Path) -> str:
    result = run(tmp_path, "sessions", "list")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_yaml_aliases_are_refused_before_any_expansion(tmp_path: Path) -> None:
    # The classic "billion laughs": nine levels of nine aliases each, 387,420,489 strings
    # if expanded; refused at the first anchor, so this returns at once with one line.
    levels = ['a0: &a0 ["lol"]'] + [
        f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)
    ]
    text = RECORD + TALK.format(
        starts="2021-01-09T19:30:00+08:00", ends="2021-01-09T20:00:00+08:00"
    )
    text += "notes: *a9\n" + "\n".join(f"x_{line}" for line in levels) + "\n"
    code, stderr = import_file(tmp_path, text)
    assert code == 1
    assert "record.yaml: not valid YAML at line" in stderr
    assert "alias *a9 is not allowed in a session record" in stderr
    assert "71" not in stored_sessions(tmp_path)


def test_a_lone_alias_is_refused_too(tmp_path: Path) -> None:
    # A reference to an anchor defined nowhere is still an alias event: refused by name.
    text = RECORD.replace("title: 限制测试", "title: *t") + TALK.format(
        starts="2021-01-09T19:30:00+08:00", ends="2021-01-09T20:00:00+08:00"
    )
    code, stderr = import_file(tmp_path, text)
    assert code == 1
    assert "alias *t is not allowed in a session record" in stderr


def test_a_record_file_over_1_mib_is_refused_naming_file_and_size(tmp_path: Path) -> None:
    text = RECORD + TALK.format(
        starts="2021-01-09T19:30:00+08:00", ends="2021-01-09T20:00:00+08:00"
    )
    text += "notes: " + "长" * 400_000 + "\n"  # 1.2 MB of UTF-8
    size = len(text.encode("utf-8"))
    code, stderr = import_file(tmp_path, text)
    assert code == 1
    assert f"record.yaml: {size:,} bytes is too large for a session record" in stderr
    assert "1 MiB" in stderr
    assert "71" not in stored_sessions(tmp_path)


def test_a_record_just_under_the_limit_imports(tmp_path: Path) -> None:
    text = RECORD + TALK.format(
        starts="2021-01-09T19:30:00+08:00", ends="2021-01-09T20:00:00+08:00"
    )
    text += "notes: " + "x" * (1024 * 1024 - len(text.encode("utf-8")) - 20) + "\n"
    code, stderr = import_file(tmp_path, text)
    assert code == 0, stderr
    assert "71" in stored_sessions(tmp_path)


def test_talks_outside_their_session_are_refused_with_the_times(tmp_path: Path) -> None:
    # Session no. 28's talk times (12:30–14:10) left in a session that runs 19:30–21:30.
    text = RECORD + TALK.format(
        starts="2021-01-09T12:30:00+08:00", ends="2021-01-09T14:10:00+08:00"
    )
    text += TALK.replace("第一个报告", "第二个报告").format(
        starts="2021-01-09T21:00:00+08:00", ends="2021-01-09T22:00:00+08:00"
    )
    code, stderr = import_file(tmp_path, text)
    assert code == 1
    assert (
        "record.yaml: talks[0] '第一个报告': starts at 2021-01-09T12:30+08:00, before the"
        " session (2021-01-09T19:30+08:00–2021-01-09T21:30+08:00) starts"
    ) in stderr
    assert "talks[1] '第二个报告': ends at 2021-01-09T22:00+08:00, after the session" in stderr
    assert "71" not in stored_sessions(tmp_path)


def test_talks_inside_their_session_import(tmp_path: Path) -> None:
    text = RECORD + TALK.format(
        starts="2021-01-09T19:30:00+08:00", ends="2021-01-09T21:30:00+08:00"
    )
    code, stderr = import_file(tmp_path, text)
    assert code == 0, stderr
