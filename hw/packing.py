"""Building a whole ``lib.data`` value in one assignment.

Assigning the fields of a wide payload one by one (``m.d.comb += p.a.eq(x); p.b.eq(y)``)
becomes one partial ``assign`` per field in the generated Verilog. Icarus resolves a wire with
many partial drivers bit by bit on every change of any of them, which made the linear engine's
PE input about 60x slower to simulate than the rest of the design. :func:`pack_layout` gives the
same bits as one concatenation of per-leaf wires instead.
"""

from amaranth.hdl import Cat, Shape, Signal, Value
from amaranth.lib import data

__all__ = ["pack_layout"]


def pack_layout(m, layout, fields, *, name="packed"):
    """The value of ``layout`` whose leaves are ``fields``, as one concatenation.

    Parameters
    ----------
    m : Module
        Module that receives the combinational leaf assignments.
    layout : data.Layout
        A struct layout whose members are shapes, struct layouts or array layouts.
    fields : dict
        Member name -> value; an array member takes a list (shorter lists leave the remaining
        elements zero), a struct member a dict. Missing members are zero.

    Returns
    -------
    Value
        ``layout.size`` bits, ready for ``payload.eq(...)``.
    """
    layout = data.Layout.cast(layout)
    leaves = []

    def walk(shape, value, path):
        if isinstance(shape, data.ArrayLayout):
            items = [] if value is None else list(value)
            if len(items) > shape.length:
                raise ValueError("{}: {} elements given for an array of {}"
                                 .format(path, len(items), shape.length))
            for j in range(shape.length):
                walk(shape.elem_shape, items[j] if j < len(items) else None, f"{path}_{j}")
        elif isinstance(shape, data.StructLayout):
            value = {} if value is None else dict(value)
            unknown = set(value) - {n for n, _ in shape}
            if unknown:
                raise ValueError("{}: unknown fields {!r}".format(path, sorted(unknown)))
            for fname, field in sorted(shape, key=lambda item: item[1].offset):
                walk(field.shape, value.get(fname), f"{path}_{fname}")
        elif isinstance(shape, data.Layout):
            raise TypeError("{}: only struct and array layouts are supported, not {!r}"
                            .format(path, shape))
        else:
            leaf = Signal(Shape.cast(shape), name=path)
            if value is not None:
                m.d.comb += leaf.eq(value)
            leaves.append(Value.cast(leaf).as_unsigned())

    walk(layout, fields, name)
    packed = Cat(*leaves)
    assert len(packed) == layout.size
    return packed
