"""The benchmark model: the committed trained VidT, its integer model, and its data.

Everything that evaluates or exports from the benchmark model (``make eval``,
:mod:`golden.export`, the co-simulation vectors) goes through here, so that the integer model
is the same one everywhere: the float checkpoint :data:`WEIGHTS`, quantised on the first
:data:`CALIB_CLIPS` clips of the training split.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from golden import dataset as ds
from golden.intvidt import IntVidT, quantize_vidt
from golden.train import load_checkpoint
from golden.vidt import VidT

__all__ = ["WEIGHTS", "CALIB_CLIPS", "EVAL_SPLIT", "metadata", "float_model", "int_model",
           "clips"]

#: The committed checkpoint (its JSON sidecar holds the command that reproduces it).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "vidt_bench.pt"
#: Calibration clips for the activation scales: the first clips of the training split.
CALIB_CLIPS = 64
#: Split used for accuracy reports. Training monitored ``val``; ``test`` is never looked at
#: before the evaluation.
EVAL_SPLIT = "test"


def metadata(path: Path = WEIGHTS) -> dict:
    """The checkpoint's JSON sidecar (configs, seeds, command, training history)."""
    if not path.exists():
        raise FileNotFoundError(
            "Benchmark weights {} are missing; train them with "
            "`python -m golden.train --out {}`".format(path, path))
    return json.loads(path.with_suffix(".json").read_text())


def _dataset_config(path: Path = WEIGHTS) -> ds.DatasetConfig:
    cfg = {k: tuple(v) if isinstance(v, list) else v
           for k, v in metadata(path)["dataset_config"].items()}
    return ds.DatasetConfig(**cfg)


@lru_cache(maxsize=2)
def float_model(path: Path = WEIGHTS) -> VidT:
    """The trained float VidT (eval mode)."""
    metadata(path)
    return load_checkpoint(path)


@lru_cache(maxsize=2)
def int_model(path: Path = WEIGHTS, calib_clips: int = CALIB_CLIPS) -> IntVidT:
    """The integer VidT of the benchmark (deterministic: same clips, same scales)."""
    videos, _ = clips(calib_clips, "train", path=path)
    return quantize_vidt(float_model(path), videos)


def clips(num: int, split: str = EVAL_SPLIT, start: int = 0, *, path: Path = WEIGHTS):
    """``num`` clips of ``split`` from the data set the benchmark was trained on:
    ``(uint8 videos [num, 1, T, H, W], labels [num])``."""
    meta = metadata(path)
    return ds.make_split(num, meta["data_seed"], split, _dataset_config(path), start=start)
