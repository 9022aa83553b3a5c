"""Optional helper that fetches the official weights from the Hugging Face Hub, with size and hash checks.

Nothing else in the library depends on it: every loader takes plain file paths. Offline it fails with a message
that says which files to fetch by hand and where to put them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import LatentSyncError
from .files import atomic_write

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str  # path inside the repository
    target: str  # path below the destination folder


VAE_REPO = "stabilityai/sd-vae-ft-mse"
RELEASES = {
    version: (
        RemoteFile(f"ByteDance/LatentSync-{version}", "latentsync_unet.pt", "latentsync_unet.pt"),
        RemoteFile(f"ByteDance/LatentSync-{version}", "whisper/tiny.pt", "whisper/tiny.pt"),
        RemoteFile(f"ByteDance/LatentSync-{version}", "stable_syncnet.pt", "stable_syncnet.pt"),
        RemoteFile(VAE_REPO, "config.json", "sd-vae-ft-mse/config.json"),
        RemoteFile(VAE_REPO, "diffusion_pytorch_model.safetensors", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"),
    )
    for version in ("1.5", "1.6")
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(remote: RemoteFile) -> str:
    """The direct download address of ``remote`` (``/resolve/``; ``/blob/`` is the Hub's web page of the file)."""
    return f"https://huggingface.co/{remote.repo_id}/resolve/main/{remote.filename}"


def _target(remote: RemoteFile, dest: Path, vae_dest: Path) -> Path:
    return (vae_dest if remote.repo_id == VAE_REPO else dest) / remote.target


def _manual_instructions(files: tuple[RemoteFile, ...], dest: Path, vae_dest: Path) -> str:
    lines = [f"  {download_url(f)}  ->  {_target(f, dest, vae_dest)}" for f in files]
    return "Download these files by hand and place them as shown:\n" + "\n".join(lines)


def _verify(path: Path, expected_size: int | None, expected_sha256: str | None) -> None:
    if expected_size is not None and path.stat().st_size != expected_size:
        raise LatentSyncError(
            f"{path} has {path.stat().st_size:,} bytes, the Hub says {expected_size:,}: the download is incomplete. "
            "Run the command again."
        )
    if expected_sha256 is not None and _sha256(path) != expected_sha256:
        raise LatentSyncError(f"{path} does not match the Hub's sha256 {expected_sha256}; delete it and run again.")


def _reason(error: Exception) -> str:
    """What went wrong, in words a user can act on (not an inner error number such as "[Errno 101]")."""
    causes = [error]
    while len(causes) < 20 and (causes[-1].__cause__ or causes[-1].__context__) is not None:
        causes.append(causes[-1].__cause__ or causes[-1].__context__)
    if any(isinstance(cause, (ConnectionError, TimeoutError)) or "Connect" in type(cause).__name__ for cause in causes):
        return "the Hub cannot be reached from this machine (no network, or a proxy or firewall in the way)"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the Hub refused access (HTTP {status}); log in with `huggingface-cli login` if the files need it"
    return f"{type(error).__name__} (run with --debug for details)"


def download_release(
    version: str, dest: str | os.PathLike, vae_dest: str | os.PathLike | None = None
) -> list[Path]:
    """Fetch the LatentSync ``version`` ("1.5" or "1.6") files into ``dest`` and the SD VAE (``sd-vae-ft-mse/``)
    into ``vae_dest`` (default: ``dest``, the command line's layout; ComfyUI's is ``models/latentsync`` and
    ``models/vae``); skip verified files.

    Raises:
        LatentSyncError: unknown version, no ``huggingface_hub``, no network, or a size/hash mismatch.
    """
    if version not in RELEASES:
        raise LatentSyncError(f"Unknown LatentSync version {version!r}; choose one of {', '.join(RELEASES)}.")
    files, dest = RELEASES[version], Path(dest)
    vae_dest = dest if vae_dest is None else Path(vae_dest)
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError as error:
        raise LatentSyncError(
            "The download helper needs huggingface_hub (pip install huggingface_hub). "
            + _manual_instructions(files, dest, vae_dest)
        ) from error

    api, written = HfApi(), []
    try:
        for remote in files:
            (info,) = api.get_paths_info(remote.repo_id, [remote.filename])
            lfs = getattr(info, "lfs", None)
            size, sha256 = getattr(info, "size", None), (lfs.sha256 if lfs is not None else None)
            target = _target(remote, dest, vae_dest)
            if target.is_file():
                try:
                    _verify(target, size, sha256)
                    logger.info("%s is already complete", target)
                    written.append(target)
                    continue
                except LatentSyncError:
                    logger.warning("%s is incomplete or different; downloading it again", target)
            cached = Path(hf_hub_download(remote.repo_id, remote.filename))
            _verify(cached, size, sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target) as temporary:
                shutil.copyfile(cached, temporary)
            written.append(target)
    except LatentSyncError:
        raise
    except Exception as error:  # network and Hub errors come in many types across huggingface_hub versions
        logger.debug("download failed", exc_info=True)
        raise LatentSyncError(
            f"Could not download from the Hugging Face Hub: {_reason(error)}. "
            + _manual_instructions(files, dest, vae_dest)
        ) from error
    return written
