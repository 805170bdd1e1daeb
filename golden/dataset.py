"""Procedural synthetic video data set for the VidT benchmark ("moving shapes").

Everything is generated from a seed; nothing is downloaded. A clip is ``T = 16`` grey-scale
frames of ``56 x 56`` pixels, stored as ``uint8`` in a tensor of shape ``[C=1, T, H, W]``
(the layout a ``Conv3d`` or the tubelet embedding of :mod:`golden.vidt` expects). A split of
``n`` clips is a pair ``(videos uint8 [n, 1, T, H, W], labels int64 [n])``.

Label
-----
``label = shape * 4 + direction`` (16 classes), so a model needs both *appearance* and *motion*:

* ``shape`` of the target object: 0 square, 1 disc, 2 triangle, 3 cross (:data:`SHAPES`);
* ``direction`` of its motion in image coordinates: 0 right, 1 left, 2 down, 3 up
  (:data:`DIRECTIONS`).

Generative process (per clip)
-----------------------------
All random parameters of clip ``i`` of a split are drawn from ``numpy.random.default_rng(
(seed, split_id, i))``, so a clip depends only on ``(seed, split, i)``: not on how many clips
are generated, nor on the chunking used to vectorise rendering. Distributions are set by
:class:`DatasetConfig`; ``U(a, b)`` is uniform.

1. **Background.** A sum of :attr:`~DatasetConfig.n_gratings` sinusoidal gratings with random
   orientation, spatial frequency ``U(f_min, f_max)`` cycles/pixel (amplitude ~ 1/f, so the
   texture looks like smooth random clutter rather than stripes), around a mean level
   ``U(0.3, 0.7)``, rescaled to a peak amplitude ``U(bg_contrast)``. The whole texture **pans**
   at a constant velocity of speed ``U(pan_speed)`` pixels/frame in a uniformly random
   direction, independent of the label: the background changes between frames everywhere but
   is far from random (a good case for inter-frame delta coding), and its motion is a distractor
   for the direction label.
2. **Target object.** A filled, anti-aliased shape (signed-distance rendering, one-pixel soft
   edge) of size ``U(target_size)`` pixels, random static rotation, flat intensity
   ``background mean +- U(contrast)`` (random polarity). It moves along its label direction at
   ``U(speed)`` pixels/frame, with a small perpendicular drift (``+- drift`` times the speed);
   the start position is chosen so that its centre stays at least its size away from the border
   for the whole clip.
3. **Distractor object.** With probability ``p_distractor``, a second, smaller object
   (``U(distractor_size)``) of random shape, rotation, polarity and contrast moves in a fully
   random direction at ``U(speed)`` from anywhere in the frame (it may leave the frame). It is
   drawn *over* the target, so it can occlude it. It never defines the label; the model must
   learn that the *larger* object matters.
4. **Sensor noise.** I.i.d. Gaussian noise with per-clip standard deviation ``U(noise)`` is
   added to every pixel of every frame, then the frame is clipped to ``[0, 1]`` and quantised to
   ``uint8`` with round-half-up (``floor(255 x + 0.5)``).

Sizes are "radii": half-side of the square, radius of the disc, 1.4x that for the triangle's
circumradius and the cross's arm length (so the four shapes have comparable area).

Usage
-----
>>> videos, labels = make_split(1000, seed=0, split="train")
>>> x = to_float(videos)          # float32 in [0, 1], [n, 1, 16, 56, 56]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = [
    "SHAPES", "DIRECTIONS", "NUM_CLASSES", "SPLIT_IDS", "DatasetConfig", "ClipParams",
    "sample_params", "render", "make_split", "to_float", "label_of", "decode_label", "config_dict",
]

SHAPES = ("square", "disc", "triangle", "cross")
DIRECTIONS = ("right", "left", "down", "up")
NUM_CLASSES = len(SHAPES) * len(DIRECTIONS)
#: Split names mapped to the integer mixed into the seed, so splits never share clips.
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Unit vectors (dx, dy) of the label directions; image y grows downwards.
_DIR_VEC = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])


@dataclass(frozen=True)
class DatasetConfig:
    """Geometry and difficulty of the synthetic data set.

    Ranges are ``(low, high)`` of uniform distributions. The defaults are the benchmark's;
    the difficulty knobs (noise, contrast, distractor, pan) were tuned so that the benchmark
    VidT lands well above chance but below 100 % held-out top-1.
    """

    frames: int = 16
    height: int = 56
    width: int = 56
    channels: int = 1
    n_gratings: int = 6
    grating_freq: tuple[float, float] = (0.03, 0.20)
    bg_contrast: tuple[float, float] = (0.05, 0.25)
    pan_speed: tuple[float, float] = (0.0, 1.0)
    target_size: tuple[float, float] = (4.5, 8.0)
    distractor_size: tuple[float, float] = (2.5, 4.0)
    contrast: tuple[float, float] = (0.10, 0.40)
    speed: tuple[float, float] = (0.5, 1.8)
    drift: float = 0.3
    p_distractor: float = 0.8
    noise: tuple[float, float] = (0.02, 0.08)

    def __post_init__(self):
        if self.channels != 1:
            raise ValueError("only grey-scale (channels=1) clips are generated")
        travel = self.speed[1] * (self.frames - 1)
        # The target must fit its whole trajectory inside the frame (see _place_target).
        if 2 * self.target_size[1] + travel > min(self.height, self.width) - 1:
            raise ValueError("target_size/speed too large for the frame: the trajectory does not fit")


@dataclass
class ClipParams:
    """Per-clip random parameters of a batch of clips (numpy arrays, leading dim = clip).

    Object arrays have a second dimension of 2: index 0 is the target, 1 the distractor.
    """

    label: np.ndarray          # [n] int64
    bg_mean: np.ndarray        # [n]
    bg_freq: np.ndarray        # [n, G, 2] wave vectors (radians/pixel)
    bg_phase: np.ndarray       # [n, G]
    bg_amp: np.ndarray         # [n, G]
    pan: np.ndarray            # [n, 2] pixels/frame
    shape: np.ndarray          # [n, 2] int
    size: np.ndarray           # [n, 2]
    angle: np.ndarray          # [n, 2] rotation (radians)
    intensity: np.ndarray      # [n, 2] absolute grey level
    start: np.ndarray          # [n, 2, 2] centre at frame 0 (x, y)
    velocity: np.ndarray       # [n, 2, 2] pixels/frame (x, y)
    present: np.ndarray        # [n, 2] bool
    noise_std: np.ndarray      # [n]
    noise: np.ndarray          # [n, T, H, W] float32 standard normal


def label_of(shape, direction):
    """Class index of a (shape, direction) pair: ``shape * 4 + direction``."""
    return shape * len(DIRECTIONS) + direction


def decode_label(label):
    """Inverse of :func:`label_of`: ``(shape, direction)``."""
    return label // len(DIRECTIONS), label % len(DIRECTIONS)


def _uniform(rng, bounds, size=None):
    return rng.uniform(bounds[0], bounds[1], size)


def _sample_one(cfg: DatasetConfig, rng: np.random.Generator) -> dict:
    """Draw the parameters of one clip. The draw order is fixed: changing it changes the data."""
    t, h, w = cfg.frames, cfg.height, cfg.width
    shape_t = int(rng.integers(len(SHAPES)))
    direction = int(rng.integers(len(DIRECTIONS)))

    # Background: random wave vectors, amplitude ~ 1/f, normalised to the drawn peak contrast.
    g = cfg.n_gratings
    freq = _uniform(rng, cfg.grating_freq, g)
    theta = rng.uniform(0, 2 * math.pi, g)
    bg_freq = 2 * math.pi * freq[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    bg_phase = rng.uniform(0, 2 * math.pi, g)
    amp = 1.0 / freq
    bg_amp = amp / amp.sum() * _uniform(rng, cfg.bg_contrast)
    bg_mean = rng.uniform(0.3, 0.7)
    pan_dir = rng.uniform(0, 2 * math.pi)
    pan = _uniform(rng, cfg.pan_speed) * np.array([math.cos(pan_dir), math.sin(pan_dir)])

    # Target: cardinal velocity plus a small perpendicular drift.
    size0 = _uniform(rng, cfg.target_size)
    speed0 = _uniform(rng, cfg.speed)
    along = _DIR_VEC[direction]
    perp = np.array([-along[1], along[0]])
    vel0 = speed0 * along + rng.uniform(-cfg.drift, cfg.drift) * speed0 * perp
    # Place the start so the centre stays >= size from every border for all frames.
    end_off = vel0 * (t - 1)
    lo = size0 - np.minimum(end_off, 0)
    hi = np.array([w - 1, h - 1]) - size0 - np.maximum(end_off, 0)
    start0 = rng.uniform(lo, hi)

    # Distractor: smaller, any shape, any direction, anywhere.
    present1 = rng.random() < cfg.p_distractor
    shape1 = int(rng.integers(len(SHAPES)))
    size1 = _uniform(rng, cfg.distractor_size)
    dir1 = rng.uniform(0, 2 * math.pi)
    vel1 = _uniform(rng, cfg.speed) * np.array([math.cos(dir1), math.sin(dir1)])
    start1 = rng.uniform([0, 0], [w - 1, h - 1])

    # Flat intensities: background mean +- contrast, random polarity, kept inside [0, 1].
    sign = rng.choice([-1.0, 1.0], 2)
    intensity = np.clip(bg_mean + sign * _uniform(rng, cfg.contrast, 2), 0.0, 1.0)
    angle = rng.uniform(0, 2 * math.pi, 2)

    noise_std = _uniform(rng, cfg.noise)
    noise = rng.standard_normal((t, h, w), dtype=np.float32)
    return dict(
        label=label_of(shape_t, direction), bg_mean=bg_mean, bg_freq=bg_freq, bg_phase=bg_phase,
        bg_amp=bg_amp, pan=pan, shape=np.array([shape_t, shape1]), size=np.array([size0, size1]),
        angle=angle, intensity=intensity, start=np.stack([start0, start1]),
        velocity=np.stack([vel0, vel1]), present=np.array([True, present1]),
        noise_std=noise_std, noise=noise)


def sample_params(indices, seed: int = 0, split: str = "train",
                  cfg: DatasetConfig = DatasetConfig()) -> ClipParams:
    """Draw the parameters of clips ``indices`` of a split, each from its own generator.

    Parameters
    ----------
    indices : iterable of int
        Clip indices within the split.
    seed : int
        Data-set seed.
    split : {"train", "val", "test"}
        Split name; mixed into every clip's seed so splits are disjoint streams.
    cfg : DatasetConfig
        Distributions.
    """
    split_id = SPLIT_IDS[split]
    clips = [_sample_one(cfg, np.random.default_rng((int(seed), split_id, int(i))))
             for i in indices]
    return ClipParams(**{k: np.stack([c[k] for c in clips]) for k in clips[0]})


def _sdf(shape, px, py, size):
    """Signed distance (pixels, negative inside) of each shape id at local coordinates.

    ``shape``/``size`` broadcast against ``px``/``py``; all four shapes are evaluated and the
    right one selected, which keeps the renderer branch-free and vectorised.
    """
    ax, ay = px.abs(), py.abs()
    square = torch.maximum(ax, ay) - 0.85 * size
    disc = torch.sqrt(px * px + py * py) - size
    # Equilateral triangle, circumradius R = 1.4 size: max over the three edge half-planes,
    # whose normals point at angles 90, 210 and 330 degrees; the inradius is R / 2.
    r_tri = 1.4 * size
    c, s = math.sqrt(3) / 2, 0.5
    tri = torch.maximum(torch.maximum(py, -c * px - s * py), c * px - s * py) - r_tri / 2
    # Cross: union of two bars of half-length L and half-width 0.3 L.
    arm, half = 1.4 * size, 0.42 * size
    bar_h = torch.maximum(ax - arm, ay - half)
    bar_v = torch.maximum(ax - half, ay - arm)
    cross = torch.minimum(bar_h, bar_v)
    return torch.where(shape == 0, square, torch.where(shape == 1, disc,
                       torch.where(shape == 2, tri, cross)))


@torch.no_grad()
def render(p: ClipParams, cfg: DatasetConfig = DatasetConfig()) -> torch.Tensor:
    """Render clips from their parameters (vectorised over clips, frames and pixels).

    Returns
    -------
    torch.Tensor
        ``uint8`` videos of shape ``[n, 1, T, H, W]``.
    """
    f32 = torch.float32
    t_ax = torch.arange(cfg.frames, dtype=f32).view(1, -1, 1, 1)
    y_ax = torch.arange(cfg.height, dtype=f32).view(1, 1, -1, 1)
    x_ax = torch.arange(cfg.width, dtype=f32).view(1, 1, 1, -1)
    tt = lambda a: torch.as_tensor(a, dtype=f32)  # noqa: E731

    # Background: the texture at frame t is the frame-0 texture shifted by pan * t.
    pan = tt(p.pan)
    bx = x_ax - pan[:, 0].view(-1, 1, 1, 1) * t_ax                       # [n, T, 1, W]
    by = y_ax - pan[:, 1].view(-1, 1, 1, 1) * t_ax                       # [n, T, H, 1]
    video = tt(p.bg_mean).view(-1, 1, 1, 1).expand(-1, cfg.frames, cfg.height, cfg.width).clone()
    freq, phase, amp = tt(p.bg_freq), tt(p.bg_phase), tt(p.bg_amp)
    for g in range(freq.shape[1]):
        arg = (freq[:, g, 0].view(-1, 1, 1, 1) * bx + freq[:, g, 1].view(-1, 1, 1, 1) * by
               + phase[:, g].view(-1, 1, 1, 1))
        video += amp[:, g].view(-1, 1, 1, 1) * torch.sin(arg)

    # Objects, target first so the distractor is drawn over it (painter's order).
    start, vel = tt(p.start), tt(p.velocity)
    for o in range(2):
        cx = start[:, o, 0].view(-1, 1, 1, 1) + vel[:, o, 0].view(-1, 1, 1, 1) * t_ax
        cy = start[:, o, 1].view(-1, 1, 1, 1) + vel[:, o, 1].view(-1, 1, 1, 1) * t_ax
        dx, dy = x_ax - cx, y_ax - cy
        ang = tt(p.angle[:, o]).view(-1, 1, 1, 1)
        ca, sa = torch.cos(ang), torch.sin(ang)
        px, py = ca * dx + sa * dy, -sa * dx + ca * dy                      # rotate into object frame
        sdf = _sdf(torch.as_tensor(p.shape[:, o]).view(-1, 1, 1, 1), px, py,
                   tt(p.size[:, o]).view(-1, 1, 1, 1))
        alpha = (0.5 - sdf).clamp(0.0, 1.0)                                 # one-pixel soft edge
        alpha = alpha * torch.as_tensor(p.present[:, o], dtype=f32).view(-1, 1, 1, 1)
        video = video + alpha * (tt(p.intensity[:, o]).view(-1, 1, 1, 1) - video)

    video = video + tt(p.noise_std).view(-1, 1, 1, 1) * torch.from_numpy(p.noise)
    # Round half up (floor(x + 0.5)), the project's only rounding rule; never torch.round.
    video = torch.floor(video.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    return video.unsqueeze(1)


def make_split(num_clips: int, seed: int = 0, split: str = "train",
               cfg: DatasetConfig = DatasetConfig(), start: int = 0,
               chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate clips ``start .. start + num_clips - 1`` of a split.

    Parameters
    ----------
    num_clips : int
        Number of clips.
    seed : int
        Data-set seed.
    split : {"train", "val", "test"}
        Split name.
    cfg : DatasetConfig
        Geometry and difficulty.
    start : int
        Index of the first clip (clip ``i`` is the same whatever ``start``/``num_clips``).
    chunk : int
        Clips rendered at once (bounds memory; does not change the result).

    Returns
    -------
    videos : torch.Tensor
        ``uint8 [num_clips, 1, T, H, W]``.
    labels : torch.Tensor
        ``int64 [num_clips]`` in ``[0, NUM_CLASSES)``.
    """
    videos = torch.empty((num_clips, cfg.channels, cfg.frames, cfg.height, cfg.width),
                         dtype=torch.uint8)
    labels = torch.empty(num_clips, dtype=torch.int64)
    for lo in range(0, num_clips, chunk):
        hi = min(lo + chunk, num_clips)
        p = sample_params(range(start + lo, start + hi), seed, split, cfg)
        videos[lo:hi] = render(p, cfg)
        labels[lo:hi] = torch.from_numpy(p.label)
    return videos, labels


def to_float(videos: torch.Tensor) -> torch.Tensor:
    """``uint8`` clips to ``float32`` in ``[0, 1]`` (the model's input range)."""
    return videos.to(torch.float32) / 255.0


def config_dict(cfg: DatasetConfig = DatasetConfig()) -> dict:
    """JSON-friendly dict of a :class:`DatasetConfig`."""
    return asdict(cfg)
