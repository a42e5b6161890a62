"""Starting on Ray Serve: a SIGTERM during the deployment stops it gracefully once it is
up (the handler is installed first), and a port in TIME-WAIT is not refused as in use."""

import socket
import subprocess
import sys
import textwrap
import time

import pytest

from vitres.serve.ray_serve import _check_port_free


def test_a_port_in_time_wait_is_free_and_a_listening_one_is_not():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Ray bind
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    with pytest.raises(ValueError, match="is the port in use"):
        _check_port_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its port goes to TIME-WAIT
    server.close()
    time.sleep(0.2)
    client.close()
    time.sleep(0.2)  # the client's FIN arrives: the server side is in TIME-WAIT now
    _check_port_free("127.0.0.1", port)  # a restarted server can listen here again


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import vitres.serve.ray_serve as rs
    from vitres.serve.config import ServeConfig

    class App:
        url, replicas, threads, name, local = "http://127.0.0.1:1", 1, 1, "vitres", True
        def shutdown(self):
            print("graceful shutdown", flush=True)
            return {}

    def slow_deploy(config, ray_config, log, on_signal=None):
        os.kill(os.getpid(), signal.SIGTERM)  # the orchestrator gives up during start-up
        return App()

    rs.deploy = slow_deploy
    sys.exit(rs.serve_on_ray(ServeConfig(model="fmnist-vit-single"), log=print))
    """
)


def test_sigterm_during_deployment_stops_gracefully():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "graceful shutdown" in done.stdout and "stopped on SIGTERM" in done.stdout
