"""The top-level designs of the generator, by name, and their conversion to Verilog.

Used by ``make verilog`` (:mod:`hw.generate`) and by the co-simulation harness
(:mod:`sim.runner`); the hardware does not depend on the harness.
"""

import importlib
import os
from pathlib import Path

__all__ = ["DESIGNS", "design_class", "write_verilog"]

#: Top-level designs: name -> (module path, class name). Each class takes an
#: :class:`hw.config.RTSAConfig`; the name is also the Verilog module name.
DESIGNS = {
    "pe_array": ("hw.pe_array", "PEArray"),
    "bitmap_decoder": ("hw.bitmap_decoder", "BitmapDecoder"),
    "subvector_decoder": ("hw.subvector_decoder", "SubvectorDecoder"),
    "linear_engine": ("hw.run_through", "LinearTop"),
    "softmax_unit": ("hw.softmax_unit", "SoftmaxUnit"),
    "attention_engine": ("hw.run_through", "AttentionTop"),
    "run_through": ("hw.run_through", "RunThrough"),
    "block": ("hw.block", "Block"),
    "model": ("hw.model", "Model"),
    "model_link": ("hw.link", "LinkedModel"),
    "run_through_link": ("hw.link", "LinkedRunThrough"),
    "pe_array_link": ("hw.link", "LinkedPEArray"),
}


def design_class(design):
    """The component class of the design called ``design`` (imported on first use)."""
    try:
        module, cls = DESIGNS[design]
    except KeyError:
        raise ValueError("Unknown design {!r}; choose one of {}"
                         .format(design, ", ".join(DESIGNS))) from None
    return getattr(importlib.import_module(module), cls)


def write_verilog(design, config, path):
    """Convert ``design`` for ``config`` to Verilog at ``path``; the file is rewritten only
    when its text changes, so that simulators' incremental builds stay valid."""
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import verilog
    dut = design_class(design)(config)
    text = verilog.convert(dut, name=design, emit_src=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path
