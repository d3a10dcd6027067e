"""Security defaults: loopback-only server, XSRF on, no usage statistics, no unpickling, paths inside the store.

The Streamlit settings are checked three ways: the TOML file itself, `streamlit
config show` (what `streamlit run` reads), and Streamlit's config API.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.exposure import exposure_warnings, is_loopback
from core.errors import StoreError
from core.store import MAX_RUN_ID, RunStore, check_run_id
from tests.helpers import DATA_DIR, REPO_ROOT, python_env

CONFIG_FILE = REPO_ROOT / ".streamlit" / "config.toml"
EXPECTED_SETTINGS = {
    "server.address": "127.0.0.1",
    "server.enableXsrfProtection": True,
    "server.enableCORS": True,
    "browser.gatherUsageStats": False,
    "server.maxUploadSize": 32,
}


# -- Streamlit settings --------------------------------------------------------


def test_config_file_settings():
    settings = tomllib.loads(CONFIG_FILE.read_text())

    for key, expected in EXPECTED_SETTINGS.items():
        section, name = key.split(".")
        assert settings[section][name] == expected, key


def test_config_show_reads_file():
    result = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"],
        cwd=REPO_ROOT, env=python_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # `config show` prints commented-out defaults ("# address =") and plain lines for values set in a file.
    printed = {}
    section = None
    for line in result.stdout.splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = match.group(1)
        elif section and not line.startswith("#") and " = " in line:
            name, value = line.split(" = ", 1)
            printed[f"{section}.{name.strip()}"] = tomllib.loads(f"v = {value}")["v"]

    for key, expected in EXPECTED_SETTINGS.items():
        assert printed.get(key) == expected, key
    assert f"The value below was set in {CONFIG_FILE}" in result.stdout


CONFIG_API_PROBE = textwrap.dedent(
    """
    import json
    from streamlit import config
    keys = ["server.address", "server.enableXsrfProtection", "server.enableCORS", "browser.gatherUsageStats", "server.maxUploadSize"]
    print(json.dumps({key: config.get_option(key) for key in keys}))
    """
)


def read_config_api(cwd: Path) -> dict:
    """Return the settings Streamlit's config API resolves for a process started in ``cwd``."""
    result = subprocess.run([sys.executable, "-c", CONFIG_API_PROBE], cwd=cwd, env=python_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_config_api_from_repository():
    assert read_config_api(REPO_ROOT) == EXPECTED_SETTINGS


def test_config_api_elsewhere_is_open(tmp_path):
    # Streamlit reads the file from the working folder only. Started elsewhere, it listens on every
    # interface and sends statistics, which is why the sidebar warns (tested below).
    settings = read_config_api(tmp_path)

    assert settings["server.address"] is None
    assert settings["browser.gatherUsageStats"] is True


@pytest.mark.parametrize(
    "address, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), (None, False), ("", False), ("myhost.lan", False)],
)
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_safe_settings_no_warning():
    assert exposure_warnings("127.0.0.1", 8501, False) == []


@pytest.fixture
def streamlit_option():
    """Set Streamlit config options for one test and restore the previous values afterwards."""
    from streamlit import config

    previous = {}

    def set_option(key, value):
        previous.setdefault(key, config.get_option(key))
        config.set_option(key, value)

    yield set_option
    for key, value in previous.items():
        config.set_option(key, value)


@pytest.fixture
def app_env(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")


def sidebar_warnings() -> list[str]:
    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=60).run()
    assert not at.exception
    return [w.value for w in at.sidebar.warning]


def test_sidebar_quiet_on_loopback(app_env, streamlit_option):
    streamlit_option("server.address", "127.0.0.1")
    streamlit_option("browser.gatherUsageStats", False)

    assert sidebar_warnings() == []


def test_sidebar_warns_when_exposed(app_env, streamlit_option):
    streamlit_option("server.address", "0.0.0.0")
    streamlit_option("browser.gatherUsageStats", False)

    warnings = sidebar_warnings()

    assert len(warnings) == 1
    assert "listens on address 0.0.0.0, port" in warnings[0]
    assert "there is no login" in warnings[0]
    assert "make app" in warnings[0]


def test_sidebar_warns_without_config(app_env, streamlit_option):
    streamlit_option("server.address", None)
    streamlit_option("browser.gatherUsageStats", True)

    warnings = sidebar_warnings()

    assert len(warnings) == 2
    assert "listens on every network interface" in warnings[0]
    assert "sending usage statistics" in warnings[1]


# -- weights are never unpickled ---------------------------------------------------

# Calls that unpickle (and so may run code from the file), by the name they are called with.
UNPICKLING_CALLS = {"torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "joblib.load", "dill.load",
                    "dill.loads", "cloudpickle.load", "cloudpickle.loads", "pandas.read_pickle", "pd.read_pickle",
                    "shelve.open", "marshal.load", "marshal.loads", "torch.jit.load"}
NUMPY_LOADS = {"np.load", "numpy.load"}
UNPICKLING_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unpickling_calls(source: str, filename: str) -> list[str]:
    """Return 'file:line name' for every call or import in ``source`` that can unpickle data."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        pickled_numpy = name in NUMPY_LOADS and any(
            k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in node.keywords
        )
        if name in UNPICKLING_CALLS or pickled_numpy:
            found.append(f"{filename}:{node.lineno} {name}")
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{filename}:{node.lineno} import {m}" for m in modules if m.split(".")[0] in UNPICKLING_MODULES]
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{filename}:{node.lineno} from torch import load")
    return found


def test_scanner_finds_unpickling():
    # Control for the scan below: every pattern it must catch is caught.
    sample = textwrap.dedent(
        """
        import pickle
        from joblib import load
        from torch import load
        torch.load(path)
        pickle.loads(data)
        np.load(path, allow_pickle=True)
        numpy.load(path, allow_pickle=flag)
        pd.read_pickle(path)
        np.load(path)
        np.load(path, allow_pickle=False)
        """
    )

    found = unpickling_calls(sample, "sample.py")

    assert [f.split(" ", 1)[1] for f in found] == [
        "torch.load", "pickle.loads", "np.load", "numpy.load", "pd.read_pickle", "import pickle", "import joblib",
        "from torch import load",
    ]


def test_no_unpickling_in_code():
    files = sorted([*(REPO_ROOT / "core").rglob("*.py"), *(REPO_ROOT / "app").rglob("*.py")])
    assert len(files) > 10

    found = [hit for path in files for hit in unpickling_calls(path.read_text(), str(path.relative_to(REPO_ROOT)))]

    assert found == []


# -- paths built from ids stay inside the store ---------------------------------------


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "store")


@pytest.mark.parametrize("run_id", [1, 42, MAX_RUN_ID, np.int64(7)], ids=["1", "42", "max", "numpy int"])
def test_run_dir_inside_store(store, run_id):
    folder = store.run_dir(run_id)

    assert folder == store.root / "checkpoints" / str(int(run_id))
    assert folder.resolve().is_relative_to(store.root.resolve())


@pytest.mark.parametrize(
    "run_id, fragment",
    [
        (0, "invalid run id 0; run ids are whole numbers from 1 to"),
        (-1, "invalid run id -1"),
        (MAX_RUN_ID + 1, f"invalid run id {MAX_RUN_ID + 1}"),
        (10**30, "invalid run id 1000000000000000000000000000000"),
        ("1/../..", "invalid run id '1/../..'; run ids are whole numbers such as 12"),
        ("../../etc", "invalid run id '../../etc'"),
        ("1", "invalid run id '1'"),
        (1.5, "invalid run id 1.5"),
        (2.0, "invalid run id 2.0"),
        (True, "invalid run id True"),
        (None, "invalid run id None"),
    ],
    ids=["zero", "negative", "above max", "huge", "dot-dot", "traversal", "digit text", "float", "whole float", "bool", "none"],
)
def test_run_dir_rejects_id(store, run_id, fragment):
    with pytest.raises(StoreError) as caught:
        store.run_dir(run_id)

    assert fragment in str(caught.value)
    assert not (store.root / "checkpoints").exists()


@pytest.mark.parametrize("method", ["get_run", "request_cancel", "delete_run", "reopen_for_resume", "training_state_path"])
@pytest.mark.parametrize("run_id", [-5, MAX_RUN_ID + 1, "1/../.."], ids=["negative", "above max", "dot-dot"])
def test_store_methods_reject_id(store, method, run_id):
    with pytest.raises(StoreError, match="invalid run id"):
        getattr(store, method)(run_id)


def test_check_run_id_returns_int():
    value = check_run_id(np.int64(12))

    assert value == 12
    assert type(value) is int


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    from core.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["cancel", "-1"], "invalid run id -1"),
        (["cancel", "0"], "invalid run id 0"),
        (["cancel", "99999999999999999999"], "invalid run id 99999999999999999999"),
        (["evaluate", "0"], "invalid run id 0"),
        (["predict", "digit.png", "--model", "99999999999999999999"], "invalid run id 99999999999999999999"),
        (["export", "-3", "out.safetensors"], "invalid run id -3"),
        (["cancel", "1/../.."], "argument run: invalid int value: '1/../..'"),
        (["train", "--resume", "-2"], "invalid run id -2"),
        (["train", "--resume", "0"], "invalid run id 0"),
    ],
)
def test_cli_rejects_run_id(tmp_path, capsys, args, fragment):
    code, stderr = run_main([*args, "--store", str(tmp_path / "store"), "--data-dir", str(DATA_DIR)], capsys)

    assert code == 2
    assert fragment in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out.safetensors").exists()
