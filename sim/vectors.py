"""Test vectors of the benchmark model for co-simulation, exported once and cached.

:func:`benchmark_vectors` exports (:func:`golden.export.export`) one clip's block of the
committed benchmark model into ``build/vectors/`` and reuses the files while the weights are
unchanged; a file lock lets pytest-xdist workers share them.
"""

import hashlib
import json

from golden import benchmark
from sim.runner import REPO, _locked

__all__ = ["benchmark_vectors"]

VECTORS = REPO / "build" / "vectors"


def _weights_digest():
    return hashlib.sha256(benchmark.WEIGHTS.read_bytes()).hexdigest()[:16]


def benchmark_vectors(clip, block, *, tau, rho=1.0, split=benchmark.EVAL_SPLIT):
    """Directory of the exported vectors of ``clip`` (index in ``split``), ``block``."""
    from golden.export import export
    from hw.config import preset
    out = VECTORS / "{}{}_block{}_tau{}_rho{:g}".format(split, clip, block, tau, rho)
    digest = _weights_digest()
    with _locked(out):
        manifest = out / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("weights") == digest:
            return out
        videos, labels = benchmark.clips(1, split, start=clip)
        export(benchmark.int_model(), videos, block, out, tau=tau, rho=rho,
               v=preset("default").lanes,
               extra=dict(clip=clip, split=split, label=int(labels[0]), weights=digest))
    return out
