"""``python run.py prepare recbole NAME``: RecBole's datasets downloaded on request, verified, written atomically.

A loopback HTTP server (port 0, in a thread) serves zips built here; nothing leaves the machine. Every refused
download is one error line, exit status 2, and leaves nothing behind: neither the dataset folder, nor a temporary
folder or zip beside it, nor a dataset root the command created.
"""
from __future__ import annotations

import http.server
import io
import json
import stat
import threading
import time
import zipfile

import pytest

from recbole_ext.cli import main
from recbole_ext.errors import UserError

TOY_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{1 + (u * i) % 5}\t{u * 100 + i}\n" for u in range(1, 21) for i in range(1, 21) if (u + i) % 3)
TOY_ITEM = "item_id:token\tgenre:token_seq\n" + "".join(f"{i}\tDrama\n" for i in range(1, 21))


def zip_bytes(members: dict[str, str], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, text)
    return buffer.getvalue()


GOOD_ZIP = zip_bytes({"Toy_Set.inter": TOY_INTER, "Toy_Set.item": TOY_ITEM, "README.txt": "toy data\n"})
# one byte of the deflated .inter flipped: still a zip, but that member fails its CRC-32 / inflate
_damaged = bytearray(GOOD_ZIP)
_damaged[len("PK\x03\x04") + 26 + len("Toy_Set.inter") + 40] ^= 0xFF
ROUTES = {
    "/Toy_Set.zip": GOOD_ZIP,
    "/no-length/Toy_Set.zip": GOOD_ZIP,
    "/wrapped/Toy_Set.zip": zip_bytes({"Toy_Set/Toy_Set.inter": TOY_INTER, "__MACOSX/._Toy_Set.inter": "x"}),
    "/not-a-zip.zip": b"<html>this is an error page, not a zip</html>\n" * 20,
    "/damaged.zip": bytes(_damaged),
    "/evil.zip": zip_bytes({"Toy_Set.inter": TOY_INTER, "../evil": "escaped\n"}),
    "/absolute.zip": zip_bytes({"Toy_Set.inter": TOY_INTER, "/tmp/evil": "escaped\n"}),
    "/symlink.zip": zip_bytes({"Toy_Set.inter": TOY_INTER, "Toy_Set.item": "/etc/passwd"},
                              symlinks=("Toy_Set.item",)),
    "/no-inter.zip": zip_bytes({"Toy_Set.item": TOY_ITEM, "Toy_Set.user": "user_id:token\n1\n"}),
}


class Handler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        Handler.requests.append(self.path)
        if self.path == "/truncated.zip":  # promises more than it sends, then closes the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD_ZIP) + 1000))
            self.end_headers()
            self.wfile.write(GOOD_ZIP)
            return
        if self.path == "/slow.zip":
            time.sleep(1.5)
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if not self.path.startswith("/no-length/"):  # without it, HTTP/1.0 ends the body by closing
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the timeout test's client hangs up before the slow answer: a broken pipe here is expected


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """The dataset root runs read ($RECBOLE_EXT_DATA), not created yet: the command must create it."""
    root = tmp_path / "datasets"
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(root))
    return root


def one_error_line(capsys) -> str:
    """The one error line on stderr; the only other line allowed is the command's 'downloading NAME from URL'."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and all(line.startswith(("error:", "downloading ")) for line in lines), lines
    return errors[0]


def test_download_lands_where_a_run_finds_it(server, data_root, capsys):
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/Toy_Set.zip"]) == 0
    folder = data_root / "toy-set"
    # RecBole's rename: the zip's stem (Toy_Set) becomes the dataset name; other files keep theirs
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "README.txt", "download.json",
                                                         "toy-set.inter", "toy-set.item"]
    assert (folder / "toy-set.inter").read_text() == TOY_INTER
    record = json.loads((folder / "download.json").read_text())
    assert record["source"] == "--url" and record["zip_bytes"] == len(GOOD_ZIP)
    assert [p.name for p in data_root.iterdir()] == ["toy-set"]  # no temporary folder or zip left beside it
    assert "python run.py --model=BPR --dataset=toy-set\n" in capsys.readouterr().out

    from recbole_ext.config import build_config

    config, task = build_config("BPR", "toy-set", {"epochs": 1})  # no data_path: the '@bundled' root is found
    assert config["data_path"] == str(folder)
    dataset = task.create_dataset(config)
    assert dataset.inter_num == TOY_INTER.count("\n") - 1


def test_files_inside_one_top_folder_are_found(server, data_root):
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/wrapped/Toy_Set.zip"]) == 0
    assert sorted(p.name for p in (data_root / "toy-set").iterdir()) == [".gitignore", "download.json",
                                                                         "toy-set.inter"]


@pytest.mark.parametrize("route,needle", [
    ("/missing.zip", "HTTP 404"),
    ("/truncated.zip", f"truncated: {len(GOOD_ZIP)} of {len(GOOD_ZIP) + 1000} bytes"),
    ("/not-a-zip.zip", "is not a valid zip"),
    ("/damaged.zip", "is not a valid zip"),
    ("/evil.zip", "unsafe member '../evil'"),
    ("/absolute.zip", "unsafe member '/tmp/evil'"),
    ("/symlink.zip", "unsafe member 'Toy_Set.item' (a symbolic link)"),
    ("/no-inter.zip", "holds no atomic interaction file no-inter.inter (it holds Toy_Set.item, Toy_Set.user)"),
])
def test_a_refused_download_is_one_line_and_writes_nothing(server, data_root, tmp_path, capsys, route, needle):
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}{route}"]) == 2
    assert needle in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even the dataset root it would have created
    assert not (tmp_path.parent / "evil").exists()


def test_a_refused_download_leaves_an_existing_root_as_it_was(server, data_root, capsys):
    (data_root / "other").mkdir(parents=True)
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/evil.zip"]) == 2
    one_error_line(capsys)
    assert [p.name for p in data_root.iterdir()] == ["other"]


@pytest.mark.parametrize("limit,needle", [
    ({"max_download": 1000}, f"is {len(GOOD_ZIP) / 1024:.1f} KiB, more than the 1000 B limit"),
    ({"max_unpacked": 1000}, "more than the 1000 B limit"),
])
def test_size_limits_refuse_before_writing(server, data_root, tmp_path, limit, needle):
    from recbole_ext.data.prepare.recbole_download import prepare_recbole_dataset

    with pytest.raises(UserError, match=needle):
        prepare_recbole_dataset("toy-set", data_root, url=f"{server}/Toy_Set.zip", **limit)
    assert list(tmp_path.iterdir()) == []


def test_a_zip_fetched_by_hand_installs_from_a_file_url(data_root, tmp_path):
    by_hand = tmp_path / "download" / "Toy_Set.zip"
    by_hand.parent.mkdir()
    by_hand.write_bytes(GOOD_ZIP)
    assert main(["prepare", "recbole", "toy-set", "--url", by_hand.as_uri()]) == 0
    assert (data_root / "toy-set" / "toy-set.inter").read_text() == TOY_INTER


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("route,bar", [("/Toy_Set.zip", True), ("/no-length/Toy_Set.zip", False)])
def test_a_progress_bar_when_the_size_is_known(server, tmp_path, monkeypatch, route, bar):
    from recbole_ext.data.prepare.recbole_download import download

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert download(f"{server}{route}", tmp_path / "got.zip", label="toy-set") == len(GOOD_ZIP)
    assert (tmp_path / "got.zip").read_bytes() == GOOD_ZIP
    assert ("toy-set: 100%" in terminal.getvalue()) is bar


def test_a_stalled_server_times_out(server, data_root, tmp_path, capsys):
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/slow.zip", "--timeout", "0.3"]) == 2
    assert "within 0.3 s" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_dataset_is_kept_unless_overwrite(server, data_root, capsys):
    folder = data_root / "toy-set"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("keep")
    Handler.requests.clear()
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/Toy_Set.zip"]) == 2
    assert "already exists" in one_error_line(capsys)
    assert Handler.requests == []  # refused before the download, not after it
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/Toy_Set.zip", "--overwrite"]) == 0
    assert not (folder / "mine.txt").exists() and (folder / "toy-set.inter").is_file()


def test_out_writes_elsewhere_and_names_data_path(server, data_root, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert main(["prepare", "recbole", "toy-set", "--url", f"{server}/Toy_Set.zip", "--out", str(elsewhere)]) == 0
    assert (elsewhere / "toy-set" / "toy-set.inter").is_file() and not data_root.exists()
    assert f"--dataset=toy-set --data_path={elsewhere}" in capsys.readouterr().out


def test_the_table_is_recboles_own():
    from recbole_ext.data.prepare.recbole_download import recbole_dataset_url, recbole_url_table

    table = recbole_url_table()
    assert len(table) > 100  # RecBole 1.2.1 lists 174 datasets
    assert recbole_dataset_url("ml-1m").startswith("https://") and table["ml-1m"].endswith("/ml-1m.zip")


def test_list_prints_recboles_names(capsys):
    assert main(["prepare", "recbole", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "ml-1m" in names and "yelp" in names and len(names) > 100


def test_ml_100k_is_not_downloaded_runs_read_recboles_copy(data_root, tmp_path, capsys):
    assert main(["prepare", "recbole", "ml-100k"]) == 2
    assert "ships with RecBole" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_suggests_close_ones(data_root, tmp_path, capsys):
    assert main(["prepare", "recbole", "ml-1n"]) == 2
    line = one_error_line(capsys)
    assert "no dataset named 'ml-1n'" in line and "ml-1m" in line
    assert list(tmp_path.iterdir()) == []


def test_a_run_never_downloads_and_names_the_command(data_root):
    from recbole_ext.config import build_config

    with pytest.raises(UserError, match=r"`python run\.py prepare recbole ml-1m`"):
        build_config("BPR", "ml-1m", {})
    with pytest.raises(UserError) as not_recbole:  # a name RecBole does not know gets the general advice
        build_config("BPR", "my-own-data", {})
    assert "prepare recbole" not in str(not_recbole.value)


def test_help_shows_the_defaults(data_root, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as done:
        main(["prepare", "recbole", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 60.0)" in out
    # --out's default is named by its rule, never as this machine's folder (docs/cli.md is generated from --help)
    assert "(default: where runs look, $RECBOLE_EXT_DATA, else the project's dataset_atomic/)" in out
    assert str(data_root) not in out
