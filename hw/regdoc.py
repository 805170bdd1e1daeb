"""The register map in Markdown, generated from the engines' declarations.

``python -m hw.regdoc`` prints, for every engine declaration (:class:`hw.engine.EngineRegisters`)
of :data:`DECLARATIONS`: the address map (address, name, kind, reset value, description), the
CTRL bits and the STATUS bits, with bit positions taken from the declaration's ``lib.data``
layouts (:attr:`~hw.engine.EngineRegisters.ctrl_layout`,
:attr:`~hw.engine.EngineRegisters.status_layout`); then the register windows of every
:class:`hw.pipeline.Pipeline` top of :data:`hw.designs.DESIGNS`. Nothing here is written down
twice: a register added to a declaration appears in the tables.

Descriptions: a setting's :attr:`hw.engine.Setting.doc`; the registers, bits and counters that
every engine has (``ctrl``, ``status``, ``start``, ``clear_error``, ``stop``, ``config``,
``cycles``) are described by :mod:`hw.engine` and here; an engine's own errors, counters and pulses are
listed by name until their declarations carry a description (a mapping ``error_docs``,
``counter_docs`` or ``pulse_docs`` on the declaration is used when present).

``--out FILE`` writes the tables to ``FILE``; ``--update FILE`` replaces the part of ``FILE``
between the lines :data:`BEGIN` and :data:`END` (``docs/architecture.md``); ``--check FILE``
exits with status 1 if that part differs from the generated tables.
"""

import argparse
import gc
import sys
import warnings
from pathlib import Path

from amaranth.hdl import Shape
from amaranth.lib import data

from hw.engine import COUNTER_BITS

__all__ = ["BEGIN", "END", "DECLARATIONS", "declarations", "engine_tables", "window_tables",
           "markdown", "update", "section", "main"]

BEGIN = "<!-- regdoc:begin -->"
END = "<!-- regdoc:end -->"

#: The documented declarations: (Python name, module, attribute path).
DECLARATIONS = (
    ("hw.linear_engine.REGISTERS", "hw.linear_engine", "REGISTERS"),
    ("hw.attention_engine.REGISTERS", "hw.attention_engine", "REGISTERS"),
    ("hw.predictor.REGISTERS", "hw.predictor", "REGISTERS"),
    ("hw.framer.REGISTERS", "hw.framer", "REGISTERS"),
    ("hw.layernorm.REGISTERS", "hw.layernorm", "REGISTERS"),
    ("hw.to_tokens.REGISTERS", "hw.to_tokens", "REGISTERS"),
    ("hw.transpose.REGISTERS", "hw.transpose", "REGISTERS"),
    ("hw.gelu.REGISTERS", "hw.gelu", "REGISTERS"),
    ("hw.residual.REGISTERS", "hw.residual", "REGISTERS"),
    ("hw.sta_report.KEY_REGISTERS", "hw.sta_report", "KEY_REGISTERS"),
    ("hw.sta_report.ACT_REGISTERS", "hw.sta_report", "ACT_REGISTERS"),
    ("hw.pos_add.REGISTERS", "hw.pos_add", "REGISTERS"),
    ("hw.mean_pool.REGISTERS", "hw.mean_pool", "REGISTERS"),
    ("hw.route.SELECT_REGISTERS", "hw.route", "SELECT_REGISTERS"),
    ("hw.route.ROUTE_REGISTERS", "hw.route", "ROUTE_REGISTERS"),
    ("hw.token_buffer.REGISTERS", "hw.token_buffer", "REGISTERS"),
    ("hw.pipeline.PassThrough.registers", "hw.pipeline", "PassThrough.registers"),
)

#: The preset whose tops give the register windows (windows do not depend on it).
WINDOW_PRESET = "vidt"

# What hw.engine gives every engine.
_COMMON = {
    "ctrl": "write-1 pulses (CTRL bits below); reads 0",
    "status": "read-only (STATUS bits below)",
    "cycles": "cycles while running",
}
_COMMON_PULSES = {
    "start": "START: clears the counters and DONE; begins a run if the settings are in range, "
             "else sets error `config`; while running: refused (error `config`), the run goes "
             "on",
    "clear_error": "clears every sticky error bit (wins over an error raised in the same cycle)",
    "stop": "STOP: ends a run without DONE (the datapath is not flushed: for a stage whose run "
            "took no input)",
}
_COMMON_STATUS = {
    "running": "a run is in progress",
    "done": "the last run finished (cleared by START)",
    "error": "any error bit is set",
    "reserved": "reads 0",
}
_COMMON_ERRORS = {"config": "a START found a setting out of range (the run did not start) or "
                            "came while running (the run went on)"}


def _import(module, path):
    import importlib
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def declarations():
    """``[(python name, EngineRegisters)]`` for :data:`DECLARATIONS`."""
    return [(name, _import(module, path)) for name, module, path in DECLARATIONS]


def _doc(regs, kind, name, common):
    extra = getattr(regs, kind + "_docs", None) or {}
    return extra.get(name) or common.get(name, "")


def _bits(offset, width):
    return str(offset) if width == 1 else "{}:{}".format(offset + width - 1, offset)


def _fields(layout, prefix="", base=0):
    """``(name, offset, width)`` of every leaf field of a struct layout, nested ones dotted."""
    out = []
    for name, field in layout:
        if isinstance(field.shape, data.StructLayout):
            out += _fields(field.shape, prefix + name + ".", base + field.offset)
        else:
            out.append((prefix + name, base + field.offset, field.width))
    return out


def _shape_text(shape):
    if isinstance(shape, data.StructLayout):
        return ", ".join("`{}` [{}]".format(n, _bits(o, w)) for n, o, w in _fields(shape))
    if isinstance(shape, data.Layout):
        return "{} bits ({})".format(shape.size, type(shape).__name__)
    s = Shape.cast(shape)
    return "{}{} bits".format("signed " if s.signed else "", s.width)


def _init_value(setting):
    if isinstance(setting.shape, data.Layout):
        return setting.shape.const(setting.init).as_value().value
    return int(setting.init)


def _cell(text):
    return str(text).replace("|", "\\|")


def engine_tables(python_name, regs):
    """The Markdown tables of one declaration."""
    lines = ["### `{}` ({})".format(regs.name, python_name), "",
             "| addr | name | kind | reset | description |", "|---:|---|---|---:|---|"]
    settings = {s.name: s for s in regs.settings}
    for name in regs.names:
        addr = regs.addr(name)
        if name == "ctrl":
            kind, reset, doc = "CTRL", "0", _COMMON["ctrl"]
        elif name == "status":
            kind, reset, doc = "STATUS", "0", _COMMON["status"]
        elif name in settings:
            s = settings[name]
            kind = "setting: " + _shape_text(s.shape)
            reset, doc = _init_value(s), s.doc
        else:
            kind, reset = "counter ({} bits)".format(COUNTER_BITS), "0"
            doc = _doc(regs, "counter", name, _COMMON)
        lines.append("| {} | `{}` | {} | {} | {} |".format(addr, name, _cell(kind), reset,
                                                          _cell(doc)))
    lines += ["", "CTRL bits (`ctrl_layout`):", "", "| bit | pulse | description |",
              "|---:|---|---|"]
    for name, offset, width in _fields(regs.ctrl_layout):
        lines.append("| {} | `{}` | {} |".format(_bits(offset, width), name,
                                                _cell(_doc(regs, "pulse", name,
                                                           _COMMON_PULSES))))
    lines += ["", "STATUS bits (`status_layout`):", "", "| bit | field | description |",
              "|---:|---|---|"]
    for name, offset, width in _fields(regs.status_layout):
        if name.startswith("errors."):
            err = name[len("errors."):]
            doc = "sticky error" + (": " + d if (d := _doc(regs, "error", err,
                                                           _COMMON_ERRORS)) else "")
        else:
            doc = _COMMON_STATUS.get(name, "")
        lines.append("| {} | `{}` | {} |".format(_bits(offset, width), name, _cell(doc)))
    return "\n".join(lines) + "\n"


def _pipeline_windows(preset_name=WINDOW_PRESET):
    """``[(design, window_bits, [(stage, base, EngineRegisters)])]`` of every Pipeline top."""
    from hw.config import preset
    from hw.designs import DESIGNS, design_class
    from hw.pipeline import Pipeline
    config = preset(preset_name)
    out = []
    with warnings.catch_warnings():
        # The tops are built for their host view only, never elaborated.
        warnings.simplefilter("ignore")
        for design in DESIGNS:
            cls = design_class(design)
            if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
                continue
            top = cls(config)
            out.append((design, top.window_bits,
                        [(stage, base, regs) for stage, (base, regs) in top.windows.items()]))
            del top
        gc.collect()
    return out


def window_tables(preset_name=WINDOW_PRESET):
    """The register windows of every :class:`hw.pipeline.Pipeline` top, as Markdown."""
    names = {id(regs): name for name, regs in declarations()}
    lines = ["### Register windows of the pipeline tops", "",
             "A stage's register `r` is at `base + addr(r)` on the top's `csr` port "
             "(`Pipeline.addr(stage, r)`).", "",
             "| top (`hw.designs`) | stage | base | addresses | declaration |",
             "|---|---|---:|---|---|"]
    for design, wb, windows in _pipeline_windows(preset_name):
        for stage, base, regs in windows:
            lines.append("| `{}` | `{}` | {} | {} … {} | `{}` ({}) |".format(
                design, stage, base, base, base + (1 << wb) - 1, regs.name,
                names.get(id(regs), "not listed in hw.regdoc.DECLARATIONS")))
    return "\n".join(lines) + "\n"


def markdown():
    """Every table: the engine declarations, then the windows."""
    head = ("<!-- Generated by `python -m hw.regdoc` from the register declarations: "
            "do not edit by hand. -->\n")
    parts = [head] + [engine_tables(n, r) for n, r in declarations()] + [window_tables()]
    return "\n".join(parts)


def _markers(text, where):
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < 0 or end < begin:
        raise ValueError("{} has no section between the lines {} and {}"
                         .format(where, BEGIN, END))
    return begin + len(BEGIN), end


def section(text, where="the text"):
    """The part of ``text`` between :data:`BEGIN` and :data:`END`, without the newlines that
    follow and precede the markers."""
    a, b = _markers(text, where)
    return text[a:b].strip("\n") + "\n"


def update(text, tables=None, where="the text"):
    """``text`` with the part between the markers replaced by ``tables`` (default: the
    generated tables)."""
    tables = markdown() if tables is None else tables
    a, b = _markers(text, where)
    return text[:a] + "\n" + tables.strip("\n") + "\n" + text[b:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="FILE", help="write the tables to FILE")
    group.add_argument("--update", metavar="FILE",
                       help="replace the section between {} and {} of FILE".format(BEGIN, END))
    group.add_argument("--check", metavar="FILE",
                       help="exit 1 if that section of FILE is not the generated tables")
    args = parser.parse_args(argv)
    tables = markdown()
    if args.out:
        Path(args.out).write_text(tables)
    elif args.update:
        path = Path(args.update)
        text = path.read_text()
        new = update(text, tables, where=str(path))
        if new != text:
            path.write_text(new)
        print("{}: register tables {}".format(path, "updated" if new != text else "up to date"))
    elif args.check:
        path = Path(args.check)
        if section(path.read_text(), str(path)) != tables:
            print("{}: register tables are stale; run `python -m hw.regdoc --update {}`"
                  .format(path, path), file=sys.stderr)
            return 1
    else:
        sys.stdout.write(tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
