"""Shared fixtures."""

import pytest
import torch

# pytest-xdist already runs one worker per core; intra-op threads on top of that oversubscribe
# the cores and make torch's OpenMP kernels spin (seen: 15x slower on 2 cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_int_model():
    """An untrained (seeded) benchmark-shaped float VidT, its integer model quantised on 8
    clips, and 8 further clips: ``(model, qmodel, clips)``."""
    from golden.dataset import make_split
    from golden.intvidt import quantize_vidt
    from golden.vidt import VidT, VidTConfig
    torch.manual_seed(3)
    model = VidT(VidTConfig()).eval()
    videos, _ = make_split(16, seed=3, split="train")
    return model, quantize_vidt(model, videos[:8]), videos[8:]
