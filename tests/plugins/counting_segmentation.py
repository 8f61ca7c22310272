"""A test plug-in: the segmentation task under another name, whose predictor records every call in
the JSON-lines file named by $MEDSEG_FRONT_DOOR_LOG (event, process id, command line), so a test can
see which process opened a predictor through the front door and what each surface asked of it."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

from medseg.tasks import get_task, register_task

TASK = "counting_segmentation"
segmentation = get_task("segmentation")


def record(event: str) -> None:
    path = os.environ.get("MEDSEG_FRONT_DOOR_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, "pid": os.getpid(), "argv": sys.argv}) + "\n")


class CountingPredictor:
    """The segmentation predictor, with its calls recorded; everything else is the real one's."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case"):
        record("image")
        return self.inner.predict_image(image, probabilities, case_id)

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        record("batch")
        return predict_cases(self, request)  # its cases come back through predict_image above


def load_predictor(folder, options):
    record("opened")
    return CountingPredictor(segmentation.predictor(folder, options))


register_task(replace(segmentation, name=TASK, summary="segmentation whose predictor counts its calls (tests)", predictor=load_predictor))
