"""The tracking-store check: each kind of store that cannot be used is named in one line, in seconds."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.tracking import store as tracking_store
from pipeline.tracking.store import TrackingStoreError, check_tracking_store

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the class's status and body, and remembers the request."""

    status = 200
    body = b"{}"
    seen: list[tuple[str, str | None]] = []  # noqa: RUF012 (reset per test by the fixture)

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Handler", (_Answers,), {"seen": []})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_mlflow_server_answering_passes_and_gets_the_credentials(server, monkeypatch) -> None:
    url, handler = server
    handler.body = json.dumps({"experiment": {"experiment_id": "1"}}).encode()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert check_tracking_store(url, origin="test", experiment="my exp") == "MLflow server answered"
    assert handler.seen == [
        ("/api/2.0/mlflow/experiments/get-by-name?experiment_name=my+exp", "Basic YW5uOnB3"),
    ]


def test_an_experiment_not_created_yet_is_a_healthy_answer(server) -> None:
    url, handler = server
    handler.status, handler.body = 404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}).encode()
    assert check_tracking_store(url, origin="test") == "MLflow server answered"


def test_a_closed_port_fails_fast_with_the_uri_and_origin() -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(TrackingStoreError) as caught:
        check_tracking_store(f"http://127.0.0.1:{port}", origin="MLFLOW_TRACKING_URI")
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"tracking store http://127.0.0.1:{port} (from MLFLOW_TRACKING_URI) cannot be used: "
        f"nothing listens on 127.0.0.1:{port} (connection refused); start the server, or fix the URI"
    )


def test_a_server_that_never_answers_is_given_up_after_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the connection is accepted by the kernel, and nobody ever answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TrackingStoreError, match=rf"127\.0\.0\.1:{port} did not answer within 0\.5 s"):
            check_tracking_store(f"http://127.0.0.1:{port}", origin="test", timeout=0.5)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, b"", r"refused access \(HTTP 401\); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            500,
            json.dumps({"error_code": "INTERNAL_ERROR", "message": "could not connect to server\ndetail"}).encode(),
            r"the server failed \(HTTP 500: could not connect to server\); its backend store may be down",
        ),
        (404, b"<html>Not Found</html>", r"HTTP 404 from /api/2\.0/mlflow: Not Found; is http://127\.0\.0\.1:\d+ an"),
        (200, b"<html>a web page</html>", r"it answered, but not as an MLflow tracking server"),
    ],
)
def test_wrong_answers_are_explained(server, status: int, body: bytes, expected: str) -> None:
    url, handler = server
    handler.status, handler.body = status, body
    with pytest.raises(TrackingStoreError, match=expected):
        check_tracking_store(url, origin="test")


def test_a_port_that_does_not_speak_http_is_named() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]

        def greet() -> None:
            connection, _ = other.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"\x00\x01 not http at all\r\n\r\n")

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        with pytest.raises(TrackingStoreError, match=rf"127\.0\.0\.1:{port} does not speak HTTP"):
            check_tracking_store(f"http://127.0.0.1:{port}", origin="test")
        thread.join(5)


def test_sqlite_in_a_writable_folder_passes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_tracking_store("sqlite:///mlflow.db", origin="test") == "sqlite database mlflow.db is writable"
    (tmp_path / "store.db").write_bytes(b"")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert check_tracking_store(uri, origin="test") == f"sqlite database {tmp_path / 'store.db'} is writable"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store.db"]  # the write check leaves nothing


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////srv/team/mlflow.db", Path("/srv/team/mlflow.db")),
        ("SQLite+pysqlite:////srv/mlflow.db?timeout=30", Path("/srv/mlflow.db")),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql://db:5432/mlflow", None),
        ("http://127.0.0.1:5000", None),
        ("/srv/mlruns", None),
    ],
)
def test_sqlite_database_is_the_file_of_a_sqlite_uri(uri: str, expected: Path | None) -> None:
    assert tracking_store.sqlite_database(uri) == expected


def test_sqlite_in_an_unwritable_folder_fails() -> None:
    # /sys refuses new files to root too (a chmod'ed folder would not stop root, who runs CI).
    with pytest.raises(
        TrackingStoreError,
        match=r"^tracking store sqlite:////sys/mlflow\.db \(from tracking\.uri in params\.yaml\) cannot be used: "
        r"cannot create a file in /sys \(",
    ):
        check_tracking_store("sqlite:////sys/mlflow.db", origin="tracking.uri in params.yaml")


def test_sqlite_in_a_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(TrackingStoreError, match=rf"folder {tmp_path / 'nope'} does not exist; create it"):
        check_tracking_store(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}", origin="test")


def test_a_folder_store_is_checked_where_it_would_be_created(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert check_tracking_store(str(tmp_path / "mlruns"), origin="test") == f"folder {tmp_path / 'mlruns'} is writable"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrackingStoreError, match=rf"{tmp_path / 'file'} is not a folder"):
        check_tracking_store((tmp_path / "file" / "mlruns").as_uri(), origin="test")


def test_postgresql_refused_names_the_uri_without_its_password() -> None:
    port = _closed_port()
    with pytest.raises(TrackingStoreError) as caught:
        check_tracking_store(f"postgresql+psycopg://mlflow:s3cret@127.0.0.1:{port}/mlflow", origin="test")
    message = str(caught.value)
    assert message.startswith(
        f"tracking store postgresql+psycopg://mlflow:***@127.0.0.1:{port}/mlflow (from test) cannot be used: "
        f'connection failed: connection to server at "127.0.0.1", port {port} failed: Connection refused; '
    )
    assert "s3cret" not in message
    assert "\n" not in message


def test_a_database_driver_that_is_not_installed_is_named() -> None:
    with pytest.raises(
        TrackingStoreError,
        match=r"the database driver SQLAlchemy uses for postgresql\+nodriver:// is not available",
    ):
        check_tracking_store("postgresql+nodriver://mlflow@127.0.0.1/mlflow", origin="test")


def test_schemes_of_other_clients_are_left_to_mlflow() -> None:
    for uri in ("databricks", "databricks://profile"):
        assert check_tracking_store(uri, origin="test").startswith("not checked"), uri


_WORK = (
    r"schemes that work: sqlite:///<file>.db; postgresql://, mysql:// or mssql:// \(a SQLAlchemy URL, optionally "
    r"\+driver\); http:// or https:// \(an MLflow server\); databricks; a folder path or file:// \(with "
    r"MLFLOW_ALLOW_FILE_STORE=true\)$"
)


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("s3://bucket/mlruns", r"MLflow has no tracking store for scheme s3://; "),
        ("htp://127.0.0.1:5000", r"MLflow has no tracking store for scheme htp://; "),
        ("postgres://u@db/mlflow", r"MLflow has no tracking store for scheme postgres:// \(write postgresql://\); "),
        ("sqlite3:///mlflow.db", r"MLflow has no tracking store for scheme sqlite3:// \(write sqlite:///\); "),
        ("mysql+a+b://db/mlflow", r"MLflow has no tracking store for scheme mysql\+a\+b://; "),
        ("uc:databricks-uc", r"uc is Unity Catalog, which MLflow uses as a model registry only, never as a tracking "),
        ("databricks-uc", r"databricks-uc is Unity Catalog, which MLflow uses as a model registry only"),
    ],
)
def test_a_scheme_mlflow_cannot_use_is_refused_with_the_schemes_that_work(uri: str, reason: str) -> None:
    with pytest.raises(
        TrackingStoreError,
        match=rf"^tracking store {re.escape(uri)} \(from tracking.uri in params.yaml\) "
        rf"cannot be used: {reason}.*{_WORK}",
    ):
        check_tracking_store(uri, origin="tracking.uri in params.yaml")


def test_a_folder_store_needs_mlflows_opt_in(tmp_path: Path, monkeypatch) -> None:
    # MLflow 3.17 raises on a folder store unless MLFLOW_ALLOW_FILE_STORE is true.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(
        TrackingStoreError,
        match=r"cannot be used: MLflow 3.17 refuses folder stores unless MLFLOW_ALLOW_FILE_STORE=true \(they are in "
        r"maintenance mode\); use sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true; schemes that work: ",
    ):
        check_tracking_store(str(tmp_path / "mlruns"), origin="test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "1")
    assert (
        check_tracking_store((tmp_path / "mlruns").as_uri(), origin="test")
        == f"folder {tmp_path / 'mlruns'} is writable"
    )


def test_database_urls_with_a_driver_pass_the_scheme_check(tmp_path: Path) -> None:
    assert check_tracking_store(f"sqlite+pysqlite:///{tmp_path / 'm.db'}", origin="test") == (
        f"sqlite database {tmp_path / 'm.db'} is writable"
    )


def test_redact_hides_only_the_password() -> None:
    assert tracking_store.redact("http://ann:pw@host:5000/x") == "http://ann:***@host:5000/x"
    assert tracking_store.redact("http://host:5000") == "http://host:5000"


def test_the_environment_names_the_origin(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_store.resolve_tracking_uri("sqlite:///a.db") == "sqlite:///a.db"
    assert tracking_store.uri_origin() == "tracking.uri in params.yaml"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking_store.resolve_tracking_uri("sqlite:///a.db") == "http://server:5000"
    assert tracking_store.uri_origin() == "MLFLOW_TRACKING_URI"


@pytest.mark.parametrize("stage", ["validate", "train"])
def test_stages_stop_in_seconds_on_an_unreachable_server(stage: str, tmp_path: Path) -> None:
    # Train checks on its own: DVC skips validate while params.yaml is unchanged.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    port = _closed_port()
    environment = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 10
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: tracking store http://127.0.0.1:{port} (from MLFLOW_TRACKING_URI) cannot be used: "
        f"nothing listens on 127.0.0.1:{port} (connection refused); start the server, or fix the URI"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]
