"""Download a model zip from a URL and install it (``pnnunet_download_pretrained_model_by_url``, issue 11).

The download goes to a temporary file in the results root (same file system, removed afterwards, also on
failure) with a progress bar; then :func:`pnnunet.inference.model_zip.install_model_zip` checks and
installs it. HTTP errors, unreachable hosts, truncated downloads and files that are not zips are
:class:`PnnunetError` messages naming the URL.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path

from tqdm import tqdm

from pnnunet import __version__
from pnnunet.errors import PnnunetError
from pnnunet.inference.model_zip import InstalledModel, install_model_zip

log = logging.getLogger(__name__)

TIMEOUT_S = 100
_CHUNK = 1 << 20


def _fetch(url: str, target: Path, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"pnnunet/{__version__}"})
    received = 0
    try:
        out = open(target, "wb")
    except OSError as e:
        raise PnnunetError(f"{target.parent}: cannot be written ({e.strerror or e})\n"
                           "  fix: choose a writable results folder (pnnunet_results)") from None
    try:
        with out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as e:  # our disk, not the network
                        raise PnnunetError(f"{target.parent}: writing the download failed after {received} bytes "
                                           f"({e.strerror or e})\n  fix: free space in the results folder "
                                           "(pnnunet_results), or choose another one") from None
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise PnnunetError(f"{url}: the server answered HTTP {e.code} {e.reason}\n"
                           "  fix: check the URL (a download link, not the page that shows it)") from None
    except urllib.error.URLError as e:
        raise PnnunetError(f"{url}: cannot be downloaded ({e.reason})\n"
                           "  fix: check the URL and the network connection (proxy settings: https_proxy)") from None
    except http.client.IncompleteRead as e:
        raise PnnunetError(f"{url}: the download stopped after {received + len(e.partial)} bytes (the connection "
                           "closed early)\n  fix: try again") from None
    except (TimeoutError, ConnectionError, OSError, http.client.HTTPException) as e:
        raise PnnunetError(f"{url}: the download failed ({type(e).__name__}: {e})\n"
                           "  fix: try again; check the network connection") from None
    if total is not None and received != total:
        raise PnnunetError(f"{url}: the download stopped after {received} of {total} bytes\n"
                           "  fix: try again")


def download_and_install(url: str, results_root: Path | str, overwrite: bool = False,
                         progress: bool = True) -> list[InstalledModel]:
    """Download the model zip at ``url`` (http or https) and install it into ``results_root``."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise PnnunetError(f"{url}: not an http(s) URL\n  fix: pass an http:// or https:// link; for a zip on "
                           "disk use pnnunet_install_pretrained_model_from_zip")
    results_root = Path(results_root).expanduser().absolute()
    try:
        results_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PnnunetError(f"{results_root}: cannot be created ({e.strerror})\n"
                           "  fix: choose a writable results folder (pnnunet_results)") from None
    tmp = results_root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-download.zip"  # fileio's temporary naming
    log.info("downloading %s", url)
    try:
        _fetch(url, tmp, progress)
        if not zipfile.is_zipfile(tmp):
            with open(tmp, "rb") as f:
                head = f.read(60)
            raise PnnunetError(f"{url}: the downloaded file is not a zip (it starts with {head!r})\n"
                               "  fix: check the URL (a direct download link to the model's .zip)")
        return install_model_zip(tmp, results_root, overwrite=overwrite, source=url)  # messages name the URL
    finally:
        tmp.unlink(missing_ok=True)
