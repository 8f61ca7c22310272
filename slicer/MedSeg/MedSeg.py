"""MedSeg: segment the selected volume with a medseg model, from a local medseg install or a
`medseg serve` URL, and load the result as a segmentation with the model's label names and colours.

The work is done by MedSegLib (no Qt; tested with pytest against real medseg runs); this file is the
Slicer widget around it. The run happens on a worker thread; a Qt timer moves its progress to the
widget and loads the result on Slicer's main thread."""

import os
import queue
import tempfile
import threading
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from MedSegLib import Cancelled, LocalMedSeg, MedSegError, MedSegServer
from MedSegLib.mrml import import_label_image

SOURCES = ("Local medseg", "medseg server")


class MedSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["medseg developers"]
        self.parent.helpText = (
            "Segment the selected volume with a medseg (or nnU-Net v2) model: from a folder of model folders "
            "run by the local `medseg` command, or from a `medseg serve` URL. The result is loaded as a "
            "segmentation whose segments carry the model's label names and colours."
        )
        self.parent.acknowledgementText = "medseg: self-configuring medical image segmentation."


class MedSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        widget = slicer.util.loadUI(self.resourcePath("UI/MedSeg.ui"))
        self.layout.addWidget(widget)
        self.ui = slicer.util.childWidgetVariables(widget)
        widget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegLogic()
        self.models = []
        self.events = queue.Queue()  # (kind, payload) from the worker thread
        self.cancel = threading.Event()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.drainEvents)
        settings = qt.QSettings()
        self.ui.locationLineEdit.text = settings.value("MedSeg/location", "")
        self.ui.executableLineEdit.text = settings.value("MedSeg/executable", "medseg")
        self.ui.refreshButton.connect("clicked()", self.listModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.showModel)
        self.ui.runButton.connect("clicked()", self.run)
        self.ui.cancelButton.connect("clicked()", self.cancel.set)

    def backend(self):
        return self.logic.backend(SOURCES[self.ui.sourceComboBox.currentIndex], self.ui.locationLineEdit.text,
                                  self.ui.executableLineEdit.text, self.ui.tokenLineEdit.text)

    def listModels(self):
        settings = qt.QSettings()
        settings.setValue("MedSeg/location", self.ui.locationLineEdit.text)
        settings.setValue("MedSeg/executable", self.ui.executableLineEdit.text)
        try:
            with slicer.util.tryWithErrorDisplay("Listing medseg models failed.", waitCursor=True):
                self.models = self.logic.listModels(self.backend(), self.ui.locationLineEdit.text)
        finally:
            self.ui.modelComboBox.clear()
            for model in self.models:
                self.ui.modelComboBox.addItem(f"{model['name']} ({model['family']}, {model['configuration']})")

    def showModel(self, index):
        if 0 <= index < len(self.models):
            labels = [name for name, value in self.models[index]["labels"].items() if value > 0]
            self.ui.labelsLabel.text = "Labels: " + ", ".join(labels)

    def run(self):
        volume = self.ui.inputSelector.currentNode()
        index = self.ui.modelComboBox.currentIndex
        if volume is None or not (0 <= index < len(self.models)):
            slicer.util.errorDisplay("Choose a model and an input volume first.")
            return
        model, tta = self.models[index], self.ui.ttaCheckBox.checked  # Qt is read here, on the main thread
        work = Path(tempfile.mkdtemp(prefix="MedSeg-"))
        try:
            backend = self.backend()
            image = self.logic.exportVolume(volume, work)
        except MedSegError as error:
            slicer.util.errorDisplay(f"MedSeg could not start: {error}")
            return
        self.cancel.clear()
        self.ui.runButton.enabled, self.ui.cancelButton.enabled = False, True
        self.ui.progressBar.value = 0

        def work_thread():
            try:
                result = backend.segment(model, image, work, tta,
                                         progress=lambda f, m: self.events.put(("progress", (f, m))), cancelled=self.cancel.is_set)
                self.events.put(("done", (result, model, volume)))
            except Exception as error:  # shown in the widget, never lost in the thread
                self.events.put(("error", error))

        threading.Thread(target=work_thread, daemon=True).start()
        self.timer.start()

    def drainEvents(self):
        while not self.events.empty():
            kind, payload = self.events.get()
            if kind == "progress":
                fraction, message = payload
                if fraction >= 0:
                    self.ui.progressBar.value = int(100 * fraction)
                self.ui.statusLabel.text = message
                continue
            self.timer.stop()
            self.ui.runButton.enabled, self.ui.cancelButton.enabled = True, False
            if kind == "done":
                result, model, volume = payload
                node = self.logic.loadResult(result.label, model, volume)
                self.ui.statusLabel.text = f"Loaded {node.GetName()}"
                self.ui.resultLabel.text = result.summary()  # the review flag and each structure's measurements
            elif isinstance(payload, Cancelled):
                self.ui.statusLabel.text = str(payload)
            else:
                self.ui.statusLabel.text = f"Failed: {payload}"
                slicer.util.errorDisplay(f"MedSeg failed: {payload}")


class MedSegLogic(ScriptedLoadableModuleLogic):
    def backend(self, source, location, executable="medseg", token=""):
        if source == SOURCES[1]:
            if not location.startswith(("http://", "https://")):
                raise MedSegError(f"{location!r} is no server URL (http://HOST:PORT)")
            return MedSegServer(location, token or os.environ.get("MEDSEG_TOKEN"))
        return LocalMedSeg(executable or "medseg")

    def listModels(self, backend, location):
        return backend.models() if isinstance(backend, MedSegServer) else backend.models(Path(location))

    def exportVolume(self, volume, folder):
        """The volume as NIfTI in ``folder`` (medseg reads its geometry from the file)."""
        path = Path(folder) / "input_0000.nii.gz"
        if not slicer.util.saveNode(volume, str(path)):
            raise MedSegError(f"could not write {volume.GetName()} to {path}")
        return path

    def loadResult(self, label_path, model, volume):
        name = f"{volume.GetName()} {model['name']}"
        node = import_label_image(slicer, slicer.mrmlScene, label_path, model, name, reference_volume=volume)
        node.CreateDefaultDisplayNodes()
        return node


class MedSegTest(ScriptedLoadableModuleTest):
    """In Slicer: set MEDSEG_TEST_SERVER (a `medseg serve` URL, MEDSEG_TOKEN if it needs one) and
    MEDSEG_TEST_IMAGE (a NIfTI file the first served model can segment)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_server_round_trip()

    def test_server_round_trip(self):
        url, image = os.environ.get("MEDSEG_TEST_SERVER"), os.environ.get("MEDSEG_TEST_IMAGE")
        if not (url and image):
            self.delayDisplay("MEDSEG_TEST_SERVER / MEDSEG_TEST_IMAGE not set: skipped")
            return
        logic = MedSegLogic()
        backend = logic.backend(SOURCES[1], url)
        model = logic.listModels(backend, url)[0]
        volume = slicer.util.loadVolume(image)
        result = backend.segment(model, logic.exportVolume(volume, tempfile.mkdtemp()), Path(tempfile.mkdtemp()))
        node = logic.loadResult(result.label, model, volume)
        names = [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(node.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(sorted(names), sorted(name for name, value in model["labels"].items() if value > 0))
        self.delayDisplay("MedSeg server round trip passed")
