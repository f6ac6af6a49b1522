"""Downloads for the data sources, through pooch.

pooch writes to a temporary file beside the destination and moves it into place only when it
is complete and, where a hash is known, correct (a wrong one is deleted), so a killed or bad
download never leaves a file that looks good. Failures become one-line DataErrors.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import DataError
from ..progress import progress_bar

# pooch.hashes.hash_matches: "MD5 hash of downloaded file (...) ... expected md5:X but got Y."
HASH_MISMATCH = re.compile(r"^(?P<alg>\w+) hash of .* expected (?:\w+:)?(?P<want>[0-9a-fA-F]+) but got (?P<got>[0-9a-fA-F]+)")
CHUNK_BYTES = 1 << 20  # pooch's default of 1 KiB costs a Python loop turn per KiB


def fetch(url: str, folder: Path, fname: str, *, known_hash: str | None = None, progress: bool = True) -> Path:
    """`folder/fname`, downloaded from `url` unless already there (and matching `known_hash`, e.g. "md5:...")."""
    # Imported here for start-up time: pooch and requests take ~0.1 s to import, and only a
    # download needs them, not every `alexnet` command that imports the data layer.
    import pooch
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and not (folder / fname).is_file():
        # total=1 until pooch sets the content length: pooch tests the bar's truth, which tqdm
        # refuses to tell without a total
        bar = progress_bar(total=1, unit="B", unit_scale=True, desc=f"download {fname}")
    downloader = pooch.HTTPDownloader(progressbar=bar if bar is not None else False, chunk_size=CHUNK_BYTES, timeout=60)
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # its INFO lines repeat what the bar shows, or ask for a hash we check ourselves
    try:
        return Path(pooch.retrieve(url, known_hash, fname=fname, path=folder, downloader=downloader))
    except ValueError as exc:  # pooch: a hash mismatch (the download is already deleted), or a bad URL
        m = HASH_MISMATCH.search(str(exc))
        if m is None:
            raise DataError(f"cannot download {url}: {exc}") from None
        raise DataError(f"refusing the download of {url}: {m['alg'].lower()} {m['got']}, expected {m['want']} "
                        "(corrupted in transit, or not the official file)") from None  # fmt: skip
    except (OSError, requests.RequestException) as exc:
        raise DataError(f"cannot download {url}: {_reason(exc)}") from None
    finally:
        logger.setLevel(level)
        if bar is not None:
            bar.close()


def _reason(exc: Exception) -> str:
    """The useful end of a requests/urllib3 error ("HTTP 404 Not Found", "Failed to resolve 'host' (...)")."""
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    inner = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError wraps the cause
    return str(inner or exc).split("): ", 1)[-1]
