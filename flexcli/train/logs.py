"""The loss CSV (one row per optimizer step, appended as training runs) and its plot, drawn from the CSV only."""
from __future__ import annotations

import csv
from pathlib import Path

from flexcli.io.atomic import atomic_path

COLUMNS = ("step", "loss", "patch_size", "lr", "grad_norm", "seconds")


class LossLog:
    """Appends rows to `path`; on resume, rows after the resumed step (written after the last checkpoint) go."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None or not self.path.exists():
            with atomic_path(self.path) as tmp:
                tmp.write_text(",".join(COLUMNS) + "\n")
        else:
            kept = [r for r in read_losses(self.path) if int(r["step"]) <= resume_step]
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, COLUMNS)
                w.writeheader()
                w.writerows(kept)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def append(self, step: int, loss: float, patch_size, lr: float, grad_norm: float, seconds: float) -> None:
        self._writer.writerow([step, repr(float(loss)), patch_size, repr(float(lr)), f"{grad_norm:.6g}", f"{seconds:.4f}"])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_losses(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(csv_path: Path, png_path: Path) -> Path | None:
    """Loss against step (log scale), per patch size, from the CSV; None if there is nothing to draw."""
    rows = read_losses(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for p in sorted({r["patch_size"] for r in rows}, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v)):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["patch_size"] == p]
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=0.8, label=f"patch {p}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(float(r["loss"]) > 0 for r in rows):
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png_path
