"""Train the benchmark VidT on the synthetic moving-shapes data set.

Usage (the benchmark checkpoint)::

    python -m golden.train --out golden/weights/vidt_bench.pt --seed 0 --epochs 14

Writes ``OUT`` (a float32 ``state_dict`` of :class:`golden.vidt.VidT`) and ``OUT`` with a
``.json`` suffix: model and data-set configs, seeds, the command line, per-epoch history, final
top-1 on (a subset of) the training split and on the held-out ``val`` split, and wall time.

Everything is seeded: the data come from :func:`golden.dataset.make_split` with ``--data-seed``
(default ``--seed``), the initialisation and batch order from ``torch.manual_seed(--seed)``. On
a CPU, with the same thread count, a rerun gives the same weights; runs with other thread counts
or BLAS builds may differ in the last bits.

Training forward passes run under bfloat16 autocast by default (``--amp bf16``): on CPUs with
AMX/AVX512-BF16 that is ~2.5x faster than float32, which is what fits the run into the 15-minute,
2-core budget. The master weights, the optimizer and every *evaluation* (the accuracies recorded
in the JSON) stay float32; use ``--amp none`` on CPUs without bfloat16 support.

Load a checkpoint with :func:`load_checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from golden import dataset as ds
from golden.vidt import VidT, VidTConfig

__all__ = ["evaluate", "train", "load_checkpoint", "main"]


@torch.no_grad()
def evaluate(model: VidT, videos: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 250) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``uint8`` clips."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for lo in range(0, len(labels), batch_size):
        logits = model(ds.to_float(videos[lo:lo + batch_size]))
        y = labels[lo:lo + batch_size]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(labels), correct / len(labels)


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up then cosine decay to 1 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Run the training described by the parsed command line ``argv``; return the JSON record."""
    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    dcfg = ds.DatasetConfig()
    mcfg = VidTConfig(num_classes=ds.NUM_CLASSES, pos_embed=args.pos_embed)

    print(f"generating data: {args.train_clips} train + {args.val_clips} held-out clips "
          f"(data seed {data_seed})", flush=True)
    x_tr, y_tr = ds.make_split(args.train_clips, data_seed, "train", dcfg)
    x_va, y_va = ds.make_split(args.val_clips, data_seed, "val", dcfg)
    print(f"  done in {time.time() - t0:.1f} s", flush=True)

    model = VidT(mcfg)
    # No weight decay on biases, LayerNorms and the positional table (usual ViT practice).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(args.train_clips / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = min(total // 4, max(1, round(args.warmup_epochs * steps_per_epoch)))
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters, "
          f"{mcfg.num_tokens} tokens/clip; {args.epochs} epochs x {steps_per_epoch} steps",
          flush=True)

    history, step = [], 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train_clips)
        loss_sum, correct, seen = 0.0, 0, 0
        t_ep = time.time()
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = ds.to_float(x_tr[idx]), y_tr[idx]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, args.lr)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        va_loss, va_acc = evaluate(model, x_va, y_va)
        rec = dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                   val_loss=va_loss, val_acc=va_acc, epoch_s=time.time() - t_ep,
                   elapsed_s=time.time() - t0)
        history.append(rec)
        print(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {rec['train_loss']:.4f} "
              f"acc {rec['train_acc']:.4f} | held-out loss {va_loss:.4f} acc {va_acc:.4f} | "
              f"{rec['epoch_s']:.0f} s (total {rec['elapsed_s']:.0f} s)", flush=True)

    n_tr_eval = min(args.train_eval_clips, args.train_clips)
    tr_loss, tr_acc = evaluate(model, x_tr[:n_tr_eval], y_tr[:n_tr_eval])
    va_loss, va_acc = evaluate(model, x_va, y_va)
    wall = time.time() - t0
    print(f"final: train top-1 {tr_acc:.4f} (first {n_tr_eval} clips, eval mode), "
          f"held-out top-1 {va_acc:.4f} ({args.val_clips} clips); {wall:.0f} s", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out)
    record = dict(
        model="golden.vidt.VidT", model_config=mcfg.to_dict(),
        dataset="golden.dataset", dataset_config=ds.config_dict(dcfg),
        seed=args.seed, data_seed=data_seed, train_split=dict(split="train", clips=args.train_clips),
        heldout_split=dict(split="val", clips=args.val_clips),
        command=" ".join(shlex.quote(a) for a in ["python", "-m", "golden.train"]
                         + (sys.argv[1:] if argv is None else argv)),
        args=vars(args), torch_version=torch.__version__, threads=args.threads,
        train_top1=tr_acc, train_top1_clips=n_tr_eval, train_loss=tr_loss,
        heldout_top1=va_acc, heldout_loss=va_loss, chance_top1=1 / ds.NUM_CLASSES,
        wall_time_s=round(wall, 1), history=history, weights=out.name,
        weights_dtype="float32")
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json')}",
          flush=True)
    return record


def load_checkpoint(path: str | Path) -> VidT:
    """Rebuild a trained :class:`VidT` from ``path`` and its JSON sidecar (eval mode)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = VidT(VidTConfig(**meta["model_config"]))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="golden/weights/vidt_bench.pt", help="state-dict path")
    p.add_argument("--seed", type=int, default=0, help="torch seed (init, batch order)")
    p.add_argument("--data-seed", type=int, default=None, help="data-set seed (default: --seed)")
    p.add_argument("--train-clips", type=int, default=12000)
    p.add_argument("--val-clips", type=int, default=1000, help="held-out clips (>= 1000)")
    p.add_argument("--train-eval-clips", type=int, default=1000,
                   help="training clips re-evaluated for the final train top-1")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--pos-embed", choices=("sincos", "learned"), default="sincos")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16",
                   help="autocast of the training forward pass (evaluation is always float32)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.val_clips < 1000:
        print("warning: fewer than 1000 held-out clips", file=sys.stderr)
    return train(args, argv)


if __name__ == "__main__":
    main()
