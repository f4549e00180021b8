"""The macOS login agent: the rendered plist, and install/uninstall/status against a fake launchctl.

These run on any OS: `launchctl` is a shell script on PATH that logs its calls and keeps the
"loaded" state as a file, failing the way the real one does (print 113, bootout 3, bootstrap 5).
"""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.api.server import GRACEFUL_SHUTDOWN_S
from app.config import DEFAULT_MODEL, Settings
from scripts.harness import free_port
from scripts.launchd_agent import (
    LABEL,
    ROOT,
    TEMPLATE,
    AgentError,
    install,
    logs,
    main,
    parse_print,
    render_plist,
    restart,
    service_target,
    status,
    uninstall,
    unload,
)

UID = 501  # a Mac's first user (this machine may run tests as root, which install refuses)
TARGET = service_target(UID)

FAKE_LAUNCHCTL = r"""#!/bin/sh
# Stands in for macOS launchctl: logs each call, keeps the loaded plist as the file "loaded".
dir=$(dirname "$0")
echo "$*" >> "$dir/calls.log"
case "$1" in
  print)
    if [ -f "$dir/loaded" ]; then cat "$dir/print.txt"; exit 0; fi
    echo "Could not find service \"$2\" in domain for port" >&2; exit 113 ;;
  bootout)
    if [ -f "$dir/stuck" ]; then exit 0; fi
    if [ -f "$dir/loaded" ]; then rm "$dir/loaded"; exit 0; fi
    echo "Boot-out failed: 3: No such process" >&2; exit 3 ;;
  bootstrap)
    if [ -f "$dir/disabled" ]; then
      echo "Bootstrap failed: 119: Service is disabled" >&2; exit 119; fi
    if [ -f "$dir/broken" ] || [ -f "$dir/loaded" ]; then
      echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; fi
    if [ -f "$dir/silently-ignored" ]; then exit 0; fi
    cp "$3" "$dir/loaded"; exit 0 ;;
  enable) rm -f "$dir/disabled"; exit 0 ;;
  kickstart)
    if [ -f "$dir/loaded" ]; then exit 0; fi
    echo "Could not find service" >&2; exit 113 ;;
esac
echo "Unrecognized subcommand: $1" >&2; exit 1
"""

# Abridged from a real `launchctl print gui/501/<label>` on macOS 14.
PRINT_OUTPUT = """gui/501/local.paligemma-segment.server = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/local.paligemma-segment.server.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/src/paligemma-segment/.venv/bin/python
\targuments = {
\t\t/Users/me/src/paligemma-segment/.venv/bin/python
\t\t-m
\t\tapp
\t}

\tpid = 4242
\timmediate reason = speculative
\tforks = 0
\texecs = 1
\tlast exit code = (never exited)

\tendpoints = {
\t\tstate = active
\t}
}
"""


class FakeLaunchctl:
    """The fake's directory: its call log and the switches that make it misbehave."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def clear(self) -> None:
        (self.dir / "calls.log").unlink(missing_ok=True)

    def set(self, switch: str) -> None:
        (self.dir / switch).touch()

    def loaded_plist(self) -> dict[str, Any] | None:
        loaded = self.dir / "loaded"
        return plistlib.loads(loaded.read_bytes()) if loaded.exists() else None


@pytest.fixture
def launchctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLaunchctl:
    directory = tmp_path / "fake-bin"
    directory.mkdir()
    script = directory / "launchctl"
    script.write_text(FAKE_LAUNCHCTL)
    script.chmod(0o755)
    (directory / "print.txt").write_text(PRINT_OUTPUT)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return FakeLaunchctl(directory)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with what install needs: the venv's python, the default model, the VAE."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    model = root / "models" / DEFAULT_MODEL
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (root / "models" / "vae-oid.npz").write_bytes(b"")
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def render(checkout: Path, home: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return plistlib.loads(render_plist(checkout, home, env or {}))


def darwin_install(checkout: Path, home: Path, env: dict[str, str] | None = None) -> str:
    return install(checkout, home, env or {}, platform="darwin", uid=UID)


# -- the plist ---------------------------------------------------------------------------------
def test_plist_has_every_key_with_the_right_type(checkout: Path, home: Path) -> None:
    plist = render(checkout, home)
    assert plist["Label"] == LABEL and "." in LABEL  # reverse-DNS
    assert plist["ProgramArguments"] == [
        str(checkout / ".venv/bin/python"),
        *("-m", "app", "serve", "--stderr-max-mb", "1"),
    ]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # crash: restart; clean stop: not
    # A start that cannot succeed (port taken, bad setting) retries at a pace a human notices.
    assert isinstance(plist["ThrottleInterval"], int) and 30 <= plist["ThrottleInterval"] <= 60
    assert plist["ProcessType"] in ("Interactive", "Standard")
    assert plist["LimitLoadToSessionType"] == "Aqua"
    assert plist["WorkingDirectory"] == str(checkout)
    logs = home / "Library/Logs/paligemma-segment"
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(logs / "launchd.log")
    # launchd sends SIGKILL after ExitTimeOut: leave the service its own drain time and more.
    assert isinstance(plist["ExitTimeOut"], int) and plist["ExitTimeOut"] > GRACEFUL_SHUTDOWN_S
    env = plist["EnvironmentVariables"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert env["PYTHONUNBUFFERED"] == "1"
    required = {"SEGMENT_MODEL", "SEGMENT_VAE_PATH", "SEGMENT_MODELS_DIR", "SEGMENT_HOST"}
    assert required | {"SEGMENT_PORT", "HF_HOME"} <= set(env)
    assert env["SEGMENT_LOG_FILE"] == str(logs / "service.log")  # rotated by the service
    assert env["SEGMENT_PRELOAD"] == "false"  # loads on the first request, not at each login


def test_every_path_is_absolute_and_exists(checkout: Path, home: Path) -> None:
    plist = render(checkout, home)
    env = plist["EnvironmentVariables"]
    paths = [
        plist["ProgramArguments"][0],
        plist["WorkingDirectory"],
        env["SEGMENT_VAE_PATH"],
        env["SEGMENT_MODELS_DIR"],
    ]
    for path in [*paths, plist["StandardOutPath"], env["HF_HOME"]]:
        assert Path(path).is_absolute(), path
    for path in paths:
        assert Path(path).exists(), path
    assert os.access(plist["ProgramArguments"][0], os.X_OK)


def test_plist_round_trips_through_plistlib(checkout: Path, home: Path) -> None:
    rendered = render_plist(checkout, home, {"SEGMENT_PORT": "8080"})
    assert rendered.startswith(b"<?xml") and b"<!DOCTYPE plist" in rendered
    assert plistlib.dumps(plistlib.loads(rendered), fmt=plistlib.FMT_XML) == rendered


def test_environment_is_passed_through(checkout: Path, home: Path) -> None:
    env = render(
        checkout,
        home,
        {
            "SEGMENT_PORT": "8080",
            "SEGMENT_MAX_QUEUE": "3",
            "SEGMENT_VAE_PATH": "models/vae-oid.npz",  # relative: to the checkout
            "HF_HOME": "~/hf",
            "PATH": "/somewhere",  # launchd's own PATH stays; the user's shell is not copied
            "HF_TOKEN": "hf_secret",  # the service never downloads: no token in the plist
        },
    )["EnvironmentVariables"]
    assert env["SEGMENT_PORT"] == "8080" and env["SEGMENT_MAX_QUEUE"] == "3"
    assert env["SEGMENT_VAE_PATH"] == str(checkout / "models/vae-oid.npz")
    assert env["HF_HOME"] == str(home / "hf")
    assert "PATH" not in env and "HF_TOKEN" not in env


def test_defaults_come_from_settings_made_absolute(checkout: Path, home: Path) -> None:
    env = render(checkout, home)["EnvironmentVariables"]
    defaults = Settings.model_fields
    assert env["SEGMENT_MODEL"] == defaults["model"].default  # a Hub id stays one
    assert env["SEGMENT_HOST"] == defaults["host"].default
    assert env["SEGMENT_PORT"] == str(defaults["port"].default)
    assert env["SEGMENT_MODELS_DIR"] == str(checkout / "models")
    assert env["SEGMENT_VAE_PATH"] == str(checkout / "models/vae-oid.npz")
    assert env["HF_HOME"] == str(home / ".cache/huggingface")


def test_local_model_directory_is_made_absolute(checkout: Path, home: Path) -> None:
    (checkout / "models/tiny").mkdir()
    env = render(checkout, home, {"SEGMENT_MODEL": "models/tiny"})["EnvironmentVariables"]
    assert env["SEGMENT_MODEL"] == str(checkout / "models/tiny")


def test_the_repository_template_is_a_plist_named_after_its_label(home: Path) -> None:
    with TEMPLATE.open("rb") as f:
        assert plistlib.load(f)["Label"] == LABEL == TEMPLATE.stem
    rendered = render_plist(ROOT, home, {})
    assert b"@" not in rendered  # every placeholder filled
    assert plistlib.loads(rendered)["WorkingDirectory"] == str(ROOT)


def test_an_unknown_placeholder_is_refused(tmp_path: Path, checkout: Path, home: Path) -> None:
    with TEMPLATE.open("rb") as f:
        template = plistlib.load(f)
    template["WatchPaths"] = ["@SOMETHING_NEW@"]
    path = tmp_path / "template.plist"
    path.write_bytes(plistlib.dumps(template))
    with pytest.raises(AgentError, match="@SOMETHING_NEW@"):
        render_plist(checkout, home, {}, template=path)


# -- install -----------------------------------------------------------------------------------
def test_install_writes_the_plist_and_bootstraps_it(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    env = {"SEGMENT_API_TOKEN": "s3cret", "SEGMENT_PORT": "8001"}
    message = darwin_install(checkout, home, env)
    plist = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert launchctl.calls() == [
        f"bootout {TARGET}",  # not loaded: exits 3, tolerated
        f"print {TARGET}",
        f"bootstrap gui/{UID} {plist}",
        f"print {TARGET}",  # launchd really lists it
    ]
    assert plist.read_bytes() == render_plist(checkout, home, env)
    assert plist.stat().st_mode & 0o077 == 0  # it may hold SEGMENT_API_TOKEN
    log = home / "Library/Logs/paligemma-segment/service.log"
    assert log.parent.is_dir()
    assert str(log) in message and "http://127.0.0.1:8001" in message
    assert "loads on the first request" in message
    # Every setting the plist keeps is listed, the token without its value.
    assert "    SEGMENT_PORT=8001" in message and "    SEGMENT_PRELOAD=false" in message
    assert "SEGMENT_API_TOKEN=(hidden)" in message and "s3cret" not in message
    assert "privacy protection" not in message and "warning" not in message


def test_reinstall_boots_out_the_loaded_agent_first(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    darwin_install(checkout, home)
    launchctl.clear()
    darwin_install(checkout, home, {"SEGMENT_PORT": "8081"})
    plist = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    calls = launchctl.calls()
    assert calls[0] == f"bootout {TARGET}" and calls[-2] == f"bootstrap gui/{UID} {plist}"
    loaded = launchctl.loaded_plist()
    assert loaded is not None and loaded["EnvironmentVariables"]["SEGMENT_PORT"] == "8081"


def test_install_warns_about_privacy_protected_folders(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    documents = home / "Documents"
    documents.mkdir()
    moved = checkout.rename(documents / "checkout")
    assert "privacy protection" in darwin_install(moved, home)


def test_install_never_uses_the_legacy_load(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    launchctl.set("broken")
    with pytest.raises(AgentError):
        darwin_install(checkout, home)
    assert not any(call.startswith(("load", "unload")) for call in launchctl.calls())


def test_a_failed_bootstrap_says_what_launchctl_said_and_what_it_means(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    launchctl.set("broken")
    with pytest.raises(AgentError) as caught:
        darwin_install(checkout, home)
    assert "Bootstrap failed: 5: Input/output error" in str(caught.value)
    assert "Login Items" in str(caught.value)  # what error 5 usually means


def test_a_bootstrap_that_loads_nothing_is_not_reported_as_installed(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    launchctl.set("silently-ignored")  # exit 0, but launchd does not list the service
    with pytest.raises(AgentError, match="does not list"):
        install(checkout, home, {}, platform="darwin", uid=UID)


def test_a_disabled_agent_is_enabled_and_bootstrapped_again(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    launchctl.set("disabled")
    message = darwin_install(checkout, home)
    plist = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert launchctl.calls()[2:5] == [
        f"bootstrap gui/{UID} {plist}",
        f"enable {TARGET}",
        f"bootstrap gui/{UID} {plist}",
    ]
    assert "enabled it again" in message and launchctl.loaded_plist() is not None


def test_install_refuses_root(launchctl: FakeLaunchctl, checkout: Path, home: Path) -> None:
    with pytest.raises(AgentError, match="not as root or with sudo"):
        install(checkout, home, {}, platform="darwin", uid=0)
    assert launchctl.calls() == [] and not (home / "Library").exists()


def test_install_warns_about_an_interpreter_path_naming_a_patch_version(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    (checkout / ".venv/pyvenv.cfg").write_text(
        "home = /Users/me/.pyenv/versions/3.12.4/bin\ninclude-system-site-packages = false\n"
    )
    message = darwin_install(checkout, home)
    assert "warning:" in message and "version 3.12.4" in message
    (checkout / ".venv/pyvenv.cfg").write_text("home = /opt/homebrew/opt/python@3.12/bin\n")
    assert "version" not in darwin_install(checkout, home)


def test_install_without_weights_warns_and_installs(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    shutil.rmtree(checkout / "models" / DEFAULT_MODEL)
    message = darwin_install(checkout, home)
    assert "serves it once `make models` has put it there" in message
    assert launchctl.loaded_plist() is not None


def _no_venv(checkout: Path) -> dict[str, str]:
    shutil.rmtree(checkout / ".venv")
    return {}


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_no_venv, "No virtual environment"),
        (lambda _: {"SEGMENT_PORT": "eighty"}, "Invalid setting: SEGMENT_PORT='eighty' is not"),
    ],
)
def test_install_refuses_what_could_only_fail_at_login(
    launchctl: FakeLaunchctl,
    checkout: Path,
    home: Path,
    breakage: Callable[[Path], dict[str, str]],
    message: str,
) -> None:
    env = breakage(checkout)
    with pytest.raises(AgentError, match=message.replace("`", ".")):
        darwin_install(checkout, home, env)
    assert launchctl.calls() == []
    assert not (home / "Library/LaunchAgents").exists()


def test_install_refuses_off_macos(launchctl: FakeLaunchctl, checkout: Path, home: Path) -> None:
    with pytest.raises(AgentError, match="macOS only"):
        install(checkout, home, {}, platform="linux", uid=UID)
    assert launchctl.calls() == []


def test_unload_gives_up_on_an_agent_that_stays_loaded(launchctl: FakeLaunchctl) -> None:
    (launchctl.dir / "loaded").touch()
    launchctl.set("stuck")
    with pytest.raises(AgentError, match="still loaded"):
        unload(UID, wait_s=0.2)


# -- uninstall ---------------------------------------------------------------------------------
def test_uninstall_when_not_installed_is_quiet_and_idempotent(
    launchctl: FakeLaunchctl, home: Path
) -> None:
    for _ in range(2):
        assert "not installed" in uninstall(home, platform="darwin", uid=UID)
    assert launchctl.calls() == [f"bootout {TARGET}", f"print {TARGET}"] * 2


def test_uninstall_boots_out_and_removes_the_plist(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    darwin_install(checkout, home)
    plist = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    assert "Removed" in uninstall(home, platform="darwin", uid=UID)
    assert not plist.exists() and launchctl.loaded_plist() is None
    assert "not installed" in uninstall(home, platform="darwin", uid=UID)


# -- status ------------------------------------------------------------------------------------
@pytest.fixture
def health_server() -> Iterator[tuple[int, dict[str, Any]]]:
    """A stand-in /health on a free port; tests set the reply through the returned dict."""
    reply: dict[str, Any] = {"code": 200, "body": {"status": "ok"}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(reply["body"]).encode()
            self.send_response(reply["code"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], reply
    server.shutdown()
    server.server_close()


def test_status_reports_pid_exit_code_logs_and_health(
    launchctl: FakeLaunchctl,
    checkout: Path,
    home: Path,
    health_server: tuple[int, dict[str, Any]],
) -> None:
    port, reply = health_server
    darwin_install(checkout, home, {"SEGMENT_PORT": str(port)})
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 0
    assert "state running, pid 4242, last exit code (never exited)" in report
    assert str(home / "Library/Logs/paligemma-segment/service.log") in report
    assert "last:    it has been running since it was loaded" in report
    assert "problem" not in report
    assert f"http://127.0.0.1:{port}/health: 200 ok" in report
    reply.update(code=503, body={"status": "loading", "reason": "loading the model"})
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 1 and "503 loading loading the model" in report


def test_status_when_loaded_but_not_answering(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    darwin_install(checkout, home, {"SEGMENT_PORT": str(free_port())})
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 1 and "not answering" in report


def test_status_when_not_installed(launchctl: FakeLaunchctl, home: Path) -> None:
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 1
    assert "loaded:  no" in report and "(not installed)" in report
    assert launchctl.calls() == [f"print {TARGET}"]


def _print_with(launchctl: FakeLaunchctl, **fields: str) -> None:
    text = PRINT_OUTPUT.replace("\tlast exit code = (never exited)\n", "")
    extra = "".join(f"\t{name.replace('_', ' ')} = {value}\n" for name, value in fields.items())
    (launchctl.dir / "print.txt").write_text(text.replace("\tpid = 4242\n", extra))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"last_exit_code": "75"}, "its port was taken by another program"),
        ({"last_exit_code": "78: EX_CONFIG"}, "a SEGMENT_* setting in the plist is invalid"),
        ({"last_exit_code": "0"}, "it stopped cleanly"),
        ({"last_exit_code": "3"}, "exit 3: `make agent-logs` shows why"),
        ({"last_terminating_signal": "Abort trap: 6"}, "killed by Abort trap: 6"),
    ],
)
def test_status_explains_the_last_exit(
    launchctl: FakeLaunchctl, checkout: Path, home: Path, fields: dict[str, str], says: str
) -> None:
    darwin_install(checkout, home, {"SEGMENT_PORT": str(free_port())})
    _print_with(launchctl, **fields)
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 1 and f"last:    {says}" in report


def test_status_finds_an_interpreter_or_checkout_that_is_gone(
    launchctl: FakeLaunchctl, checkout: Path, home: Path, tmp_path: Path
) -> None:
    # The venv's python is a link to an interpreter that an upgrade removed.
    base = tmp_path / "pyenv/versions/3.12.4/bin/python3.12"
    base.parent.mkdir(parents=True)
    base.symlink_to(sys.executable)
    venv_python = checkout / ".venv/bin/python"
    venv_python.unlink()
    venv_python.symlink_to(base)
    darwin_install(checkout, home, {"SEGMENT_PORT": str(free_port())})
    code, report = status(home, platform="darwin", uid=UID)
    assert "problem" not in report
    base.unlink()
    code, report = status(home, platform="darwin", uid=UID)
    assert code == 1
    assert f"problem: the interpreter {venv_python} is a link to {base}, which is gone" in report
    shutil.rmtree(checkout)
    code, report = status(home, platform="darwin", uid=UID)
    assert f"problem: the checkout {checkout} is gone" in report


def test_restart_kickstarts_a_loaded_agent(
    launchctl: FakeLaunchctl, checkout: Path, home: Path
) -> None:
    with pytest.raises(AgentError, match="not loaded"):
        restart(platform="darwin", uid=UID)
    darwin_install(checkout, home)
    launchctl.clear()
    assert "Restarted" in restart(platform="darwin", uid=UID)
    assert launchctl.calls() == [f"print {TARGET}", f"kickstart -k {TARGET}"]
    with pytest.raises(AgentError, match="not as root"):
        restart(platform="darwin", uid=0)
    with pytest.raises(AgentError, match="not as root"):
        uninstall(home, platform="darwin", uid=0)


def test_logs_shows_the_end_of_both_files(home: Path) -> None:
    folder = home / "Library/Logs/paligemma-segment"
    assert "none yet" in logs(home)
    folder.mkdir(parents=True)
    (folder / "launchd.log").write_text("error: SEGMENT_PORT='eighty' is not a whole number\n")
    (folder / "service.log").write_text("".join(f"line {n}\n" for n in range(1000)))
    shown = logs(home, lines=5).splitlines()
    assert "error: SEGMENT_PORT='eighty' is not a whole number" in shown
    assert shown[-6:-1] == [f"line {n}" for n in range(995, 1000)]
    assert shown[-1] == f"Follow it live: tail -F {folder / 'service.log'}"


def test_parse_print_reads_the_top_level_fields() -> None:
    state = parse_print(PRINT_OUTPUT)
    assert (state.state, state.pid, state.last_exit) == ("running", 4242, "(never exited)")
    stopped = parse_print("x = {\n\tstate = not running\n\tlast exit code = 1\n}\n")
    assert (stopped.state, stopped.pid, stopped.last_exit) == ("not running", None, "1")


# -- the command line and the Makefile ---------------------------------------------------------
def test_print_plist_works_off_macos(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["print-plist"], platform="linux") == 0
    assert plistlib.loads(capsys.readouterr().out.encode())["Label"] == LABEL


def test_install_off_macos_is_a_clear_error(
    launchctl: FakeLaunchctl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install"], platform="linux") == 1
    assert "macOS only" in capsys.readouterr().err
    assert launchctl.calls() == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_agent_plist_prints_a_valid_plist() -> None:
    # -o: take .venv as set up (this interpreter), never reinstall it from the test (its stamp
    # is named after the MLX backend installed).
    stamps = [
        arg
        for stamp in ROOT.glob(".venv/.installed-*")
        for arg in ("-o", str(stamp.relative_to(ROOT)))
    ]
    result = subprocess.run(
        ["make", "-s", *stamps, "agent-plist", f"PY={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    plist = plistlib.loads(result.stdout)
    assert plist["Label"] == LABEL and plist["WorkingDirectory"] == str(ROOT)
