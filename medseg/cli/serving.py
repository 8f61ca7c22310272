"""The hospital surfaces: `medseg serve` (REST + web page) and `dicom-node`; transport only, prediction goes through the front door."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app, console


@app.command()
def serve(
    models: list[str] = typer.Option([], "--model", "-m", help="NAME=MODEL_FOLDER to serve (repeatable)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="Serve every model folder in DIR, named by its folder (the container's default: /models)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface; set a token)."),
    port: int = typer.Option(8000, "--port"),
    data: Path = typer.Option(Path("medseg_serve"), "--data", help="Where jobs (uploads, outputs, state) are kept across restarts."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the bearer token [default: $MEDSEG_TOKEN; none: loopback clients only]."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest request body accepted."),
    allow_root: list[Path] = typer.Option([], "--allow-root", help="Server-side folder jobs may read by path (repeatable)."),
    queue_size: int = typer.Option(16, "--queue", min=1, help="Jobs waiting at most; more get 503."),
) -> None:
    """REST server: GET /models, POST /jobs, GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id} (docs at /docs)."""
    import os

    from medseg.errors import MedsegError

    try:
        import uvicorn

        from medseg.serve.app import ServeSettings, create_app
    except ImportError as error:
        raise MedsegError(f"medseg serve needs the serve extra ({error}): pip install 'medseg[serve]'") from None
    named = {}
    for item in models:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise MedsegError(f"--model {item!r}: expected NAME=MODEL_FOLDER")
        named[name] = Path(folder)
    if models_dir is not None:
        if not models_dir.is_dir():
            raise MedsegError(f"--models-dir {models_dir}: not a folder")
        found = {p.name: p for p in sorted(models_dir.iterdir()) if p.is_dir() and (p / "plans.json").is_file()}
        if not found:
            raise MedsegError(f"--models-dir {models_dir}: no model folders in it (folders holding plans.json, as `medseg train` or nnU-Net write them)")
        named.update(found)
    if not named:
        raise MedsegError("nothing to serve: give --model NAME=MODEL_FOLDER or --models-dir DIR")
    token = os.environ.get("MEDSEG_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text().strip() or None
        except OSError as error:
            raise MedsegError(f"{token_file}: cannot read the token ({error.strerror})") from None
        if token is None:
            raise MedsegError(f"{token_file}: empty token file")
    settings = ServeSettings(named, data, token, int(max_upload_mb * 2**20), list(allow_root), queue_size)
    application = create_app(settings)
    console.print(f"serving {', '.join(named)} on http://{host}:{port} ({'bearer token' if token else 'loopback clients only, no token'})", highlight=False, soft_wrap=True)
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command("dicom-node")
def dicom_node(
    model: Path = typer.Option(..., "--model", "-m", help="Model folder that segments every received series."),
    store: Path = typer.Option(Path("medseg_dicom_node"), "--store", help="Where received series, outputs and node.log are kept (survives restarts)."),
    ae_title: str = typer.Option("MEDSEG", "--ae-title", help="This node's AE title."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(11112, "--port"),
    allow: list[str] = typer.Option([], "--allow", help="Calling AE title allowed to associate (repeatable) [default: any]."),
    quiet_seconds: float = typer.Option(10.0, "--quiet-seconds", min=0.0, help="A series is complete when nothing of it arrived for this long."),
    send_to: Optional[str] = typer.Option(None, "--send-to", help="C-STORE the outputs to AET@HOST:PORT."),
    stow_url: Optional[str] = typer.Option(None, "--stow-url", help="STOW-RS the outputs to this DICOMweb root (URL/studies)."),
    formats: str = typer.Option("dicom-seg", "--format", help="Outputs to send (comma-separated): dicom-seg, rtstruct, dicom-sr (the measurement report with volumes, the review flag and input-check findings; its SEG is sent with it)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Test-time mirroring, as trained."),
    incomplete_wait: float = typer.Option(600.0, "--incomplete-wait", min=0.0, help="How long a quiet series whose headers say it is incomplete waits for the rest."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="DICOM TLS: this node's certificate (PEM); with --tls-key the SCP accepts TLS only."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="DICOM TLS: the certificate's private key (PEM)."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="DICOM TLS: CA certificates peers must chain to (clients of the SCP must then present one)."),
    send_tls: bool = typer.Option(False, "--send-tls", help="C-STORE to --send-to over TLS (verified against --tls-ca)."),
    retry_seconds: float = typer.Option(30.0, "--retry-seconds", min=0.0, help="A failed delivery is retried after this, doubled per attempt (at most an hour)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="At start, retry every pending delivery now (node.log lists them as 'pending')."),
) -> None:
    """DICOM node: C-STORE SCP (and C-ECHO) that segments each complete series and sends DICOM SEG / RTSTRUCT back."""
    import importlib.util
    import signal
    import threading

    from medseg.errors import MedsegError
    from medseg.serve.dicom_node import Destination, DicomNode, NodeConfig, TlsSettings

    if importlib.util.find_spec("pynetdicom") is None:
        raise MedsegError("medseg dicom-node needs pynetdicom: pip install 'medseg[dicom]'")
    if bool(tls_cert) != bool(tls_key):
        raise MedsegError("--tls-cert and --tls-key go together")
    if send_tls and not send_to:
        raise MedsegError("--send-tls applies to --send-to")
    tls = TlsSettings(tls_cert, tls_key, tls_ca) if (tls_cert or tls_ca) else None
    config = NodeConfig(
        model=model, store=store, ae_title=ae_title, host=host, port=port, allowed=list(allow), quiet_seconds=quiet_seconds,
        send_to=Destination.parse(send_to) if send_to else None, stow_url=stow_url,
        formats=[f.strip() for f in formats.split(",") if f.strip()], tta=tta, incomplete_wait=incomplete_wait,
        tls=tls, send_tls=send_tls, retry_base_seconds=retry_seconds, retry_failed=retry_failed,
    )
    node = DicomNode(config, echo=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
    if not (send_to or stow_url):
        console.print("no --send-to or --stow-url: outputs stay in the store only", highlight=False)
    node.start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    node.stop()

