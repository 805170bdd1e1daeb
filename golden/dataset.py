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
The scene parameters of clip ``i`` of a split are drawn from ``numpy.random.default_rng(
(seed, split_id, i))`` and its sensor noise from ``default_rng((seed, split_id, i, 1))``, so a
clip depends only on ``(seed, split, i)``: not on how many clips are generated, nor on the
chunking used to vectorise rendering. Distributions are set by
:class:`DatasetConfig`; ``U(a, b)`` is uniform.

1. **Background.** A sum of :attr:`~DatasetConfig.n_gratings` sinusoidal gratings with random
   orientation and phase, spatial frequency ``U(grating_freq)`` cycles/pixel and amplitude
   ~ 1/f (so the texture looks like smooth random clutter rather than stripes), around a mean
   level ``U(0.3, 0.7)``; the amplitudes sum to ``U(bg_contrast)``, the largest possible
   excursion from the mean. The whole texture **pans** at a constant velocity of speed
   ``U(pan_speed)`` pixels/frame in a uniformly random direction, independent of the label:
   the background changes between frames everywhere but is far from random (a good case for
   inter-frame delta coding), and its motion is a distractor for the direction label.
2. **Target object.** A filled, anti-aliased shape (signed-distance rendering, one-pixel soft
   edge) of size ``U(target_size)`` pixels, static rotation ``U(-rotation, rotation)`` degrees
   from its canonical pose (axis-aligned square and cross, triangle apex up), flat intensity
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

A size ``s`` is the disc's radius; the square's half-side is ``0.87 s``, the triangle's
circumradius ``1.5 s``, the cross's arm half-length ``1.25 s`` and half-width ``0.35 s``, so the
four shapes have about the same area (~3 s^2) and area alone does not tell them apart.

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
    bg_contrast: tuple[float, float] = (0.05, 0.20)
    pan_speed: tuple[float, float] = (0.0, 1.0)
    target_size: tuple[float, float] = (7.0, 11.0)
    distractor_size: tuple[float, float] = (2.5, 4.5)
    contrast: tuple[float, float] = (0.15, 0.50)
    speed: tuple[float, float] = (0.5, 1.5)
    drift: float = 0.3
    rotation: float = 20.0
    p_distractor: float = 0.8
    noise: tuple[float, float] = (0.02, 0.08)

    def __post_init__(self):
        if self.channels != 1:
            raise ValueError("only grey-scale (channels=1) clips are generated")
        travel = self.speed[1] * (self.frames - 1)
        # The target must fit its whole trajectory inside the frame (see _sample_one).
        if 2 * self.target_size[1] + travel > min(self.height, self.width) - 1:
            raise ValueError("target_size/speed too large for the frame: the trajectory does not fit")
        # "The larger object is the target" is what makes the label well defined.
        if self.distractor_size[1] >= self.target_size[0]:
            raise ValueError("distractor_size must stay below target_size")


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
    angle: np.ndarray          # [n, 2] rotation from the canonical pose (radians)
    intensity: np.ndarray      # [n, 2] absolute grey level
    start: np.ndarray          # [n, 2, 2] centre at frame 0 (x, y)
    velocity: np.ndarray       # [n, 2, 2] pixels/frame (x, y)
    present: np.ndarray        # [n, 2] bool
    noise_std: np.ndarray      # [n]
    noise: np.ndarray | None = None  # [n, T, H, W] float32 standard normal, None = no noise


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
    angle = np.radians(rng.uniform(-cfg.rotation, cfg.rotation, 2))

    noise_std = _uniform(rng, cfg.noise)
    return dict(
        label=label_of(shape_t, direction), bg_mean=bg_mean, bg_freq=bg_freq, bg_phase=bg_phase,
        bg_amp=bg_amp, pan=pan, shape=np.array([shape_t, shape1]), size=np.array([size0, size1]),
        angle=angle, intensity=intensity, start=np.stack([start0, start1]),
        velocity=np.stack([vel0, vel1]), present=np.array([True, present1]),
        noise_std=noise_std)


def sample_params(indices, seed: int = 0, split: str = "train",
                  cfg: DatasetConfig = DatasetConfig(), noise: bool = True) -> ClipParams:
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
    noise : bool
        Also draw the unit sensor-noise fields (the bulk of the random numbers; skip them when
        only the scene parameters are needed). They come from a second per-clip stream,
        ``default_rng((seed, split_id, i, 1))``, so they do not perturb the scene parameters.
    """
    split_id = SPLIT_IDS[split]
    indices = [int(i) for i in indices]
    clips = [_sample_one(cfg, np.random.default_rng((int(seed), split_id, i))) for i in indices]
    p = ClipParams(**{k: np.stack([c[k] for c in clips]) for k in clips[0]})
    if noise:
        shape = (cfg.frames, cfg.height, cfg.width)
        p.noise = np.stack([np.random.default_rng((int(seed), split_id, i, 1))
                            .standard_normal(shape, dtype=np.float32) for i in indices])
    return p


def _sdf(shape, px, py, size):
    """Signed distance (pixels, negative inside) of each shape id at local coordinates.

    ``shape``/``size`` broadcast against ``px``/``py``; all four shapes are evaluated and the
    right one selected, which keeps the renderer branch-free and vectorised.
    """
    ax, ay = px.abs(), py.abs()
    square = torch.maximum(ax, ay) - 0.87 * size
    disc = torch.sqrt(px * px + py * py) - size
    # Equilateral triangle, circumradius R = 1.5 size: max over the three edge half-planes,
    # whose normals point at angles 90, 210 and 330 degrees (y down: apex up); inradius R / 2.
    r_tri = 1.5 * size
    c, s = math.sqrt(3) / 2, 0.5
    tri = torch.maximum(torch.maximum(py, -c * px - s * py), c * px - s * py) - r_tri / 2
    # Cross: union of two bars of half-length 1.25 size and half-width 0.35 size.
    arm, half = 1.25 * size, 0.35 * size
    bar_h = torch.maximum(ax - arm, ay - half)
    bar_v = torch.maximum(ax - half, ay - arm)
    cross = torch.minimum(bar_h, bar_v)
    return torch.where(shape == 0, square, torch.where(shape == 1, disc,
                       torch.where(shape == 2, tri, cross)))


def _window_half(cfg: DatasetConfig) -> int:
    """Half-width of the square window an object is rasterised in (covers its extent + edge)."""
    extent = 1.5 * max(cfg.target_size[1], cfg.distractor_size[1])  # triangle circumradius
    return int(math.ceil(extent + 0.5)) + 1


@torch.no_grad()
def render(p: ClipParams, cfg: DatasetConfig = DatasetConfig()) -> torch.Tensor:
    """Render clips from their parameters (vectorised over clips, frames and pixels).

    Returns
    -------
    torch.Tensor
        ``uint8`` videos of shape ``[n, 1, T, H, W]``; noise-free when ``p.noise`` is None.
    """
    f32 = torch.float32
    n, t, h, w = len(p.label), cfg.frames, cfg.height, cfg.width
    t_ax = torch.arange(t, dtype=f32).view(1, -1, 1)                     # [1, T, 1]
    x_ax = torch.arange(w, dtype=f32).view(1, 1, -1)
    y_ax = torch.arange(h, dtype=f32).view(1, 1, -1)
    tt = lambda a: torch.as_tensor(a, dtype=f32)  # noqa: E731

    # Background. The texture at frame t is the frame-0 texture shifted by pan * t; each
    # grating sin(a(x) + b(y)) = sin a cos b + cos a sin b is separable, so the whole sum is one
    # batched matrix product [H, 2G] @ [2G, W] per frame instead of G full-size sines.
    pan, freq = tt(p.pan), tt(p.bg_freq)                                  # [n, 2], [n, G, 2]
    amp, phase = tt(p.bg_amp)[:, None, :, None], tt(p.bg_phase)[:, None, :, None]
    bx = x_ax - pan[:, 0].view(-1, 1, 1) * t_ax                          # [n, T, W]
    by = y_ax - pan[:, 1].view(-1, 1, 1) * t_ax                          # [n, T, H]
    a = freq[:, None, :, 0, None] * bx[:, :, None, :] + phase            # [n, T, G, W]
    b = freq[:, None, :, 1, None] * by[:, :, None, :]                    # [n, T, G, H]
    cols = torch.cat([torch.cos(b), torch.sin(b)], 2).transpose(2, 3)    # [n, T, H, 2G]
    rows = torch.cat([amp * torch.sin(a), amp * torch.cos(a)], 2)        # [n, T, 2G, W]
    video = tt(p.bg_mean).view(-1, 1, 1, 1) + cols @ rows                # [n, T, H, W]

    # Objects, target first so the distractor is drawn over it (painter's order). Each object
    # is rasterised in a small window around its centre, then gathered into the full frame.
    half = _window_half(cfg)
    win = torch.arange(-half, half + 1)                                  # [K]
    start, vel = tt(p.start), tt(p.velocity)
    for o in range(2):
        cx = start[:, o, 0].view(-1, 1) + vel[:, o, 0].view(-1, 1) * t_ax[..., 0]   # [n, T]
        cy = start[:, o, 1].view(-1, 1) + vel[:, o, 1].view(-1, 1) * t_ax[..., 0]
        ox, oy = torch.floor(cx).long(), torch.floor(cy).long()         # window centre pixel
        dx = ((ox[..., None] + win) - cx[..., None])[:, :, None, :]      # [n, T, 1, K]
        dy = ((oy[..., None] + win) - cy[..., None])[:, :, :, None]      # [n, T, K, 1]
        ang = tt(p.angle[:, o]).view(-1, 1, 1, 1)
        ca, sa = torch.cos(ang), torch.sin(ang)
        px, py = ca * dx + sa * dy, -sa * dx + ca * dy                   # object frame, [n,T,K,K]
        sdf = _sdf(torch.as_tensor(p.shape[:, o]).view(-1, 1, 1, 1), px, py,
                   tt(p.size[:, o]).view(-1, 1, 1, 1))
        alpha = (0.5 - sdf).clamp(0.0, 1.0)                              # one-pixel soft edge
        alpha = alpha * torch.as_tensor(p.present[:, o], dtype=f32).view(-1, 1, 1, 1)
        # Window row/column of every frame pixel; pixels outside the window get alpha 0.
        ry = torch.arange(h).view(1, 1, -1) - (oy[..., None] - half)     # [n, T, H]
        rx = torch.arange(w).view(1, 1, -1) - (ox[..., None] - half)     # [n, T, W]
        k = 2 * half + 1
        vy, vx = (ry >= 0) & (ry < k), (rx >= 0) & (rx < k)
        full = alpha.gather(2, ry.clamp(0, k - 1)[..., None].expand(-1, -1, -1, k))
        full = full.gather(3, rx.clamp(0, k - 1)[:, :, None, :].expand(-1, -1, h, -1))
        full = full * (vy[..., None] & vx[:, :, None, :])
        video = video + full * (tt(p.intensity[:, o]).view(-1, 1, 1, 1) - video)

    if p.noise is not None:
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
