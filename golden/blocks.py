"""Transaction-level reference models of the hardware blocks, on the scalar contract.

These are what the scoreboards of the Amaranth and cocotb testbenches compare the RTL with.
They compute on Python ``int`` with :mod:`golden.contract` and know nothing of cycles: they map a
sequence of input transactions to the sequence of output transactions the block must produce.
"""

from golden import contract

__all__ = ["ROUTES", "pe_array_reference", "bitmap_decode_reference",
           "subvector_decode_reference", "bitmap_token_streams", "delta_encode_reference"]

#: Operand routes of the PE array, name -> code (:class:`golden.contract.PERoute`, from which
#: :class:`hw.pe_array.Route` takes its values).
ROUTES = {route.name: route.value for route in contract.PERoute}


def pe_array_reference(config, beats):
    """Results of the PE array for a sequence of input beats.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    beats : iterable of dict
        Keys as in :func:`hw.pe_array.pe_input_layout`: ``scalar`` (``rows`` ints), ``vector``
        (``rows`` lists of ``lanes`` ints), ``mask`` (``rows`` lane bitmasks), ``route``
        (name or value), ``clear``, ``last``, ``bypass``, ``mult``, ``shift``.

    Returns
    -------
    list of dict
        One per row per closed accumulation: ``data`` (``lanes`` ints), ``row``, ``overflow``,
        ``last``.
    """
    R, V = config.rows, config.lanes
    op, acc_fmt = config.operand_format, config.acc_format
    acc = [[0] * V for _ in range(R)]
    ovf = [[False] * V for _ in range(R)]
    out = []
    for beat in beats:
        route = beat["route"]
        route = ROUTES[route] if isinstance(route, str) else route
        if route not in ROUTES.values():
            raise ValueError("Unknown route {!r}".format(beat["route"]))
        for r in range(R):
            scalar = beat["scalar"][0 if route == contract.PERoute.SHARED_SCALAR else r]
            vector = beat["vector"][0 if route == contract.PERoute.SHARED_VECTOR else r]
            op.check(scalar, "scalar operand")
            for l in range(V):
                op.check(vector[l], "vector operand")
                base, flag = (0, False) if beat["clear"] else (acc[r][l], ovf[r][l])
                total = base + (vector[l] * scalar if (beat["mask"][r] >> l) & 1 else 0)
                ovf[r][l] = flag or not acc_fmt.contains(total)
                acc[r][l] = acc_fmt.wrap(total)
        if beat["last"]:
            for r in range(R):
                data = [a if beat["bypass"] else
                        contract.requantize(a, beat["mult"], beat["shift"], config.out_format)
                        for a in acc[r]]
                out.append({"data": data, "row": r, "overflow": any(ovf[r]),
                            "last": r == R - 1})
    return out


def bitmap_token_streams(config, token):
    """The two input streams the bitmap decoder takes for one token.

    Parameters
    ----------
    token : sequence of int
        The token's delta values (zero where nothing is sent).

    Returns
    -------
    (list of dict, list of dict)
        Bitmap beats ``{"word", "last"}`` and value beats ``{"values", "last"}`` in the
        contract's sparse stream format.
    """
    words = contract.pack_bitmap([x != 0 for x in token], config.bitmap_word)
    values = contract.pack_values([x for x in token if x != 0], config.decode_width)
    return ([{"word": w, "last": i == len(words) - 1} for i, w in enumerate(words)],
            [{"values": v, "last": i == len(values) - 1} for i, v in enumerate(values)])


def bitmap_decode_reference(tokens):
    """Per token, the ordered (index, value) pairs of its nonzero elements."""
    return [[(i, x) for i, x in enumerate(token) if x != 0] for token in tokens]


def subvector_decode_reference(config, matrices, order="column"):
    """Work items of the sub-vector mask decoder.

    Parameters
    ----------
    matrices : iterable of list of int
        Per matrix (one attention head), per input beat, a bitmask. ``order="column"``: a beat
        per key column, bit ``b`` = query rows ``b * lanes .. b * lanes + lanes - 1`` kept;
        ``order="block"``: a beat per query block, bit ``j`` = key column ``j`` kept.

    Returns
    -------
    list of dict
        ``{"column", "block", "empty", "col_last", "last"}`` beat by beat, ascending within a
        beat (column-major for column order, block-major for block order); a beat with no
        kept sub-vector yields one item with ``empty`` set so that the framing of the matrix
        is never lost; ``col_last`` marks a beat's last item.
    """
    if order == "column":
        width, beat_field, bit_field = config.max_blocks, "column", "block"
    elif order == "block":
        width, beat_field, bit_field = config.max_tokens, "block", "column"
    else:
        raise ValueError("Unknown mask order {!r}".format(order))
    items = []
    for beats in matrices:
        for j, mask in enumerate(beats):
            if not 0 <= mask < (1 << width):
                raise ValueError("Mask {!r} has bits beyond its {} bits".format(mask, width))
            bits = [b for b in range(width) if (mask >> b) & 1]
            beat_items = ([{beat_field: j, bit_field: b, "empty": False} for b in bits]
                          or [{beat_field: j, bit_field: 0, "empty": True}])
            for n, item in enumerate(beat_items):
                item["col_last"] = n == len(beat_items) - 1
                item["last"] = item["col_last"] and j == len(beats) - 1
            items += beat_items
    return items


def delta_encode_reference(config, tokens, *, tau, delta_enable=True):
    """Streams of the hardware delta encoder (:class:`hw.delta_encoder.DeltaEncoder`).

    References start empty; per position they follow :class:`golden.delta.DeltaLinear`: a
    token with a reference (and ``delta_enable``) sends ``delta~`` (``|x - r| > tau``) and
    moves ``r`` by it; any other token is dense and becomes the reference. A dense token sends
    its nonzero elements (a delta from a zero reference), or with ``delta_enable`` false (the
    dense baseline) every element, zeros included.

    Parameters
    ----------
    config : :class:`hw.config.RTSAConfig`
    tokens : iterable of (int, sequence of int)
        ``(position, x)`` in processing order; ``x`` is int8 and ``len(x)`` a multiple of
        ``bitmap_word``, the same for every token of a position.
    tau : int
        Delta threshold, ``0 .. 255``.
    delta_enable : bool

    Returns
    -------
    list of dict
        Per token: ``delta`` (what is sent, zeros elsewhere: ``delta~``, or ``x`` for a dense
        token), ``dense``, ``map`` (``{"word", "last"}`` beats) and ``val``
        (``{"values", "last"}`` beats).
    """
    e, k = config.bitmap_word, config.decode_width
    if not isinstance(tau, int) or isinstance(tau, bool) or not 0 <= tau <= 255:
        raise ValueError("tau must be an integer in [0, 255], not {!r}".format(tau))
    refs = {}
    out = []
    for position, x in tokens:
        if not isinstance(position, int) or not 0 <= position < config.max_positions:
            raise ValueError("Token position must be an integer in [0, {}), not {!r}"
                             .format(config.max_positions, position))
        x = [contract.ACT.check(v, "token element") for v in x]
        if not x or len(x) % e or len(x) > config.max_reduction:
            raise ValueError("Token length must be a positive multiple of {} up to {}, not {}"
                             .format(e, config.max_reduction, len(x)))
        ref = refs.get(position)
        if ref is not None and len(ref) != len(x):
            raise ValueError("Token of length {} at position {!r}, whose reference has {}"
                             .format(len(x), position, len(ref)))
        if delta_enable and ref is not None:
            dense = False
            delta = [v - r if abs(v - r) > tau else 0 for v, r in zip(x, ref)]
            refs[position] = [r + d for r, d in zip(ref, delta)]
        else:
            dense = True
            delta = list(x)
            refs[position] = list(x)
        if delta_enable:
            maps, vals = bitmap_token_streams(config, delta)
        else:
            words = contract.pack_bitmap([True] * len(x), e)
            beats = contract.pack_values(x, k)
            maps = [{"word": w, "last": i == len(words) - 1} for i, w in enumerate(words)]
            vals = [{"values": v, "last": i == len(beats) - 1} for i, v in enumerate(beats)]
        out.append({"delta": delta, "dense": dense, "map": maps, "val": vals})
    return out
