"""Per-epoch training log: ``training_log.json`` and ``progress.png``."""

from __future__ import annotations

from pathlib import Path

from samunet.utilities.file_io import atomic_path, save_json


class ProgressLogger:
    """Collects one dict per epoch; curves are drawn for every numeric key present."""

    def __init__(self, epochs: list[dict] | None = None):
        self.epochs: list[dict] = list(epochs or [])

    def log_epoch(self, record: dict) -> None:
        self.epochs = [e for e in self.epochs if e["epoch"] != record["epoch"]] + [record]

    def state(self) -> list[dict]:
        return list(self.epochs)

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        save_json({"epochs": self.epochs, **(extra or {})}, folder / "training_log.json")
        self.plot(folder / "progress.png")

    def extra_panels(self) -> list:
        """Subclasses add panels: callables ``draw(ax, epochs_axis)`` drawn below the standard two."""
        return []

    def plot(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.epochs:
            return
        ep = [e["epoch"] for e in self.epochs]
        extra = self.extra_panels()
        fig, axes = plt.subplots(2 + len(extra), 1, figsize=(9, 8 + 3 * len(extra)), sharex=True)
        ax = axes[0]
        for key, style in (("train_loss", "b-"), ("val_loss", "r-")):
            if any(key in e for e in self.epochs):
                ax.plot(ep, [e.get(key) for e in self.epochs], style, label=key.replace("_", " "))
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        ax2 = axes[1]
        if any("ema_pseudo_dice" in e for e in self.epochs):
            ax2.plot(ep, [e.get("ema_pseudo_dice") for e in self.epochs], "g-", label="pseudo Dice (EMA)")
        if any("mean_pseudo_dice" in e for e in self.epochs):
            ax2.plot(ep, [e.get("mean_pseudo_dice") for e in self.epochs], "g:", label="pseudo Dice")
        ax2.set_ylabel("validation Dice")
        ax2.set_xlabel("epoch")
        ax2.set_ylim(0, 1)
        ax2.grid(alpha=0.3)
        ax3 = ax2.twinx()
        ax3.plot(ep, [e.get("lr") for e in self.epochs], "k--", alpha=0.4, label="learning rate")
        ax3.set_ylabel("learning rate")
        lines = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
        ax2.legend(lines, [ln.get_label() for ln in lines], loc="lower right")
        for draw, ax in zip(extra, axes[2:]):
            draw(ax, ep)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
