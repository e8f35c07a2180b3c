"""The tracking store: which URI the stages log to, and a quick check that it can be used.

Why a check of its own: MLflow finds out that its store is unusable only when a stage first writes
to it, and against an HTTP server it retries for minutes first (MLflow's default: 7 retries with
backoff, 120 s per request). The validate stage and the start of train, evaluate and register call
`check_tracking_store`, which answers in seconds, before TensorFlow loads and before any training,
with one line naming the URI and what is wrong. Train checks again although validate did: validate's
result is cached by DVC, and a server can go down, or MLFLOW_TRACKING_URI change, after it ran.

This module does not import mlflow (the rest of `pipeline.tracking` does), so validate stays fast: HTTP
servers are asked through urllib, databases through the driver SQLAlchemy picks for MLflow (psycopg 3
for postgresql://).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0
# Schemes of SQLAlchemy stores other than sqlite and postgresql: only their port is tried.
_DEFAULT_PORTS = {"mysql": 3306, "mssql": 1433}
# The schemes MLflow 3.17 keeps runs and registered models in (`_register_tracking_stores` in
# mlflow/tracking/_tracking_service/utils.py, `DATABASE_ENGINES` in mlflow/store/db/db_types.py); "" is a path.
DATABASE_DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")
_FOLDER_SCHEMES = ("", "file")
_SERVER_SCHEMES = ("http", "https")
# URIs MLflow hands to a client of its own, even written without `://`.
_OTHER_CLIENTS = ("databricks",)
# MLflow registers these only to refuse them: Unity Catalog holds registered models, never runs.
_REGISTRY_ONLY = ("databricks-uc", "uc")
# Tracking stores of installed MLflow plugins, by scheme.
_PLUGIN_GROUP = "mlflow.tracking_store"
# MLflow 3.17 refuses a folder store ("maintenance mode") unless this is true.
ALLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
SCHEMES_THAT_WORK = (
    "sqlite:///<file>.db; postgresql://, mysql:// or mssql:// (a SQLAlchemy URL, optionally +driver); "
    "http:// or https:// (an MLflow server); databricks; a folder path or file:// (with "
    f"{ALLOW_FILE_STORE_ENV}=true)"
)


class TrackingStoreError(PipelineError):
    """The tracking store cannot be used; the message names the URI (password hidden) and the cause."""


def resolve_tracking_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI from the environment wins over the params file, as MLflow users expect."""
    return os.environ.get(TRACKING_URI_ENV) or configured


def uri_origin() -> str:
    """Where `resolve_tracking_uri` took the URI from, for error messages."""
    return TRACKING_URI_ENV if os.environ.get(TRACKING_URI_ENV) else "tracking.uri in params.yaml"


def redact(uri: str) -> str:
    """The URI with its password replaced by `***`, fit for logs and error messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def usable_tracking_uri(configured: str, *, experiment: str) -> tuple[str, str]:
    """The tracking URI in force (`MLFLOW_TRACKING_URI`, else `configured`), checked with `check_tracking_store`.

    Args:
        configured: `tracking.uri` of params.yaml.
        experiment: The experiment looked up on an HTTP server.

    Returns:
        The URI, and what answered.

    Raises:
        TrackingStoreError: The store cannot be used; the message names the URI, where it came from and why.
    """
    uri = resolve_tracking_uri(configured)
    return uri, check_tracking_store(uri, origin=uri_origin(), experiment=experiment)


def check_tracking_store(
    uri: str, *, origin: str, experiment: str = "Default", timeout: float = PROBE_TIMEOUT_S
) -> str:
    """Checks that MLflow can use `uri`, within about `timeout` seconds.

    What is checked per kind of store:
    - `http(s)://`: the server answers MLflow's REST API (an experiment lookup, which also reaches the
      server's own backend store), with the credentials and TLS settings MLflow would send.
    - `sqlite:///path`: the database's folder exists and a file can be created in it; an existing
      database file can be opened for writing.
    - `postgresql://`: the driver SQLAlchemy will use is installed, and a connection with the URI's
      user, password and database succeeds.
    - `mysql://`, `mssql://`: the driver is installed and the port accepts a connection.
    - a folder (`file:` or a plain path): MLFLOW_ALLOW_FILE_STORE is true (MLflow 3.17 refuses folder stores
      without it), and it, or the folder it would be created in, is writable.
    databricks and the schemes of installed MLflow plugins are left to MLflow; any other scheme (s3://, a typo
    such as postgres:// or htp://, Unity Catalog's uc:) is refused with the list of schemes that work.

    Args:
        uri: The resolved tracking URI.
        origin: Where the URI came from (`uri_origin()`, or the file that recorded it), for the message.
        experiment: The experiment looked up on an HTTP server.
        timeout: Seconds one network attempt may take.

    Returns:
        A short description of what answered, e.g. "MLflow server answered".

    Raises:
        TrackingStoreError: The store cannot be used; the message says why.
    """
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    dialect = scheme.split("+")[0]
    try:
        if _check_scheme(uri):
            return "not checked (MLflow's own client handles this scheme)"
        if scheme in ("http", "https"):
            return _check_http(uri, experiment, timeout)
        if dialect == "sqlite":
            return _check_sqlite(uri)
        if dialect == "postgresql":
            return _check_postgresql(uri, timeout)
        if dialect in _DEFAULT_PORTS:
            _database_driver(uri)
            return _check_port(parts.hostname or "localhost", parts.port or _DEFAULT_PORTS[dialect], timeout)
        if scheme == "file" or scheme == "" or len(scheme) == 1:  # one letter: a Windows drive
            return _check_folder(Path(urllib.request.url2pathname(parts.path) if scheme == "file" else uri))
    except TrackingStoreError as error:
        raise TrackingStoreError(f"tracking store {redact(uri)} (from {origin}) cannot be used: {error}") from None
    return "not checked (MLflow's own client handles this scheme)"


def _plugin_schemes() -> set[str]:
    """Schemes of tracking stores that installed packages add to MLflow (read without importing mlflow)."""
    import importlib.metadata

    return {entry_point.name.lower() for entry_point in importlib.metadata.entry_points(group=_PLUGIN_GROUP)}


def _check_scheme(uri: str) -> bool:
    """Refuses a URI whose scheme MLflow 3.17 has no store for, as MLflow itself reads the scheme.

    Why here: MLflow finds out only when train first writes, after the data is prepared and the model built.

    Returns:
        Whether MLflow's own client handles the scheme (databricks, an installed plugin's): nothing is left
        for this module to check.

    Raises:
        TrackingStoreError: The scheme is not one MLflow can keep runs in; the message lists those that work.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    scheme = "" if len(scheme) == 1 else scheme  # one letter: a Windows drive, as MLflow reads it
    written = uri.split("://")[0].lower() if "://" in uri else uri.lower()
    if written in _OTHER_CLIENTS or scheme in _OTHER_CLIENTS:
        return True
    if written in _REGISTRY_ONLY or scheme in _REGISTRY_ONLY:
        raise TrackingStoreError(
            f"{scheme if scheme in _REGISTRY_ONLY else written} is Unity Catalog, which MLflow uses as a model "
            "registry only, never as a tracking store; "
            f"schemes that work: {SCHEMES_THAT_WORK}"
        )
    if scheme in _plugin_schemes():
        return True
    dialect, plus, driver = scheme.partition("+")
    known = scheme in _FOLDER_SCHEMES + _SERVER_SCHEMES or (
        dialect in DATABASE_DIALECTS and (not plus or (driver and "+" not in driver))
    )
    if not known:
        hint = {"postgres": " (write postgresql://)", "sqlite3": " (write sqlite:///)"}.get(dialect, "")
        raise TrackingStoreError(
            f"MLflow has no tracking store for scheme {scheme}://{hint}; schemes that work: {SCHEMES_THAT_WORK}"
        )
    if scheme in _FOLDER_SCHEMES and os.environ.get(ALLOW_FILE_STORE_ENV, "").lower() not in ("true", "1"):
        raise TrackingStoreError(
            f"MLflow 3.17 refuses folder stores unless {ALLOW_FILE_STORE_ENV}=true (they are in maintenance mode); "
            f"use sqlite:///mlflow.db, or set {ALLOW_FILE_STORE_ENV}=true; schemes that work: {SCHEMES_THAT_WORK}"
        )
    return False


def _check_http(uri: str, experiment: str, timeout: float) -> str:
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    request = urllib.request.Request(url, headers=_auth_headers())
    host = urllib.parse.urlsplit(uri).netloc.rpartition("@")[2]
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        return _http_error(error, uri)
    except urllib.error.URLError as error:
        raise TrackingStoreError(_network_reason(error.reason, host, timeout)) from None
    except OSError as error:  # a timeout or a reset while reading the answer
        raise TrackingStoreError(_network_reason(error, host, timeout)) from None
    except http.client.HTTPException:
        raise TrackingStoreError(
            f"{host} does not speak HTTP; is this the port of a database rather than of `mlflow server`?"
        ) from None
    try:
        json.loads(body)
    except ValueError:
        raise TrackingStoreError(
            "it answered, but not as an MLflow tracking server (no JSON from /api/2.0/mlflow); a wrong port or path?"
        ) from None
    return "MLflow server answered"


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's REST client would send (MLFLOW_TRACKING_TOKEN, or user and password)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """The TLS settings MLflow's REST client would use (MLFLOW_TRACKING_INSECURE_TLS, ..._CERT_PATH)."""
    if not uri.lower().startswith("https"):
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # what the user asked MLflow for
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


def _network_reason(reason: object, host: str, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return f"nothing listens on {host} (connection refused); start the server, or fix the URI"
    if isinstance(reason, TimeoutError):
        return f"{host} did not answer within {timeout:g} s; is the server up and the port open to this machine?"
    if isinstance(reason, socket.gaierror):
        return f"host name {host.rpartition(':')[0] or host} does not resolve ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS with {host} failed ({reason}); see MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS"
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot reach {host} ({reason.strerror})"
    return f"cannot reach {host} ({reason})"


def _http_error(error: urllib.error.HTTPError, uri: str) -> str:
    """An experiment that does not exist yet is a healthy answer; other HTTP errors are explained."""
    try:
        payload = json.loads(error.read() or b"null")
    except ValueError:
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    if error.code == 404 and payload.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
        return "MLflow server answered"
    if error.code in (401, 403):
        raise TrackingStoreError(
            f"the server refused access (HTTP {error.code}); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    detail = str(payload.get("message") or error.reason).strip().splitlines()
    detail_text = f": {detail[0][:300]}" if detail else ""
    if error.code >= 500:
        raise TrackingStoreError(
            f"the server failed (HTTP {error.code}{detail_text}); its backend store may be down, see the server's log"
        )
    raise TrackingStoreError(
        f"HTTP {error.code} from /api/2.0/mlflow{detail_text}; is {redact(uri)} an MLflow tracking server "
        "(a wrong port or path)?"
    )


def sqlite_database(uri: str) -> Path | None:
    """The database file of a `sqlite://` URI (relative to the working folder when the URI is).

    Args:
        uri: A tracking URI, of any scheme.

    Returns:
        The file, or None for another scheme or an in-memory database.
    """
    if urllib.parse.urlsplit(uri).scheme.lower().partition("+")[0] != "sqlite":
        return None
    # SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db; sqlite:// and :memory: live in memory.
    database = uri.split("://", 1)[1].removeprefix("/").split("?", 1)[0]
    return None if database in ("", ":memory:") else Path(database)


def _check_sqlite(uri: str) -> str:
    path = sqlite_database(uri)
    if path is None:
        return "in-memory sqlite database"
    if path.is_dir():
        raise TrackingStoreError(f"{path} is a folder, not a database file")
    _check_folder_writable(path.parent)
    if path.exists():
        try:
            with path.open("r+b"):
                pass
        except OSError as error:
            raise TrackingStoreError(f"cannot write the database file {path} ({error.strerror})") from None
    return f"sqlite database {path} is writable"


def _check_folder(path: Path) -> str:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check_folder_writable(existing)
    return f"folder {path} is writable"


def _check_folder_writable(folder: Path) -> None:
    """Creates and removes a file in `folder`: permission bits alone would say yes to root on a read-only disk."""
    if not folder.exists():
        raise TrackingStoreError(f"folder {folder} does not exist; create it, or fix the URI")
    if not folder.is_dir():
        raise TrackingStoreError(f"{folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mlflow-write-check-"):
            pass
    except OSError as error:
        raise TrackingStoreError(f"cannot create a file in {folder} ({error.strerror})") from None


def _database_driver(uri: str) -> Any:
    """The DB-API module SQLAlchemy, and so MLflow, will use for `uri` (its `+driver`, or the dialect's default)."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        url = sqlalchemy.engine.make_url(uri)
    except sqlalchemy.exc.ArgumentError as error:
        raise TrackingStoreError(f"not a database URL SQLAlchemy can read ({error})") from None
    hint = (
        " (postgresql:// uses psycopg 3, which the project installs)" if url.get_backend_name() == "postgresql" else ""
    )
    try:
        return url.get_dialect().import_dbapi()
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise TrackingStoreError(
            f"the database driver SQLAlchemy uses for {url.drivername}:// is not available ({error}); "
            f"install it, or name an installed driver in the URI{hint}"
        ) from None


def _check_postgresql(uri: str, timeout: float) -> str:
    driver = _database_driver(uri)
    conninfo = "postgresql" + uri[uri.index("://") :]  # libpq knows no SQLAlchemy driver suffix (+psycopg)
    try:
        driver.connect(conninfo, connect_timeout=max(1, math.ceil(timeout))).close()
    except driver.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise TrackingStoreError("; ".join(lines) or type(error).__name__) from None
    return "PostgreSQL answered"


def _check_port(host: str, port: int, timeout: float) -> str:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise TrackingStoreError(_network_reason(error, f"{host}:{port}", timeout)) from None
    return f"{host}:{port} accepts connections"
