"""A progress bar that shows images per second."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import TQDMProgressBar


class ImagesPerSecondBar(TQDMProgressBar):
    """Lightning's bar over this rank's batches, with the images (corrupt ones included) per second."""

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        super().on_predict_epoch_start(trainer, pl_module)
        self._start, self._images = time.perf_counter(), 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._images += len(batch["index"]) + len(batch["corrupt"])
        rate = self._images / max(time.perf_counter() - self._start, 1e-9)
        self.predict_progress_bar.set_postfix({"images/s": f"{rate:.1f}"}, refresh=False)
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
