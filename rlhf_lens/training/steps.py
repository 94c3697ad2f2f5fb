"""The step skeleton every training loop shares (base/SFT, reward, online policy, DPO): which steps
evaluate, log and save, and the progress bar that starts at a resumed step."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Cadence:
    """When a loop of `steps` optimizer steps (numbered from 1) evaluates, logs and saves; 0 means never
    (the last step always evaluates and logs; it is saved as `final` by the caller, not as a step checkpoint)."""

    steps: int
    eval_every: int = 0
    log_every: int = 0
    save_every: int = 0

    @classmethod
    def of(cls, stage, steps: int | None = None) -> Cadence:
        """The cadence fields of a stage config (`steps` overrides a stage that derives it)."""
        return cls(
            steps=stage.steps if steps is None else steps,
            eval_every=getattr(stage, "eval_every", 0),
            log_every=getattr(stage, "log_every", 0),
            save_every=getattr(stage, "save_every", 0),
        )

    def is_last_step(self, step: int) -> bool:
        return step == self.steps

    def is_eval_step(self, step: int) -> bool:
        """Every `eval_every` steps, and the last step."""
        return bool(self.eval_every and step % self.eval_every == 0) or self.is_last_step(step)

    def is_log_step(self, step: int) -> bool:
        """Every `log_every` steps, and the last step (policy stages write a rollout shard then)."""
        return bool(self.log_every and step % self.log_every == 0) or self.is_last_step(step)

    def is_save_step(self, step: int) -> bool:
        """Every `save_every` steps except the last (the caller saves `final` after the loop)."""
        return bool(self.save_every and step % self.save_every == 0) and not self.is_last_step(step)


def progress(cadence: Cadence, start: int, desc: str, *, quiet: bool) -> tqdm:
    """The steps after `start` (0, or the step a resumed stage continues after) to `cadence.steps`, as a tqdm
    bar that shows the steps already done; `quiet` (--quiet, or a process other than rank 0) hides it."""
    return tqdm(range(start + 1, cadence.steps + 1), desc=desc, disable=quiet, initial=start, total=cadence.steps)
