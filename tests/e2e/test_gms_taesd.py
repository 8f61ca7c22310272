"""GMS on a TAESD-family autoencoder: the shared natural-image TAEF2 loads into our module and
reconstructs real Kvasir-SEG images and masks; folders that do not fit the layout are refused by
name; GMS trains and predicts through the CLI with `--autoencoder`, keeping the weights' sha256."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medseg.data.autoencoder_images import autoencoder_image, decoded_mask, mask_as_image, mask_at
from medseg.errors import MedsegError
from medseg.io import read_image
from medseg.models.taesd import load_taesd
from tests.conftest import run_cli, shared_data_dir
from tests.e2e.test_gms import DATASET, disks_dataset

TAEF2 = shared_data_dir() / "ae-natural-taef2"
KVASIR = shared_data_dir() / "endoscopy-kvasir-seg"
README_PSNR_DB = 30.1  # the shared folder's README: first 8 Kvasir-SEG images at 256 x 256
README_SHA256 = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}

needs_taef2 = pytest.mark.usefixtures("shared_data")  # skipped without ../shared/data, a failure in CI


@needs_taef2
def test_taef2_reconstructs_kvasir_images_and_masks():
    autoencoder = load_taesd(TAEF2)
    assert autoencoder.latent_channels == 32 and sum(p.numel() for p in autoencoder.encoder.parameters()) == pytest.approx(1.34e6, rel=0.01)
    images = sorted((KVASIR / "images").glob("*.jpg"))[:8]
    psnrs, dices = [], []
    with torch.no_grad():
        for path in images:
            x = torch.from_numpy(autoencoder_image(read_image(path).array, 256, str(path)))[None]  # (1, 3, 256, 256) in [-1, 1]
            mean, logvar = autoencoder.encode(x)
            assert mean.shape == (1, 32, 32, 32) and float(logvar.max()) < -50  # deterministic
            reconstruction = ((autoencoder.decode(mean) + 1) / 2).clamp(0, 1)
            psnrs.append(float(10 * torch.log10(1 / ((reconstruction - (x + 1) / 2) ** 2).mean())))
            mask = torch.from_numpy(mask_at(read_image(KVASIR / "masks" / path.name).array[0] > 127, 256))[None, None].float()
            decoded = decoded_mask(autoencoder.decode(autoencoder.encode(mask_as_image(mask))[0])) > 0.5
            dices.append(float(2 * (decoded & (mask > 0)).sum() / (decoded.sum() + mask.sum())))
    assert abs(np.mean(psnrs) - README_PSNR_DB) <= 1.0, psnrs
    assert min(dices) >= 0.99, dices


@needs_taef2
def test_taesd_folders_that_do_not_fit_are_refused_by_name(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    state = torch.load(TAEF2 / "taef2_encoder.pth", weights_only=True)
    state["3.conv.2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, broken / "x_encoder.pth")
    shutil.copy(TAEF2 / "taef2_decoder.pth", broken / "x_decoder.pth")
    with pytest.raises(MedsegError, match=r"x_encoder.pth: tensor 3.conv.2.weight has shape \[64, 64, 1, 1\]; the TAESD layout expects \[64, 64, 3, 3\]"):
        load_taesd(broken)
    (broken / "x_encoder.pth").write_bytes(b"not a pickle")
    with pytest.raises(MedsegError, match="x_encoder.pth: not a PyTorch state dict"):
        load_taesd(broken)
    (broken / "x_encoder.pth").unlink()
    with pytest.raises(MedsegError, match=r"expected one \*_encoder.pth"):
        load_taesd(broken)
    narrower = tmp_path / "narrower"  # a 16-channel latent in the encoder, a 32-channel one in the decoder
    narrower.mkdir()
    state = torch.load(TAEF2 / "taef2_encoder.pth", weights_only=True)
    state["14.weight"], state["14.bias"] = state["14.weight"][:16], state["14.bias"][:16]
    torch.save(state, narrower / "y_encoder.pth")
    shutil.copy(TAEF2 / "taef2_decoder.pth", narrower / "y_decoder.pth")
    with pytest.raises(MedsegError, match=r"y_decoder.pth: tensor 1.weight has shape \[64, 32, 3, 3\]; the TAESD layout expects \[64, 16, 3, 3\]"):
        load_taesd(narrower)


@needs_taef2
def test_gms_trains_and_predicts_in_taef2_latent_space(tmp_path):
    root = tmp_path / "root"
    disks_dataset(root / "raw" / DATASET, cases=6, side=48)
    wrong = run_cli("plan-and-train", "--dataset", DATASET, "--model", "unet", "--folds", "0", "--epochs", "1", "--autoencoder", TAEF2, root=root)
    assert wrong.returncode != 0 and "--autoencoder is for models that segment in an autoencoder's latent space" in wrong.stderr
    trained = run_cli(
        "plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", "0", "--epochs", "2", "--iterations-per-epoch", "10", "--autoencoder", TAEF2, root=root,
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    folder = root / "results" / DATASET / "gms__medsegPlans_gms__2d"
    kept = folder / "autoencoder"
    source = json.loads((kept / "source.json").read_text())
    assert source["kind"] == "taesd" and source["sha256"] == README_SHA256
    scaling = json.loads((kept / "latent_scaling.json").read_text())
    assert len(scaling["shift"]) == len(scaling["scale"]) == 32 and scaling["images"] == 6
    mapper = torch.load(folder / "fold_0" / "checkpoint_final.pt", weights_only=False, map_location="cpu")
    stem = next(v for k, v in _states(mapper).items() if k.endswith("stem.weight"))
    assert stem.shape[1] == 32  # the mapper takes TAEF2's 32 latent channels
    image = root / "raw" / DATASET / "imagesTr" / "case_000_0000.png"
    run_cli("predict", "-i", image, "-o", tmp_path / "out", "-m", folder, root=root, check=True)
    predicted = read_image(tmp_path / "out" / "case_000.png")
    assert predicted.spatial_shape == (48, 48) and set(np.unique(predicted.array)) <= {0, 1}
    assert_every_surface_predicts_as_torch(root, folder, image, predicted.array, tmp_path)

    # the kept weights changed outside medseg (in a copy of the folder): refused by name, nothing written
    tampered = tmp_path / "tampered" / folder.name
    shutil.copytree(folder, tampered)
    with open(tampered / "autoencoder" / "taef2_decoder.pth", "ab") as handle:
        handle.write(b"\0")
    refused = run_cli("predict", "-i", image, "-o", tmp_path / "out2", "-m", tampered, root=root)
    assert refused.returncode != 0 and "taef2_decoder.pth: changed since the model was trained" in refused.stderr
    assert not (tmp_path / "out2" / "case_000.png").exists()

    assert_the_dicom_node_returns_a_seg(folder, image, predicted.array, tmp_path)


VL_ENDOSCOPIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.1.1"


def endoscopy_dicom(png, target) -> None:
    """The PNG as one RGB VL Endoscopic Image (no patient geometry, no frame of reference), as an
    endoscopy system stores a frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = np.moveaxis(read_image(png).array, 0, -1).astype(np.uint8)  # (Y, X, 3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = VL_ENDOSCOPIC_IMAGE, generate_uid(), ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = VL_ENDOSCOPIC_IMAGE, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate, dataset.PatientSex = "Disk^Test", "GMS-1", "19700101", "O"
    dataset.StudyDate, dataset.StudyTime, dataset.StudyID, dataset.AccessionNumber, dataset.ReferringPhysicianName = "20261207", "120000", "1", "A1", ""
    dataset.Modality, dataset.SeriesNumber, dataset.InstanceNumber, dataset.Manufacturer = "ES", 1, 1, "test"
    dataset.ImageType, dataset.LossyImageCompression = ["ORIGINAL", "PRIMARY"], "00"
    dataset.Rows, dataset.Columns = rgb.shape[:2]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PixelData = rgb.tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(target, enforce_file_format=True)


def assert_the_dicom_node_returns_a_seg(folder, png, expected: np.ndarray, tmp_path) -> None:
    """A GMS model behind `medseg dicom-node`: an RGB endoscopy frame sent with dcmtk's storescu comes
    back to a real Orthanc as a DICOM SEG whose segment equals `medseg predict`'s label map."""
    import httpx
    from pydicom import dcmread

    from tests.conftest import free_port, require_peer
    from tests.e2e.test_dicom_node import Node, Orthanc, storescu, wait_for
    from tests.e2e.test_hospital_inference import dciodvfy_errors

    require_peer("pynetdicom")
    assert (expected == 1).any(), "the test model predicts no disk: train it longer"
    frame = tmp_path / "endoscopy" / "frame.dcm"
    endoscopy_dicom(png, frame)
    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    node = Node(folder, tmp_path / "node", node_port, "--quiet-seconds", "1", "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    try:
        sent = storescu([frame], node_port, "ENDOSCOPE", "MEDSEG", "-R")  # -R: propose the file's own SOP class (not in storescu's default list)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: orthanc.series_of_modality("SEG") or node.events("failed"), 240, f"no SEG reached Orthanc; node log: {node.events()}")
        assert not node.events("failed"), node.events("failed")
        [seg_series] = orthanc.series_of_modality("SEG")
        response = httpx.get(f"{orthanc.url}/instances/{seg_series['Instances'][0]}/file", timeout=30)
        response.raise_for_status()
    finally:
        node.stop()
        orthanc.stop()
    (tmp_path / "seg.dcm").write_bytes(response.content)
    seg = dcmread(tmp_path / "seg.dcm")
    source = dcmread(frame)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]  # the frame has no pixel spacing: none is claimed
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["disk"]
    assert np.array_equal(seg.pixel_array.reshape(expected.shape[-2:]) > 0, expected.reshape(expected.shape[-2:]) == 1)


def _states(checkpoint) -> dict:
    """Every tensor of a checkpoint, by dotted key, wherever the trainer nested the state dicts."""
    found = {}
    if isinstance(checkpoint, dict):
        for key, value in checkpoint.items():
            if isinstance(value, torch.Tensor):
                found[str(key)] = value
            else:
                found.update({f"{key}.{k}": v for k, v in _states(value).items()})
    return found


def two_label_dataset(raw, cases: int = 8, side: int = 48) -> None:
    """RGB images with a disk (label 1) and a square (label 2) of their own colours, placed at random."""
    from medseg.data.builder import RawDatasetBuilder
    from medseg.io import MedicalImage

    rng = np.random.default_rng(1)
    geometry = ((1.0, 1.0), (0.0, 0.0), np.eye(2))
    yy, xx = np.mgrid[:side, :side]
    with RawDatasetBuilder(raw, ".png") as builder:
        for index in range(cases):
            labels = np.zeros((side, side), np.uint8)
            cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (side // 6) ** 2] = 1
            top, left = rng.integers(2, side - 14, 2)
            labels[top : top + 12, left : left + 12] = 2
            image = rng.integers(20, 70, (3, side, side)).astype(np.uint8)
            image[:, labels == 1] = np.array([220, 60, 60], np.uint8)[:, None]
            image[:, labels == 2] = np.array([60, 200, 80], np.uint8)[:, None]
            builder.add_image(f"case_{index:03d}", MedicalImage(image, *geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(labels[None], *geometry))
        builder.finish({"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "disk": 1, "square": 2}, "numTraining": cases, "file_ending": ".png"})


def test_label_colours_read_back_and_binary_reads_as_before():
    from medseg.data.autoencoder_images import LABEL_COLOURS, decoded_probabilities, labels_as_image

    labels = torch.tensor([[[[0, 1, 2, 3, 4, 5, 6, 7]]]])
    image = labels_as_image(labels)
    assert torch.equal(image[0, :, 0, 1], torch.ones(3)) and torch.equal(image[0, :, 0].T, LABEL_COLOURS)  # label 1 white, as a binary mask
    assert torch.equal(decoded_probabilities(image * 0.8, 8).argmax(1), labels[:, 0])  # a faded colour is still nearest its own
    binary = decoded_probabilities(torch.full((1, 3, 1, 1), 0.2), 2)  # GMS's reading: channel mean (0.2) -> foreground 0.6
    assert torch.allclose(binary[0, :, 0, 0], torch.tensor([0.4, 0.6]))


@needs_taef2
def test_multi_class_gms_trains_and_predicts_every_label(tmp_path):

    root, dataset = tmp_path / "root", "Dataset992_TwoShapes"
    two_label_dataset(root / "raw" / dataset)
    trained = run_cli(
        "plan-and-train", "--dataset", dataset, "--model", "gms", "--folds", "0", "--epochs", "4", "--iterations-per-epoch", "10", "--autoencoder", TAEF2, root=root,
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    folder = root / "results" / dataset / "gms__medsegPlans_gms__2d"
    summary = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"disk", "square"}  # scored per label
    images = root / "raw" / dataset / "imagesTr"
    run_cli("predict", "-i", images, "-o", tmp_path / "out", "-m", folder, "--save-probabilities", root=root, check=True)
    predicted = [read_image(path).array for path in sorted((tmp_path / "out").glob("*.png"))]
    assert len(predicted) == 8 and set(np.unique(np.concatenate([p.ravel() for p in predicted]))) == {0, 1, 2}
    probabilities = np.load(next((tmp_path / "out").glob("*.probabilities.npz")))
    assert next(iter(probabilities.values())).shape[0] == 3


@needs_taef2
def test_an_edited_plans_file_sets_gms_losses_and_flips(tmp_path):
    """`plan-and-train --plans-name` trains from a plans file edited by hand: the Dice on one output,
    a lighter latent loss and flipped copies of the training images (their own latent caches);
    a value the task cannot use is refused naming the plans file."""
    root = tmp_path / "root"
    disks_dataset(root / "raw" / DATASET, cases=6, side=48)
    run_cli("fingerprint", DATASET, root=root, check=True)
    run_cli("plan", DATASET, "--model", "gms", "--plans-name", "editedPlans", root=root, check=True)
    plans_file = root / "preprocessed" / DATASET / "editedPlans.json"
    plans = json.loads(plans_file.read_text())
    training = plans["configurations"]["2d"]["training"]
    assert training["dice_outputs"] == (3 if torch.cuda.is_available() else 1) and training["flips"] == []  # GMS's own loss on a GPU; a CPU's fewer decodes
    training.update({"dice_outputs": 1, "latent_loss_weight": 0.5, "flips": ["h", "hv"]})
    plans_file.write_text(json.dumps(plans))
    train = ("plan-and-train", "--dataset", DATASET, "--model", "gms", "--plans-name", "editedPlans", "--folds", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--autoencoder", TAEF2)
    trained = run_cli(*train, root=root)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "0.5 x latent MSE + 1 x Dice through the decoder on 1 output(s), flips h/hv" in " ".join(trained.stdout.split())
    assert len(list((root / "preprocessed" / DATASET / "editedPlans_2d").glob("latents_*.pt"))) == 3  # as they are, flipped h, flipped hv

    training["flips"] = ["diagonal"]
    plans_file.write_text(json.dumps(plans))
    (root / "results" / DATASET / "gms__editedPlans__2d" / "fold_0" / "checkpoint_final.pt").unlink()
    refused = run_cli(*train, root=root)
    assert refused.returncode != 0 and "training.flips must list some of h, v, hv (got ['diagonal'])" in " ".join(refused.stderr.split())


def assert_every_surface_predicts_as_torch(root, folder, image, expected: np.ndarray, tmp_path) -> None:
    """The GMS folder through ONNX Runtime (one graph per fold: encoder, mapper, decoder), Ray and the
    REST server: the same labels as `medseg predict` in PyTorch."""
    import importlib.util

    from tests.conftest import require_peer
    from tests.e2e.test_serve import TOKEN, Server, _client, _submit, _wait

    if importlib.util.find_spec("onnxruntime") is not None:
        exported = run_cli("export", folder, "--format", "onnx", root=root, check=True)
        assert "class probabilities difference to PyTorch" in exported.stdout
        run_cli("predict", "-i", image, "-o", tmp_path / "onnx", "-m", folder, "--runtime", "onnx", root=root, check=True)
        assert np.array_equal(read_image(tmp_path / "onnx" / "case_000.png").array, expected)
    if importlib.util.find_spec("ray") is not None:
        run_cli("predict", "-i", image, "-o", tmp_path / "ray", "-m", folder, "--backend", "ray", "--workers", "1", root=root, check=True)
        assert np.array_equal(read_image(tmp_path / "ray" / "case_000.png").array, expected)
    require_peer("fastapi")
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "allowed").mkdir()
    server = Server(folder, tmp_path / "served", tmp_path / "allowed", tmp_path / "token")
    url = server.start()
    try:
        with _client(url) as client:
            created = _submit(client, "case_000_0000.png", image.read_bytes(), formats="png")
            assert created.status_code == 202, created.text
            job = _wait(client, created.json()["id"])
            assert job["state"] == "done" and job["outputs"] == ["png"], job
            result = client.get(f"/jobs/{job['id']}/result", params={"format": "png"})
            assert result.status_code == 200
            served = tmp_path / "served_label.png"
    finally:
        server.stop()
    served.write_bytes(result.content)
    assert np.array_equal(read_image(served).array, expected)


def test_gms_paper_preset_plans_224_pixels(tmp_path):
    root = tmp_path / "root"
    disks_dataset(root / "raw" / DATASET, cases=2, side=256)
    run_cli("fingerprint", DATASET, "--workers", "1", root=root, check=True)
    run_cli("plan", DATASET, "--model", "gms", root=root, check=True)
    run_cli("plan", DATASET, "--preset", "gms_paper", "--plans-name", "paperPlans", root=root, check=True)  # the preset names its family
    default = json.loads((root / "preprocessed" / DATASET / "medsegPlans_gms.json").read_text())
    paper = json.loads((root / "preprocessed" / DATASET / "paperPlans.json").read_text())
    assert paper["configurations"]["2d"]["patch_size"] == [224, 224] and paper["configurations"]["2d"]["architecture"]["name"] == "gms"
    assert default["configurations"]["2d"]["patch_size"] == ([224, 224] if torch.cuda.is_available() else [128, 128])
