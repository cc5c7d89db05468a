"""``python run.py prepare recbole NAME``: download one of RecBole's own atomic datasets, on request.

RecBole downloads a dataset by itself when a run names one it cannot find on disk; recbole-ext never does (a run
reads only what is there, see ``Task.check_data``). This command is the explicit step instead: it looks NAME up
in the URL table of the installed RecBole (``recbole/properties/dataset/url.yaml``, the table RecBole's
``Dataset._download`` reads; it is read at run time, never copied here), downloads the zip and writes the atomic
files to ``<dataset root>/NAME/``, where a later ``python run.py --model=BPR --dataset=NAME`` finds them.

RecBole's table holds URLs only, no checksums, so the download is verified by what can be checked without one:

* the transfer: an HTTP error is refused, and so is a body shorter than its ``Content-Length`` (truncated);
* the archive: a valid zip; every member unpacked is read in full against its CRC-32;
* the members: relative paths only (no absolute path, drive, backslash or ``..``), no symbolic links, declared
  sizes within the limits below and within the free disk space;
* the contents: ``<stem>.inter`` is present, where ``<stem>`` is the zip's file name as RecBole's own download
  renames it (``Amazon_Beauty.zip`` holds ``Amazon_Beauty.inter`` -> ``amazon-beauty.inter``).

The zip's SHA-256 and each written file's SHA-256 are recorded in ``NAME/download.json``, so a later download can
be compared with this one. Everything happens in a temporary folder beside the target (``atomic_dir``): a failure
of any kind leaves neither a partial dataset folder nor the downloaded zip behind.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import http.client
import importlib.util
import json
import os
import shutil
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.hashing import file_sha256
from recbole_ext.utils.io import atomic_dir, new_folders_removed_on
from recbole_ext.utils.paths import check_dataset_name, dataset_root

GIB = 1 << 30
# The largest zips in RecBole's table are a few GiB; these bounds only stop a wrong URL or a zip bomb from
# filling the disk before anything is checked.
MAX_DOWNLOAD_BYTES = 20 * GIB
MAX_UNPACKED_BYTES = 100 * GIB
DEFAULT_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
URL_SCHEMES = ("http", "https", "file")  # file:// installs a zip fetched by hand, through the same checks
DOWNLOAD_RECORD = "download.json"
SHIPPED_WITH_RECBOLE = "ml-100k"


def recbole_url_table() -> dict[str, str]:
    """RecBole's own dataset -> zip URL table, read from the installed ``recbole`` package."""
    import yaml

    spec = importlib.util.find_spec("recbole")
    table_path = Path(next(iter(spec.submodule_search_locations))) / "properties" / "dataset" / "url.yaml" \
        if spec and spec.submodule_search_locations else None
    if table_path is None or not table_path.is_file():
        raise UserError("the installed RecBole has no dataset URL table (recbole/properties/dataset/url.yaml)",
                        fix="reinstall recbole==1.2.1, or pass the zip's address with --url")
    table = yaml.safe_load(table_path.read_text(encoding="utf-8")) or {}
    return {str(name): str(url) for name, url in table.items()}


def recbole_dataset_url(name: str) -> str:
    """The URL RecBole downloads ``name`` from; an unknown name is a UserError listing the closest known names."""
    table = recbole_url_table()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"RecBole knows {len(table)} datasets"
    raise UserError(f"RecBole has no dataset named '{name}' ({hint})",
                    fix="`python run.py prepare recbole --list` prints the names; a zip from elsewhere needs --url")


def is_recbole_dataset(name: str) -> bool:
    """Whether ``prepare recbole name`` can fetch ``name`` (False, not an error, when RecBole has no table)."""
    try:
        return name in recbole_url_table()
    except (UserError, OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------------- download
def _readable_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise UserError(f"cannot download from '{url}': the address must start with http://, https:// or file://",
                        fix="give the zip's full address, e.g. --url https://mirror.example/ml-1m.zip")


def _progress_bar(total: int | None, label: str):
    """A tqdm bar (tqdm comes with RecBole) when the size is known and stderr is a terminal; else nothing."""
    if not total:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr,
                disable=None)  # None: off when stderr is not a terminal (logs, CI), so no bar floods them


def download(url: str, dest: Path, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = MAX_DOWNLOAD_BYTES,
             label: str = "download") -> int:
    """Stream ``url`` into ``dest``; returns the byte count. Every failure is one UserError; ``dest`` may then be
    partial (the caller writes it inside a temporary folder that is removed on failure)."""
    _check_url(url)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}",
                        fix="check the dataset name and your connection, or pass a mirror's address with --url") \
            from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            raise UserError(f"no answer from {url} within {timeout:g} s",
                            fix="try again later, raise --timeout, or pass a mirror with --url") from None
        raise UserError(f"cannot reach {url}: {reason}",
                        fix="check your network connection (or proxy), or pass a reachable mirror with --url") \
            from None
    with response:
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            raise UserError(f"{url} is {_readable_size(expected)}, more than the {_readable_size(max_bytes)} limit",
                            fix="check the address: RecBole's dataset zips are far smaller")
        got = 0
        try:
            with open(dest, "wb") as out, _progress_bar(expected, label) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    got += len(chunk)
                    if got > max_bytes:
                        raise UserError(f"{url} sent more than the {_readable_size(max_bytes)} limit",
                                        fix="check the address: RecBole's dataset zips are far smaller")
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except http.client.IncompleteRead as exc:
            got += len(exc.partial)
        except TimeoutError:  # socket.timeout is this class since Python 3.10
            raise UserError(f"download of {url} stalled: no data for {timeout:g} s (after {got} bytes)",
                            fix="try again later, raise --timeout, or pass a mirror with --url") from None
        except (OSError, http.client.HTTPException) as exc:
            raise UserError(f"download of {url} broke off after {got} bytes: {exc}",
                            fix="try again, or pass a mirror with --url") from None
    if expected is not None and got != expected:
        raise UserError(f"download of {url} is truncated: {got} of {expected} bytes (Content-Length) arrived",
                        fix="try again; if it keeps happening, pass a mirror with --url")
    return got


# ------------------------------------------------------------------------------------------------------------ zip
def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be unpacked, or None: it must stay inside the folder and be a plain file or folder."""
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or (parts and parts[0].endswith(":")):
        return "an absolute or non-POSIX path"
    if ".." in parts:
        return "a '..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def _is_noise(path: PurePosixPath) -> bool:
    """Archive-tool clutter (macOS resource forks, hidden files) that RecBole never reads."""
    return any(part == "__MACOSX" or part.startswith(".") for part in path.parts)


def _atomic_members(archive: zipfile.ZipFile, url: str, name: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """[(member, file name to write)]: the files at the top of the zip (or of its one top-level folder),
    with the zip's stem renamed to ``name`` as RecBole's ``rename_atomic_files`` does. Refuses unsafe members and
    a zip without ``<stem>.inter``."""
    infos = archive.infolist()
    for info in infos:
        reason = _unsafe_reason(info)
        if reason:
            raise UserError(f"the zip from {url} has an unsafe member '{info.filename}' ({reason}); nothing was "
                            f"unpacked", fix="the archive is not a RecBole dataset zip: check the address")
    files = [(info, PurePosixPath(info.filename)) for info in infos if not info.is_dir()]
    files = [(info, path) for info, path in files if not _is_noise(path)]
    tops = {path.parts[0] for _, path in files if len(path.parts) > 1}
    wrapped = not any(len(path.parts) == 1 for _, path in files) and len(tops) == 1
    depth = 2 if wrapped else 1  # some zips wrap their files in one folder named after the dataset
    level = [(info, path.name) for info, path in files if len(path.parts) == depth]
    stems = [Path(urllib.parse.urlsplit(url).path).name.removesuffix(".zip"), name]
    inters = [n[:-len(".inter")] for _, n in level if n.endswith(".inter")]
    if len(inters) == 1:
        stems.append(inters[0])
    stem = next((s for s in stems if f"{s}.inter" in {n for _, n in level}), None)
    if stem is None:
        shown = ", ".join(sorted(n for _, n in level)[:8]) or "no files"
        raise UserError(f"the zip from {url} holds no atomic interaction file {stems[0]}.inter (it holds {shown})",
                        fix="check the address: a RecBole dataset zip holds <name>.inter and its .user/.item files")
    return [(info, name + n[len(stem):] if n == stem or n.startswith(f"{stem}.") else n) for info, n in level]


def _check_sizes(members: list[tuple[zipfile.ZipInfo, str]], folder: Path, url: str, max_unpacked: int) -> int:
    total = sum(info.file_size for info, _ in members)
    if total > max_unpacked:
        raise UserError(f"the zip from {url} unpacks to {_readable_size(total)}, more than the "
                        f"{_readable_size(max_unpacked)} limit", fix="check the address: the archive is not a RecBole "
                                                                    "dataset zip")
    free = shutil.disk_usage(folder).free
    if total > free:
        raise UserError(f"the dataset unpacks to {_readable_size(total)} but {folder} has {_readable_size(free)} free",
                        fix="free some space, or choose another dataset root with --out")
    return total


def unpack_atomic_files(zip_path: Path, folder: Path, url: str, name: str,
                        max_unpacked: int = MAX_UNPACKED_BYTES) -> dict[str, int]:
    """Check the zip and write its atomic files, renamed to ``name``, into ``folder``: {file name: bytes}."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _atomic_members(archive, url, name)
            _check_sizes(members, folder, url, max_unpacked)
            written: dict[str, int] = {}
            for info, out_name in members:
                if out_name in written:
                    raise UserError(f"the zip from {url} holds '{out_name}' twice",
                                    fix="check the address: the archive is not a RecBole dataset zip")
                # zipfile stops at the declared size and checks the CRC-32 at the end of each member
                with archive.open(info) as src, open(folder / out_name, "xb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
                written[out_name] = info.file_size
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise UserError(f"the download from {url} is not a valid zip ({exc})",
                        fix="try again; if it keeps happening, the file at that address is damaged: use a mirror "
                            "with --url") from None
    return written


# ----------------------------------------------------------------------------------------------------------- driver
def prepare_recbole_dataset(name: str, root: str | os.PathLike, url: str | None = None, overwrite: bool = False,
                            timeout: float = DEFAULT_TIMEOUT_S, max_download: int = MAX_DOWNLOAD_BYTES,
                            max_unpacked: int = MAX_UNPACKED_BYTES) -> dict:
    """Download RecBole's dataset ``name`` (or the zip at ``url``) into ``root/name``; returns its download record."""
    check_dataset_name(name, "ml-1m")
    if name == SHIPPED_WITH_RECBOLE:  # RecBole's Config reads this one from its own folder, whatever data_path says
        raise UserError(f"{name} ships with RecBole (recbole/dataset_example/{name}) and runs always read it from "
                        "there: there is nothing to download", fix=f"run `python run.py --model=BPR --dataset={name}`")
    source = "--url" if url else f"RecBole {_recbole_version()} url.yaml"
    url = url or recbole_dataset_url(name)
    _check_url(url)
    root = Path(root).expanduser().absolute()
    target = root / name
    # atomic_dir refuses an existing target on entry: before the download, not after it
    with new_folders_removed_on(root), atomic_dir(target, overwrite=overwrite) as tmp:
        print(f"downloading {name} from {url}", file=sys.stderr)
        zip_path = tmp / ".download.zip"
        size = download(url, zip_path, timeout=timeout, max_bytes=max_download, label=name)
        files = unpack_atomic_files(zip_path, tmp, url, name, max_unpacked=max_unpacked)
        record = {"dataset": name, "url": url, "source": source,
                  "zip_bytes": size, "zip_sha256": file_sha256(zip_path),
                  "files": {f: {"bytes": n, "sha256": file_sha256(tmp / f)} for f, n in sorted(files.items())},
                  "downloaded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "verified": "Content-Length, zip CRC-32 of every member, safe member paths, <name>.inter present "
                              "(RecBole's table has no checksum)"}
        zip_path.unlink()
        (tmp / DOWNLOAD_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        # the dataset root may be the project's dataset_atomic/: third-party data (MovieLens forbids
        # redistribution) must not end up in a commit by accident
        (tmp / ".gitignore").write_text("# downloaded by `python run.py prepare recbole`; not part of the "
                                        "repository\n*\n", encoding="utf-8")
    return record


def _recbole_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recbole")
    except PackageNotFoundError:
        return "(unknown version)"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="run.py prepare recbole",
        description="Download one of RecBole's atomic datasets (the names of RecBole's "
                    "recbole/properties/dataset/url.yaml, e.g. ml-1m, yelp, amazon-beauty) into the dataset root, "
                    "where `python run.py --model=BPR --dataset=NAME` finds it. Runs never download by themselves.")
    parser.add_argument("name", metavar="NAME", nargs="?",
                        help="RecBole's dataset name (also the folder written and the --dataset of a run)")
    parser.add_argument("--list", action="store_true", help="print the names RecBole can download and stop")
    # No path as the default: --help (and docs/cli.md, generated from it) must not show this machine's folders.
    parser.add_argument("--out", metavar="DIR",
                        help="dataset root to write NAME/ into (default: where runs look, $RECBOLE_EXT_DATA, else the "
                             "project's dataset_atomic/); elsewhere runs need --data_path=DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing NAME/ folder")
    parser.add_argument("--url", default=None,
                        help="download the zip from this address instead of RecBole's (a mirror, or file:// for a "
                             "zip fetched by hand); default: RecBole's own address for NAME")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds without data before the download is given up")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(sorted(recbole_url_table(), key=str.lower)))
        return 0
    if not args.name:
        raise UserError("prepare recbole needs a dataset name",
                        fix="e.g. `python run.py prepare recbole ml-1m`; `--list` prints the names")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout:g}", fix="e.g. --timeout 60")
    root = Path(args.out).expanduser() if args.out else dataset_root()
    record = prepare_recbole_dataset(args.name, root, url=args.url, overwrite=args.overwrite, timeout=args.timeout)
    target = root.absolute() / args.name
    listing = ", ".join(f"{f} ({_readable_size(info['bytes'])})" for f, info in record["files"].items())
    print(f"wrote {target}: {listing}")
    found_by_default = target.parent.resolve() == dataset_root().resolve()
    print(f"train on it: python run.py --model=BPR --dataset={args.name}"
          + ("" if found_by_default else f" --data_path={target.parent}"))
    return 0
