"""Where a run's metrics go: ``metrics.jsonl``, and TensorBoard and wandb when present."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from searchr1.config import TrainConfig

__all__ = ["MetricsLog"]


class MetricsLog:
    """Metrics to ``metrics.jsonl`` (and TensorBoard, wandb when present)."""

    def __init__(self, config: TrainConfig, resume_step: int) -> None:
        self.path = Path(config.run.output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # Steps logged after the checkpoint we resume from were lost with the crash.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.tb: Any = None
        if config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                # On a resume, TensorBoard drops what was logged after the checkpoint.
                self.tb = SummaryWriter(
                    str(Path(config.run.output_dir) / "tensorboard"),
                    purge_step=resume_step + 1 if resume_step else None,
                )
        self.wandb: Any = None
        if config.run.wandb_project:
            try:
                import wandb  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                pass
            else:
                self.wandb = wandb.init(project=config.run.wandb_project, config=config.to_dict())

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                if key != "step":  # the x axis already
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
