"""Downloads, only when the user asks (data.download=true): checked against the published MD5, written
atomically, and archives unpacked into place only once whole, so a failure leaves nothing half-written."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from backprop_lab.console import err_console


class DownloadError(OSError):
    """A download that failed or did not match its checksum; `str()` is the one line shown."""


def fetch(urls: list[str], dest: Path, md5: str) -> None:
    """Download the first of `urls` that answers into `dest`, if its MD5 is `md5`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    failures = []
    for url in urls:
        err_console.print(f"downloading {url}", markup=False)
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as err:
            tmp.unlink(missing_ok=True)
            failures.append(f"{url}: {getattr(err, 'reason', err)}")
            continue
        if digest.hexdigest() != md5:
            tmp.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, published {md5}; "
                "the file was not kept (a changed or damaged download)"
            )
        os.replace(tmp, dest)
        return
    raise DownloadError(f"could not download {dest.name}: {'; '.join(failures)}")


def unpack(archive: Path, folder: str, into: Path) -> Path:
    """Extract `folder` (the archive's top folder) from a .tar.gz into `into`, atomically: extracted
    beside it first, renamed into place when whole. Links, devices and paths leaving the folder are refused."""
    target = into / folder
    if target.exists():
        raise DownloadError(f"{target} exists but is incomplete: move it away, and the download unpacks a whole copy")
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                name = Path(m.name)
                if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
                    raise DownloadError(
                        f"{archive} holds {m.name}, which is not a plain file inside the archive; refused"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library checks too
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)  # every member checked above
        if not (staging / folder).is_dir():
            raise DownloadError(f"{archive} has no folder {folder}/")
        os.replace(staging / folder, target)
        return target
    except (tarfile.TarError, EOFError) as err:
        raise DownloadError(f"{archive} is damaged ({type(err).__name__}: {err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
