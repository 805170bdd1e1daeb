"""The generated register map (:mod:`hw.regdoc`) names every register at its address, takes its
bit positions from the declarations' layouts, and docs/architecture.md holds the current
tables."""

import re
from pathlib import Path

import pytest
from amaranth.lib import data

from hw import regdoc
from hw.config import preset
from hw.engine import EngineRegisters, Setting
from hw.run_through import RunThrough

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def text():
    return regdoc.markdown()


def _engine_section(text, python_name):
    start = text.index("({})".format(python_name))
    end = text.find("\n### ", start)
    return text[start:] if end < 0 else text[start:end]


def _rows(section):
    """``{first cell: second cell}`` of the section's table rows."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2:
            rows.setdefault(cells[1], []).append(cells[0])
    return rows


@pytest.mark.parametrize("python_name", [n for n, _, _ in regdoc.DECLARATIONS])
def test_every_register_is_listed_at_its_address(text, python_name):
    regs = dict(regdoc.declarations())[python_name]
    rows = _rows(_engine_section(text, python_name))
    for name in regs.names:
        assert str(regs.addr(name)) in rows.get("`{}`".format(name), []), \
            "{}: register {} is not listed at address {}".format(python_name, name,
                                                                  regs.addr(name))


@pytest.mark.parametrize("python_name", [n for n, _, _ in regdoc.DECLARATIONS])
def test_ctrl_and_status_bits_come_from_the_layouts(text, python_name):
    regs = dict(regdoc.declarations())[python_name]
    rows = _rows(_engine_section(text, python_name))
    for pulse in regs.pulses:
        bit = str(regs.ctrl_layout[pulse].offset)
        assert bit in rows["`{}`".format(pulse)], (python_name, pulse)
        assert regs.ctrl(pulse) == 1 << int(bit)
    for error in regs.errors:
        bit = regs.status_layout["errors"].offset + regs.error_layout[error].offset
        assert str(bit) in rows["`errors.{}`".format(error)], (python_name, error)
        assert regs.status(1 << bit).errors[error]
    for field in ("running", "done", "error"):
        assert str(regs.status_layout[field].offset) in rows["`{}`".format(field)]


def test_settings_show_their_width_or_layout():
    regs = EngineRegisters("demo", settings=[
        Setting("n", 12, doc="a | b"), Setting("flags", data.StructLayout(
            {"a": 1, "b": 3}), init={"b": 2})], errors=("late",), counters=("beats",))
    section = regdoc.engine_tables("demo", regs)
    assert "| 2 | `n` | setting: 12 bits | 0 | a \\| b |" in section
    assert "| 3 | `flags` | setting: `a` [0], `b` [3:1] | 4 |" in section
    assert "| 5 | `beats` | counter (32 bits) | 0 |" in section
    assert "| 9 | `errors.late` | sticky error |" in section


@pytest.mark.filterwarnings("ignore::amaranth.hdl._ir.UnusedElaboratable")
def test_run_through_windows(text):
    windows = RunThrough(preset("vidt")).windows
    assert {stage: base for stage, (base, _) in windows.items()} == {"qkv": 0, "attention": 16}
    for stage, (base, regs) in windows.items():
        assert re.search(r"\| `run_through` \| `{}` \| {} \| {} … {} \| `{}` ".format(
            stage, base, base, base + 15, regs.name), text), stage


def test_update_replaces_only_the_marked_section():
    doc = "intro\n{}\nold\n{}\noutro\n".format(regdoc.BEGIN, regdoc.END)
    new = regdoc.update(doc, "| t |\n")
    assert new == "intro\n{}\n| t |\n{}\noutro\n".format(regdoc.BEGIN, regdoc.END)
    assert regdoc.section(new) == "| t |\n"
    assert regdoc.update(new, "| t |\n") == new
    with pytest.raises(ValueError, match="has no section between"):
        regdoc.update("no markers", "x")


def test_cli_writes_and_updates(tmp_path, text):
    out = tmp_path / "map.md"
    assert regdoc.main(["--out", str(out)]) == 0
    assert out.read_text() == text
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n{}\n{}\n".format(regdoc.BEGIN, regdoc.END))
    assert regdoc.main(["--check", str(doc)]) == 1
    assert regdoc.main(["--update", str(doc)]) == 0
    assert regdoc.main(["--check", str(doc)]) == 0
    assert regdoc.section(doc.read_text()) == text


def test_architecture_doc_has_the_current_tables(text):
    assert regdoc.section(DOC.read_text(), str(DOC)) == text, \
        "docs/architecture.md has stale register tables: run " \
        "`python -m hw.regdoc --update docs/architecture.md`"


def test_every_stage_of_the_tops_has_its_register_table(text):
    """Each register window of a pipeline top names a declaration listed in the tables."""
    assert "not listed in hw.regdoc.DECLARATIONS" not in text
